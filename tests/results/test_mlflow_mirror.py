"""compare --mlflow: each stored job mirrored as an MLflow run in a real local file store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlcbench.results.store import ResultsStore
from dlcbench_faulty_adapters import REGISTRATION
from dlcbench_test_support import ROOT, assert_one_line_error

FAST = ["--preset", "tiny", "--threads", "1", "--min-seconds", "0", "--min-iters", "3", "--warmup", "1"]


def compare(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_each_job_is_an_mlflow_run_with_params_metrics_and_artifacts(tmp_path):
    pytest.importorskip("mlflow", reason="MLflow is the mlflow extra: pip install -e '.[mlflow]'")
    from mlflow.tracking import MlflowClient

    store_dir = tmp_path / "mlruns"
    proc = compare(tmp_path, "--name", "mirrored", "--models", "mlp", "--backends", "onnxruntime,wrong",
                   "--batch", "1,2", *FAST, "--db", "r.sqlite", "--mlflow", str(store_dir),
                   env={"DLCBENCH_BACKENDS": REGISTRATION})
    assert proc.returncode == 8, proc.stderr[-3000:]  # the "wrong" backend fails its check
    with ResultsStore(tmp_path / "r.sqlite", readonly=True) as store:
        rows = {r["job_key"]: r for r in store.results("mirrored")}

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store_dir.as_uri())
    experiment = client.get_experiment_by_name("mirrored")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert len(runs) == len(rows) == 4
    by_key = {run.data.tags["dlcbench.job_key"]: run for run in runs}
    assert set(by_key) == set(rows)  # the database is the source: one run per stored row
    for key, row in rows.items():
        run = by_key[key]
        assert run.data.params["backend"] == row["backend"] and run.data.params["batch"] == str(row["batch"])
        assert run.data.tags["dlcbench.status"] == row["status"]
        assert run.info.status == ("FINISHED" if row["status"] == "ok" else "FAILED")
        assert run.data.metrics["latency"] == pytest.approx(row["metrics"]["latency"]["value"])
        assert run.data.metrics["latency.median_ci_lo_ms"] <= run.data.metrics["latency"]
        assert run.data.metrics["latency.p90_ms"] >= run.data.metrics["latency.p10_ms"]  # the statistics too
        assert run.data.metrics["check.passed"] == (1.0 if row["status"] == "ok" else 0.0)
        assert any(name.startswith("check.") and name.endswith(".max_abs") for name in run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"environment.json", "manifest.json"} <= artifacts
        env = json.loads(Path(client.download_artifacts(run.info.run_id, "environment.json", str(tmp_path))).read_text())
        assert env["cores"] == os.cpu_count()
    wrong = [run for run in runs if run.data.params["backend"] == "wrong"]
    assert all(run.data.tags["dlcbench.category"] for run in wrong)


def test_mlflow_problems_are_one_line_before_anything_runs(tmp_path):
    try:
        import mlflow  # noqa: F401
    except ImportError:
        proc = compare(tmp_path, "--name", "x", "--models", "mlp", "--backends", "onnxruntime", *FAST,
                       "--db", "r.sqlite", "--mlflow", str(tmp_path / "mlruns"))
        assert_one_line_error(proc, 2, "pip install -e '.[mlflow]'")
    else:
        (tmp_path / "afile").write_text("not a store")
        proc = compare(tmp_path, "--name", "x", "--models", "mlp", "--backends", "onnxruntime", *FAST,
                       "--db", "r.sqlite", "--mlflow", str(tmp_path / "afile"))
        assert_one_line_error(proc, 2, "--mlflow")
    assert not (tmp_path / "r.sqlite").exists()
