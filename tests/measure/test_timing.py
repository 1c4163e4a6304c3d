"""Timing statistics on known samples and the min-count/min-time rule (a fake clock, no sleeping)."""

from __future__ import annotations

import numpy as np
import pytest

from dlcbench.measure.timing import TimingConfig, measure, statistics


def test_statistics_on_known_samples():
    samples = [0.001 * i for i in range(1, 101)]  # 1..100 ms
    stats = statistics(samples, batch=8)
    assert stats["count"] == 100
    assert stats["min_ms"] == pytest.approx(1.0)
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(np.percentile(range(1, 101), 90))
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["std_ms"] == pytest.approx(np.std(range(1, 101), ddof=1))
    assert stats["throughput_per_s"] == pytest.approx(8 / 0.0505)
    assert stats["p10_ms"] == pytest.approx(10.9) and stats["mad_ms"] == pytest.approx(25.0)
    assert stats["spread"] == pytest.approx((90.1 - 10.9) / 50.5) and stats["unstable"]
    assert not statistics([0.01] * 5)["unstable"]


class FakeClock:
    """Each run advances time by ``step`` ns."""

    def __init__(self, step_ns: int):
        self.now = 0
        self.step = step_ns
        self.runs = 0

    def clock(self) -> int:
        return self.now

    def run(self) -> None:
        self.runs += 1
        self.now += self.step


def test_min_count_wins_when_runs_are_slow():
    fake = FakeClock(step_ns=500_000_000)  # 0.5 s per run
    result = measure(fake.run, TimingConfig(warmup_iters=2, warmup_seconds=0, min_iters=5, min_seconds=1.0), clock=fake.clock)
    assert result.warmup_runs == 2 and len(result.samples_s) == 5
    assert all(s == pytest.approx(0.5) for s in result.samples_s)


def test_min_time_wins_when_runs_are_fast():
    fake = FakeClock(step_ns=1_000_000)  # 1 ms per run
    cfg = TimingConfig(warmup_iters=3, warmup_seconds=0.05, min_iters=10, min_seconds=0.2)
    result = measure(fake.run, cfg, clock=fake.clock)
    assert result.warmup_runs == 50  # warm-up also honours its minimum time
    assert len(result.samples_s) == 200
    assert fake.runs == 250


def test_max_seconds_caps_the_loop_but_never_below_min_iters():
    fake = FakeClock(step_ns=2_000_000_000)
    result = measure(fake.run, TimingConfig(warmup_iters=0, warmup_seconds=0, min_iters=3, min_seconds=100, max_seconds=1), clock=fake.clock)
    assert len(result.samples_s) == 3
