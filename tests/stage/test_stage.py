"""Stages: build (CUDA device code for the arch, size within the limit, refusal over it), the runner in a fresh
Python that sees only the stage and numpy (self-check for CUDA, a full check-and-time run of TVM built for the
CPU) running dlcbench's own job code from the stage's copy, and the import of its results (and of the committed
H200 bundle results) into the results database. The stage of every CPU backend (tvm, onnxruntime, torch, inductor,
jax) built and run here is in test_stage_backends.py.

Stages are built through the CLI in subprocesses, so TVM (and the stub ``libcuda.so.1`` a GPU-less CUDA
compile may load) never enters the pytest process.
"""

from __future__ import annotations

import ast
import json
import lzma
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

from dlcbench.compilers.tvm.cuda import device_code_archs, find_nvcc
from dlcbench.errors import BadInputError
from dlcbench.stage.build import StageConfig, read_stage_index, stage_size
from dlcbench.stage.runner import FORMAT as RESULTS_FORMAT
from dlcbench_test_support import ROOT, assert_one_line_error, live_processes_with, run_script, wait_for

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
FORBIDDEN = ("tvm", "tensorflow", "torch", "keras", "jax", "onnxruntime", "onnx")
#: Results of a CUDA bundle run on an NVIDIA H200 (the first runner's format), committed with the repository.
H200_JSON = ROOT / "benchmarks" / "results" / "gpu-h200.json"


def _build(out: Path, *extra: str, models: str = "mlp", backends: str = "tvm") -> subprocess.CompletedProcess:
    return run_script("scripts/stage.py", "-o", str(out), "--python", HERE, "--models", models, "--preset", "tiny",
                      "--batches", "1", "--threads", "1", "--backends", backends, *extra, timeout=600)


@pytest.fixture(scope="module")
def numpy_only(tmp_path_factory) -> Path:
    """A directory whose only importable packages are numpy (and its bundled libraries) and a decoy ``dlcbench``
    that fails on import: a process that imports any dlcbench but the stage's copy fails loudly."""
    root = tmp_path_factory.mktemp("numpy-only")
    site = Path(np.__file__).resolve().parent.parent
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (root / name).symlink_to(site / name)
    (root / "dlcbench").mkdir()
    (root / "dlcbench" / "__init__.py").write_text('raise ImportError("not the stage\'s dlcbench")\n')
    return root


def fresh_argv(script: Path, *args: str) -> list[str]:
    """``python -s -S script args``: no site-packages, no user site."""
    return [sys.executable, "-s", "-S", str(script), *args]


def fresh_env(numpy_dir: Path, env: dict | None = None) -> dict:
    """This environment without PYTHON* variables but PYTHONPATH = the numpy-only directory, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    full_env.update(PYTHONPATH=str(numpy_dir), **(env or {}))
    return full_env


def fresh_python(script: Path, *args: str, numpy_dir: Path, cwd: Path, env: dict | None = None, timeout: float = 300):
    """Runs :func:`fresh_argv` with :func:`fresh_env` and captures its output."""
    return subprocess.run(fresh_argv(script, *args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=fresh_env(numpy_dir, env))


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpu-stage") / "stage"
    proc = _build(out, "--target", "cpu", models="bert")  # bert: scalar (0-d) weights, several inputs
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "total" in proc.stdout and "MB" in proc.stdout
    return out


@pytest.fixture(scope="module")
def cuda_bundle(tmp_path_factory) -> Path:
    if find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not found; needed to build CUDA device code")
    out = tmp_path_factory.mktemp("cuda-stage") / "stage"
    proc = _build(out, "--target", "cuda", "--arch", "sm_90", "--limit-mb", "20")
    if proc.returncode == 3:
        pytest.skip(f"CUDA build unavailable here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _unpacked(stage: Path, index: dict, rel: str, tmp: Path) -> Path:
    entry = next(e for e in index["files"] if e["path"] == rel)
    src = stage / entry["stored"]
    if entry["compression"] != "xz":
        return src
    dst = tmp / Path(rel).name
    dst.write_bytes(lzma.decompress(src.read_bytes()))
    return dst


# --------------------------------------------------------------------------- CUDA stage


def test_cuda_stage_holds_sm90_code_and_dlcbench_within_its_limit(cuda_bundle, tmp_path):
    index = read_stage_index(cuda_bundle)
    assert index["target"] == "cuda" and index["arch"] == "sm_90" and index["python"] == HERE
    size = stage_size(cuda_bundle)
    assert index["size_bytes"] == size <= index["limit_bytes"] == 20 * 10**6
    assert size < 9 * 10**6  # runtime ~3 MB compressed, dlcbench's source, a tiny model
    paths = {e["path"] for e in index["files"]}
    assert {"lib/libtvm_runtime.so", "lib/libtvm_runtime_cuda.so", "site/tvm_ffi/lib/libtvm_ffi.so"} <= paths
    assert any(p.startswith("lib/libcudart.so") for p in paths)
    assert any(p.startswith(f"site/tvm_ffi/core.cpython-{HERE.replace('.', '')}") for p in paths)
    assert not any("/include/" in p or p.endswith((".h", ".pxi", ".cmake")) for p in paths), "headers were not stripped"
    # all of dlcbench, stored as it is (importable before unpacking): the runner imports the job code itself
    shipped = {e["path"]: e for e in index["files"] if e["path"].startswith("py/dlcbench/")}
    ours = sorted(f"py/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "dlcbench").rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(shipped) == ours
    for path, entry in shipped.items():
        assert entry["compression"] is None and entry["stored"] == path
        assert (cuda_bundle / path).read_bytes() == (ROOT / path.removeprefix("py/")).read_bytes()
    [job] = index["jobs"]
    assert job["backend"] == "tvm" and job["artifact"] == f"jobs/{job['id']}/artifact" and job["target"] == "cuda"
    assert job["manifest"]["extra"]["device_code_archs"] == ["sm_90"]
    library = f"{job['artifact']}/{job['manifest']['files']['library']}"
    assert device_code_archs(_unpacked(cuda_bundle, index, library, tmp_path)) == ["sm_90"]
    assert not any(p.endswith(("model.onnx", "model.keras")) for p in paths)  # built here: no model travels


def test_cuda_stage_self_check_in_fresh_python(cuda_bundle, numpy_only, tmp_path):
    out = tmp_path / "check.json"
    proc = fresh_python(cuda_bundle / "run.py", "--self-check", "--out", str(out), numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert report["passed"] and checks["tvm_runtime"]["loaded"] and checks["tvm_runtime"]["tensor_round_trip"]
    assert checks["backends"]["tvm"] == {"available": True, "reason": "runtime only: loads artifacts built elsewhere, "
                                                                        "cannot compile"}
    assert "dlcbench-stage-" in checks["tvm_runtime"]["tvm_ffi_file"]  # from the unpacked stage, not site-packages
    assert checks["dlcbench_from_stage"] and checks["dlcbench_modules"]["dlcbench.errors"] == str(
        cuda_bundle.resolve() / "py" / "dlcbench" / "errors.py")
    assert "libcuda.so.1" in checks["tvm_runtime"]["cuda"]["error"]  # no driver here


def test_cuda_runner_loads_the_cuda_runtime_with_a_stub_driver(cuda_bundle, numpy_only, tmp_path):
    """With a stub libcuda.so.1 the stage's CUDA runtime loads; no GPU: the job is unavailable, exit 3."""
    from dlcbench.compilers.tvm import cuda as tvm_cuda
    from dlcbench.errors import BackendUnavailableError
    from dlcbench.stage.files import tvm_lib_dir

    try:
        symbols = tvm_cuda._driver_symbols(tvm_lib_dir() / "libtvm_runtime_cuda.so")
        stub = tvm_cuda._toolkit_stub(symbols) or tvm_cuda._build_stub(symbols)
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    (stub_dir / "libcuda.so.1").symlink_to(stub)
    env = {"LD_LIBRARY_PATH": str(stub_dir)}
    out = tmp_path / "check.json"
    proc = fresh_python(cuda_bundle / "run.py", "--self-check", "--out", str(out), numpy_dir=numpy_only, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    cuda = json.loads(out.read_text())["checks"]["tvm_runtime"]["cuda"]
    assert "error" not in cuda and cuda["device_exists"] is False
    results = tmp_path / "results.json"
    proc = fresh_python(cuda_bundle / "run.py", "--out", str(results), numpy_dir=numpy_only, cwd=tmp_path, env=env)
    assert proc.returncode == 3, proc.stderr + proc.stdout
    row = json.loads(results.read_text())["results"][0]["row"]
    assert row["category"] == "unavailable" and "no CUDA device" in row["message"]


# --------------------------------------------------------------------------- CPU stage: the full runner path


def test_cpu_stage_runs_checks_and_times_in_fresh_python(cpu_bundle, numpy_only, tmp_path):
    out = tmp_path / "results.json"
    wrapper = tmp_path / "wrapper.py"  # runs run.py in-process, then reports what got imported
    wrapper.write_text(textwrap.dedent(f"""
        import json, runpy, sys
        sys.argv = [{str(cpu_bundle / 'run.py')!r}, "--out", {str(out)!r}, "--no-isolate", "--min-seconds", "0.1"]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as exit:
            code = exit.code
        loaded = {{m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}}
        roots = sorted(loaded & set({FORBIDDEN!r}))
        ours = {{m: mod.__file__ for m, mod in sys.modules.items() if m.split(".")[0] == "dlcbench"}}
        print(json.dumps({{"code": code, "forbidden": roots, "path": sys.path, "dlcbench": ours}}))
    """))
    proc = fresh_python(wrapper, numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["forbidden"] == [], proc.stdout  # TVM ran on its runtime alone
    assert not any("site-packages" in p for p in report["path"])
    # the job, the check, the timing are dlcbench's own modules, from the stage's copy
    staged = cpu_bundle.resolve() / "py"
    assert {"dlcbench.measure.job", "dlcbench.measure.check", "dlcbench.measure.timing",
            "dlcbench.compilers.tvm.runtime_only"} <= set(report["dlcbench"])
    assert all(Path(f).resolve().is_relative_to(staged) for f in report["dlcbench"].values()), report["dlcbench"]
    data = json.loads(out.read_text())
    assert data["format"] == RESULTS_FORMAT and data["mode"] == "run"
    [record] = data["results"]
    row = record["row"]
    assert row["status"] == "ok", row.get("message")
    for output in row["check_metrics"]["outputs"]:
        assert output["metrics"]["max_abs"] <= 1e-4 and output["metrics"]["cosine"] >= 0.999
    latency = next(m for m in row["metrics"] if m["name"] == "latency")
    native = next(m for m in row["metrics"] if m["name"] == "latency_native")
    assert latency["detail"]["count"] >= 20 and latency["detail"]["region"] == "resident" and latency["value"] > 0
    assert native["detail"]["timer"] == "tvm.time_evaluator" and native["value"] > 0
    assert data["environment"]["python"] == sys.version.split()[0] and data["environment"]["gpus"] == []


def test_stage_rows_are_the_rows_of_a_cpu_job(cpu_bundle, numpy_only, tmp_path):
    """A stage job's row holds what a job run here stores: the same metric names and check structure, computed by
    the same code (the trackers over a JobResult)."""
    from dlcbench.measure.job import JobConfig
    from dlcbench.measure.timing import TimingConfig
    from dlcbench.orchestrate.launcher import run_isolated

    out = tmp_path / "results.json"
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(out), "--no-isolate", "--min-seconds", "0.05",
                        numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    [record] = json.loads(out.read_text())["results"]
    job = record["job"]
    here = run_isolated(JobConfig(backend="tvm", model=job["model"], preset=job["preset"], batch=job["batch"],
                                  threads=1, target="cpu", out_dir=tmp_path / "here",
                                  timing=TimingConfig(min_seconds=0.05)), 600)
    assert here["status"] == record["row"]["status"] == "ok"
    assert {m["name"] for m in here["metrics"]} == {m["name"] for m in record["row"]["metrics"]}
    assert set(here["check_metrics"]) == set(record["row"]["check_metrics"])
    for mine, theirs in zip(record["row"]["check_metrics"]["outputs"], here["check_metrics"]["outputs"], strict=True):
        assert mine["name"] == theirs["name"] and mine["tolerance"] == theirs["tolerance"]
        assert mine["metrics"]["max_abs"] == pytest.approx(theirs["metrics"]["max_abs"], abs=1e-6)


def test_cpu_stage_isolated_run_and_unknown_model(cpu_bundle, numpy_only, tmp_path):
    out, scratch = tmp_path / "results.json", tmp_path / "tmp"
    scratch.mkdir()
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(out), "--min-seconds", "0.05",
                        numpy_dir=numpy_only, cwd=tmp_path, env={"TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # the launcher's janitor and the job's worker imported the stage's dlcbench (the decoy would print a traceback)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "PASS" in proc.stdout and "1/1 passed" in proc.stdout
    data = json.loads(out.read_text())
    assert data["isolated"] and data["results"][0]["row"]["status"] == "ok"
    assert list(scratch.iterdir()) == []  # the work directory and the worker's directory are gone
    assert not list(cpu_bundle.rglob("__pycache__"))  # running it wrote nothing into the stage
    # a rerun, and a self-check, into the same file: the finished results are kept aside, never overwritten
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(out), "--self-check", numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"earlier results of this stage kept as {tmp_path / 'results.1.json'}" in proc.stderr
    assert json.loads((tmp_path / "results.1.json").read_text()) == data
    assert json.loads(out.read_text())["mode"] == "self-check"
    proc = fresh_python(cpu_bundle / "run.py", "--models", "gpt", "--out", str(out), numpy_dir=numpy_only, cwd=tmp_path)
    assert_one_line_error(proc, 2, "not in this stage: model gpt")
    proc = fresh_python(cpu_bundle / "run.py", "--backends", "jax", "--out", str(out), numpy_dir=numpy_only, cwd=tmp_path)
    assert_one_line_error(proc, 2, "not in this stage: backend jax; it has tvm")
    proc = fresh_python(cpu_bundle / "run.py", "--tolerance", "abs=x", "--out", str(out), numpy_dir=numpy_only, cwd=tmp_path)
    assert_one_line_error(proc, 2, "bad tolerance value 'x'")


def test_run_py_never_overwrites_what_it_did_not_write(cpu_bundle, numpy_only, tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "thesis.txt").write_text("user data")
    before = {p: p.read_bytes() for p in (notes, workdir / "thesis.txt")}
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(notes), numpy_dir=numpy_only, cwd=tmp_path)
    assert_one_line_error(proc, 2, "is not this stage's results")
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(tmp_path / "r.json"), "--workdir", str(workdir),
                        numpy_dir=numpy_only, cwd=tmp_path)
    assert_one_line_error(proc, 2, "is not empty and was not unpacked from a stage")
    assert {p: p.read_bytes() for p in before} == before and sorted(os.listdir(workdir)) == ["thesis.txt"]
    assert not (tmp_path / "r.json").exists()
    # a work directory of another stage is refused; one whose unpack was cut short resumes
    other = tmp_path / "other"
    other.mkdir()
    (other / ".unpacked").write_text("0123456789abcdef")
    (other / "lib").mkdir()
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(tmp_path / "r.json"), "--workdir", str(other),
                        "--self-check", numpy_dir=numpy_only, cwd=tmp_path)
    assert_one_line_error(proc, 2, "holds another stage's files (0123456789abcdef)")
    stage_id = read_stage_index(cpu_bundle)["stage_id"]
    (other / ".unpacked").write_text(f"unpacking {stage_id}")
    (other / "lib" / "libtvm_runtime.so").write_bytes(b"half")
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(tmp_path / "r.json"), "--workdir", str(other),
                        "--self-check", numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (other / ".unpacked").read_text() == stage_id


def _worker_of(marker: str) -> int | None:
    """The pid of run.py's job worker among the processes carrying ``marker``."""
    return next((pid for pid, cmd in live_processes_with(marker).items() if "dlcbench.orchestrate.worker" in cmd), None)


def test_a_hanging_or_crashing_job_is_a_record_and_nothing_is_left(cpu_bundle, numpy_only, tmp_path):
    marker = f"DLCBENCH_STAGE_TEST_{os.getpid()}_{tmp_path.name}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch), marker: "1"}
    # A hang: the timing would take a minute, the worker is ended after 5 s.
    out = tmp_path / "hang.json"
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(out), "--min-seconds", "60", "--job-timeout", "5",
                        numpy_dir=numpy_only, cwd=tmp_path, env=env)
    assert proc.returncode == 7, proc.stderr + proc.stdout
    [record] = json.loads(out.read_text())["results"]
    assert record["row"]["status"] == "failed" and record["row"]["category"] == "timeout", record
    assert record["row"]["message"] == "no result after 5 s; killed" and record["job"]["model"] == "bert"
    assert wait_for(lambda: not live_processes_with(marker), 10), live_processes_with(marker)
    # A crash: the worker dies of SIGSEGV while it is timing.
    out = tmp_path / "crash.json"
    runner = subprocess.Popen(fresh_argv(cpu_bundle / "run.py", "--out", str(out), "--min-seconds", "60"), cwd=tmp_path,
                              env=fresh_env(numpy_only, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        worker = wait_for(lambda: _worker_of(marker), 60)
        assert worker, "no worker process started"
        os.kill(worker, signal.SIGSEGV)
        stdout, stderr = runner.communicate(timeout=60)
    finally:
        runner.kill()
        runner.wait()
    assert runner.returncode == 7, stderr + stdout
    [record] = json.loads(out.read_text())["results"]
    assert record["row"]["category"] == "crash" and record["row"]["message"].startswith("worker crashed with SIGSEGV"), record
    assert wait_for(lambda: not live_processes_with(marker), 10), live_processes_with(marker)
    assert list(scratch.iterdir()) == []


def test_a_killed_runner_leaves_no_worker_and_no_work_directory(cpu_bundle, numpy_only, tmp_path):
    marker = f"DLCBENCH_STAGE_TEST_{os.getpid()}_{tmp_path.name}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    runner = subprocess.Popen(fresh_argv(cpu_bundle / "run.py", "--out", str(tmp_path / "r.json"), "--min-seconds", "60"),
                              cwd=tmp_path, env=fresh_env(numpy_only, {"TMPDIR": str(scratch), marker: "1"}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _worker_of(marker), 60), "no worker process started"
        assert sorted(p.name.rsplit("-", 1)[0] for p in scratch.iterdir()) == ["dlcbench-job", "dlcbench-stage"]
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    finally:
        runner.kill()
        runner.wait()
    # the worker dies with its launcher; the janitor removes the unpacked stage and the worker's directory
    assert wait_for(lambda: not live_processes_with(marker), 15), live_processes_with(marker)
    assert wait_for(lambda: not any(scratch.iterdir()), 10), list(scratch.iterdir())


# --------------------------------------------------------------------------- size limit


def _runtime_mb(index: dict) -> float:
    stored = sum(e["stored_bytes"] for e in index["files"] if not e["path"].startswith(("models/", "jobs/", "blobs/")))
    return stored / 10**6


def test_size_limit_is_refused_with_one_line(tmp_path):
    out = tmp_path / "stage"
    proc = _build(out, "--target", "cpu", "--limit-mb", "1")
    assert_one_line_error(proc, 2, "runtime alone takes", "over the 1.00 MB stage limit")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial stage left behind


def test_a_model_over_the_limit_fails_or_is_skipped(cpu_bundle, tmp_path):
    limit = f"{_runtime_mb(read_stage_index(cpu_bundle)) + 0.05:.3f}"  # the runtime fits, the model does not
    proc = _build(tmp_path / "a", "--target", "cpu", "--limit-mb", limit)
    assert_one_line_error(proc, 2, "stage over its limit: mlp:tiny", "--skip-oversize")
    proc = _build(tmp_path / "b", "--target", "cpu", "--limit-mb", limit, "--skip-oversize")
    assert_one_line_error(proc, 2, "nothing to run in the stage: mlp:tiny")
    assert list(tmp_path.iterdir()) == []


def test_config_validation(tmp_path):
    with pytest.raises(BadInputError, match="arch"):
        StageConfig(tmp_path / "b", arch="sm_91")
    with pytest.raises(BadInputError, match="python"):
        StageConfig(tmp_path / "b", python="3")
    with pytest.raises(BadInputError, match="batches"):
        StageConfig(tmp_path / "b", batches="1,x")
    with pytest.raises(BadInputError, match="unknown preset"):
        StageConfig(tmp_path / "b", models="mlp:huge")
    with pytest.raises(BadInputError, match="limit_mb"):
        StageConfig(tmp_path / "b", limit_mb=0)
    with pytest.raises(BadInputError):
        StageConfig(tmp_path / "b", models="nosuchmodel")
    with pytest.raises(BadInputError, match="unknown backend 'nosuch'"):
        StageConfig(tmp_path / "b", backends="tvm,nosuch")
    with pytest.raises(BadInputError, match="backend openvino has no cuda target; its targets: cpu"):
        StageConfig(tmp_path / "b", backends="openvino", target="cuda")
    with pytest.raises(BadInputError, match="unknown precision 'fp8'; valid: fp32, fp16, bf16, int8"):
        StageConfig(tmp_path / "b", precisions="fp32,fp8")
    with pytest.raises(BadInputError, match="must look like BACKEND:KEY=VALUE"):
        StageConfig(tmp_path / "b", backend_options=["mode=max-autotune"])
    with pytest.raises(BadInputError, match="names inductor, which is not among the backends"):
        StageConfig(tmp_path / "b", backends="tvm", backend_options=["inductor:mode=max-autotune"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(BadInputError, match="is not a dlcbench stage"):
        StageConfig(tmp_path / "full")
    config = StageConfig(tmp_path / "b", models="mlp,resnet50:tiny", batches="8,1", backends="tvm,torch,jax")
    assert config.model_specs() == [("mlp", "default"), ("resnet50", "tiny")] and config.batches == [1, 8]
    assert config.python == "3.12" and "onnx2torch" in config.carried() and "keras" in config.carried()
    assert StageConfig(tmp_path / "b", target="cpu").carried() == [] and StageConfig(tmp_path / "b", carry="none").carried() == []


#: What pip says when it cannot reach the package index (then the wheel test is skipped, not failed).
_OFFLINE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
            "Network is unreachable", "Could not fetch URL", "ProxyError", "ConnectTimeout", "Read timed out")


@pytest.fixture(scope="session")
def tvm_ffi_cp312_wheel(export_cache) -> Path:
    """The CPython 3.12 manylinux wheel of the apache-tvm-ffi pinned in pyproject.toml, fetched by pip into this
    session's cache; skips only when pip cannot reach the package index."""
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    version = next(p.split("==", 1)[1] for p in pins if p.startswith("apache-tvm-ffi=="))
    cache = export_cache / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                           "--retries", "1", "--timeout", "30", "-q", "-d", str(cache), f"apache-tvm-ffi=={version}"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and any(s in proc.stderr + proc.stdout for s in _OFFLINE):
        pytest.skip(f"pip cannot reach the package index for apache-tvm-ffi=={version}: "
                    f"{' '.join(proc.stderr.split())[-300:]}")
    wheels = sorted(cache.glob(f"apache_tvm_ffi-{version}-cp312-*.whl"))
    assert proc.returncode == 0 and wheels, proc.stderr[-2000:]
    return wheels[-1]


def test_tvm_ffi_from_a_wheel_for_another_python(tvm_ffi_cp312_wheel):
    """The Python 3.12 runtime comes from the pinned version's wheel, stripped of headers, sources and stubs."""
    from dlcbench.stage.files import tvm_ffi_files

    files, source = tvm_ffi_files("3.12", tvm_ffi_cp312_wheel, tvm_ffi_cp312_wheel.parent, print)
    assert source == f"wheel {tvm_ffi_cp312_wheel.name}"
    assert any(r.startswith("tvm_ffi/core.cpython-312-") for r in files)
    assert not any(r.startswith(f"tvm_ffi/core.cpython-{HERE.replace('.', '')}-") for r in files if HERE != "3.12")
    assert {"tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi/lib/libtvm_ffi_testing.so", "tvm_ffi/__init__.py"} <= set(files)
    assert not any("/include/" in r or "/cython/" in r or r.endswith(".h") for r in files)
    assert any(r.startswith("LICENSES/") for r in files)
    assert sum(len(v) for v in files.values()) < 8 * 10**6
    with pytest.raises(BadInputError, match="is not a wheel for Python 3.11"):
        tvm_ffi_files("3.11", tvm_ffi_cp312_wheel, tvm_ffi_cp312_wheel.parent, print)


def test_carried_packages_are_copied_or_fetched_for_the_target_python(tmp_path):
    """A pure-Python package is copied from this interpreter with its metadata; a compiled one for another Python
    comes from a wheel of the same version (skipped only when pip cannot reach the index)."""
    from importlib import metadata

    from dlcbench.errors import BackendUnavailableError
    from dlcbench.stage.files import package_files

    files, record = package_files("onnx2torch", "3.12", tmp_path, print)
    assert record["version"] == metadata.version("onnx2torch") and not record["binary"]
    assert "onnx2torch/__init__.py" in files and any(r.endswith(".dist-info/METADATA") for r in files)
    assert not any(r.endswith(".pyc") or r.startswith("..") for r in files)
    with pytest.raises(BadInputError, match="cannot carry nosuchpackage: it is not installed here"):
        package_files("nosuchpackage", "3.12", tmp_path, print)
    try:
        files, record = package_files("optree", "3.12" if HERE != "3.12" else "3.11", tmp_path, print)
    except BackendUnavailableError as err:
        if any(s in str(err) for s in _OFFLINE):
            pytest.skip(f"pip cannot reach the package index: {err}")
        raise
    assert record["binary"] and record["source"].startswith("wheel optree-")
    assert any(".cpython-31" in r and r.endswith(".so") and f"cpython-{HERE.replace('.', '')}" not in r for r in files)


# --------------------------------------------------------------------------- import and report


def test_import_results_into_the_store_and_report(cpu_bundle, numpy_only, tmp_path):
    """The committed H200 bundle results (the first runner's format) still import; this machine's CPU stage
    results go into the same database: latencies equal to the JSON's, re-import replaces, the report shows both."""
    from dlcbench.results.store import ResultsStore

    h200 = json.loads(H200_JSON.read_text())
    count = len(h200["results"])
    db, table = tmp_path / "r.sqlite", tmp_path / "table.md"
    proc = run_script("scripts/import_results.py", str(H200_JSON), "--db", str(db), "--table", str(table))
    assert proc.returncode == 0, proc.stderr
    assert f"imported {count} row(s) ({count} ok, 0 failed) into experiment 'gpu-nvidia-h200'" in proc.stdout
    assert table.read_text() == H200_JSON.with_suffix(".md").read_text()  # the committed table is what we render
    cpu_json = tmp_path / "cpu.json"
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(cpu_json), "--no-isolate", "--min-seconds", "0.05",
                        numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_script("scripts/import_results.py", str(cpu_json), "--db", str(db), "--experiment", "gpu-nvidia-h200",
                      "--table", str(tmp_path / "stage.md"))
    assert proc.returncode == 0, proc.stderr
    [cpu_record] = json.loads(cpu_json.read_text())["results"]
    stored_latency = next(m for m in cpu_record["row"]["metrics"] if m["name"] == "latency")

    with ResultsStore(db) as store:
        rows = store.results("gpu-nvidia-h200")
        gpu_rows = {(r["model"], r["batch"]): r for r in rows if r["target"] == "cuda"}
        [cpu_row] = [r for r in rows if r["target"] == "cpu"]
        assert len(rows) == count + 1 and len(gpu_rows) == count
        for record in h200["results"]:
            row = gpu_rows[(record["model"], record["batch"])]
            latency, native = row["metrics"]["latency"], row["metrics"]["latency_native"]
            assert latency["value"] == record["host"]["stats"]["median_ms"]
            assert latency["samples"] == [s * 1e3 for s in record["host"]["samples_s"]]
            assert native["value"] == record["native"]["stats"]["median_ms"]
            assert row["status"] == "ok" and row["check_metrics"] == record["check"]
        assert cpu_row["metrics"]["latency"]["value"] == stored_latency["value"]
        assert cpu_row["metrics"]["latency"]["samples"] == stored_latency["samples"]
        assert cpu_row["check_metrics"] == cpu_record["row"]["check_metrics"] and cpu_row["batch"] == 1
        assert cpu_row["backend"] == "tvm" and cpu_row["config"]["source"] == "stage" and cpu_row["config"]["built_here"]
        env = store.environment(cpu_row["environment_id"])
        assert env["stage"]["stage_id"] == read_stage_index(cpu_bundle)["stage_id"]
    stage_table = (tmp_path / "stage.md").read_text()
    assert "| bert | 1 | fp32 | tvm | PASS |" in stage_table and "here |" in stage_table
    proc = run_script("scripts/report.py", "gpu-nvidia-h200", "--db", str(db), "--export", "md")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| bert ")]
    assert sum("| cuda |" in ln for ln in lines) == 2 and sum("| cpu |" in ln for ln in lines) == 1, lines
    # a re-import replaces, it does not duplicate
    assert run_script("scripts/import_results.py", str(H200_JSON), "--db", str(db)).returncode == 0
    assert run_script("scripts/import_results.py", str(cpu_json), "--db", str(db), "--experiment",
                      "gpu-nvidia-h200").returncode == 0
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0] == count + 1
    # the earlier bundle's table rebuilt from the database is the table of its results file
    proc = run_script("benchmarks/gpu_table.py", "--db", str(db), "--experiment", "gpu-nvidia-h200")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == table.read_text()


def test_import_rejects_what_is_not_run_results(tmp_path):
    bad = tmp_path / "bad.json"
    for fmt in ("dlcbench-gpu-results/1", "dlcbench-stage-results/1"):
        bad.write_text(json.dumps({"format": fmt, "mode": "self-check"}))
        proc = run_script("scripts/import_results.py", str(bad), "--db", str(tmp_path / "r.sqlite"))
        assert_one_line_error(proc, 2, "self-check report, not run results")
    bad.write_text(json.dumps({"format": "something-else"}))
    proc = run_script("scripts/import_results.py", str(bad), "--db", str(tmp_path / "r.sqlite"))
    assert_one_line_error(proc, 2, "is not a dlcbench stage results file")
    bad.write_text("{not json")
    proc = run_script("scripts/import_results.py", str(bad), "--db", str(tmp_path / "r.sqlite"))
    assert_one_line_error(proc, 2, "is not JSON")
    proc = run_script("scripts/import_results.py", str(tmp_path / "missing.json"))
    assert_one_line_error(proc, 2, "cannot read")


def test_backend_options_are_checked_before_anything_is_built(tmp_path):
    """An option no precision accepts is one line before any export; one that only some precisions accept leaves
    the others' jobs out with the adapter's reason (values read as --option reads them: ``true`` is a bool)."""
    proc = _build(tmp_path / "a", "--target", "cpu", "--backend-option", "tvm:nosuch=1")
    assert_one_line_error(proc, 2, "backend tvm: unknown option(s) for tvm: nosuch; valid: arch")
    assert "compiling" not in proc.stderr and not (tmp_path / "a").exists()
    proc = _build(tmp_path / "b", "--target", "cuda", "--precision", "fp32,fp16", "--backend-option", "torch:tf32=true",
                  backends="torch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = read_stage_index(tmp_path / "b")
    [job] = index["jobs"]
    assert job["precision"] == "fp32" and job["backend_options"] == {"tf32": True} and job["artifact"] is None
    [left_out] = index["skipped"]
    assert left_out["what"] == "mlp-tiny-b1-torch-fp16" and "tf32=true needs target cuda and precision fp32" in left_out["reason"]


def test_a_stage_for_another_python_says_so(tmp_path):
    """Compiled packages carried for another Python: run.py refuses in one line instead of failing every job."""
    other = "3.12" if HERE != "3.12" else "3.11"
    proc = _build(tmp_path / "s", "--target", "cpu", "--python", other, "--carry", "optree", backends="onnxruntime")
    if proc.returncode == 3 and any(s in proc.stderr for s in _OFFLINE):
        pytest.skip(f"pip cannot reach the package index: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_script(str(tmp_path / "s" / "run.py"), "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    assert_one_line_error(proc, 2, f"this stage carries compiled packages for Python {other}, this is {HERE}")
