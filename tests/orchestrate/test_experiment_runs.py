"""scripts/compare.py end to end: matrix validation, exit codes, --retry-failed, claims between concurrent runs,
and results journaled (not lost) while another process holds the database locked."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from dlcbench.orchestrate.experiment import ExperimentConfig, job_key, run_experiment
from dlcbench.results.store import ResultsStore
from dlcbench.measure.timing import TimingConfig
from dlcbench_flaky_adapter import FLAKY_REGISTRATION
from dlcbench_test_support import ROOT, assert_one_line_error

FAST = ["--backends", "onnxruntime", "--preset", "tiny", "--threads", "1", "--min-seconds", "0", "--min-iters", "3"]
FAKE_ENV = {"cpu": {"model": "test"}, "cores": 2}


@pytest.fixture
def work(tmp_path, tiny_export) -> Path:
    """A working directory (not the repository) holding a real ONNX model at ``models/mlp.onnx``."""
    models = tmp_path / "work" / "models"
    models.mkdir(parents=True)
    shutil.copyfile(tiny_export("mlp").onnx_path, models / "mlp.onnx")
    return tmp_path / "work"


def compare(cwd: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``scripts/compare.py ARGS`` with ``cwd`` as the working directory."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start_compare(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "compare.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(db: Path, experiment: str) -> dict[str, dict]:
    with ResultsStore(db, readonly=True) as store:
        return {r["job_key"]: r for r in store.results(experiment)}


def wait_for_claim(db: Path, proc: subprocess.Popen, deadline_s: float = 120) -> None:
    """Polls (read-only) until some run has claimed a job in ``db``."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and proc.poll() is None:
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)) as con:
                if con.execute("SELECT COUNT(*) FROM claims").fetchone()[0]:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    raise AssertionError(f"no job was claimed in {db}: {proc.poll()}")


def test_relative_model_paths_repeats_and_artifacts_follow_the_callers_directory(work):
    proc = compare(work, "--name", "rel", "--models", "models/mlp.onnx,./models/mlp.onnx", "--batch", "2,2", *FAST,
                   "--db", "r.sqlite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ignoring repeated model" in proc.stderr and "ignoring repeated batch 2" in proc.stderr
    assert proc.stdout.startswith("rel: 1 ok, 0 failed, 0 already recorded, 2 repeated matrix entries ignored (of 1)")
    (row,) = rows(work / "r.sqlite", "rel").values()
    model = str(work / "models" / "mlp.onnx")
    assert row["model"] == model and row["config"]["model"] == model  # absolute: the worker may run anywhere
    assert Path(row["config"]["out_dir"]).parent == work / "out" / "experiments" / "rel"
    assert (Path(row["config"]["out_dir"]) / "manifest.json").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["--precision", "fp64"], "unknown precision 'fp64'"),
    (["--precision", "fp16"], "no backend of the matrix has precision fp16"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--target", "tpu"], "unknown target 'tpu'"),
    (["--batch", "1,0"], "positive"),
    (["--batch", "1,x"], "must be integers"),
    (["--backends", "onnxruntime,nope"], "unknown backend 'nope'"),
    (["--models", "mlp,models/missing.onnx"], "model file not found: models/missing.onnx"),
    (["--models", "mlp,nope"], "unknown model 'nope'"),
    (["--db-wait", "-1"], "the database wait must be a finite number >= 0, got -1.0"),
])
def test_a_bad_matrix_is_one_line_and_exit_2_before_anything_runs(tmp_path, args, fragment):
    proc = compare(tmp_path, "--name", "bad", "--models", "mlp", "--batch", "1", *FAST, "--db", "r.sqlite", *args)
    assert_one_line_error(proc, 2, fragment)  # (a later flag overrides an earlier one)
    assert not (tmp_path / "r.sqlite").exists() and not (tmp_path / "out").exists()


def test_failed_jobs_exit_8_and_retry_failed_reruns_only_them(work, tmp_path):
    env = {"DLCBENCH_BACKENDS": FLAKY_REGISTRATION, "DLCBENCH_FLAKY_MARKER": str(tmp_path / "flaky-marker")}
    args = ["--name", "flaky", "--models", "models/mlp.onnx", "--batch", "2", *FAST, "--backends", "flaky,onnxruntime",
            "--db", "r.sqlite"]
    first = compare(work, *args, env=env)
    assert first.returncode == 8, (first.stdout, first.stderr[-2000:])
    assert first.stdout.startswith("flaky: 1 ok, 1 failed, 0 already recorded (of 2)")
    before = {r["backend"]: r for r in rows(work / "r.sqlite", "flaky").values()}
    assert before["flaky"]["status"] == "failed" and "first attempt fails" in before["flaky"]["message"]

    again = compare(work, *args, env=env)  # a plain rerun keeps the failure
    assert again.returncode == 0 and again.stdout.startswith("flaky: 0 ok, 0 failed, 2 already recorded"), again.stdout
    assert "--retry-failed" in again.stderr

    retry = compare(work, *args, "--retry-failed", env=env)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert retry.stdout.startswith("flaky: 1 ok, 0 failed, 1 already recorded (of 2)")
    after = {r["backend"]: r for r in rows(work / "r.sqlite", "flaky").values()}
    assert after["flaky"]["status"] == "ok" and after["flaky"]["metrics"]["latency"]["value"] > 0
    assert after["onnxruntime"] == before["onnxruntime"]  # the successful job was not rerun


def test_a_job_another_live_run_holds_is_skipped_and_a_dead_runs_claim_is_taken_over(work):
    config = ExperimentConfig(name="held", models=[str(work / "models" / "mlp.onnx")], backends=["onnxruntime"],
                              batches=[1, 2], preset="tiny", threads=1, db=work / "r.sqlite", out_root=work / "out",
                              timing=TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0))
    held_key = job_key(config.jobs()[0])
    ResultsStore(config.db).close()
    other = subprocess.Popen(["sleep", "300"])  # a live process on this host, standing in for another run
    try:
        with closing(sqlite3.connect(config.db)) as con, con:
            con.execute("INSERT INTO claims VALUES (?, ?, ?, ?, NULL, '2000-01-01T00:00:00')",
                        ("held", held_key, other.pid, socket.gethostname()))
        lines: list[str] = []
        counts = run_experiment(config, progress=lines.append, environment=FAKE_ENV)
        assert (counts["ok"], counts["held"]) == (1, 1)
        assert any(f"skipped, held by another run (pid {other.pid}" in line for line in lines), lines
        assert set(rows(config.db, "held")) == {job_key(config.jobs()[1])}
    finally:
        other.kill()
        other.wait()
    lines = []
    counts = run_experiment(config, progress=lines.append, environment=FAKE_ENV)  # that run is gone now
    assert (counts["ok"], counts["skipped"], counts["held"]) == (1, 1, 0)
    assert any(f"taking over job {held_key} from pid {other.pid}" in line for line in lines), lines
    assert len(rows(config.db, "held")) == 2
    with ResultsStore(config.db) as store:
        assert store.claims("held") == []


def test_two_runs_of_one_experiment_at_once_split_its_jobs(work):
    # jobs long enough that the second run, which measures the machine before it claims, finds some left even
    # while other tests load the CPUs
    args = ["--name", "twice", "--models", "models/mlp.onnx", "--batch", "1,2,3", *FAST, "--min-seconds", "3",
            "--db", "r.sqlite"]
    first = start_compare(work, *args)
    wait_for_claim(work / "r.sqlite", first)
    second = start_compare(work, *args)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    ran = [int(out.split(": ", 1)[1].split(" ok")[0]) for out, _ in outputs]
    assert sum(ran) == 3 and min(ran) >= 1, outputs  # every job ran once, and the second run did take some
    assert "skipped, held by another run" in outputs[0][1] + outputs[1][1]
    assert len(rows(work / "r.sqlite", "twice")) == 3


LOCKER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
con.execute("ROLLBACK")
"""


def test_a_result_finished_while_the_database_is_locked_is_journaled_then_imported(work):
    db = work / "r.sqlite"
    args = ["--name", "locked", "--models", "models/mlp.onnx", "--batch", "2", *FAST, "--min-seconds", "2",
            "--db", "r.sqlite"]
    run = start_compare(work, *args, "--db-wait", "1")
    wait_for_claim(db, run)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
        assert "stayed locked by another process for 1 s" in err and "the next run imports it" in err, err
        assert "1 waiting in r.sqlite.pending" in out
        pending = list((work / "r.sqlite.pending").glob("*.json"))
        assert len(pending) == 1 and "locked" in pending[0].name
    finally:
        locker.communicate(input="", timeout=60)
    with closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0  # the row really was not written

    resumed = compare(work, *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "imported 1 result(s) journaled" in resumed.stderr
    assert resumed.stdout.startswith("locked: 0 ok, 0 failed, 1 already recorded (of 1)")  # nothing repeated
    (row,) = rows(db, "locked").values()
    assert row["status"] == "ok" and row["metrics"]["latency"]["value"] > 0 and row["environment_id"]
    assert not (work / "r.sqlite.pending").exists()
    with ResultsStore(db) as store:
        assert store.claims("locked") == []
