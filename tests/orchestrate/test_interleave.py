"""Interleaved timing (``compare --interleave K``): rounds pooled, drift in one round absorbed, failures isolated."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dlcbench.errors import BadInputError
from dlcbench.measure.job import JobConfig, pool_rounds, round_timing
from dlcbench.measure.timing import TimingConfig, statistics
from dlcbench.orchestrate.experiment import ExperimentConfig
from dlcbench.orchestrate.launcher import run_interleaved
from dlcbench.results.store import ResultsStore
from dlcbench_drifting_adapter import DRIFTING_REGISTRATION
from dlcbench_test_support import ROOT, assert_one_line_error, live_processes_with

FAST = TimingConfig(warmup_iters=3, warmup_seconds=0, min_iters=40, min_seconds=0.2, ci_target=0)


def _round(samples_s, region="resident"):
    return [{"samples_s": samples_s, "warmup_runs": 2, "stats": statistics(samples_s), "region": region}]


def test_pool_rounds_keeps_every_sample_and_each_round_median():
    rng = np.random.default_rng(1)
    rounds = [_round(list(rng.normal(1e-3 * scale, 1e-5, 50))) for scale in (1.0, 1.0, 2.0)]
    pooled, = pool_rounds(rounds, TimingConfig(ci_target=0.01), batch=1)
    assert pooled["stats"]["count"] == 150 and len(pooled["samples_s"]) == 150
    assert pooled["warmup_runs"] == 6 and pooled["region"] == "resident"
    medians = [r["median_ms"] for r in pooled["rounds"]]
    assert [r["round"] for r in pooled["rounds"]] == [1, 2, 3]
    assert medians[2] == pytest.approx(2 * medians[0], rel=0.05)
    assert pooled["stats"]["round_spread"] == pytest.approx((max(medians) - min(medians)) / pooled["stats"]["median_ms"])
    assert pooled["stats"]["ci_target"] == 0.01 and pooled["stats"]["ci_target_met"] in (True, False)
    assert "machine_load" not in pooled["stats"]  # these rounds recorded none
    loaded = [[{**r[0], "stats": {**r[0]["stats"], "machine_load": {"others_cpu_pct": busy, "steal_pct": 1.0,
                                                                     "seconds": 1.0}}}] for r, busy in
              zip(rounds, (2.0, 60.0, 5.0))]
    worst, = pool_rounds(loaded, TimingConfig(), batch=1)
    assert worst["stats"]["machine_load"] == {"others_cpu_pct": 60.0, "steal_pct": 1.0, "seconds": 3.0}
    assert [r["machine_load"]["others_cpu_pct"] for r in worst["rounds"]] == [2.0, 60.0, 5.0]
    # The pooled median follows the two rounds that agree, not the drifted one.
    assert pooled["stats"]["median_ms"] < 1.1 * medians[0]
    # Its interval is over the rounds: the pooled runs' bootstrap (kept) is far narrower than the drift, and the
    # +-1 % target is read from the honest one.
    lo, hi = pooled["stats"]["median_ci_ms"]
    plo, phi = pooled["stats"]["pooled_median_ci_ms"]
    assert lo <= plo and hi >= phi and (hi - lo) > 10 * (phi - plo)
    assert hi > 1.5 * medians[0] and pooled["stats"]["ci_target_met"] is False
    steady = [_round(list(rng.normal(1e-3, 1e-5, 50))) for _ in range(4)]
    quiet, = pool_rounds(steady, TimingConfig(ci_target=0.01), batch=1)
    assert quiet["stats"]["ci_target_met"] is True  # rounds that agree keep a tight interval
    # Rounds timed for a while, not for a count: six slow rounds of a few runs and two fast ones of hundreds.
    # The median is over the rounds (each weighs the same); the pooled runs' median, kept, follows the fast two.
    uneven = [_round(list(rng.normal(18e-3, 1e-5, 5))) for _ in range(6)] + \
        [_round(list(rng.normal(0.13e-3, 1e-6, 500))) for _ in range(2)]
    skewed, = pool_rounds(uneven, TimingConfig(ci_target=0.01), batch=8)
    assert skewed["stats"]["median_ms"] == pytest.approx(18.0, rel=0.01)
    assert skewed["stats"]["pooled_median_ms"] == pytest.approx(0.13, rel=0.05)
    assert skewed["stats"]["throughput_per_s"] == pytest.approx(8 / 18e-3, rel=0.01)
    single = _round([1e-3, 2e-3])
    assert pool_rounds([single], TimingConfig(), 1) == single
    with pytest.raises(BadInputError):
        pool_rounds([], TimingConfig(), 1)


def test_round_timing_shares_the_minimums_between_rounds():
    base = TimingConfig(warmup_iters=10, min_iters=20, min_seconds=1.0, max_seconds=60.0, ci_target=0.01)
    one = round_timing(base, 4)
    assert (one.min_iters, one.min_seconds, one.max_seconds) == (5, 0.25, 15.0)
    assert (one.warmup_iters, one.ci_target) == (10, 0.01)
    assert round_timing(base, 1) == base
    with pytest.raises(BadInputError):
        round_timing(base, 0)


def _jobs(tmp_path, backends):
    return [JobConfig(backend=b, model="mlp", preset="tiny", threads=1, timing=FAST, out_dir=tmp_path / b)
            for b in backends]


def test_interleaved_rounds_absorb_drift_in_one_round(tmp_path, monkeypatch, tiny_export):
    marker = tmp_path / "drift"
    monkeypatch.setenv("DLCBENCH_BACKENDS", DRIFTING_REGISTRATION)
    monkeypatch.setenv("DLCBENCH_DRIFT_MARKER", str(marker))
    lines = []

    def on_round(index):  # round 3 of 5 runs under a slowdown of the drifting backend only
        if index == 2:
            marker.write_text("slow 0.002")
        elif marker.exists():
            marker.unlink()

    rows = run_interleaved(_jobs(tmp_path, ["onnxruntime", "drifting"]), 5, 120,
                           on_round=on_round, progress=lines.append)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    latency = {name: next(m for m in r["metrics"] if m["name"] == "latency") for name, r in
               zip(["onnxruntime", "drifting"], rows)}
    drifting = latency["drifting"]["detail"]["round_medians_ms"]
    assert len(drifting) == 5 and len(latency["onnxruntime"]["detail"]["round_medians_ms"]) == 5
    clean = drifting[:2] + drifting[3:]
    assert drifting[2] > 2 + max(clean)  # the slow round really was slow (2 ms of sleep a call)
    assert latency["drifting"]["value"] < 1.5 * float(np.median(clean))  # ...and the median over the rounds absorbed it
    assert latency["drifting"]["detail"]["round_spread"] > 10
    loads = latency["drifting"]["detail"]["round_machine_load"]  # what else the machine did in each round
    assert len(loads) == 5 and all(0 <= load["others_cpu_pct"] <= 100 and load["seconds"] > 0 for load in loads)
    assert latency["onnxruntime"]["detail"]["round_spread"] < 10
    rounds = [line for line in lines if "round " in line]
    assert rounds[0].index("onnxruntime") < rounds[0].index("drifting")  # A B, then B A
    assert rounds[1].index("drifting") < rounds[1].index("onnxruntime")
    result_json = (tmp_path / "drifting" / "result.json").read_text()
    assert '"rounds"' in result_json


@pytest.mark.parametrize("mishap, category", [("crash", "crash"), ("hang", "timeout")])
def test_a_job_that_dies_mid_round_is_recorded_and_the_others_finish(tmp_path, monkeypatch, tiny_export, mishap,
                                                                    category):
    marker = tmp_path / "drift"
    monkeypatch.setenv("DLCBENCH_BACKENDS", DRIFTING_REGISTRATION)
    monkeypatch.setenv("DLCBENCH_DRIFT_MARKER", str(marker))

    def on_round(index):
        if index == 1:
            marker.write_text(mishap)

    rows = run_interleaved(_jobs(tmp_path, ["drifting", "onnxruntime"]), 3, 20, on_round=on_round)
    assert rows[0]["status"] == "failed" and rows[0]["category"] == category, rows[0]
    assert rows[1]["status"] == "ok"
    latency = next(m for m in rows[1]["metrics"] if m["name"] == "latency")
    assert len(latency["detail"]["round_medians_ms"]) == 3
    assert not live_processes_with(str(marker))


def test_compare_interleave_stores_rounds_and_reports_their_spread(tmp_path):
    db = tmp_path / "r.sqlite"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare.py"), "--name", "il", "--models", "mlp", "--preset", "tiny",
         "--backends", "onnxruntime,openvino", "--interleave", "2", "--db", str(db), "--min-seconds", "0.1",
         "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "2 interleaved rounds" in run.stderr
    with ResultsStore(db, readonly=True) as store:
        rows = store.results("il")
        table = store.export("il", "md")
    assert {r["backend"] for r in rows} == {"onnxruntime", "openvino"}
    assert all(len(r["metrics"]["latency"]["detail"]["round_medians_ms"]) == 2 for r in rows)
    assert "latency_round_spread_pct" in table


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_compare_refuses_a_bad_round_count(tmp_path, value):
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare.py"), "--name", "il", "--models", "mlp", "--preset", "tiny",
         "--backends", "onnxruntime", "--interleave", value, "--db", str(tmp_path / "r.sqlite")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    if value != "x":  # argparse's own usage message for a non-integer
        assert_one_line_error(run, 2, "interleave")
    with pytest.raises(BadInputError, match="rounds"):
        ExperimentConfig(name="x", models=["mlp"], backends=["onnxruntime"], interleave=0)


def test_round_timing_never_asks_for_more_than_it_allows():
    tight = round_timing(TimingConfig(min_iters=10, max_iters=10), 3)
    assert tight.min_iters == 4 <= tight.max_iters
