"""Runs a stage (:mod:`dlcbench.stage.build`) on the machine it was built for: every job checked and timed by
dlcbench's own job code, results to one JSON file.

A stage's ``run.py`` puts the stage's ``py/`` first on ``sys.path`` and calls :func:`main`, so this module and
everything it runs are the stage's copy of dlcbench, never an installed one (dlcbench need not be installed).

Usage (anywhere; the stage is where run.py is)::

    python3 STAGE/run.py --out results.json               # every job
    python3 STAGE/run.py --self-check --out check.json    # unpack, import, probe each backend; runs no job
    python3 STAGE/run.py --backends tvm,torch --batches 1 --models mlp
    python3 STAGE/run.py --no-tuning --out results.json   # the jobs only, not the stage's tuning rounds

Steps: (1) *unpack*: the stage's files, some xz-compressed, big ``.npz`` files split into content-addressed arrays,
are verified (SHA-256) and written to a work directory (``--workdir``, default a fresh temporary one, removed
afterwards); ``site/`` (carried packages, ``tvm_ffi``) goes on the path of this process and of every worker,
``lib/`` becomes :data:`dlcbench.compilers.tvm.runtime_only.RUNTIME_ENV`, and ``$DLCBENCH_CACHE`` points inside
the work directory. (2) each job runs through :func:`dlcbench.measure.job.run_job` in its own worker process
(:func:`dlcbench.orchestrate.launcher.run_isolated`; ``--no-isolate`` to run in this one): a job built here
(TVM) loads its artifact (``prebuilt``); every other backend compiles there from the staged model, and its
compile time is measured there. The check (tolerances by precision, every check batch), the timed region
(``resident``: inputs staged once, the device synchronised), the statistics and the native timer (TVM's
``time_evaluator``, CUDA events for PyTorch on a GPU) are a CPU job's. A crash or hang is a row with its
category; the JSON file is rewritten after every job, so a run cut short keeps what it measured. (3) a stage
with tuning rounds (``dlcbench stage --tuning-trials N``) then times every candidate schedule of each round on
the runtime alone (:func:`dlcbench.compilers.tvm.deferred.measure_round`), into the JSON's ``tuning``; back
here, ``dlcbench import-results --stage DIR`` commits them to the MetaSchedule database.

Exit codes (dlcbench's): 0 all passed, 1 an output check failed, 2 bad usage or stage, 3 a backend or device
unavailable here, 4 a job failed to compile, load or run, 7 a job crashed or timed out.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import dlcbench
from dlcbench import jsonio
from dlcbench.errors import BadInputError, DlcbenchError, ExitCode, one_line, run_cli
from dlcbench.files import sha256_file
from dlcbench.measure.check import parse_tolerance_overrides
from dlcbench.measure.timing import TimingConfig
from dlcbench.orchestrate import launcher

FORMAT = "dlcbench-stage-results/1"
_JOB_ID = re.compile(r"[A-Za-z0-9_.:+-]+")
#: The stage directory this copy of dlcbench belongs to, when it is a stage's ``py/dlcbench``.
_STAGE_OF_THIS_COPY = Path(dlcbench.__file__).resolve().parents[2]


# --------------------------------------------------------------------------- unpacking


def read_index(stage_dir: Path) -> dict:
    """The stage's ``stage.json`` (see :func:`dlcbench.stage.build.read_stage_index`)."""
    from dlcbench.stage.build import read_stage_index

    return read_stage_index(stage_dir)


def _safe_rel(text: str) -> Path:
    rel = Path(text)
    if rel.is_absolute() or ".." in rel.parts:
        raise BadInputError(f"stage index entry {text!r} points outside the stage; refusing it")
    return rel


def unpack(stage_dir: Path, index: dict, workdir: Path) -> None:
    """Writes every stage file but ``py/`` into ``workdir`` (decompressing .xz, rebuilding split ``.npz``), each
    checked against its SHA-256. Idempotent: a work directory already unpacked from the same stage is kept.

    Raises:
        BadInputError: a corrupt or missing file, an entry outside the stage, a work directory that is not empty.
    """
    marker = workdir / ".unpacked"
    state = marker.read_text() if marker.is_file() else None
    if state == index["stage_id"]:
        return
    if state is None and any(workdir.iterdir()):
        raise BadInputError(f"work directory {workdir} is not empty and was not unpacked from a stage: "
                            "give an empty or new --workdir")
    if state is not None and state != f"unpacking {index['stage_id']}":
        raise BadInputError(f"work directory {workdir} holds another stage's files ({state.split()[-1]}): "
                            "give an empty or new --workdir")
    marker.write_text(f"unpacking {index['stage_id']}")  # an unpack cut short resumes on the next run
    by_path = {e["path"]: e for e in index["files"]}
    for entry in index["files"]:  # split .npz entries come last: their arrays are unpacked first
        dst = workdir / _safe_rel(entry["path"])
        if entry["path"].startswith("py/"):
            continue  # imported from the stage directory itself
        dst.parent.mkdir(parents=True, exist_ok=True)
        if entry.get("npz") is not None:
            if any(blob not in by_path for _, blob in entry["npz"]):
                raise BadInputError(f"stage index entry {entry['path']!r} names arrays the stage does not hold")
            arrays = {key: np.load(workdir / _safe_rel(blob), allow_pickle=False) for key, blob in entry["npz"]}
            with open(dst, "wb") as fout:
                write_npz(fout, arrays)
            continue
        unpack_file(stage_dir, index, entry, dst)
        if entry.get("executable"):
            dst.chmod(0o755)
    marker.write_text(index["stage_id"])


def write_npz(fout, arrays: dict) -> None:
    """What ``np.savez`` writes (one ``NAME.npy`` member an array, stored), for any array name: ``savez`` takes
    names as keywords, so ``file`` or ``allow_pickle`` would be its own arguments."""
    import zipfile

    with zipfile.ZipFile(fout, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


def unpack_file(stage_dir: Path, index: dict, rel: "str | dict", dst: Path) -> None:
    """Writes one stored file of a stage (``rel`` as the index names it, or its index entry) to ``dst``, checked
    against its SHA-256.

    Raises:
        BadInputError: no such file in the stage, or a corrupt one.
    """
    entry = rel if isinstance(rel, dict) else next(
        (e for e in index["files"] if e["path"] == rel and e.get("stored")), None)
    if entry is None or not entry.get("stored"):
        raise BadInputError(f"the stage has no {rel}")
    src = stage_dir / _safe_rel(entry["stored"])
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


def prepare_process(stage_dir: Path, workdir: Path) -> None:
    """Puts the stage's ``py/`` and the unpacked ``site/`` first on this process's path and its workers'
    (``PYTHONPATH``); points TVM at the stage's runtime and dlcbench's cache into the work directory."""
    from dlcbench.compilers.tvm.runtime_only import RUNTIME_ENV

    paths = [str(stage_dir / "py"), str(workdir / "site")]
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    if (workdir / "lib" / "libtvm_runtime.so").is_file():
        os.environ[RUNTIME_ENV] = str(workdir / "lib")
    os.environ["DLCBENCH_CACHE"] = str(workdir / "cache")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # workers import the stage's dlcbench: the stage stays as built


# --------------------------------------------------------------------------- jobs


def select_jobs(index: dict, args) -> list[dict]:
    """The index's jobs that ``--models``, ``--backends``, ``--precisions`` and ``--batches`` select."""
    jobs = index["jobs"]

    def pick(jobs, value, key, what):
        if not value:
            return jobs
        wanted = {v.strip() for v in value.split(",") if v.strip()}
        have = {str(j[key]) for j in jobs} | ({j["id"] for j in jobs} if key == "model" else set())
        unknown = wanted - have
        if unknown:
            raise BadInputError(f"not in this stage: {what} {', '.join(sorted(unknown))}; it has "
                                f"{', '.join(sorted({str(j[key]) for j in jobs}))}")
        return [j for j in jobs if str(j[key]) in wanted or (key == "model" and j["id"] in wanted)]

    jobs = pick(jobs, args.models, "model", "model")
    jobs = pick(jobs, args.backends, "backend", "backend")
    jobs = pick(jobs, args.precisions, "precision", "precision")
    return pick(jobs, args.batches, "batch", "batch")


def job_config(spec: dict, workdir: Path, args):
    """The :class:`dlcbench.measure.job.JobConfig` of a stage job, run from ``workdir``."""
    from dlcbench.measure.job import JobConfig
    from dlcbench.stage.build import JOB_FIELDS

    prebuilt = bool(spec.get("artifact"))
    if not _JOB_ID.fullmatch(str(spec["id"])):
        raise BadInputError(f"stage job id {spec['id']!r} is not a plain name; refusing it")
    out_dir = workdir / _safe_rel(spec["artifact"]) if prebuilt else workdir / "out" / spec["id"]
    fields = {k: spec[k] for k in JOB_FIELDS}
    fields["tolerances"] = list(fields.get("tolerances") or []) + list(args.tolerance or [])
    return JobConfig(**fields, out_dir=out_dir, export_dir=str(workdir / _safe_rel(spec["model_dir"])),
                     prebuilt=prebuilt, timing=args.timing)


def run_one(spec: dict, workdir: Path, args) -> dict:
    """One job, isolated in a worker (or in this process with ``--no-isolate``); its record, never an exception."""
    from dlcbench.measure.trackers import failure_row, job_row

    t0 = time.perf_counter()
    job = job_config(spec, workdir, args)
    if args.isolate:
        row = launcher.run_isolated(job, args.job_timeout)
    else:
        from dlcbench.measure.job import run_job

        try:
            row = job_row(run_job(job).to_dict())
        except DlcbenchError as err:
            row = failure_row(err.category, str(err))
    return {"id": spec["id"], "job": {k: v for k, v in spec.items() if k != "manifest"}, "row": row,
            "seconds": round(time.perf_counter() - t0, 3)}


def measure_tuning_round(workdir: Path, spec: dict, index: dict) -> dict:
    """Times every candidate of a job's deferred tuning round (:func:`dlcbench.compilers.tvm.deferred.measure_round`,
    each task in a worker without ``tvm``); the measurements, or ``{"error": ...}``."""
    from dlcbench.compilers.tvm.deferred import measure_round
    from dlcbench.compilers.tvm.runtime_only import get_runtime

    round_dir = workdir / _safe_rel(spec["tuning_round"])
    t0 = time.perf_counter()
    try:
        done = measure_round(round_dir, get_runtime(index.get("threads")), write=False,
                             progress=lambda line: print(f"... {line}", file=sys.stderr, flush=True))
    except Exception as err:  # a round that cannot be timed is recorded; the jobs' results stand
        return {"error": one_line(f"{type(err).__name__}: {err}" if not isinstance(err, DlcbenchError) else err, 1000),
                "round_id": spec.get("tuning_round_id")}
    timed = sum(1 for c in done["candidates"].values() if "run_secs" in c)
    print(f"tuning round of {spec['id']}: {timed}/{len(done['candidates'])} candidates timed in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return done


# --------------------------------------------------------------------------- environment


_GPU_PROBE = """
import json
out = {}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_available"] = torch.cuda.is_available()
    if out["cuda_available"]:
        out["torch_cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
        p = torch.cuda.get_device_properties(0)
        out["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_bytes": p.total_memory,
                         "multiprocessors": p.multi_processor_count}
except Exception as err:
    out["error"] = f"{type(err).__name__}: {err}"
print(json.dumps(out))
"""


def environment(index: dict) -> dict[str, Any]:
    """dlcbench's environment record of this machine (:func:`dlcbench.results.env.environment`), with what
    PyTorch says of the GPU (in a subprocess: this process loads no framework) and the stage's versions."""
    from dlcbench.results import env

    record = env.environment(threads=index.get("threads"), peak=index["target"] == "cpu")
    record["source"] = "dlcbench stage runner"
    record["git_revision"] = index.get("git_revision")
    if index["target"] == "cuda":
        try:
            probe = subprocess.run([sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True, timeout=120)
            record["torch_gpu"] = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.stdout.strip() else {
                "error": one_line(probe.stderr, 300)}
        except (OSError, subprocess.TimeoutExpired, ValueError) as err:
            record["torch_gpu"] = {"error": one_line(err, 300)}
    for name in ("jax", "jaxlib", "keras", "onnx2torch", "apache-tvm-ffi", "triton", "numpy"):
        try:
            from importlib import metadata

            record.setdefault("packages", {})[name] = metadata.version(name)
        except Exception:
            pass
    return record


def dlcbench_modules() -> dict[str, str]:
    """The dlcbench modules loaded in this process and their files."""
    return {name: str(getattr(mod, "__file__", None)) for name, mod in sorted(sys.modules.items())
            if mod is not None and (name == "dlcbench" or name.startswith("dlcbench."))}


def carried_origins(index: dict) -> dict[str, str | None]:
    """Where this process (and so every worker, which gets the same path) finds each carried package: the
    location of its distribution's metadata (in the work directory's ``site/`` when the stage's copy is used)."""
    from importlib import metadata

    out = {}
    for record in index.get("carried") or []:
        try:
            out[record["name"]] = str(Path(metadata.distribution(record["name"]).locate_file("")).resolve())
        except metadata.PackageNotFoundError:
            out[record["name"]] = None
    return out


def self_check(stage_dir: Path, workdir: Path, index: dict) -> dict:
    """Imports, the backends' availability here, and for TVM jobs the runtime: loaded, a tensor round trip, the
    CUDA device; runs no job."""
    from dlcbench.compilers.registry import get_adapter

    checks: dict[str, Any] = {"backends": {}}
    for name in sorted({j["backend"] for j in index["jobs"]}):
        try:
            availability = get_adapter(name).available()
            checks["backends"][name] = {"available": bool(availability), "reason": availability.reason}
        except DlcbenchError as err:
            checks["backends"][name] = {"available": False, "reason": str(err)}
    if os.environ.get("DLCBENCH_TVM_RUNTIME"):
        from dlcbench.compilers.tvm.runtime_only import get_runtime

        try:
            rt = get_runtime(index.get("threads"))
            cpu = rt.ffi.device("cpu", 0)
            probe = np.arange(12, dtype=np.float32).reshape(3, 4)
            checks["tvm_runtime"] = {"loaded": True, "tvm_ffi_file": rt.ffi.__file__,
                                     "tensor_round_trip": bool(np.array_equal(rt.to_numpy(rt.to_device(probe, cpu)), probe)),
                                     "cuda": rt.cuda_info() if index["target"] == "cuda" else None}
        except DlcbenchError as err:
            checks["tvm_runtime"] = {"loaded": False, "error": str(err)}
    modules = dlcbench_modules()
    checks["dlcbench_from_stage"] = all(Path(f).resolve().is_relative_to(stage_dir / "py") for f in modules.values())
    checks["dlcbench_modules"] = modules
    tvm_ok = checks.get("tvm_runtime", {"loaded": True, "tensor_round_trip": True})
    passed = (checks["dlcbench_from_stage"] and all(b["available"] for b in checks["backends"].values())
              and tvm_ok.get("loaded") and tvm_ok.get("tensor_round_trip"))
    return {"passed": bool(passed), "checks": checks}


# --------------------------------------------------------------------------- command line


def check_results_file(path: Path, stage_id: str) -> None:
    """Refuses an existing ``--out`` unless it is results of this stage; earlier run results are renamed
    ``NAME.N.json`` first, never overwritten.

    Raises:
        BadInputError: ``path`` is a directory, or a file this stage did not write.
    """
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and data.get("format") == FORMAT and (data.get("stage") or {}).get("stage_id") == stage_id):
        raise BadInputError(f"{path} exists and is not this stage's results; give another --out")
    if data.get("mode") == "run" and data.get("results"):  # a finished (or partial) run is never lost: kept aside
        n = 1
        while path.with_name(f"{path.stem}.{n}{path.suffix}").exists():
            n += 1
        kept = path.with_name(f"{path.stem}.{n}{path.suffix}")
        os.replace(path, kept)
        print(f"earlier results of this stage kept as {kept}", file=sys.stderr)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(jsonio.dumps(data, separators=(",", ":"), default=str))  # compact: raw samples can be many
    os.replace(tmp, path)


def summary_line(record: dict) -> str:
    """One console line per job: verdict and latency, or the failure."""
    row = record["row"]
    latency = next((m for m in row.get("metrics", []) if m["name"] == "latency"), None)
    timing = f"{latency['value']:.4f} ms" if latency else ""
    if row["status"] == "ok":
        return f"{record['id']:<40} PASS {timing}"
    return f"{record['id']:<40} {(row.get('category') or 'failed').upper()}: {one_line(row.get('message') or '', 240)} {timing}".rstrip()


def _stage_info(index: dict) -> dict:
    keys = ("stage_id", "created", "target", "arch", "python", "threads", "dlcbench_version", "git_revision", "tvm_version",
            "tvm_ffi_version", "carried", "backends", "precisions", "batches", "size_bytes", "limit_bytes", "skipped",
            "built_on")
    return {k: index.get(k) for k in keys}


def build_parser() -> argparse.ArgumentParser:
    """run.py's options; the timing defaults are :class:`dlcbench.measure.timing.TimingConfig`'s."""
    t = TimingConfig()
    p = argparse.ArgumentParser(prog="run.py", description="Run, check and time the jobs of a dlcbench stage.",
                                epilog=ExitCode.help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=Path, default=None, help="stage directory (default: the one this run.py is in)")
    p.add_argument("--out", type=Path, default=Path("stage_results.json"), help="results JSON (default: stage_results.json)")
    p.add_argument("--workdir", type=Path, default=None, help="where to unpack (default: a temporary directory, removed)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work directory")
    p.add_argument("--self-check", action="store_true", help="unpack, import, probe each backend and the TVM runtime; exit")
    p.add_argument("--models", default=None, help="comma-separated models or job ids (default: all)")
    p.add_argument("--backends", default=None, help="comma-separated backends (default: all)")
    p.add_argument("--precisions", default=None, help="comma-separated precisions (default: all)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: all)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false", help="run every job in this process")
    p.add_argument("--no-tuning", dest="tuning", action="store_false",
                   help="skip the stage's tuning rounds (by default their candidates are timed after the jobs)")
    p.add_argument("--job-timeout", type=float, default=600.0,
                   help="seconds per job when isolated (compile included); then it is killed and recorded as a timeout "
                        "(default: 600)")
    p.add_argument("--max-total-seconds", type=float, default=None,
                   help="start no job after this many seconds (the rest are recorded as not run)")
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
    return p


_TIMING = ("warmup_iters", "warmup_seconds", "min_iters", "min_seconds", "max_seconds", "max_iters", "ci_target")
#: The exit code of a run with failures: the first of these categories found, else CHECK_FAILED.
_EXIT_BY_CATEGORY = (("crash", ExitCode.JOB_DIED), ("timeout", ExitCode.JOB_DIED),
                     ("runtime_error", ExitCode.BACKEND_ERROR), ("compile_error", ExitCode.BACKEND_ERROR),
                     ("unavailable", ExitCode.UNAVAILABLE), ("bad_input", ExitCode.BAD_INPUT))


def main(argv: list[str] | None = None) -> int:
    """Runs (or self-checks) the stage; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    args.timing = TimingConfig(**{k: getattr(args, k) for k in _TIMING})  # BadInputError for bad values
    parse_tolerance_overrides(args.tolerance)
    stage_dir = (args.stage or _STAGE_OF_THIS_COPY).resolve()
    index = read_index(stage_dir)
    if (stage_dir / "py" / "dlcbench").is_dir() and not Path(dlcbench.__file__).resolve().is_relative_to(stage_dir / "py"):
        raise BadInputError(f"dlcbench was imported from {dlcbench.__file__}, not from the stage's {stage_dir / 'py'}: "
                            f"run {stage_dir / 'run.py'}")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if index.get("python") and index["python"] != here and any(e["path"].endswith(".so") for e in index["files"]
                                                             if e["path"].startswith("site/")):
        raise BadInputError(f"this stage carries compiled packages for Python {index['python']}, this is {here}: "
                            f"run it with python{index['python']}, or build it with --python {here}")
    jobs = select_jobs(index, args)
    check_results_file(args.out, index["stage_id"])
    owned = args.workdir is None and not args.keep_workdir  # removed afterwards, by the janitor if we are killed
    if args.workdir is not None:
        workdir = args.workdir.resolve()
    else:
        workdir = launcher.owned_mkdtemp("dlcbench-stage-") if owned else Path(tempfile.mkdtemp(prefix="dlcbench-stage-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        unpack(stage_dir, index, workdir)
        unpack_s = round(time.perf_counter() - t0, 3)
        prepare_process(stage_dir, workdir)
        if args.self_check:
            report = {"format": FORMAT, "mode": "self-check", "stage": _stage_info(index), "unpack_seconds": unpack_s,
                      **self_check(stage_dir, workdir, index)}
            _write_json(args.out, report)
            print(f"self-check {'PASS' if report['passed'] else 'FAIL'}: " + json.dumps(report["checks"]["backends"]))
            return ExitCode.OK if report["passed"] else ExitCode.UNAVAILABLE
        return run_all(stage_dir, workdir, index, jobs, args, unpack_s)
    finally:
        if owned:
            launcher.remove_owned(workdir)
        elif args.keep_workdir:
            print(f"work directory kept: {workdir}", file=sys.stderr)


def run_all(stage_dir: Path, workdir: Path, index: dict, jobs: list[dict], args, unpack_s: float) -> int:
    """Runs the selected jobs, rewriting the results JSON after each; returns the exit code."""
    from dlcbench.measure.trackers import failure_row

    report = {
        "format": FORMAT, "mode": "run", "stage": _stage_info(index), "unpack_seconds": unpack_s,
        "environment": environment(index), "timing_config": {k: getattr(args, k) for k in _TIMING},
        "tolerance_overrides": list(args.tolerance or []), "isolated": args.isolate, "python": platform.python_version(),
        "dlcbench_modules": dlcbench_modules(), "carried_origins": carried_origins(index), "results": [],
    }
    gpus = ", ".join(g.get("name", "?") for g in report["environment"].get("gpus") or []) or "none"
    print(f"stage {index['stage_id']} ({index['target']}); {len(jobs)} job(s); GPUs: {gpus}", flush=True)
    _write_json(args.out, report)
    started = time.monotonic()
    for spec in jobs:
        if args.max_total_seconds and time.monotonic() - started > args.max_total_seconds:
            record = {"id": spec["id"], "job": {k: v for k, v in spec.items() if k != "manifest"}, "seconds": 0.0,
                      "row": failure_row("timeout", f"not run: --max-total-seconds {args.max_total_seconds:g} reached")}
        else:
            record = run_one(spec, workdir, args)
        report["results"].append(record)
        _write_json(args.out, report)
        print(summary_line(record), flush=True)
    rounds = [spec for spec in jobs if spec.get("tuning_round")] if args.tuning else []
    if rounds:
        report["tuning"] = {}
        for spec in rounds:
            report["tuning"][spec["id"]] = measure_tuning_round(workdir, spec, index)
            _write_json(args.out, report)
    rows = [r["row"] for r in report["results"]]
    categories = {r.get("category") for r in rows if r["status"] != "ok"}
    report["summary"] = {"total": len(jobs), "passed": sum(r["status"] == "ok" for r in rows),
                         "failed_categories": sorted(c for c in categories if c)}
    _write_json(args.out, report)
    print(f"{report['summary']['passed']}/{len(jobs)} passed; results: {args.out}")
    if not categories:
        return ExitCode.OK
    return next((code for category, code in _EXIT_BY_CATEGORY if category in categories), ExitCode.CHECK_FAILED)


def cli() -> None:
    """run.py's entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)


if __name__ == "__main__":
    cli()
