"""Metrics in one place: trackers produce them, the store keeps them in a long table, reports show them all."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import sqlite3

import pytest

from dlcbench.measure.job import JobConfig, run_job
from dlcbench.measure.timing import TimingConfig
from dlcbench.measure.trackers import Metric, Tracker, job_row, register_tracker, unregister_tracker
from dlcbench.results.store import SCHEMA_VERSION, ResultsStore, flat_table
from dlcbench_test_support import ROOT

V1_DB = ROOT / "tests" / "support" / "results-schema1.sqlite"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ort_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "a"
    config = JobConfig(backend="onnxruntime", model="mlp", preset="tiny", threads=1, out_dir=out,
                       timing=TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=5, min_seconds=0))
    return run_job(config).to_dict()


def test_a_job_becomes_named_metrics(ort_result):
    row = job_row(ort_result)
    metrics = {m["name"]: m for m in row["metrics"]}
    latency = metrics["latency"]
    assert latency["unit"] == "ms" and latency["value"] == pytest.approx(ort_result["timing"]["stats"]["median_ms"])
    assert len(latency["samples"]) == latency["detail"]["count"] == len(ort_result["timing"]["samples_s"])
    assert latency["samples"][0] == pytest.approx(ort_result["timing"]["samples_s"][0] * 1e3)
    assert {"compile_time", "artifact_size", "peak_rss", "parameters"} <= set(metrics)
    assert metrics["artifact_size"]["value"] == ort_result["artifact_bytes"]


def test_a_new_tracker_is_stored_and_exported_without_schema_change(tmp_path, ort_result):
    tracker = register_tracker(Tracker(
        "inputs_bytes", "bytes", "bytes of one batch of inputs",
        lambda r: [Metric("inputs_bytes", float(sum(4 * i["shape"][-1] for i in r["manifest"]["inputs"])), "bytes")]))
    try:
        row = {**job_row(ort_result), "model": "mlp", "backend": "onnxruntime", "target": "cpu", "precision": "fp32",
               "batch": 1, "threads": 1}
        with ResultsStore(tmp_path / "r.sqlite") as store:
            store.ensure_experiment("e", {})
            store.add_result("e", "k1", row)
            store.add_result("e", "k1", row)  # a replaced row keeps one set of metrics
            stored = store.results("e")
            exported = store.export("e", "csv")
    finally:
        unregister_tracker(tracker.name)
    assert len(stored) == 1 and stored[0]["metrics"]["inputs_bytes"]["value"] > 0
    header = next(csv.reader(io.StringIO(exported)))
    assert {"inputs_bytes_bytes", "latency_ms", "latency_p90_ms", "compile_time_s"} <= set(header)
    with sqlite3.connect(tmp_path / "r.sqlite") as raw:
        assert raw.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == len(row["metrics"])


def test_a_schema1_database_is_migrated_with_a_copy_kept_and_no_row_lost(tmp_path):
    db = tmp_path / "old.sqlite"
    shutil.copyfile(V1_DB, db)
    before = _digest(db)
    with sqlite3.connect(db) as raw:
        raw.row_factory = sqlite3.Row
        old_rows = {r["job_key"]: dict(r) for r in raw.execute("SELECT * FROM results")}
    assert old_rows and any(r["median_ms"] for r in old_rows.values())
    with ResultsStore(db) as store:
        experiments = store.experiments()
        rows = [r for e in experiments for r in store.results(e)]
        columns, flat = flat_table(rows)
    backup = db.with_name(db.name + ".v1-backup")
    assert _digest(backup) == before
    assert {r["job_key"] for r in rows} == set(old_rows)
    for row in rows:
        old = old_rows[row["job_key"]]
        assert row["status"] == old["status"] and row["message"] == old["message"]
        if old["median_ms"] is not None:
            assert row["metrics"]["latency"]["value"] == pytest.approx(old["median_ms"])
            assert row["metrics"]["latency"]["detail"]["p90_ms"] == pytest.approx(old["p90_ms"])
        if old["native_median_ms"] is not None:
            assert row["metrics"]["latency_native"]["value"] == pytest.approx(old["native_median_ms"])
        if old["compile_seconds"] is not None:
            assert row["metrics"]["compile_time"]["value"] == pytest.approx(old["compile_seconds"])
    assert "latency_native_ms" in columns
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert "median_ms" not in {c[1] for c in raw.execute("PRAGMA table_info(results)")}
    with ResultsStore(db) as store:  # a second open migrates nothing and keeps the first copy
        assert len([r for e in store.experiments() for r in store.results(e)]) == len(old_rows)
    assert _digest(backup) == before


def test_a_tracker_registered_by_the_caller_measures_experiment_jobs_and_a_broken_one_loses_nothing(tmp_path):
    from dlcbench.orchestrate.experiment import ExperimentConfig, run_experiment

    def broken(result):
        raise ZeroDivisionError("tracker bug")

    trackers_added = [
        register_tracker(Tracker("output_count", "count", "outputs of the model",
                                 lambda r: [Metric("output_count", float(len(r["manifest"]["outputs"])), "count")])),
        register_tracker(Tracker("broken", "s", "a tracker with a bug", broken)),
    ]
    try:
        config = ExperimentConfig(name="t", models=["mlp"], backends=["onnxruntime"], preset="tiny",
                                  db=tmp_path / "r.sqlite", out_root=tmp_path / "out",
                                  timing=TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0))
        counts = run_experiment(config, progress=lambda _: None)
    finally:
        for tracker in trackers_added:
            unregister_tracker(tracker.name)
    assert counts["ok"] == 1
    with ResultsStore(tmp_path / "r.sqlite") as store:
        (row,) = store.results("t")
    assert row["status"] == "ok" and row["metrics"]["output_count"]["value"] == 1.0
    assert row["metrics"]["broken"]["value"] is None and "tracker bug" in row["metrics"]["broken"]["detail"]["error"]
    assert row["metrics"]["latency"]["value"] > 0
