"""A stage of every CPU backend (tvm, onnxruntime, torch, inductor, jax), built and run here with ``--target cpu``:
TVM cross-compiled here and run on its runtime alone, the others compiled there from the staged model (their
compile time measured there), a carried package used from the stage, every job checked and timed by the stage's
copy of dlcbench in its own worker, the rows imported and compared in the report and the stage's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlcbench.compilers.registry import get_adapter
from dlcbench.stage.build import read_stage_index
from dlcbench_test_support import ROOT, run_script

BACKENDS = ("tvm", "onnxruntime", "torch", "inductor", "jax")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory):
    missing = {b: get_adapter(b).available().reason for b in BACKENDS if not get_adapter(b).available()}
    if missing:
        pytest.skip(f"backends unavailable here: {missing}")
    root = tmp_path_factory.mktemp("all-backends")
    stage, results = root / "stage", root / "results.json"
    proc = run_script("scripts/stage.py", "-o", str(stage), "--target", "cpu", "--models", "mlp:tiny", "--batch", "1",
                      "--threads", "1", "--backends", ",".join(BACKENDS), "--precision", "fp32,fp16",
                      "--carry", "onnx2torch", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_script(str(stage / "run.py"), "--out", str(results), "--min-seconds", "0.2", "--max-seconds", "2",
                      timeout=1500, cwd=root)
    return stage, results, proc


def test_every_backend_is_checked_and_timed_by_the_stage(staged_run):
    stage, results, proc = staged_run
    index = read_stage_index(stage)
    data = json.loads(results.read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_job = {r["id"]: r for r in data["results"]}
    fp32 = {b: by_job[f"mlp-tiny-b1-{b}-fp32"] for b in BACKENDS}
    for backend, record in fp32.items():
        row = record["row"]
        assert row["status"] == "ok", (backend, row.get("message"))
        metrics = {m["name"]: m for m in row["metrics"]}
        assert metrics["latency"]["value"] > 0 and metrics["latency"]["detail"]["region"] == "resident"
        assert metrics["compile_time"]["value"] >= 0
        assert row["manifest"]["backend"] == backend
    # TVM was built here and loaded on its runtime alone; every other backend compiled there, from the staged model
    assert fp32["tvm"]["job"]["artifact"] and fp32["tvm"]["row"]["manifest"]["created"] < data["environment"]["collected"]
    for backend in BACKENDS[1:]:
        assert fp32[backend]["job"]["artifact"] is None
    staged_models = {e["path"] for e in index["files"] if e["path"].startswith("models/")}
    assert any(p.endswith("/model.onnx") for p in staged_models) and any(p.endswith("/model.keras") for p in staged_models)
    # a backend without fp16 leaves that job out, with the reason; one with it runs it
    left_out = {s["what"]: s["reason"] for s in index["skipped"]}
    for backend in BACKENDS:
        job = f"mlp-tiny-b1-{backend}-fp16"
        assert (job in by_job) != (job in left_out), job
        if job in left_out:
            assert f"{backend} has no fp16 on cpu" in left_out[job]
    assert by_job["mlp-tiny-b1-tvm-fp16"]["row"]["status"] == "ok"
    # the stage's dlcbench ran everything; the carried package is the stage's copy
    assert all(Path(f).resolve().is_relative_to(stage.resolve() / "py") for f in data["dlcbench_modules"].values())
    [carried] = index["carried"]
    assert carried["name"] == "onnx2torch" and not carried["binary"]
    assert "dlcbench-stage-" in data["carried_origins"]["onnx2torch"], data["carried_origins"]


def test_stage_rows_are_imported_and_compared(staged_run, tmp_path):
    from dlcbench.results.store import ResultsStore

    _, results, proc = staged_run
    db, table = tmp_path / "r.sqlite", tmp_path / "table.md"
    proc = run_script("scripts/import_results.py", str(results), "--db", str(db), "--experiment", "stage-cpu",
                      "--table", str(table))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(results.read_text())
    with ResultsStore(db, readonly=True) as store:
        rows = store.results("stage-cpu")
    assert len(rows) == len(data["results"]) and {r["backend"] for r in rows} == set(BACKENDS)
    text = table.read_text()
    for backend in BACKENDS:
        assert f"| mlp | 1 | fp32 | {backend} | PASS |" in text, text
    assert "speedup vs torch" in text and "| mlp | 1 | fp32 | tvm | PASS |" in text
    assert any(line.startswith("| mlp | 1 | fp32 | onnxruntime |") and line.count("x |") == 1 for line in text.splitlines())
    proc = run_script("scripts/report.py", "stage-cpu", "--db", str(db), "--baseline", "torch", "--out",
                      str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Speedups relative to torch" in report and "| mlp | 1 | 1 | jax |" in report


def test_stage_matrix_is_what_the_index_says(staged_run):
    stage, _, _ = staged_run
    index = read_stage_index(stage)
    assert index["backends"] == list(BACKENDS) and index["precisions"] == ["fp32", "fp16"]
    for job in index["jobs"]:
        adapter = get_adapter(job["backend"])
        assert job["precision"] in adapter.precisions_for("cpu") and job["source"] == adapter.source
        assert bool(job["artifact"]) == adapter.cross_compiles
    assert (ROOT / "dlcbench" / "stage" / "runner.py").read_bytes() == (stage / "py" / "dlcbench" / "stage" / "runner.py").read_bytes()
