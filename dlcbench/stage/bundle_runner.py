#!/usr/bin/env python3
"""Standalone runner of a dlcbench GPU bundle: unpack, load, check against the reference, time, write JSON.

This file is copied into every bundle as ``run.py`` by ``dlcbench/stage/bundle.py``. It runs where dlcbench and
TVM are not installed: it needs only the Python standard library, numpy, and what the bundle carries (the
``tvm_ffi`` package for this Python, ``libtvm_runtime.so`` and, for CUDA, ``libtvm_runtime_cuda.so`` and
``libcudart``). It must therefore never import ``dlcbench``, ``tvm``, ``compilers`` or ``runner``.

Usage (in the bundle directory, or from anywhere with its path)::

    python3 run.py --out results.json              # every artifact, checked and timed
    python3 run.py --self-check --out check.json   # unpack, load the runtime, round-trip a tensor; no GPU needed
    python3 run.py --batches 1 --models mlp,bert   # a subset

Steps: (1) *unpack*: the bundle's files, some stored xz-compressed, are verified (SHA-256) and written to a
work directory (``--workdir``, default a fresh temporary one); (2) the bundled ``tvm_ffi`` is imported from
there (``torch`` is kept out of the process unless ``--allow-torch``: ``tvm_ffi`` would import it), then
``libtvm_runtime.so`` and, for CUDA, ``libtvm_runtime_cuda.so`` are loaded explicitly: in runtime-only mode
nothing else registers the CUDA device API and module loader before ``load_module``; (3) for each artifact
a Relax VM is created through the executable's ``vm_load_executable`` / ``vm_initialization`` functions
(what ``tvm.runtime.vm.VirtualMachine`` does), the weights are uploaded once, one inference is checked
against the bundled reference with dlcbench's tolerances, then it is timed with the host clock (warm-up
outside the timed loop, device synchronised after each run) and with TVM's own timer
(``runtime.RPCTimeEvaluator``, what ``time_evaluator`` calls: CUDA events on a GPU).

Each artifact runs in its own child process (``--no-isolate`` to run in this one), so a crash or hang is
recorded with its category (``crash``, ``timeout``) and the others still run; the JSON file is rewritten
after every artifact, so a run cut short keeps what it measured.

Exit codes (dlcbench's): 0 all passed, 1 an output check failed, 2 bad usage or bundle, 3 no usable device
or runtime here, 4 an artifact failed to load or run, 7 an artifact crashed or timed out.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import lzma
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

FORMAT = "dlcbench-gpu-results/1"
BUNDLE_FORMAT = "dlcbench-gpu-bundle/1"

# Exit codes: a copy of dlcbench.errors.ExitCode (this file cannot import dlcbench).
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_UNAVAILABLE, EXIT_BACKEND_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 7

# DLPack device types and TVM device attribute ids (tvm/runtime/device.py).
KDL_CPU, KDL_CUDA = 1, 2
ATTR_EXIST, ATTR_COMPUTE_VERSION, ATTR_DEVICE_NAME, ATTR_SM_COUNT = 0, 4, 5, 7
ATTR_API_VERSION, ATTR_DRIVER_VERSION, ATTR_TOTAL_MEMORY = 11, 12, 14
POOLED_ALLOCATOR = 2

# Tolerances by precision: a copy of dlcbench.measure.check.TOLERANCES (abs, rel, cosine). The bundle's bundle.json
# carries the builder's values, which take precedence; these are the fallback.
TOLERANCES = {"fp32": (1e-4, 1e-3, 0.999), "fp16": (1e-2, 5e-2, 0.995), "bf16": (2e-2, 1e-1, 0.99)}
# A coefficient of variation above this is flagged unstable (dlcbench.measure.timing.CV_FLAG).
CV_FLAG = 0.025


class BundleError(Exception):
    """A failure with a category and exit code, reported as one line."""

    def __init__(self, message: str, category: str = "runtime_error", code: int = EXIT_BACKEND_ERROR):
        super().__init__(message)
        self.category, self.code = category, code


def one_line(text, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --------------------------------------------------------------------------- checks (copy of dlcbench/measure/check.py)


def compare_output(name: str, got, expected, tol=(1e-4, 1e-3, 0.999)) -> dict:
    """Metrics and verdict of one output; the same rules as ``dlcbench.measure.check.compare_output`` (duplicated here).

    An element passes when ``|got - expected| <= abs + rel * |expected|``; the output also needs
    ``cosine >= cosine``; NaN/Inf the reference does not have fail it.
    """
    import numpy as np

    abs_tol, rel_tol, cos_tol = tol
    got, expected = np.asarray(got), np.asarray(expected)
    record = {"name": name, "tolerance": {"abs": abs_tol, "rel": rel_tol, "cosine": cos_tol}}
    if got.shape != expected.shape:
        return {**record, "passed": False, "reasons": [f"shape {list(got.shape)} != expected {list(expected.shape)}"]}
    g, e = got.astype(np.float64), expected.astype(np.float64)
    reasons = []
    bad_new = (np.isnan(g) & ~np.isnan(e)) | (np.isinf(g) & ~np.isinf(e))
    if bad_new.any():
        reasons.append(f"{int(bad_new.sum())} NaN/Inf values the reference does not have")
    finite = np.isfinite(g) & np.isfinite(e)
    diff = np.where(finite, np.abs(g - e), 0.0)
    mag = np.where(finite, np.abs(e), 0.0)
    gf, ef = np.where(finite, g, 0.0).ravel(), np.where(finite, e, 0.0).ravel()
    denom = float(np.linalg.norm(gf) * np.linalg.norm(ef))
    cosine = float(gf @ ef / denom) if denom > 0 else (1.0 if not gf.any() and not ef.any() else 0.0)
    metrics = {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "mean_abs": float(diff[finite].mean()) if finite.any() else 0.0,
        "max_rel": float((diff / np.maximum(mag, 1e-12)).max()) if diff.size else 0.0,
        "cosine": cosine, "nan": int(np.isnan(g).sum()), "inf": int(np.isinf(g).sum()),
    }
    if diff.size:
        excess = diff - (abs_tol + rel_tol * mag)
        if (excess > 0).any():
            reasons.append(f"{int((excess > 0).sum())} of {diff.size} elements outside abs={abs_tol:g} rel={rel_tol:g}")
    if cosine < cos_tol:
        reasons.append(f"cosine {cosine:.6f} < {cos_tol}")
    return {**record, "passed": not reasons, "metrics": metrics, "reasons": reasons}


def check_outputs(got: dict, reference: dict, tol) -> dict:
    """Every reference output checked; a missing one fails. Returns passed, worst metrics and per-output."""
    outputs = []
    for name, expected in reference.items():
        if name not in got:
            outputs.append({"name": name, "passed": False, "reasons": [f"missing output (got {', '.join(got)})"]})
        else:
            outputs.append(compare_output(name, got[name], expected, tol))
    metrics = [o.get("metrics", {}) for o in outputs]
    return {
        "passed": all(o["passed"] for o in outputs),
        "max_abs": max((m.get("max_abs", 0.0) for m in metrics), default=0.0),
        "max_rel": max((m.get("max_rel", 0.0) for m in metrics), default=0.0),
        "cosine": min((m.get("cosine", 1.0) for m in metrics), default=1.0),
        "outputs": outputs,
    }


# --------------------------------------------------------------------------- timing (copy of dlcbench/measure/timing.py)


def statistics(samples_s, batch: int = 1) -> dict:
    """min, median, mean, std, cv, p90/p95/p99 (ms) and throughput; as ``dlcbench.measure.timing.statistics``."""
    import numpy as np

    arr = np.asarray(samples_s, dtype=np.float64)
    if arr.size == 0:
        raise BundleError("no timing samples")
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    median = float(np.median(arr))
    cv = std / mean if mean > 0 else 0.0
    return {
        "count": int(arr.size), "min_ms": float(arr.min()) * 1e3, "median_ms": median * 1e3, "mean_ms": mean * 1e3,
        "std_ms": std * 1e3, "cv": cv, "p90_ms": float(np.percentile(arr, 90)) * 1e3,
        "p95_ms": float(np.percentile(arr, 95)) * 1e3, "p99_ms": float(np.percentile(arr, 99)) * 1e3,
        "throughput_per_s": batch / median if median > 0 else float("inf"), "unstable": cv > CV_FLAG,
    }


def measure(run, cfg: dict, batch: int = 1) -> dict:
    """Warm-up (count and seconds) outside the timed loop, then at least min_iters runs and min_seconds."""
    clock = time.perf_counter_ns
    warm, start = 0, clock()
    while warm < cfg["warmup_iters"] or (clock() - start) < cfg["warmup_seconds"] * 1e9:
        run()
        warm += 1
        if (clock() - start) > cfg["max_seconds"] * 1e9 and warm >= cfg["warmup_iters"]:
            break
    samples = []
    begin = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        samples.append((t1 - t0) / 1e9)
        elapsed = (t1 - begin) / 1e9
        if len(samples) >= cfg["min_iters"] and (elapsed >= cfg["min_seconds"] or elapsed >= cfg["max_seconds"]):
            break
        if len(samples) >= cfg["max_iters"]:
            break
    return {"timer": "host perf_counter (device synchronised)", "warmup_runs": warm, "samples_s": samples,
            "stats": statistics(samples, batch)}


# --------------------------------------------------------------------------- unpacking


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_index(bundle_dir: Path) -> dict:
    path = bundle_dir / "bundle.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{bundle_dir} is not a dlcbench GPU bundle: {one_line(err, 200)}", "bad_input", EXIT_BAD_INPUT)
    if index.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"unknown bundle format {index.get('format')!r}", "bad_input", EXIT_BAD_INPUT)
    return index


def unpack(bundle_dir: Path, index: dict, workdir: Path) -> None:
    """Writes every bundle file into ``workdir`` (decompressing .xz), each checked against its SHA-256.

    Idempotent: a work directory already unpacked from the same bundle (marker file) is kept.
    """
    marker = workdir / ".unpacked"
    if marker.is_file() and marker.read_text() == index["bundle_id"]:
        return
    for entry in index["files"]:
        src, dst = bundle_dir / entry["stored"], workdir / entry["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            if entry.get("compression") == "xz":
                with lzma.open(src, "rb") as fin, open(dst, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            else:
                shutil.copyfile(src, dst)
        except (OSError, lzma.LZMAError) as err:
            raise BundleError(f"cannot unpack {entry['stored']}: {one_line(err, 200)}", "bad_input", EXIT_BAD_INPUT)
        if _sha256(dst) != entry["sha256"]:
            raise BundleError(f"{entry['stored']} is corrupt (SHA-256 mismatch)", "bad_input", EXIT_BAD_INPUT)
        if entry.get("executable"):
            dst.chmod(0o755)
    marker.write_text(index["bundle_id"])


# --------------------------------------------------------------------------- runtime


class Runtime:
    """The bundled TVM runtime, loaded once per process."""

    def __init__(self, workdir: Path, index: dict, allow_torch: bool = False):
        self.workdir, self.index = workdir, index
        self.target = index["target"]
        py_dir = workdir / "py"
        if not allow_torch:
            # tvm_ffi imports torch when it can; keep it out so the only CUDA runtime here is the bundle's.
            sys.modules.setdefault("torch", None)
        sys.path.insert(0, str(py_dir))
        try:
            import numpy  # noqa: F401
            import tvm_ffi
        except ImportError as err:
            raise BundleError(f"cannot import the bundled tvm_ffi (bundle built for Python {index['python']}, "
                              f"this is {platform.python_version()}): {one_line(err, 300)}", "unavailable", EXIT_UNAVAILABLE)
        origin = Path(tvm_ffi.__file__).resolve()
        if py_dir.resolve() not in origin.parents:
            raise BundleError(f"tvm_ffi was imported from {origin}, not from the bundle", "bad_input", EXIT_BAD_INPUT)
        self.ffi = tvm_ffi
        self.libs = {}
        if self.target == "cpu":  # the runtime's thread pool reads this when it starts
            os.environ.setdefault("TVM_NUM_THREADS", str(index.get("threads") or 1))
        self._load("libtvm_runtime.so", ctypes.RTLD_GLOBAL)
        self.cuda_error = None
        if self.target == "cuda":
            try:
                self._load("libtvm_runtime_cuda.so", ctypes.RTLD_LOCAL)
            except BundleError as err:
                self.cuda_error = str(err)
        get = tvm_ffi.get_global_func
        self._alloc = get("runtime.TVMTensorAllocWithScope")
        self._copy_from = get("runtime.TVMTensorCopyFromBytes")
        self._copy_to = get("runtime.TVMTensorCopyToBytes")
        self._sync = get("runtime.Device_StreamSync")
        self._attr = get("runtime.GetDeviceAttr", allow_missing=True)
        self._time_evaluator = get("runtime.RPCTimeEvaluator")

    def _load(self, name: str, mode: int) -> None:
        path = self.workdir / "lib" / name
        try:
            self.libs[name] = ctypes.CDLL(str(path), mode=mode)
        except OSError as err:
            raise BundleError(f"cannot load {name}: {one_line(err, 300)}", "unavailable", EXIT_UNAVAILABLE)

    def device(self, device_id: int = 0):
        if self.target != "cuda":
            return self.ffi.device("cpu", 0)
        if self.cuda_error:
            raise BundleError(self.cuda_error, "unavailable", EXIT_UNAVAILABLE)
        dev = self.ffi.device("cuda", device_id)
        if not self.attr(KDL_CUDA, device_id, ATTR_EXIST):
            raise BundleError(f"no CUDA device {device_id} here", "unavailable", EXIT_UNAVAILABLE)
        return dev

    def attr(self, dev_type: int, dev_id: int, attr_id: int):
        try:
            return self._attr(dev_type, dev_id, attr_id) if self._attr else None
        except Exception:  # an attribute the device API does not know
            return None

    def to_device(self, array, dev):
        import numpy as np

        array = np.asarray(array, order="C")  # not ascontiguousarray: it turns 0-d arrays (scalars) into 1-d
        tensor = self._alloc(self.ffi.Shape(array.shape), self.ffi.dtype(str(array.dtype)), dev, None)
        self._copy_from(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)
        return tensor

    def to_numpy(self, tensor):
        import numpy as np

        out = np.empty(tuple(tensor.shape), dtype=str(tensor.dtype))
        self._copy_to(tensor, out.ctypes.data_as(ctypes.c_void_p), out.nbytes)
        return out

    def sync(self, dev) -> None:
        self._sync(dev, 0)  # 0: the default stream

    def native_time(self, module, name: str, dev, args, repeat: int, min_repeat_ms: int) -> tuple[list[float], int]:
        """Per-run seconds from ``runtime.RPCTimeEvaluator`` (``tvm.runtime.Module.time_evaluator``)."""
        dev_type = KDL_CUDA if self.target == "cuda" else KDL_CPU
        number = 1
        feval = self._time_evaluator(module, name, dev_type, dev.index if hasattr(dev, "index") else 0,
                                     number, repeat, min_repeat_ms, 100, 0, 1, 0, "")
        blob = feval(*args)
        return list(struct.unpack("@" + "d" * repeat, bytes(blob))), number


# --------------------------------------------------------------------------- one artifact


def run_item(rt: Runtime, item: dict, args, device_id: int) -> dict:
    """Loads, checks and times one artifact; returns its result record (raises BundleError on failure)."""
    import numpy as np

    wd = rt.workdir
    dev = rt.device(device_id)
    result = {}
    if rt.target == "cuda":
        major_minor = rt.attr(KDL_CUDA, device_id, ATTR_COMPUTE_VERSION)
        gpu_arch = "sm_" + str(major_minor).replace(".", "") if major_minor else None
        result["gpu_arch"] = gpu_arch
        wanted = item["arch"].rstrip("af")
        if gpu_arch and gpu_arch != wanted:
            raise BundleError(f"artifact holds {item['arch']} device code only, this GPU is {gpu_arch}",
                              "unavailable", EXIT_UNAVAILABLE)
    t0 = time.perf_counter()
    try:
        lib = rt.ffi.load_module(str(wd / item["library"]))
        vm = lib["vm_load_executable"]()
        init = [KDL_CUDA, device_id, POOLED_ALLOCATOR] if rt.target == "cuda" else []
        vm["vm_initialization"](*init, KDL_CPU, 0, POOLED_ALLOCATOR)  # the CPU runs shape functions
        main = vm["main"]
        # Weights: one content-addressed .npy per array, in the VM's parameter order.
        params = [rt.to_device(np.load(wd / rel, allow_pickle=False), dev) for rel in item.get("params") or []]
        with np.load(wd / item["inputs"]) as data:
            inputs = {k: data[k] for k in data.files}
        with np.load(wd / item["reference"]) as data:
            reference = {k: data[k] for k in data.files}
        names = [i["name"] for i in item["input_specs"]]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise BundleError(f"inputs.npz lacks {', '.join(missing)}", "bad_input", EXIT_BAD_INPUT)
        call_args = [rt.to_device(inputs[n], dev) for n in names] + params
        rt.sync(dev)
        result["load_seconds"] = round(time.perf_counter() - t0, 4)
        out = main(*call_args)
        rt.sync(dev)
    except BundleError:
        raise
    except Exception as err:  # tvm_ffi raises RuntimeError subclasses
        raise BundleError(f"load or first run failed: {one_line(err, 500)}")
    values = [out] if isinstance(out, rt.ffi.Tensor) else list(out)
    output_names = [o["name"] for o in item["output_specs"]]
    got = {name: rt.to_numpy(v) for name, v in zip(output_names, values)}
    tol = tuple(args.tolerance or rt.index.get("tolerances", {}).get(item["precision"]) or TOLERANCES[item["precision"]])
    result["check"] = check_outputs(got, reference, tol)

    def once():
        main(*call_args)
        rt.sync(dev)

    timing = {k: getattr(args, k) for k in ("warmup_iters", "warmup_seconds", "min_iters", "min_seconds", "max_seconds", "max_iters")}
    try:
        result["host"] = measure(once, timing, item["batch"])
        samples, number = rt.native_time(vm, "main", dev, call_args, args.native_repeat, args.native_min_repeat_ms)
    except Exception as err:
        raise BundleError(f"timing failed: {one_line(err, 500)}")
    result["native"] = {"timer": f"tvm.time_evaluator({rt.target})", "number": number, "repeat": args.native_repeat,
                        "min_repeat_ms": args.native_min_repeat_ms, "samples_s": samples,
                        "stats": statistics(samples, item["batch"])}
    result["native"]["host_over_native"] = (result["host"]["stats"]["median_ms"]
                                            / max(result["native"]["stats"]["median_ms"], 1e-12))
    return result


def item_record(item: dict) -> dict:
    keys = ("id", "model", "preset", "batch", "arch", "target", "precision", "backend", "backend_version",
            "compile_seconds", "artifact_bytes", "parameters", "flops", "device_code_archs", "manifest")
    return {k: item.get(k) for k in keys}


def run_one(rt_holder: dict, workdir: Path, index: dict, item: dict, args) -> dict:
    record = item_record(item)
    try:
        if "rt" not in rt_holder:
            rt_holder["rt"] = Runtime(workdir, index, args.allow_torch)
        record.update(run_item(rt_holder["rt"], item, args, args.device_id))
        passed = record["check"]["passed"]
        record.update(status="ok" if passed else "failed", category=None if passed else "accuracy_fail",
                      message="" if passed else "; ".join(
                          f"output {o['name']}: {', '.join(o['reasons'])}" for o in record["check"]["outputs"] if not o["passed"]))
    except BundleError as err:
        record.update(status="failed", category=err.category, message=one_line(err, 1000))
    except Exception as err:  # last resort: still a record
        record.update(status="failed", category="runtime_error", message=one_line(f"{type(err).__name__}: {err}", 1000),
                      traceback=traceback.format_exc()[-2000:])
    return record


def run_isolated(workdir: Path, item: dict, args) -> dict:
    """Runs one artifact in a child process of this interpreter (same flags); crash and timeout are records."""
    flags = [f for f, on in (("-I", sys.flags.isolated), ("-E", sys.flags.ignore_environment),
                             ("-s", sys.flags.no_user_site), ("-S", sys.flags.no_site)) if on]
    with tempfile.TemporaryDirectory(prefix="dlcbench-item-") as tmp:
        out = Path(tmp) / "item.json"
        cmd = [sys.executable, *flags, str(Path(__file__).resolve()), "--bundle", str(args.bundle),
               "--workdir", str(workdir), "--_item", item["id"], "--_item-out", str(out), *args._passthrough]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.item_timeout)
        except subprocess.TimeoutExpired:
            return {**item_record(item), "status": "failed", "category": "timeout",
                    "message": f"no result after {args.item_timeout:g} s; killed"}
        if out.is_file():
            return json.loads(out.read_text())
        tail = one_line((proc.stderr or proc.stdout or "")[-600:], 600)
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        return {**item_record(item), "status": "failed", "category": "crash",
                "message": f"child process ended with {how} and no result. {tail}".strip()}


# --------------------------------------------------------------------------- environment


def _nvidia_smi() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    fields = ("name", "driver_version", "memory.total", "compute_cap", "clocks.max.sm", "clocks.max.mem", "pstate")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    keys = ("name", "driver", "memory", "compute_cap", "max_sm_clock", "max_mem_clock", "pstate")
    return [dict(zip(keys, (p.strip() for p in line.split(",")))) for line in out.splitlines() if line.strip()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def environment(rt: Runtime | None, index: dict, device_id: int) -> dict:
    """The environment record: the same keys as dlcbench's dlcbench/results/env.py where they apply, plus CUDA details."""
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    record = {
        "hostname": socket.gethostname(), "cpu": {"model": _cpu_model(), "flags": []}, "cores": os.cpu_count(),
        "memory_gb": _memory_gb(), "gpus": _nvidia_smi(), "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": {"numpy": numpy_version, "apache-tvm-ffi": getattr(rt.ffi, "__version__", None) if rt else None,
                     "apache-tvm (runtime)": index.get("tvm_version")},
        "git_revision": index.get("git_revision"), "collected": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": "dlcbench gpu bundle runner",
    }
    if rt is not None and index["target"] == "cuda" and not rt.cuda_error:
        attr = lambda i: rt.attr(KDL_CUDA, device_id, i)  # noqa: E731
        exists = attr(ATTR_EXIST)
        record["cuda"] = {
            "device_exists": bool(exists), "device_name": attr(ATTR_DEVICE_NAME) if exists else None,
            "compute_version": attr(ATTR_COMPUTE_VERSION) if exists else None,
            "multiprocessors": attr(ATTR_SM_COUNT) if exists else None,
            "runtime_version": attr(ATTR_API_VERSION) if exists else None,
            "driver_version": attr(ATTR_DRIVER_VERSION) if exists else None,
            "total_memory_bytes": attr(ATTR_TOTAL_MEMORY) if exists else None,
        }
        if not record["gpus"] and exists:
            record["gpus"] = [{"name": record["cuda"]["device_name"], "driver": None, "memory": None,
                               "compute_cap": record["cuda"]["compute_version"]}]
    elif rt is not None and rt.cuda_error:
        record["cuda"] = {"error": rt.cuda_error}
    return record


# --------------------------------------------------------------------------- modes


def self_check(bundle_dir: Path, workdir: Path, index: dict, args) -> dict:
    """Unpacks, imports the bundled tvm_ffi, loads the runtime, round-trips a tensor; no artifact is run."""
    import numpy as np

    rt = Runtime(workdir, index, args.allow_torch)
    cpu = rt.ffi.device("cpu", 0)
    probe = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = rt.to_numpy(rt.to_device(probe, cpu))
    needed = ["runtime.RPCTimeEvaluator", "runtime.TVMTensorAllocWithScope", "runtime.Device_StreamSync",
              "ffi.Module.load_from_bytes.relax.VMExecutable"]
    missing = [n for n in needed if rt.ffi.get_global_func(n, allow_missing=True) is None]
    checks = {
        "tvm_ffi_from_bundle": True, "tvm_ffi_file": rt.ffi.__file__,
        "runtime_loaded": "libtvm_runtime.so" in rt.libs, "tensor_round_trip": bool(np.array_equal(back, probe)),
        "missing_functions": missing, "artifacts": [i["id"] for i in index["items"]],
        "forbidden_modules": sorted(m for m in ("dlcbench", "tvm", "compilers", "runner") if m in sys.modules),
    }
    if index["target"] == "cuda":
        checks["cuda_runtime"] = "loaded" if not rt.cuda_error else f"not loaded: {rt.cuda_error}"
        if not rt.cuda_error:
            checks["cuda_module_loader"] = rt.ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None
    ok = checks["runtime_loaded"] and checks["tensor_round_trip"] and not missing and not checks["forbidden_modules"]
    return {"passed": ok, "checks": checks, "environment": environment(rt, index, args.device_id)}


def select_items(index: dict, args) -> list[dict]:
    items = index["items"]
    if args.models:
        wanted = {m.strip() for m in args.models.split(",") if m.strip()}
        unknown = wanted - {i["model"] for i in items} - {i["id"] for i in items}
        if unknown:
            raise BundleError(f"not in this bundle: {', '.join(sorted(unknown))}; it has "
                              f"{', '.join(sorted({i['model'] for i in items}))}", "bad_input", EXIT_BAD_INPUT)
        items = [i for i in items if i["model"] in wanted or i["id"] in wanted]
    if args.batches:
        try:
            batches = {int(b) for b in args.batches.split(",") if b.strip()}
        except ValueError:
            raise BundleError(f"--batches must be integers, got {args.batches!r}", "bad_input", EXIT_BAD_INPUT)
        items = [i for i in items if i["batch"] in batches]
    return items


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":"), default=str))  # compact: raw samples can be many
    os.replace(tmp, path)


def summary_line(r: dict) -> str:
    label = f"{r['model']}:{r.get('preset')} b{r['batch']}"
    if r.get("host"):
        h, n, c = r["host"]["stats"], (r.get("native") or {}).get("stats", {}), r["check"]
        verdict = "PASS" if c["passed"] else "FAIL"
        return (f"{label:<24} {verdict} max_abs {c['max_abs']:.2g} cos {c['cosine']:.6f} | host median "
                f"{h['median_ms']:.4f} p90 {h['p90_ms']:.4f} p99 {h['p99_ms']:.4f} ms (n={h['count']}) | native "
                f"{n.get('median_ms', float('nan')):.4f} ms")
    return f"{label:<24} {r['category'].upper()}: {one_line(r.get('message', ''), 300)}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run, check and time the artifacts of a dlcbench GPU bundle.")
    p.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help="bundle directory (default: here)")
    p.add_argument("--out", type=Path, default=Path("gpu_results.json"), help="results JSON (default: gpu_results.json)")
    p.add_argument("--workdir", type=Path, default=None, help="where to unpack (default: a temporary directory)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work directory")
    p.add_argument("--self-check", action="store_true", help="unpack, load the runtime, round-trip a tensor; exit")
    p.add_argument("--models", default=None, help="comma-separated models or item ids (default: all)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: all)")
    p.add_argument("--device-id", type=int, default=0)
    p.add_argument("--no-isolate", dest="isolate", action="store_false", help="run every artifact in this process")
    p.add_argument("--item-timeout", type=float, default=300.0, help="seconds per artifact when isolated")
    p.add_argument("--max-total-seconds", type=float, default=None,
                   help="start no artifact after this many seconds (the rest are recorded as not run)")
    p.add_argument("--allow-torch", action="store_true", help="let tvm_ffi import torch (off: torch kept out)")
    p.add_argument("--tolerance", type=float, nargs=3, metavar=("ABS", "REL", "COSINE"), default=None)
    p.add_argument("--warmup-iters", type=int, default=10)
    p.add_argument("--warmup-seconds", type=float, default=0.2)
    p.add_argument("--min-iters", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--max-iters", type=int, default=100_000)
    p.add_argument("--native-repeat", type=int, default=30, help="time_evaluator repeats (default: 30)")
    p.add_argument("--native-min-repeat-ms", type=int, default=10, help="time_evaluator min_repeat_ms (default: 10)")
    p.add_argument("--_item", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_item-out", type=Path, default=None, help=argparse.SUPPRESS)
    return p


_PASSTHROUGH = ("device_id", "tolerance", "warmup_iters", "warmup_seconds", "min_iters", "min_seconds", "max_seconds",
                "max_iters", "native_repeat", "native_min_repeat_ms")


def _passthrough(args) -> list[str]:
    out = []
    for key in _PASSTHROUGH:
        value = getattr(args, key)
        if value is None:
            continue
        out += [f"--{key.replace('_', '-')}", *(str(v) for v in (value if isinstance(value, list) else [value]))]
    if args.allow_torch:
        out.append("--allow-torch")
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args._passthrough = _passthrough(args)
    bundle_dir = args.bundle.resolve()
    index = read_index(bundle_dir)
    if args._item:  # child process: one artifact, workdir already unpacked
        item = next((i for i in index["items"] if i["id"] == args._item), None)
        if item is None:
            raise BundleError(f"no item {args._item!r}", "bad_input", EXIT_BAD_INPUT)
        _write_json(args._item_out, run_one({}, args.workdir, index, item, args))
        return EXIT_OK
    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dlcbench-bundle-")) if temp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        unpack(bundle_dir, index, workdir)
        unpack_s = round(time.perf_counter() - t0, 3)
        if args.self_check:
            report = {"format": FORMAT, "mode": "self-check", "bundle": _bundle_info(index), "unpack_seconds": unpack_s,
                      **self_check(bundle_dir, workdir, index, args)}
            _write_json(args.out, report)
            print(f"self-check {'PASS' if report['passed'] else 'FAIL'}: " + json.dumps(report["checks"], default=str))
            return EXIT_OK if report["passed"] else EXIT_BACKEND_ERROR
        return run_all(bundle_dir, workdir, index, args, unpack_s)
    finally:
        if temp and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _bundle_info(index: dict) -> dict:
    keys = ("bundle_id", "created", "arch", "target", "python", "dlcbench_version", "tvm_version", "tvm_ffi_version",
            "git_revision", "size_bytes", "limit_bytes", "skipped")
    return {k: index.get(k) for k in keys}


def run_all(bundle_dir: Path, workdir: Path, index: dict, args, unpack_s: float) -> int:
    items = select_items(index, args)
    holder: dict = {}
    env_rt = None
    try:
        env_rt = Runtime(workdir, index, args.allow_torch)  # for the environment record (and in-process runs)
        holder["rt"] = env_rt
    except BundleError as err:
        print(f"runtime: {err}", file=sys.stderr)
    report = {
        "format": FORMAT, "mode": "run", "bundle": _bundle_info(index), "unpack_seconds": unpack_s,
        "environment": environment(env_rt, index, args.device_id),
        "timing_config": {k: getattr(args, k) for k in _PASSTHROUGH if k not in ("device_id", "tolerance")},
        "isolated": args.isolate, "results": [],
    }
    env = report["environment"]
    gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in env.get("gpus", [])) or "none"
    print(f"bundle {index['bundle_id']} ({index['target']}, {index['arch']}); {len(items)} artifact(s); GPUs: {gpus}; "
          f"CUDA runtime {env.get('cuda', {}).get('runtime_version')}", flush=True)
    _write_json(args.out, report)
    started = time.monotonic()
    for item in items:
        if args.max_total_seconds and time.monotonic() - started > args.max_total_seconds:
            record = {**item_record(item), "status": "failed", "category": "timeout",
                      "message": f"not run: --max-total-seconds {args.max_total_seconds:g} reached"}
        elif args.isolate:
            record = run_isolated(workdir, item, args)
        else:
            record = run_one(holder, workdir, index, item, args)
        report["results"].append(record)
        _write_json(args.out, report)
        print(summary_line(record), flush=True)
    categories = {r["category"] for r in report["results"] if r["status"] != "ok"}
    report["summary"] = {"total": len(items), "passed": sum(r["status"] == "ok" for r in report["results"]),
                         "failed_categories": sorted(c for c in categories if c)}
    _write_json(args.out, report)
    print(f"{report['summary']['passed']}/{len(items)} passed; results: {args.out}")
    if not categories:
        return EXIT_OK
    for category, code in (("crash", EXIT_TIMEOUT), ("timeout", EXIT_TIMEOUT), ("runtime_error", EXIT_BACKEND_ERROR),
                           ("unavailable", EXIT_UNAVAILABLE), ("bad_input", EXIT_BAD_INPUT)):
        if category in categories:
            return code
    return EXIT_CHECK_FAILED


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BundleError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(error.code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
