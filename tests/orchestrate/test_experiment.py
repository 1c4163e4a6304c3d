"""Isolation, the results store, resumable experiments and reports, with real backends and SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from dlcbench.errors import BadInputError
from dlcbench.orchestrate.experiment import ExperimentConfig, job_key, run_experiment
from dlcbench.results.store import SCHEMA_VERSION, ResultsStore
from dlcbench.measure.timing import TimingConfig
from dlcbench_test_support import ROOT, run_script
from dlcbench_faulty_adapters import REGISTRATION

FAST_TIMING = TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0)
FAKE_ENV = {"cpu": {"model": "test"}, "cores": 2, "peak_gflops": 50.0, "peak_bandwidth_gbs": 10.0}


@pytest.fixture
def faulty_backends(monkeypatch):
    monkeypatch.setenv("DLCBENCH_BACKENDS", REGISTRATION)


def _config(tmp_path, **kwargs):
    values = dict(name="exp", models=["mlp"], backends=["onnxruntime"], batches=[2], preset="tiny", threads=1,
                  db=tmp_path / "r.sqlite", timing=FAST_TIMING, out_root=tmp_path / "out", timeout_s=120)
    values.update(kwargs)
    return ExperimentConfig(**values)


def test_failures_are_categorised_and_the_next_job_still_runs(tmp_path, faulty_backends):
    config = _config(tmp_path, backends=["abort", "hang", "raise", "wrong", "trt", "onnxruntime"], timeout_s=20)
    counts = run_experiment(config, progress=lambda _: None, environment=FAKE_ENV)
    assert counts == {"total": 6, "skipped": 0, "held": 0, "ok": 1, "failed": 5, "journaled": 0, "repeated": 0}
    with ResultsStore(config.db) as store:
        rows = {r["backend"]: r for r in store.results("exp")}
    assert rows["abort"]["category"] == "crash" and "SIGABRT" in rows["abort"]["message"]
    assert rows["hang"]["category"] == "timeout"
    assert rows["raise"]["category"] == "compile_error" and "boom" in rows["raise"]["message"]
    assert rows["wrong"]["category"] == "accuracy_fail" and rows["wrong"]["metrics"]["latency"]["value"] > 0
    assert rows["trt"]["category"] == "unavailable"
    ok = rows["onnxruntime"]
    assert ok["status"] == "ok" and ok["metrics"]["latency"]["value"] > 0
    assert len(ok["metrics"]["latency"]["samples"]) == ok["metrics"]["latency"]["detail"]["count"]
    assert ok["check_metrics"]["passed"] and ok["manifest"]["backend"] == "onnxruntime"


def test_rerun_skips_done_jobs_and_force_repeats(tmp_path):
    config = _config(tmp_path, backends=["onnxruntime"], batches=[1, 2])
    assert run_experiment(config, progress=lambda _: None, environment=FAKE_ENV)["ok"] == 2
    assert run_experiment(config, progress=lambda _: None, environment=FAKE_ENV) == {
        "total": 2, "skipped": 2, "held": 0, "ok": 0, "failed": 0, "journaled": 0, "repeated": 0}
    config.force = True
    assert run_experiment(config, progress=lambda _: None, environment=FAKE_ENV)["ok"] == 2
    with ResultsStore(config.db) as store:
        assert len(store.results("exp")) == 2


def test_killed_run_resumes_without_loss_or_repeat(tmp_path):
    db = tmp_path / "r.sqlite"
    args = [str(ROOT / "scripts" / "compare.py"), "--name", "killme", "--models", "mlp,cnn", "--backends", "onnxruntime",
            "--batch", "1,2", "--preset", "tiny", "--threads", "1", "--db", str(db), "--min-seconds", "0",
            "--min-iters", "3"]
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    done_before = 0
    while time.time() < deadline:
        time.sleep(0.5)
        if db.exists():
            with sqlite3.connect(db) as con:
                try:
                    done_before = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
                except sqlite3.OperationalError:
                    continue
            if done_before >= 1:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= done_before < 4
    with ResultsStore(db) as store:
        before = {r["job_key"]: r["id"] for r in store.results("killme")}
    resumed = run_script(*args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(before)} already recorded" in resumed.stdout
    with ResultsStore(db) as store:
        after = {r["job_key"]: r["id"] for r in store.results("killme")}
    assert len(after) == 4
    assert all(after[k] == v for k, v in before.items())  # nothing rerun, nothing lost


def test_report_from_a_real_small_experiment(tmp_path):
    config = _config(tmp_path, name="rep", models=["mlp", "cnn"], backends=["onnxruntime", "tvm"], batches=[1, 2])
    run_experiment(config, progress=lambda _: None)
    proc = run_script("scripts/report.py", "rep", "--db", str(config.db), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("report.md", "latency.png", "speedup.png", "scaling.png", "roofline.png"):
        path = tmp_path / "report" / name
        assert path.is_file() and path.stat().st_size > 1000, name
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| mlp | tvm |" in text and "speedup over" not in text  # plots, not prose
    for fmt, marker in (("csv", "experiment,model,backend"), ("json", '"latency"'), ("md", "| model | backend")):
        out = run_script("scripts/report.py", "rep", "--db", str(config.db), "--export", fmt)
        assert out.returncode == 0 and marker in out.stdout, (fmt, out.stderr)
    with ResultsStore(config.db) as store:
        rows = store.results("rep")
        env = store.environment(rows[0]["environment_id"])
    assert env["peak_gflops"] > 0 and env["packages"]["apache-tvm"].startswith("0.27") and env["cpu"]["flags"]

    # GPU results measured on an H200 (committed), imported beside the CPU rows, are reported side by side.
    gpu_json = ROOT / "benchmarks" / "results" / "gpu-h200.json"
    imported = run_script("scripts/import_results.py", str(gpu_json), "--db", str(config.db), "--experiment", "rep")
    assert imported.returncode == 0, imported.stderr[-2000:]
    both = run_script("scripts/report.py", "rep", "--db", str(config.db), "--out", str(tmp_path / "both"))
    assert both.returncode == 0, both.stderr[-2000:]
    text = (tmp_path / "both" / "report.md").read_text()
    assert "| mlp | tvm | cuda |" in text and "| mlp | tvm | cpu |" in text and "NVIDIA H200" in text
    from dlcbench.results.report import speedups

    with ResultsStore(config.db) as store:
        models, backends, _ = speedups([r for r in store.results("rep") if r["metrics"].get("latency")], "onnxruntime")
    assert {"tvm", "tvm@cuda", "onnxruntime"} <= set(backends)


def test_bad_databases_are_refused_and_left_intact(tmp_path):
    not_db = tmp_path / "notes.sqlite"
    not_db.write_text("just text, not a database " * 100)
    with pytest.raises(BadInputError, match="not usable"):
        ResultsStore(not_db)
    assert not_db.read_text().startswith("just text")
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE stuff (x)")
    with pytest.raises(BadInputError, match="not a dlcbench one"):
        ResultsStore(foreign)
    newer = tmp_path / "newer.sqlite"
    ResultsStore(newer).close()
    with sqlite3.connect(newer) as con:
        con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(BadInputError, match="newer"):
        ResultsStore(newer)


def test_locked_database_gives_clear_error(tmp_path):
    db = tmp_path / "r.sqlite"
    store = ResultsStore(db)
    locker = sqlite3.connect(db)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(BadInputError, match="locked"):
            ResultsStore(db, timeout=0.2).ensure_experiment("x", {})
    finally:
        locker.rollback()
        locker.close()
        store.close()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"models": []}, "empty matrix"), ({"backends": ["nope"]}, "valid: tvm"), ({"models": ["nope"]}, "unknown model"),
     ({"batches": [0]}, "positive")],
)
def test_bad_matrix_is_refused(tmp_path, kwargs, fragment):
    with pytest.raises(BadInputError, match=fragment):
        _config(tmp_path, **kwargs)


def test_report_cli_errors_are_one_line(tmp_path):
    from dlcbench_test_support import assert_one_line_error

    config = _config(tmp_path)
    run_experiment(config, progress=lambda _: None, environment=FAKE_ENV)
    assert_one_line_error(run_script("scripts/report.py", "nope", "--db", str(config.db)), 2, "known: exp")
    assert_one_line_error(run_script("scripts/report.py", "exp", "--db", str(tmp_path / "none.sqlite")), 2, "no results database")
    assert_one_line_error(run_script("scripts/compare.py", "--name", "x", "--models", "mlp", "--backends", "zzz",
                                     "--db", str(config.db)), 2, "unknown backend")
    assert job_key(config.jobs()[0]) == job_key(_config(tmp_path).jobs()[0])
