#!/usr/bin/env python3
"""Standalone runner of a dlcbench bundle: unpack, load, check against the reference, time, write JSON.

This file is copied into every bundle as ``run.py`` by ``dlcbench/stage/bundle.py``. It runs where dlcbench and
TVM are not installed: it needs only the Python standard library, numpy, and what the bundle carries: the
``tvm_ffi`` package for this Python, ``libtvm_runtime.so`` and, for CUDA, ``libtvm_runtime_cuda.so`` and
``libcudart``, and dlcbench's own measuring modules, unmodified, under ``py/dlcbench`` (``errors``,
``jsonio``, ``measure.check``, ``measure.timing``, ``orchestrate.launcher``). Those are imported from the
bundle, never from an installed dlcbench, so the verdicts, metrics and timing statistics are the ones a CPU
job computes. It never imports ``tvm``.

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
against the bundled reference (:func:`dlcbench.measure.check.check_outputs`), then it is timed with the host
clock (:func:`dlcbench.measure.timing.measure`, the device synchronised after each run) and with TVM's own
timer (``runtime.RPCTimeEvaluator``, what ``time_evaluator`` calls: CUDA events on a GPU).

Each artifact runs in its own worker process (:mod:`dlcbench.orchestrate.launcher`; ``--no-isolate`` to run
in this one), so a crash or hang is recorded with its category (``crash``, ``timeout``), the worker's whole
process group is ended, and the others still run; the JSON file is rewritten after every artifact, so a run
cut short keeps what it measured. Each result record has a CPU job's keys (``check``, ``timing``,
``native_timing``, ``passed``, ``failure_message``; see :class:`dlcbench.measure.job.JobResult`).

Exit codes (dlcbench's): 0 all passed, 1 an output check failed, 2 bad usage or bundle, 3 no usable device
or runtime here, 4 an artifact failed to load or run, 7 an artifact crashed or timed out.
"""

from __future__ import annotations

import argparse
import ctypes
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

#: The bundle's copy of dlcbench (stored uncompressed, so importable before unpacking); first on the path, so
#: an installed dlcbench is never the one used.
BUNDLE_PY = Path(__file__).resolve().parent / "py"
if (BUNDLE_PY / "dlcbench").is_dir():
    sys.path.insert(0, str(BUNDLE_PY))

try:
    import numpy as np

    import dlcbench
    from dlcbench import jsonio
    from dlcbench.files import sha256_file
    from dlcbench.errors import (BackendRuntimeError, BackendUnavailableError, BadInputError, DlcbenchError, ExitCode,
                                 one_line, run_cli)
    from dlcbench.measure.check import check_outputs, parse_tolerance_overrides
    from dlcbench.measure.timing import TimingConfig, measure, statistics
    from dlcbench.orchestrate import launcher
    from dlcbench.results import env as host_env
except ImportError as missing:
    needs_numpy = (missing.name or "").startswith("numpy")
    print(f"error: run.py cannot import {missing.name or missing}: it needs numpy and the bundle's own "
          f"{BUNDLE_PY / 'dlcbench'} ({' '.join(str(missing).split())})", file=sys.stderr)
    sys.exit(3 if needs_numpy else 2)  # ExitCode.UNAVAILABLE, ExitCode.BAD_INPUT

FORMAT = "dlcbench-gpu-results/2"
BUNDLE_FORMAT = "dlcbench-gpu-bundle/1"

# DLPack device types and TVM device attribute ids (tvm/runtime/device.py).
KDL_CPU, KDL_CUDA = 1, 2
ATTR_EXIST, ATTR_COMPUTE_VERSION, ATTR_DEVICE_NAME, ATTR_SM_COUNT = 0, 4, 5, 7
ATTR_API_VERSION, ATTR_DRIVER_VERSION, ATTR_TOTAL_MEMORY = 11, 12, 14
POOLED_ALLOCATOR = 2


# --------------------------------------------------------------------------- unpacking


def read_index(bundle_dir: Path) -> dict:
    """The ``bundle.json`` of a bundle directory.

    Raises:
        BadInputError: not a bundle, or a format this dlcbench does not know.
    """
    path = bundle_dir / "bundle.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BadInputError(f"{bundle_dir} is not a dlcbench GPU bundle: {one_line(err, 200)}") from None
    if index.get("format") != BUNDLE_FORMAT:
        raise BadInputError(f"{bundle_dir}: unknown bundle format {index.get('format')!r}")
    return index


def unpack(bundle_dir: Path, index: dict, workdir: Path) -> None:
    """Writes every bundle file into ``workdir`` (decompressing .xz), each checked against its SHA-256.

    Idempotent: a work directory already unpacked from the same bundle (marker file) is kept.
    """
    marker = workdir / ".unpacked"
    if marker.is_file() and marker.read_text() == index["bundle_id"]:
        return
    if not marker.is_file() and any(workdir.iterdir()):
        raise BadInputError(f"work directory {workdir} is not empty and was not unpacked by a bundle: "
                            "give an empty or new --workdir")
    for entry in index["files"]:
        for key in ("path", "stored"):
            rel = Path(entry[key])
            if rel.is_absolute() or ".." in rel.parts:
                raise BadInputError(f"bundle index entry {entry[key]!r} points outside the bundle; refusing it")
        src, dst = bundle_dir / entry["stored"], workdir / entry["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            if entry.get("compression") == "xz":
                with lzma.open(src, "rb") as fin, open(dst, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            else:
                shutil.copyfile(src, dst)
        except (OSError, lzma.LZMAError) as err:
            raise BadInputError(f"cannot unpack {entry['stored']}: {one_line(err, 200)}") from None
        if sha256_file(dst) != entry["sha256"]:
            raise BadInputError(f"{entry['stored']} is corrupt (SHA-256 mismatch)")
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
            import tvm_ffi
        except ImportError as err:
            raise BackendUnavailableError(f"cannot import the bundled tvm_ffi (bundle built for Python {index['python']}, "
                                          f"this is {platform.python_version()}): {one_line(err, 300)}") from None
        origin = Path(tvm_ffi.__file__).resolve()
        if py_dir.resolve() not in origin.parents:
            raise BadInputError(f"tvm_ffi was imported from {origin}, not from the bundle")
        self.ffi = tvm_ffi
        self.libs = {}
        if self.target == "cpu":  # the runtime's thread pool reads this when it starts
            os.environ.setdefault("TVM_NUM_THREADS", str(index.get("threads") or 1))
        self._load("libtvm_runtime.so", ctypes.RTLD_GLOBAL)
        self.cuda_error = None
        if self.target == "cuda":
            try:
                self._load("libtvm_runtime_cuda.so", ctypes.RTLD_LOCAL)
            except BackendUnavailableError as err:
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
            raise BackendUnavailableError(f"cannot load {name}: {one_line(err, 300)}") from None

    def device(self, device_id: int = 0):
        if self.target != "cuda":
            return self.ffi.device("cpu", 0)
        if self.cuda_error:
            raise BackendUnavailableError(self.cuda_error)
        dev = self.ffi.device("cuda", device_id)
        if not self.attr(KDL_CUDA, device_id, ATTR_EXIST):
            raise BackendUnavailableError(f"no CUDA device {device_id} here")
        return dev

    def attr(self, dev_type: int, dev_id: int, attr_id: int):
        try:
            return self._attr(dev_type, dev_id, attr_id) if self._attr else None
        except Exception:  # an attribute the device API does not know
            return None

    def to_device(self, array, dev):
        array = np.asarray(array, order="C")  # not ascontiguousarray: it turns 0-d arrays (scalars) into 1-d
        tensor = self._alloc(self.ffi.Shape(array.shape), self.ffi.dtype(str(array.dtype)), dev, None)
        self._copy_from(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)
        return tensor

    def to_numpy(self, tensor):
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
    """Loads, checks and times one artifact; returns the fields of its result record.

    The check is :func:`dlcbench.measure.check.check_outputs` (the bundle's precision and task, ``--tolerance``
    overrides), the host timing :func:`dlcbench.measure.timing.measure`: the keys of a CPU job's ``result.json``.

    Raises:
        BackendUnavailableError: no usable device (or not the artifact's arch) here.
        BackendRuntimeError: loading, the first run or the timing failed.
    """
    wd = rt.workdir
    dev = rt.device(device_id)
    result = {}
    if rt.target == "cuda":
        major_minor = rt.attr(KDL_CUDA, device_id, ATTR_COMPUTE_VERSION)
        gpu_arch = "sm_" + str(major_minor).replace(".", "") if major_minor else None
        result["gpu_arch"] = gpu_arch
        wanted = item["arch"].rstrip("af")
        if gpu_arch and gpu_arch != wanted:
            raise BackendUnavailableError(f"artifact holds {item['arch']} device code only, this GPU is {gpu_arch}")
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
            raise BadInputError(f"inputs.npz lacks {', '.join(missing)}")
        call_args = [rt.to_device(inputs[n], dev) for n in names] + params
        rt.sync(dev)
        result["load_seconds"] = round(time.perf_counter() - t0, 4)
        out = main(*call_args)
        rt.sync(dev)
    except DlcbenchError:
        raise
    except Exception as err:  # tvm_ffi raises RuntimeError subclasses
        raise BackendRuntimeError(f"load or first run failed: {one_line(err, 500)}") from None
    values = [out] if isinstance(out, rt.ffi.Tensor) else list(out)
    output_names = [o["name"] for o in item["output_specs"]]
    got = {name: rt.to_numpy(v) for name, v in zip(output_names, values)}
    report = check_outputs(got, reference, item["precision"], args.overrides, classifier=item.get("task") == "classifier",
                           inputs=inputs)
    result.update(check=report.to_dict(), passed=report.passed, trivial_check=report.trivial_check,
                  failure_message="" if report.passed else one_line(report.failure_message(), 2000),
                  timing_end_to_end=None,  # the runner times the resident region only
                  accuracy=None, failure_category="")  # no labelled data travels in a bundle

    def once():
        main(*call_args)
        rt.sync(dev)

    try:
        timing = measure(once, args.timing, item["batch"])
        samples, number = rt.native_time(vm, "main", dev, call_args, args.native_repeat, args.native_min_repeat_ms)
    except Exception as err:
        raise BackendRuntimeError(f"timing failed: {one_line(err, 500)}") from None
    # The resident region (dlcbench.compilers.base.REGIONS): inputs and weights staged on the device once,
    # outputs left there; end to end is not timed here.
    result["timing"] = {"timer": "host perf_counter (device synchronised)", **timing.to_dict(), "region": "resident"}
    result["timing_end_to_end"] = None
    native = {"timer": f"tvm.time_evaluator({rt.target})", "number": number, "repeat": args.native_repeat,
              "min_repeat_ms": args.native_min_repeat_ms, "samples_s": samples, "stats": statistics(samples, item["batch"])}
    native["host_over_native"] = timing.stats["median_ms"] / max(native["stats"]["median_ms"], 1e-12)
    result["native_timing"] = native
    return result


def item_record(item: dict) -> dict:
    """What the bundle index says about an artifact, the start of its result record."""
    keys = ("id", "model", "preset", "batch", "arch", "target", "precision", "task", "backend", "backend_version",
            "compile_seconds", "artifact_bytes", "parameters", "flops", "device_code_archs", "manifest")
    return {k: item.get(k) for k in keys}


def failed_record(item: dict, category: str, message: str) -> dict:
    """The record of an artifact that produced no result."""
    return {**item_record(item), "status": "failed", "category": category, "message": one_line(message, 1000)}


def run_one(rt_holder: dict, workdir: Path, index: dict, item: dict, args) -> dict:
    """One artifact in this process; every failure becomes the record's status, category and message."""
    record = item_record(item)
    try:
        if "rt" not in rt_holder:
            rt_holder["rt"] = Runtime(workdir, index, args.allow_torch)
        record.update(run_item(rt_holder["rt"], item, args, args.device_id))
        passed = record["passed"]
        category = None if passed else ((record.get("check") or {}).get("category") or "accuracy_fail")
        record.update(status="ok" if passed else "failed", category=category, message=record["failure_message"])
    except DlcbenchError as err:
        record.update(status="failed", category=err.category, message=one_line(err, 1000))
    except Exception as err:  # last resort: still a record
        record.update(status="failed", category="runtime_error", message=one_line(f"{type(err).__name__}: {err}", 1000),
                      traceback=traceback.format_exc()[-2000:])
    return record


def run_isolated(workdir: Path, item: dict, args) -> dict:
    """Runs one artifact in a worker process (this interpreter, same flags); a crash or timeout is a record.

    The worker is :func:`dlcbench.orchestrate.launcher.start_worker`'s: its own process group, ended whole
    when it is done, times out, or this process is interrupted or killed.
    """
    flags = [f for f, on in (("-I", sys.flags.isolated), ("-E", sys.flags.ignore_environment),
                             ("-s", sys.flags.no_user_site), ("-S", sys.flags.no_site)) if on]
    with launcher.owned_temp_dir("dlcbench-item-") as tmp:
        out = tmp / "item.json"
        argv = [*flags, str(Path(__file__).resolve()), "--bundle", str(args.bundle), "--workdir", str(workdir),
                "--_item", item["id"], "--_item-out", str(out), *args._passthrough]
        proc = launcher.start_worker(argv, env={"TMPDIR": str(tmp)}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
        ended, output = launcher.wait_worker(proc, args.item_timeout)
        if ended.status == "timeout":
            return failed_record(item, "timeout", f"no result after {args.item_timeout:g} s; killed")
        if out.is_file():
            return json.loads(out.read_text())
        tail = one_line(output[-600:], 600) if output else ""
        no_result = "" if ended.status == "crash" else " and no result"
        return failed_record(item, "crash", f"worker {ended.message}{no_result}. {tail}".strip())


# --------------------------------------------------------------------------- environment


def environment(rt: Runtime | None, index: dict, device_id: int) -> dict:
    """The environment record: the same keys as dlcbench's dlcbench/results/env.py where they apply, plus CUDA details."""
    record = {
        "hostname": socket.gethostname(), "cpu": host_env.cpu_info(), "cores": os.cpu_count(),
        "memory_gb": host_env.memory_gb(), "gpus": host_env.gpus(), "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": {"numpy": np.__version__, "apache-tvm-ffi": getattr(rt.ffi, "__version__", None) if rt else None,
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


def dlcbench_modules() -> dict[str, str]:
    """The dlcbench modules loaded in this process and their files."""
    return {name: str(getattr(mod, "__file__", None)) for name, mod in sorted(sys.modules.items())
            if mod is not None and (name == "dlcbench" or name.startswith("dlcbench."))}


def self_check(bundle_dir: Path, workdir: Path, index: dict, args) -> dict:
    """Unpacks, imports the bundled tvm_ffi, loads the runtime, round-trips a tensor; no artifact is run."""
    rt = Runtime(workdir, index, args.allow_torch)
    cpu = rt.ffi.device("cpu", 0)
    probe = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = rt.to_numpy(rt.to_device(probe, cpu))
    needed = ["runtime.RPCTimeEvaluator", "runtime.TVMTensorAllocWithScope", "runtime.Device_StreamSync",
              "ffi.Module.load_from_bytes.relax.VMExecutable"]
    missing = [n for n in needed if rt.ffi.get_global_func(n, allow_missing=True) is None]
    modules = dlcbench_modules()
    checks = {
        "tvm_ffi_from_bundle": True, "tvm_ffi_file": rt.ffi.__file__,
        "dlcbench_from_bundle": all(Path(f).resolve().is_relative_to(BUNDLE_PY) for f in modules.values()),
        "dlcbench_modules": modules,
        "runtime_loaded": "libtvm_runtime.so" in rt.libs, "tensor_round_trip": bool(np.array_equal(back, probe)),
        "missing_functions": missing, "artifacts": [i["id"] for i in index["items"]],
        "forbidden_modules": sorted(m for m in ("tvm", "compilers", "runner") if m in sys.modules),
    }
    if index["target"] == "cuda":
        checks["cuda_runtime"] = "loaded" if not rt.cuda_error else f"not loaded: {rt.cuda_error}"
        if not rt.cuda_error:
            checks["cuda_module_loader"] = rt.ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None
    ok = (checks["runtime_loaded"] and checks["tensor_round_trip"] and not missing and not checks["forbidden_modules"]
          and checks["dlcbench_from_bundle"])
    return {"passed": ok, "checks": checks, "environment": environment(rt, index, args.device_id)}


def select_items(index: dict, args) -> list[dict]:
    """The index's items that ``--models`` and ``--batches`` select."""
    items = index["items"]
    if args.models:
        wanted = {m.strip() for m in args.models.split(",") if m.strip()}
        unknown = wanted - {i["model"] for i in items} - {i["id"] for i in items}
        if unknown:
            raise BadInputError(f"not in this bundle: {', '.join(sorted(unknown))}; it has "
                                f"{', '.join(sorted({i['model'] for i in items}))}")
        items = [i for i in items if i["model"] in wanted or i["id"] in wanted]
    if args.batches:
        try:
            batches = {int(b) for b in args.batches.split(",") if b.strip()}
        except ValueError:
            raise BadInputError(f"--batches must be integers, got {args.batches!r}") from None
        items = [i for i in items if i["batch"] in batches]
    return items


def check_results_file(path: Path, bundle_id: str) -> None:
    """Refuses an existing ``--out`` unless it is results of this bundle (a rerun replaces its own results).

    Raises:
        BadInputError: ``path`` is a directory, or a file this bundle did not write.
    """
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and str(data.get("format", "")).startswith("dlcbench-gpu-results")
            and (data.get("bundle") or {}).get("bundle_id") == bundle_id):
        raise BadInputError(f"{path} exists and is not this bundle's results; give another --out")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(jsonio.dumps(data, separators=(",", ":"), default=str))  # compact: raw samples can be many
    os.replace(tmp, path)


def summary_line(r: dict) -> str:
    """One console line per artifact: verdict, worst error, host and native latency; or the failure."""
    label = f"{r['model']}:{r.get('preset')} b{r['batch']}"
    if r.get("timing"):
        h, n = r["timing"]["stats"], (r.get("native_timing") or {}).get("stats", {})
        metrics = [o.get("metrics") or {} for o in r["check"]["outputs"]]
        max_abs = max((m.get("max_abs", 0.0) for m in metrics), default=0.0)
        cosine = min((m.get("cosine", 1.0) for m in metrics), default=1.0)
        return (f"{label:<24} {'PASS' if r['passed'] else 'FAIL'} max_abs {max_abs:.2g} cos {cosine:.6f} | host median "
                f"{h['median_ms']:.4f} p90 {h['p90_ms']:.4f} p99 {h['p99_ms']:.4f} ms (n={h['count']}) | native "
                f"{n.get('median_ms', float('nan')):.4f} ms")
    return f"{label:<24} {r['category'].upper()}: {one_line(r.get('message', ''), 300)}"


def build_parser() -> argparse.ArgumentParser:
    """run.py's options; the timing defaults are :class:`dlcbench.measure.timing.TimingConfig`'s."""
    t = TimingConfig()
    p = argparse.ArgumentParser(description="Run, check and time the artifacts of a dlcbench bundle.",
                                epilog=ExitCode.help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help="bundle directory (default: here)")
    p.add_argument("--out", type=Path, default=Path("gpu_results.json"), help="results JSON (default: gpu_results.json)")
    p.add_argument("--workdir", type=Path, default=None, help="where to unpack (default: a temporary directory)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work directory")
    p.add_argument("--self-check", action="store_true", help="unpack, load the runtime, round-trip a tensor; exit")
    p.add_argument("--models", default=None, help="comma-separated models or item ids (default: all)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: all)")
    p.add_argument("--device-id", type=int, default=0)
    p.add_argument("--no-isolate", dest="isolate", action="store_false", help="run every artifact in this process")
    p.add_argument("--item-timeout", type=float, default=300.0,
                   help="seconds per artifact when isolated; then it is killed and recorded as a timeout (default: 300)")
    p.add_argument("--max-total-seconds", type=float, default=None,
                   help="start no artifact after this many seconds (the rest are recorded as not run)")
    p.add_argument("--allow-torch", action="store_true", help="let tvm_ffi import torch (off: torch kept out)")
    p.add_argument("--tolerance", action="append", metavar="[OUT:]abs=X,rel=Y,cosine=Z",
                   help="override the precision's tolerances, of every output or of output OUT (as dlcbench compile)")
    p.add_argument("--warmup-iters", type=int, default=t.warmup_iters, help=f"minimum warm-up runs (default: {t.warmup_iters})")
    p.add_argument("--warmup-seconds", type=float, default=t.warmup_seconds,
                   help=f"minimum warm-up seconds (default: {t.warmup_seconds:g})")
    p.add_argument("--min-iters", type=int, default=t.min_iters, help=f"minimum timed runs (default: {t.min_iters})")
    p.add_argument("--min-seconds", type=float, default=t.min_seconds, help=f"minimum timed seconds (default: {t.min_seconds:g})")
    p.add_argument("--max-seconds", type=float, default=t.max_seconds, help=f"timing cap in seconds (default: {t.max_seconds:g})")
    p.add_argument("--max-iters", type=int, default=t.max_iters, help=f"timed runs cap (default: {t.max_iters})")
    p.add_argument("--ci-target", type=float, default=t.ci_target,
                   help=f"time until the median's 95%% interval is within +-this fraction (default: {t.ci_target:g}; "
                        "0: stop at the minimums)")
    p.add_argument("--native-repeat", type=int, default=30, help="time_evaluator repeats (default: 30)")
    p.add_argument("--native-min-repeat-ms", type=int, default=10, help="time_evaluator min_repeat_ms (default: 10)")
    p.add_argument("--_item", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_item-out", type=Path, default=None, help=argparse.SUPPRESS)
    return p


_TIMING = ("warmup_iters", "warmup_seconds", "min_iters", "min_seconds", "max_seconds", "max_iters", "ci_target")
_PASSTHROUGH = ("device_id", *_TIMING, "native_repeat", "native_min_repeat_ms")


def _passthrough(args) -> list[str]:
    """The options a worker process gets from this one."""
    out = []
    for key in _PASSTHROUGH:
        out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for spec in args.tolerance or []:
        out += ["--tolerance", spec]
    if args.allow_torch:
        out.append("--allow-torch")
    return out


def main(argv=None) -> int:
    """Runs (or self-checks) the bundle; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    args._passthrough = _passthrough(args)
    args.timing = TimingConfig(**{k: getattr(args, k) for k in _TIMING})  # BadInputError for bad values
    args.overrides = parse_tolerance_overrides(args.tolerance)
    if BUNDLE_PY.is_dir() and not Path(dlcbench.__file__).resolve().is_relative_to(BUNDLE_PY):
        raise BadInputError(f"dlcbench was imported from {dlcbench.__file__}, not from the bundle's {BUNDLE_PY}")
    bundle_dir = args.bundle.resolve()
    index = read_index(bundle_dir)
    if args._item:  # worker process: one artifact, workdir already unpacked
        launcher.become_worker()
        item = next((i for i in index["items"] if i["id"] == args._item), None)
        if item is None:
            raise BadInputError(f"no item {args._item!r}")
        _write_json(args._item_out, run_one({}, args.workdir, index, item, args))
        return ExitCode.OK
    check_results_file(args.out, index["bundle_id"])
    owned = args.workdir is None and not args.keep_workdir  # removed afterwards, by the janitor if we are killed
    if args.workdir is not None:
        workdir = args.workdir.resolve()
    else:
        workdir = launcher.owned_mkdtemp("dlcbench-bundle-") if owned else Path(tempfile.mkdtemp(prefix="dlcbench-bundle-"))
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
            return ExitCode.OK if report["passed"] else ExitCode.BACKEND_ERROR
        return run_all(bundle_dir, workdir, index, args, unpack_s)
    finally:
        if owned:
            launcher.remove_owned(workdir)
        elif args.keep_workdir:
            print(f"work directory kept: {workdir}", file=sys.stderr)


def _bundle_info(index: dict) -> dict:
    keys = ("bundle_id", "created", "arch", "target", "python", "dlcbench_version", "tvm_version", "tvm_ffi_version",
            "git_revision", "size_bytes", "limit_bytes", "skipped")
    return {k: index.get(k) for k in keys}


#: The exit code of a run with failures: the first of these categories found, else CHECK_FAILED.
_EXIT_BY_CATEGORY = (("crash", ExitCode.JOB_DIED), ("timeout", ExitCode.JOB_DIED),
                     ("runtime_error", ExitCode.BACKEND_ERROR), ("unavailable", ExitCode.UNAVAILABLE),
                     ("bad_input", ExitCode.BAD_INPUT))


def run_all(bundle_dir: Path, workdir: Path, index: dict, args, unpack_s: float) -> int:
    """Checks and times every selected artifact, rewriting the results JSON after each; returns the exit code."""
    items = select_items(index, args)
    holder: dict = {}
    env_rt = None
    try:
        env_rt = Runtime(workdir, index, args.allow_torch)  # for the environment record (and in-process runs)
        holder["rt"] = env_rt
    except DlcbenchError as err:
        print(f"runtime: {err}", file=sys.stderr)
    report = {
        "format": FORMAT, "mode": "run", "bundle": _bundle_info(index), "unpack_seconds": unpack_s,
        "environment": environment(env_rt, index, args.device_id),
        "timing_config": {k: getattr(args, k) for k in _PASSTHROUGH if k != "device_id"},
        "tolerance_overrides": args.overrides, "isolated": args.isolate, "dlcbench_modules": dlcbench_modules(),
        "results": [],
    }
    env = report["environment"]
    gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in env.get("gpus", [])) or "none"
    print(f"bundle {index['bundle_id']} ({index['target']}, {index['arch']}); {len(items)} artifact(s); GPUs: {gpus}; "
          f"CUDA runtime {env.get('cuda', {}).get('runtime_version')}", flush=True)
    _write_json(args.out, report)
    started = time.monotonic()
    for item in items:
        if args.max_total_seconds and time.monotonic() - started > args.max_total_seconds:
            record = failed_record(item, "timeout", f"not run: --max-total-seconds {args.max_total_seconds:g} reached")
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
        return ExitCode.OK
    return next((code for category, code in _EXIT_BY_CATEGORY if category in categories), ExitCode.CHECK_FAILED)


if __name__ == "__main__":
    run_cli(main)
