"""Thread sweeps: ``compare.py --threads 1,2`` is one experiment; single-thread job keys stay what they were."""

from __future__ import annotations

import pytest

from dlcbench.errors import BadInputError
from dlcbench.measure.job import JobConfig
from dlcbench.orchestrate.experiment import ExperimentConfig, job_key
from dlcbench.results.store import ResultsStore
from dlcbench_test_support import assert_one_line_error, run_script

#: The key of this job as every database before thread sweeps stored it: it must not change.
PINNED = (JobConfig(backend="onnxruntime", model="mlp", preset="tiny", batch=2, threads=1), "61c20a41ee7a9b449552")


def test_single_thread_job_keys_are_unchanged():
    job, key = PINNED
    assert job_key(job) == key
    config = ExperimentConfig(name="e", models=["mlp"], backends=["onnxruntime"], batches=[2], preset="tiny", threads=1)
    assert [job_key(j) for j in config.jobs()] == [key]
    assert config.threads == [1] and config.jobs()[0].out_dir.name == "mlp-onnxruntime-b2"


def test_threads_are_a_matrix_dimension():
    config = ExperimentConfig(name="e", models=["mlp"], backends=["onnxruntime", "tvm"], batches=[1], preset="tiny",
                              threads="2, 1,2")
    assert config.threads == [2, 1] and config.repeated == ["thread count 2"]
    jobs = config.jobs()
    assert [(j.threads, j.backend) for j in jobs] == [(2, "onnxruntime"), (2, "tvm"), (1, "onnxruntime"), (1, "tvm")]
    assert len({job_key(j) for j in jobs}) == 4 and len({j.out_dir for j in jobs}) == 4
    assert jobs[0].out_dir.name == "mlp-onnxruntime-b1-t2"


@pytest.mark.parametrize("threads, fragment", [("1,x", "threads must be integers"), ("0", "positive"), ("", "empty")])
def test_bad_thread_lists_are_refused(threads, fragment):
    with pytest.raises(BadInputError, match=fragment):
        ExperimentConfig(name="e", models=["mlp"], backends=["onnxruntime"], preset="tiny", threads=threads)


@pytest.mark.slow
def test_compare_sweeps_threads_in_one_experiment(tmp_path):
    db = tmp_path / "r.sqlite"
    args = ["scripts/compare.py", "--name", "sweep", "--models", "mlp", "--preset", "tiny", "--backends", "onnxruntime",
            "--batch", "1", "--db", str(db), "--out", str(tmp_path / "out"), "--min-seconds", "0", "--min-iters", "20",
            "--max-seconds", "2"]
    proc = run_script(*args, "--threads", "1,2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 ok, 0 failed" in proc.stdout and "mlp/onnxruntime/b1/t2" in proc.stderr
    with ResultsStore(db, readonly=True) as store:
        rows = {r["threads"]: r for r in store.results("sweep")}
    assert set(rows) == {1, 2}
    for threads, row in rows.items():
        assert row["manifest"]["options"]["threads"] == threads  # each job ran with its own count
        detail = row["metrics"]["latency"]["detail"]
        lo, hi = detail["median_ci_ms"]
        assert lo <= row["metrics"]["latency"]["value"] <= hi and detail["ci_target"] == 0.01
        assert isinstance(detail["ci_target_met"], bool) and detail["count"] >= 20
    assert rows[1]["job_key"] == job_key(JobConfig(backend="onnxruntime", model="mlp", preset="tiny", batch=1, threads=1))
    # The single-thread half of the sweep is the same job as a plain single-thread run: nothing reruns.
    again = run_script(*args, "--threads", "1", timeout=300)
    assert again.returncode == 0 and "all 1 jobs already recorded" in again.stderr, again.stderr[-2000:]
    report = run_script("scripts/report.py", "sweep", "--db", str(db), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| threads |" in text and "spread_pct" in text and "cv_pct" in text
    assert_one_line_error(run_script(*args, "--threads", "1,two"), 2, "threads must be integers", "1,two")
