"""Bootstrap intervals, robust stability, median comparisons and the adaptive timing length, on known samples."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dlcbench.errors import BadInputError
from dlcbench.measure.timing import (FASTER, NO_DIFFERENCE, SLOWER, TimingConfig, bootstrap_medians, compare_medians,
                                     compare_rounds, measure, median_interval, rounds_interval, rounds_median,
                                     statistics)


def test_fast_bootstrap_matches_resampling_by_hand():
    rng = np.random.default_rng(1)
    for n in (7, 40):  # odd and even counts: one middle value, or the mean of two
        x = rng.lognormal(0, 0.5, n)
        naive = np.sort(np.median(x[rng.integers(0, n, (20000, n))], axis=1))
        fast = np.sort(bootstrap_medians(x, 20000))
        grid = np.union1d(naive, fast)
        distance = np.abs(np.searchsorted(naive, grid, "right") - np.searchsorted(fast, grid, "right")).max() / 20000
        assert distance < 0.02, n  # Kolmogorov-Smirnov: the two draws come from one distribution


def test_interval_covers_the_true_median_and_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (10_000, 40_000):
        lo, hi = median_interval(rng.normal(5.0, 1.0, n))
        assert lo < 5.0 < hi
        widths[n] = hi - lo
    # The median's standard error is 1.2533 sigma / sqrt(n): the 95 % interval is 2 * 1.96 of it.
    assert widths[10_000] == pytest.approx(2 * 1.96 * 1.2533 / 100, rel=0.15)
    assert widths[40_000] / widths[10_000] == pytest.approx(0.5, rel=0.15)


def test_interval_is_deterministic_and_cheap_for_100k_samples():
    samples = np.random.default_rng(3).gamma(4, 0.25, 100_000)
    start = time.perf_counter()
    first = statistics(samples)
    assert time.perf_counter() - start < 3.0  # O(n log n): an n x resamples matrix would take far longer
    assert statistics(samples)["median_ci_ms"] == first["median_ci_ms"]
    lo, hi = first["median_ci_ms"]
    assert lo < first["median_ms"] < hi


def test_statistics_report_robust_spread_and_a_few_outliers_stay_stable():
    rng = np.random.default_rng(4)
    steady = rng.normal(1e-3, 1e-5, 10_000)
    steady[::200] = 20e-3  # 0.5 % outliers, 20x slower (an interrupt, a page fault)
    stats = statistics(steady)
    assert stats["cv"] > 0.25  # the outliers dominate std / mean ...
    assert stats["spread"] < 0.05 and not stats["unstable"]  # ... but not the percentiles
    assert stats["p10_ms"] < stats["median_ms"] < stats["p90_ms"] < stats["p99_ms"]
    assert stats["mad_ms"] == pytest.approx(0.6745e-2, rel=0.1)  # MAD of a normal: 0.6745 sigma (sigma 0.01 ms)

    bimodal = np.where(rng.random(10_000) < 0.7, 1e-3, 1.5e-3) + rng.normal(0, 1e-6, 10_000)
    stats = statistics(bimodal)
    assert stats["unstable"] and stats["spread"] > 0.4


def test_compare_medians_reads_the_verdict_from_the_interval():
    rng = np.random.default_rng(5)
    base = rng.normal(1.0, 0.05, 2000)
    same = rng.normal(1.0, 0.05, 2000)
    assert compare_medians(base, same)["verdict"] == NO_DIFFERENCE
    fast = rng.normal(0.8, 0.05, 2000)
    result = compare_medians(base, fast)
    assert result["verdict"] == FASTER and result["ci"][0] > 1 and result["speedup"] == pytest.approx(1.25, rel=0.02)
    assert result["ci"][0] < result["speedup"] < result["ci"][1]
    assert compare_medians(fast, base)["verdict"] == SLOWER
    # A point estimate 5 % apart on 5 noisy samples each is not a difference.
    assert compare_medians(rng.normal(1.0, 0.2, 5), rng.normal(0.95, 0.2, 5))["verdict"] == NO_DIFFERENCE


class NoisyClock:
    """A fake clock whose runs take ``durations()`` seconds each (no sleeping)."""

    def __init__(self, durations):
        self.now, self.durations, self.runs = 0, durations, 0

    def clock(self) -> int:
        return self.now

    def run(self) -> None:
        self.runs += 1
        self.now += int(self.durations() * 1e9)


FAST = dict(warmup_iters=2, warmup_seconds=0, min_iters=20, min_seconds=0.01)


def test_adaptive_length_stops_at_the_minimums_for_steady_runs():
    rng = np.random.default_rng(6)
    fake = NoisyClock(lambda: 1e-3 * (1 + 0.001 * rng.standard_normal()))
    result = measure(fake.run, TimingConfig(**FAST, ci_target=0.01), clock=fake.clock)
    assert result.stats["ci_target_met"] is True and result.stats["ci_target"] == 0.01
    assert result.stats["count"] == 20  # the minimums (20 runs, 10 ms) already pin the median to +-1 %


def test_adaptive_length_goes_on_until_the_target_for_noisy_runs():
    rng = np.random.default_rng(7)
    fake = NoisyClock(lambda: 1e-3 * rng.lognormal(0, 0.3))
    result = measure(fake.run, TimingConfig(**FAST, ci_target=0.01), clock=fake.clock)
    stats = result.stats
    assert stats["ci_target_met"] is True and stats["count"] > 100
    lo, hi = stats["median_ci_ms"]
    assert max(hi - stats["median_ms"], stats["median_ms"] - lo) <= 0.01 * stats["median_ms"]
    # The same runs without a target stop at the minimums, with no verdict on the target.
    fake = NoisyClock(lambda: 1e-3 * rng.lognormal(0, 0.3))
    plain = measure(fake.run, TimingConfig(**FAST, ci_target=0), clock=fake.clock)
    assert plain.stats["count"] == 20 and plain.stats["ci_target_met"] is None


def test_adaptive_length_respects_the_caps_and_records_a_missed_target():
    rng = np.random.default_rng(8)
    fake = NoisyClock(lambda: 1e-3 * rng.lognormal(0, 1.0))
    result = measure(fake.run, TimingConfig(**FAST, max_iters=300, ci_target=0.001), clock=fake.clock)
    assert result.stats["count"] == 300 and result.stats["ci_target_met"] is False
    fake = NoisyClock(lambda: 1e-3 * rng.lognormal(0, 1.0))
    result = measure(fake.run, TimingConfig(**FAST, max_seconds=0.5, ci_target=0.001), clock=fake.clock)
    assert 0.5 <= sum(result.samples_s) < 0.6 and result.stats["ci_target_met"] is False


@pytest.mark.parametrize("target", [-0.1, 1.0, float("nan")])
def test_bad_interval_target_is_refused(target):
    with pytest.raises(BadInputError, match="interval target"):
        TimingConfig(ci_target=target)


def _drifting_rounds(rng, ratio: float, rounds: int, runs: int = 200, drift: float = 0.3):
    """Two backends timed in interleaved rounds on a machine whose speed wanders between rounds (a lognormal
    factor of ``drift``), the second backend ``ratio`` times the first's latency: runs of each, per round."""
    base, cand = [], []
    for _ in range(rounds):
        speed = np.exp(rng.normal(0, drift))
        nearby = speed * np.exp(rng.normal(0, drift / 2))  # timed right after: a speed that has moved less
        base.append(1e-3 * speed * (1 + rng.normal(0, 0.02, runs)))
        cand.append(1e-3 * ratio * nearby * (1 + rng.normal(0, 0.02, runs)))
    return base, cand


def test_paired_rounds_cover_the_truth_where_pooled_runs_do_not():
    """On a drifting machine the pooled runs' bootstrap claims differences that are not there; the interval over
    the rounds' paired ratios covers the true speedup about as often as it says."""
    rng = np.random.default_rng(1)
    pooled_cover = paired_cover = 0
    trials = 200
    for _ in range(trials):
        base, cand = _drifting_rounds(rng, ratio=1.0, rounds=6)
        pooled = compare_medians(np.concatenate(base), np.concatenate(cand))
        paired = compare_rounds([np.median(b) for b in base], [np.median(c) for c in cand], pooled=pooled)
        pooled_cover += pooled["ci"][0] <= 1 <= pooled["ci"][1]
        paired_cover += paired["ci"][0] <= 1 <= paired["ci"][1]
        assert paired["ci"][0] <= pooled["ci"][0] and paired["ci"][1] >= pooled["ci"][1]  # the hull of both
        assert paired["pooled_speedup"] == pooled["speedup"] and paired["method"] == "paired rounds"
        assert paired["speedup"] == pytest.approx(rounds_median(paired["round_speedups"]))
    assert paired_cover / trials >= 0.9
    assert pooled_cover / trials < 0.75  # a "95 %" interval


def test_paired_rounds_still_find_a_real_difference():
    rng = np.random.default_rng(2)
    base, cand = _drifting_rounds(rng, ratio=0.7, rounds=8)
    result = compare_rounds([np.median(b) for b in base], [np.median(c) for c in cand])
    assert result["verdict"] == FASTER and result["ci"][0] > 1.1
    assert result["rounds"] == 8 and len(result["round_speedups"]) == 8
    assert compare_rounds([np.median(c) for c in cand], [np.median(b) for b in base])["verdict"] == SLOWER
    # Rounds that agree exactly leave the pooled runs' interval.
    same = compare_rounds([1.0, 2.0], [0.5, 1.0], pooled={"speedup": 2.0, "ci": [1.9, 2.1]})
    assert same["ci"] == [1.9, 2.1] and same["verdict"] == FASTER


@pytest.mark.parametrize("base, cand, words", [
    ([1.0], [1.0], "at least two"), ([1.0, 1.0], [1.0], "two equal lists"),
    ([1.0, 0.0], [1.0, 1.0], "finite and positive"), ([1.0, float("nan")], [1.0, 1.0], "finite and positive")])
def test_paired_rounds_refuse_what_they_cannot_pair(base, cand, words):
    with pytest.raises(BadInputError, match=words):
        compare_rounds(base, cand)


def test_one_latency_over_drifting_rounds_is_covered_by_the_rounds_interval():
    """A single backend's median on a drifting machine: the pooled runs' bootstrap rarely covers the machine's
    typical latency, the interval over the rounds' medians does about as often as it says."""
    rng = np.random.default_rng(3)
    pooled_cover = rounds_cover = 0
    trials = 200
    for _ in range(trials):
        runs, _ = _drifting_rounds(rng, ratio=1.0, rounds=6)
        pooled = median_interval(np.concatenate(runs))
        lo, hi = rounds_interval([np.median(r) for r in runs], pooled_ci=pooled)
        assert lo <= pooled[0] and hi >= pooled[1]  # the hull of both
        pooled_cover += pooled[0] <= 1e-3 <= pooled[1]
        rounds_cover += lo <= 1e-3 <= hi
    assert rounds_cover / trials >= 0.9
    assert pooled_cover / trials < 0.5
    assert rounds_interval([2.0, 2.0, 2.0], pooled_ci=[1.9, 2.1]) == [1.9, 2.1]  # agreeing rounds: the runs' own


@pytest.mark.parametrize("medians, words", [([1.0], "at least two"), ([1.0, 0.0], "finite and positive"),
                                            ([1.0, float("inf")], "finite and positive")])
def test_rounds_interval_refuses_what_it_cannot_use(medians, words):
    with pytest.raises(BadInputError, match=words):
        rounds_interval(medians)


def test_rounds_median_weighs_every_round_the_same_and_inverts():
    assert rounds_median([1.0, 1.0, 2.0]) == pytest.approx(1.0)  # one round off does not move it
    assert rounds_median([1.0, 4.0]) == pytest.approx(2.0)  # even count: geometric mean of the middle two
    ratios = np.random.default_rng(4).lognormal(0, 0.5, 8)
    assert rounds_median(1 / ratios) == pytest.approx(1 / rounds_median(ratios))
    for bad in ([], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(BadInputError):
            rounds_median(bad)


def test_paired_speedup_is_the_rounds_median_not_the_pooled_runs():
    """Rounds are timed for a while, not for a count: six slow rounds of a few runs each and two fast ones of
    hundreds gave a pooled ratio at the fast rounds' (1.27x) while six of eight rounds said 147x."""
    slow, fast = [18.0] * 6, [0.2, 0.13]
    ort = [0.122] * 8
    result = compare_rounds(ort, slow[:3] + fast[:1] + slow[3:] + fast[1:], pooled={"speedup": 1 / 1.27,
                                                                                    "ci": [1 / 278, 1 / 1.19]})
    assert 1 / result["speedup"] == pytest.approx(18.0 / 0.122)
    assert result["pooled_speedup"] == pytest.approx(1 / 1.27) and result["verdict"] == SLOWER


def test_an_interval_over_skewed_rounds_still_holds_their_median():
    # Five rounds at 1.02 and four at 0.8: the t interval around the geometric mean ends below the median.
    ratios = [1.02] * 5 + [0.8] * 4
    result = compare_rounds(ratios, [1.0] * 9)
    assert result["speedup"] == pytest.approx(1.02) and result["ci"][0] <= 1.02 <= result["ci"][1]
    lo, hi = rounds_interval(ratios)
    assert lo <= rounds_median(ratios) <= hi
