"""GPU bundles: build (CUDA device code for the arch, size within the limit, refusal over it), the standalone
runner in a fresh Python that sees only the bundle and numpy (self-check for CUDA, a full check-and-time run
for the same bundle built for the CPU), and the import of its results into the results database.

Bundles are built through the CLI in subprocesses, so TVM (and the stub ``libcuda.so.1`` a GPU-less CUDA
compile may load) never enters the pytest process.
"""

from __future__ import annotations

import json
import lzma
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dlcbench.compilers.tvm.cuda import device_code_archs, find_nvcc
from dlcbench.errors import BadInputError
from dlcbench.stage import bundle_runner
from dlcbench.stage.bundle import BundleConfig, bundle_size, read_bundle_index
from dlcbench_test_support import assert_one_line_error, run_script

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
FORBIDDEN = ("dlcbench", "tvm", "compilers", "runner", "models", "tensorflow", "torch")


def _build(out: Path, *extra: str, models: str = "mlp") -> subprocess.CompletedProcess:
    return run_script("scripts/gpu_bundle.py", "-o", str(out), "--python", HERE, "--models", models, "--preset", "tiny",
                      "--batches", "1", "--threads", "1", *extra, timeout=600)


@pytest.fixture(scope="module")
def numpy_only(tmp_path_factory) -> Path:
    """A directory whose only importable packages are numpy (and its bundled libraries)."""
    root = tmp_path_factory.mktemp("numpy-only")
    site = Path(np.__file__).resolve().parent.parent
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (root / name).symlink_to(site / name)
    return root


def fresh_python(script: Path, *args: str, numpy_dir: Path, cwd: Path, env: dict | None = None, timeout: float = 300):
    """``python -s -S script args``: no site-packages, no user site; PYTHONPATH = the numpy-only directory."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    full_env.update(PYTHONPATH=str(numpy_dir), **(env or {}))
    return subprocess.run([sys.executable, "-s", "-S", str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpu-bundle") / "bundle"
    proc = _build(out, "--target", "cpu", models="bert")  # bert: scalar (0-d) weights, several inputs
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "total" in proc.stdout and "MB" in proc.stdout
    return out


@pytest.fixture(scope="module")
def cuda_bundle(tmp_path_factory) -> Path:
    if find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not found; needed to build CUDA device code")
    out = tmp_path_factory.mktemp("cuda-bundle") / "bundle"
    proc = _build(out, "--target", "cuda", "--arch", "sm_90", "--limit-mb", "20")
    if proc.returncode == 3:
        pytest.skip(f"CUDA build unavailable here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _unpacked(bundle: Path, index: dict, rel: str, tmp: Path) -> Path:
    entry = next(e for e in index["files"] if e["path"] == rel)
    src = bundle / entry["stored"]
    if entry["compression"] != "xz":
        return src
    dst = tmp / Path(rel).name
    dst.write_bytes(lzma.decompress(src.read_bytes()))
    return dst


# --------------------------------------------------------------------------- CUDA bundle


def test_cuda_bundle_holds_sm90_code_within_its_limit(cuda_bundle, tmp_path):
    index = read_bundle_index(cuda_bundle)
    assert index["target"] == "cuda" and index["arch"] == "sm_90" and index["python"] == HERE
    size = bundle_size(cuda_bundle)
    assert index["size_bytes"] == size <= index["limit_bytes"] == 20 * 10**6
    assert size < 8 * 10**6  # runtime ~3 MB compressed plus a tiny model
    paths = {e["path"] for e in index["files"]}
    assert {"lib/libtvm_runtime.so", "lib/libtvm_runtime_cuda.so", "py/tvm_ffi/lib/libtvm_ffi.so"} <= paths
    assert any(p.startswith("lib/libcudart.so") for p in paths)
    assert any(p.startswith(f"py/tvm_ffi/core.cpython-{HERE.replace('.', '')}") for p in paths)
    assert not any("/include/" in p or p.endswith((".h", ".pxi", ".cmake")) for p in paths), "headers were not stripped"
    for item in index["items"]:
        assert item["device_code_archs"] == ["sm_90"]
        assert device_code_archs(_unpacked(cuda_bundle, index, item["library"], tmp_path)) == ["sm_90"]


def test_cuda_bundle_self_check_in_fresh_python(cuda_bundle, numpy_only, tmp_path):
    out = tmp_path / "check.json"
    proc = fresh_python(cuda_bundle / "run.py", "--self-check", "--out", str(out), numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert report["passed"] and checks["tensor_round_trip"] and not checks["missing_functions"]
    assert checks["forbidden_modules"] == []
    assert "dlcbench-bundle-" in checks["tvm_ffi_file"]  # imported from the unpacked bundle, not site-packages
    assert "libcuda.so.1" in checks["cuda_runtime"] or checks["cuda_runtime"] == "loaded"


def test_cuda_runner_loads_the_cuda_runtime_with_a_stub_driver(cuda_bundle, numpy_only, tmp_path):
    """With a stub libcuda.so.1 the bundled CUDA runtime loads and registers its module loader; no GPU: exit 3."""
    from dlcbench.compilers.tvm import cuda as tvm_cuda
    from dlcbench.errors import BackendUnavailableError
    from dlcbench.stage.bundle import tvm_lib_dir

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
    checks = json.loads(out.read_text())["checks"]
    assert checks["cuda_runtime"] == "loaded" and checks["cuda_module_loader"] is True
    results = tmp_path / "results.json"
    proc = fresh_python(cuda_bundle / "run.py", "--out", str(results), numpy_dir=numpy_only, cwd=tmp_path, env=env)
    assert proc.returncode == 3, proc.stderr + proc.stdout
    record = json.loads(results.read_text())["results"][0]
    assert record["category"] == "unavailable" and "no CUDA device" in record["message"]


# --------------------------------------------------------------------------- CPU bundle: the full runner path


def test_cpu_bundle_runs_checks_and_times_in_fresh_python(cpu_bundle, numpy_only, tmp_path):
    out = tmp_path / "results.json"
    wrapper = tmp_path / "wrapper.py"  # runs run.py in-process, then reports what got imported
    wrapper.write_text(textwrap.dedent(f"""
        import json, runpy, sys
        sys.argv = [{str(cpu_bundle / 'run.py')!r}, "--out", {str(out)!r}, "--no-isolate", "--min-seconds", "0.1",
                    "--native-repeat", "5"]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as exit:
            code = exit.code
        loaded = {{m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}}  # torch is blocked as None
        roots = sorted(loaded & set({FORBIDDEN!r}))
        print(json.dumps({{"code": code, "forbidden": roots, "path": sys.path}}))
    """))
    proc = fresh_python(wrapper, numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["forbidden"] == [], proc.stdout
    assert not any("site-packages" in p for p in report["path"])
    data = json.loads(out.read_text())
    assert data["format"] == "dlcbench-gpu-results/1" and data["mode"] == "run"
    [record] = data["results"]
    assert record["status"] == "ok" and record["check"]["passed"], record.get("message")
    assert record["check"]["max_abs"] <= 1e-4 and record["check"]["cosine"] >= 0.999
    host, native = record["host"]["stats"], record["native"]["stats"]
    assert host["count"] >= 20 and 0 < host["median_ms"] <= host["p90_ms"] <= host["p99_ms"]
    assert record["native"]["timer"] == "tvm.time_evaluator(cpu)" and native["count"] == 5 and native["median_ms"] > 0
    assert data["environment"]["python"] == sys.version.split()[0] and data["environment"]["gpus"] == []


def test_cpu_bundle_isolated_run_and_unknown_model(cpu_bundle, numpy_only, tmp_path):
    out = tmp_path / "results.json"
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(out), "--min-seconds", "0.05", "--native-repeat", "3",
                        numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "PASS" in proc.stdout and "1/1 passed" in proc.stdout
    assert json.loads(out.read_text())["results"][0]["status"] == "ok"
    proc = fresh_python(cpu_bundle / "run.py", "--models", "gpt", "--out", str(out), numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: not in this bundle: gpt"), proc.stderr


# --------------------------------------------------------------------------- size limit


def _runtime_mb(index: dict) -> float:
    stored = sum(e["stored_bytes"] for e in index["files"] if not e["path"].startswith(("models/", "weights/")))
    return stored / 10**6


def test_size_limit_is_refused_with_one_line(tmp_path):
    out = tmp_path / "bundle"
    proc = _build(out, "--target", "cpu", "--limit-mb", "1")
    assert_one_line_error(proc, 2, "runtime alone takes", "over the 1.00 MB bundle limit")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial bundle left behind


def test_a_model_over_the_limit_fails_or_is_skipped(cpu_bundle, tmp_path):
    limit = f"{_runtime_mb(read_bundle_index(cpu_bundle)) + 0.05:.3f}"  # the runtime fits, the model does not
    proc = _build(tmp_path / "a", "--target", "cpu", "--limit-mb", limit)
    assert_one_line_error(proc, 2, "bundle over its limit: mlp:tiny", "--skip-oversize")
    proc = _build(tmp_path / "b", "--target", "cpu", "--limit-mb", limit, "--skip-oversize")
    assert_one_line_error(proc, 2, "no model fits in the bundle: mlp:tiny")
    assert list(tmp_path.iterdir()) == []


def test_config_validation(tmp_path):
    with pytest.raises(BadInputError, match="arch"):
        BundleConfig(tmp_path / "b", arch="sm_91")
    with pytest.raises(BadInputError, match="python"):
        BundleConfig(tmp_path / "b", python="3")
    with pytest.raises(BadInputError, match="batches"):
        BundleConfig(tmp_path / "b", batches="1,x")
    with pytest.raises(BadInputError, match="unknown preset"):
        BundleConfig(tmp_path / "b", models="mlp:huge")
    with pytest.raises(BadInputError, match="limit_mb"):
        BundleConfig(tmp_path / "b", limit_mb=0)
    with pytest.raises(BadInputError):
        BundleConfig(tmp_path / "b", models="nosuchmodel")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(BadInputError, match="not an earlier bundle"):
        BundleConfig(tmp_path / "full")
    config = BundleConfig(tmp_path / "b", models="mlp,resnet50:tiny", batches="8,1")
    assert config.model_specs() == [("mlp", "default"), ("resnet50", "tiny")] and config.batches == [1, 8]


def test_tvm_ffi_from_a_wheel_for_another_python():
    """The Python 3.12 runtime comes from the wheel, stripped (skipped unless the wheel is cached here)."""
    from dlcbench.stage.bundle import tvm_ffi_files

    cache = Path.home() / ".cache" / "dlcbench" / "wheels"
    wheels = sorted(cache.glob("apache_tvm_ffi-*-cp312-*.whl"))
    if not wheels:
        pytest.skip(f"no cached apache-tvm-ffi cp312 wheel in {cache}")
    files, source = tvm_ffi_files("3.12", wheels[-1], cache, print)
    assert source.startswith("wheel ")
    assert any(r.startswith("tvm_ffi/core.cpython-312-") for r in files)
    assert {"tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi/lib/libtvm_ffi_testing.so", "tvm_ffi/__init__.py"} <= set(files)
    assert not any("/include/" in r or "/cython/" in r or r.endswith(".h") for r in files)
    assert sum(len(v) for v in files.values()) < 8 * 10**6


# --------------------------------------------------------------------------- the runner's duplicated logic


def test_runner_check_and_statistics_match_dlcbench():
    from dlcbench.measure.check import TOLERANCES, Tolerance, compare_output
    from dlcbench.measure.timing import statistics

    rng = np.random.default_rng(0)
    expected = rng.standard_normal((4, 50)).astype(np.float32)
    for noise in (0.0, 1e-6, 5e-4, 1e-1):
        got = expected + noise * rng.standard_normal(expected.shape).astype(np.float32)
        mine = bundle_runner.compare_output("y", got, expected, (1e-4, 1e-3, 0.999))
        ref = compare_output("y", got, expected, Tolerance(1e-4, 1e-3, 0.999))
        assert mine["passed"] == ref.passed, noise
        for key in ("max_abs", "max_rel", "cosine", "mean_abs"):
            assert mine["metrics"][key] == pytest.approx(ref.metrics[key], rel=1e-12, abs=1e-15)
    got = expected.copy()
    got[0, 0] = np.nan
    assert not bundle_runner.compare_output("y", got, expected)["passed"]
    samples = list(rng.uniform(1e-4, 2e-4, 101))
    mine, ref = bundle_runner.statistics(samples, 8), statistics(samples, 8)
    assert mine.keys() == ref.keys() and all(mine[k] == pytest.approx(ref[k]) for k in ref)
    for precision, (a, r, c) in bundle_runner.TOLERANCES.items():
        assert (TOLERANCES[precision].abs, TOLERANCES[precision].rel, TOLERANCES[precision].cosine) == (a, r, c)


# --------------------------------------------------------------------------- import and report


def _gpu_results(cpu_results: dict) -> dict:
    """The CPU run's results relabelled as a CUDA run on an H200 (what run.py writes there)."""
    data = json.loads(json.dumps(cpu_results))
    data["bundle"].update(target="cuda", arch="sm_90")
    data["environment"].update(
        hostname="gpu-host",
        gpus=[{"name": "NVIDIA H200", "driver": "580.159.03", "memory": "143771 MiB", "compute_cap": "9.0"}],
        cuda={"device_exists": True, "device_name": "NVIDIA H200", "compute_version": "9.0", "runtime_version": 13000,
              "driver_version": 13000})
    for r in data["results"]:
        r.update(target="cuda", arch="sm_90", native={**r["native"], "timer": "tvm.time_evaluator(cuda)"})
    return data


def test_import_results_into_the_store_and_report(cpu_bundle, numpy_only, tmp_path):
    cpu_json = tmp_path / "cpu.json"
    proc = fresh_python(cpu_bundle / "run.py", "--out", str(cpu_json), "--no-isolate", "--min-seconds", "0.05",
                        "--native-repeat", "3", numpy_dir=numpy_only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    gpu_json = tmp_path / "gpu.json"
    gpu_json.write_text(json.dumps(_gpu_results(json.loads(cpu_json.read_text()))))
    db = tmp_path / "r.sqlite"
    table = tmp_path / "table.md"
    proc = run_script("scripts/import_results.py", str(gpu_json), "--db", str(db), "--table", str(table))
    assert proc.returncode == 0, proc.stderr
    assert "into experiment 'gpu-nvidia-h200'" in proc.stdout
    proc = run_script("scripts/import_results.py", str(cpu_json), "--db", str(db), "--experiment", "gpu-nvidia-h200")
    assert proc.returncode == 0, proc.stderr

    from dlcbench.results.store import ResultsStore

    with ResultsStore(db) as store:
        rows = store.results("gpu-nvidia-h200")
        assert sorted(r["target"] for r in rows) == ["cpu", "cuda"]
        gpu_row = next(r for r in rows if r["target"] == "cuda")
        assert gpu_row["status"] == "ok" and gpu_row["median_ms"] > 0 and gpu_row["native_median_ms"] > 0
        assert gpu_row["check_metrics"]["passed"] and gpu_row["samples"]
        env = store.environment(gpu_row["environment_id"])
        assert env["gpus"][0]["name"] == "NVIDIA H200" and env["gpus"][0]["driver"] == "580.159.03"
        assert env["cuda"]["runtime_version"] == 13000 and env["bundle"]["bundle_id"]
    proc = run_script("scripts/report.py", "gpu-nvidia-h200", "--db", str(db), "--export", "md")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| bert ")]
    assert len(lines) == 2 and any("| cuda |" in ln for ln in lines) and any("| cpu |" in ln for ln in lines)
    # a re-import replaces, it does not duplicate
    assert run_script("scripts/import_results.py", str(gpu_json), "--db", str(db)).returncode == 0
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2

    text = table.read_text()
    assert "NVIDIA H200, driver 580.159.03" in text and "CUDA runtime 13.0" in text
    assert "| bert | tiny | 1 | PASS |" in text
    proc = run_script("benchmarks/gpu_table.py", "--db", str(db), "--experiment", "gpu-nvidia-h200")
    assert proc.returncode == 0 and "NVIDIA H200" in proc.stdout, proc.stderr


def test_import_rejects_what_is_not_run_results(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "dlcbench-gpu-results/1", "mode": "self-check"}))
    proc = run_script("scripts/import_results.py", str(bad), "--db", str(tmp_path / "r.sqlite"))
    assert_one_line_error(proc, 2, "self-check report, not run results")
    bad.write_text("{not json")
    proc = run_script("scripts/import_results.py", str(bad), "--db", str(tmp_path / "r.sqlite"))
    assert_one_line_error(proc, 2, "is not JSON")
    proc = run_script("scripts/import_results.py", str(tmp_path / "missing.json"))
    assert_one_line_error(proc, 2, "cannot read")

