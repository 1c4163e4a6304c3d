"""Fair timing: warm-up outside the timed loop, minimums, a target precision of the median, robust statistics.

Defaults (documented in README): at least 10 warm-up runs and 0.2 s of warm-up
(trtexec warms up for 200 ms; optimum-benchmark runs 10 warm-ups), then at
least 20 timed runs and 1 s of timed runs (trtexec: >= 10 runs and >= 3 s;
raise ``min_seconds`` for publication-grade numbers); then, while the 95 %
bootstrap interval of the median is wider than +-``ci_target`` (1 %), timing
goes on up to ``max_seconds`` / ``max_iters``. Every sample is kept.

Latency distributions are skewed with rare large outliers (a page fault, an
interrupt), so stability is judged from percentiles, not the standard
deviation: a timing is UNSTABLE when (p90 - p10) / median exceeds
:data:`SPREAD_FLAG`. The coefficient of variation (std / mean) is still
reported, but a handful of outliers among thousands of samples inflates it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from dlcbench.config import positive_seconds
from dlcbench.errors import BadInputError

#: A robust spread (p90 - p10) / median above this flags a timing unstable. Chosen from measured runs of the
#: tiny zoo models on onnxruntime: alone they stay far below it, beside a CPU-bound neighbour they go above it
#: (MAD / median hardly moves in either case: too robust to tell them apart).
SPREAD_FLAG = 0.10
#: Bootstrap resamples behind every interval (the Monte-Carlo error of a 95 % bound is a small fraction of its width).
BOOTSTRAP_RESAMPLES = 2000
#: Seed of every bootstrap: the same samples always give the same interval.
BOOTSTRAP_SEED = 0
#: Default ``TimingConfig.ci_target``: time until the median is known to +-1 % (95 % interval).
CI_TARGET = 0.01


@dataclass
class TimingConfig:
    """How long to warm up and measure.

    ``ci_target`` is the relative half-width the 95 % interval of the median should reach (0.01: +-1 %); timing
    continues past the minimums until it does, or until ``max_seconds`` / ``max_iters``. 0 turns it off (stop at
    the minimums).
    """

    warmup_iters: int = 10
    warmup_seconds: float = 0.2
    min_iters: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 60.0
    max_iters: int = 100_000
    ci_target: float = CI_TARGET

    def __post_init__(self):
        if self.warmup_iters < 0 or self.min_iters < 1 or self.max_iters < self.min_iters:
            raise BadInputError("timing needs warmup_iters >= 0 and 1 <= min_iters <= max_iters")
        positive_seconds("warmup_seconds", self.warmup_seconds, allow_zero=True)
        positive_seconds("min_seconds", self.min_seconds, allow_zero=True)
        positive_seconds("max_seconds", self.max_seconds)
        if not 0 <= self.ci_target < 1:
            raise BadInputError(f"the interval target must be a fraction in [0, 1) (0.01 = +-1 %), got {self.ci_target}")


def bootstrap_medians(samples, resamples: int = BOOTSTRAP_RESAMPLES,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """The medians of ``resamples`` bootstrap resamples of ``samples`` (n draws with replacement each).

    Exact, in O(n log n + resamples) whatever n: a resample's median is the sorted sample at the median of its n
    uniform draws, and the k-th smallest of n uniforms on [0, 1) follows Beta(k, n - k + 1), so that order
    statistic is drawn directly instead of drawing n indices (the next one, for an even n, from the minimum of
    the n - k uniforms above it).
    """
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    if n == 0:
        raise BadInputError("no samples to bootstrap")
    rng = rng if rng is not None else np.random.default_rng(BOOTSTRAP_SEED)
    k = (n + 1) // 2
    u = rng.beta(k, n - k + 1, resamples)
    lower = x[np.minimum((u * n).astype(np.int64), n - 1)]
    if n % 2:
        return lower
    u_next = u + (1.0 - u) * rng.beta(1, n - k, resamples)
    return (lower + x[np.minimum((u_next * n).astype(np.int64), n - 1)]) / 2


def median_interval(samples, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``samples`` (same samples, same interval)."""
    medians = bootstrap_medians(samples, resamples, np.random.default_rng(seed))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


#: Verdicts of :func:`compare_medians`.
FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no significant difference"


def verdict_of(lo: float, hi: float) -> str:
    """The verdict an interval ``[lo, hi]`` of a speedup gives: ``faster`` above 1, ``slower`` below, else none."""
    return FASTER if lo > 1 else SLOWER if hi < 1 else NO_DIFFERENCE


def compare_medians(baseline, candidate, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Speedup of ``candidate`` over ``baseline`` (ratio of median latencies, baseline / candidate) with its
    bootstrap interval (both sample sets resampled independently) and a verdict read from the interval:
    ``faster`` when it lies above 1, ``slower`` when below, else ``no significant difference``.

    The resampling treats every run as independent, which holds only while the machine's speed does not drift;
    runs timed in interleaved rounds are compared by :func:`compare_rounds` instead.
    """
    rng = np.random.default_rng(seed)
    base = np.asarray(baseline, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    ratios = bootstrap_medians(base, resamples, rng) / bootstrap_medians(cand, resamples, rng)
    tail = (1 - level) / 2 * 100
    lo, hi = (float(v) for v in np.percentile(ratios, [tail, 100 - tail]))
    verdict = verdict_of(lo, hi)
    return {"speedup": float(np.median(base) / np.median(cand)), "ci": [lo, hi], "verdict": verdict,
            "method": "pooled runs"}


def compare_rounds(baseline_rounds, candidate_rounds, level: float = 0.95,
                   pooled: dict[str, Any] | None = None) -> dict[str, Any]:
    """Speedup of ``candidate`` over ``baseline`` from interleaved rounds: round ``i`` of each was timed next to
    the other's, so each round gives one paired ratio of medians in which the machine's drift cancels.

    The interval is Student's t over the rounds' log ratios (their geometric mean, ``n - 1`` degrees of freedom),
    which counts the drift between rounds as the uncertainty it is; :func:`compare_medians` resamples the pooled
    runs as if independent, and on a machine whose speed wanders over seconds it gives intervals many times too
    narrow. With ``pooled`` (that function's result on the same runs) the interval is the hull of both, never
    narrower than the runs' own noise.

    ``speedup`` is the median of the rounds' ratios (:func:`rounds_median`): every round weighs the same. The
    interval always holds it (the t interval is centred on the ratios' geometric mean, and skewed rounds can
    leave the median outside it). The ratio of the pooled medians (``pooled_speedup``) weighs each round by its
    count of runs, and a round is timed for a while, not for a count: rounds in which a backend ran slowly held
    few runs and hardly moved it (six rounds of eight at 147x gave a pooled 1.27x).

    Args:
        baseline_rounds: The baseline's median latency in each round.
        candidate_rounds: The candidate's, same rounds, same order (at least two).
        level: Confidence level.
        pooled: Optional :func:`compare_medians` result of the pooled runs.

    Returns:
        ``speedup`` (baseline / candidate), ``ci``, ``verdict`` as :func:`compare_medians`, plus ``method``
        (``paired rounds``), ``rounds`` and ``round_speedups``.

    Raises:
        BadInputError: fewer than two rounds, unequal round counts, or a latency that is not positive.
    """
    base = np.asarray(baseline_rounds, dtype=np.float64)
    cand = np.asarray(candidate_rounds, dtype=np.float64)
    if base.shape != cand.shape or base.ndim != 1 or base.size < 2:
        raise BadInputError(f"paired rounds need two equal lists of at least two round medians "
                            f"(got {base.size} and {cand.size})")
    if not (np.all(np.isfinite(base)) and np.all(np.isfinite(cand)) and np.all(base > 0) and np.all(cand > 0)):
        raise BadInputError("round medians must be finite and positive")
    logs = np.log(base / cand)
    n = logs.size
    lo, hi = _geometric_t_interval(logs, level)
    speedup = rounds_median(base / cand)
    extra = {}
    if pooled is not None:
        lo, hi = hull([lo, hi], pooled.get("ci"))
        extra = {"pooled_speedup": float(pooled["speedup"])}
    lo, hi = hull([lo, hi], [speedup, speedup])  # skewed rounds can put the median outside the t interval
    verdict = verdict_of(lo, hi)
    return {"speedup": speedup, "ci": [lo, hi], "verdict": verdict, "method": "paired rounds",
            "rounds": n, "round_speedups": [float(v) for v in base / cand], **extra}


def _geometric_t_interval(logs: np.ndarray, level: float) -> tuple[float, float]:
    """``(lo, hi)`` around the geometric mean of values given by their logs: Student's t, ``n - 1`` d.o.f."""
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.5 + level / 2, logs.size - 1) * logs.std(ddof=1) / np.sqrt(logs.size))
    center = float(logs.mean())
    return float(np.exp(center - half)), float(np.exp(center + half))


def rounds_median(round_values) -> float:
    """The median of values measured once per round (a backend's round medians, or paired rounds' ratios): every
    round weighs the same, and one round off from the others does not move it. With an even count, the
    geometric mean of the middle two, so that the median of inverted ratios is the inverse of the median.

    Raises:
        BadInputError: no value, or a value that is not finite and positive.
    """
    values = np.asarray(round_values, dtype=np.float64)
    if values.ndim != 1 or values.size < 1:
        raise BadInputError("a median over rounds needs at least one round")
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise BadInputError("round medians must be finite and positive")
    return float(np.exp(np.median(np.log(values))))


def rounds_interval(round_medians, level: float = 0.95, pooled_ci=None) -> list[float]:
    """Interval of one latency timed in several rounds (interleaved with other backends): Student's t over the
    rounds' log medians, so the machine's drift between rounds counts as uncertainty (the pooled runs'
    bootstrap, :func:`median_interval`, treats them as independent and is too narrow on a drifting machine).
    With ``pooled_ci`` (that bootstrap) the result is the hull of both; it always holds the rounds' median
    (:func:`rounds_median`, the job's median).

    Raises:
        BadInputError: fewer than two rounds, or a median that is not finite and positive.
    """
    medians = np.asarray(round_medians, dtype=np.float64)
    if medians.ndim != 1 or medians.size < 2:
        raise BadInputError(f"an interval over rounds needs at least two round medians (got {medians.size})")
    if not (np.all(np.isfinite(medians)) and np.all(medians > 0)):
        raise BadInputError("round medians must be finite and positive")
    lo, hi = _geometric_t_interval(np.log(medians), level)
    median = rounds_median(medians)
    return hull(hull([lo, hi], pooled_ci), [median, median])


def hull(interval: list[float], other) -> list[float]:
    """The smallest interval holding ``interval`` and ``other`` (``interval`` itself when ``other`` is empty)."""
    if not other:
        return [float(interval[0]), float(interval[1])]
    return [min(float(interval[0]), float(other[0])), max(float(interval[1]), float(other[1]))]


def ci_target_met(stats: dict[str, Any], target: float) -> bool:
    """Whether both ends of ``stats["median_ci_ms"]`` lie within +-``target`` (relative) of the median."""
    median = stats["median_ms"]
    lo, hi = stats["median_ci_ms"]
    return max(hi - median, median - lo) <= target * median


def statistics(samples_s: list[float], batch: int = 1) -> dict[str, Any]:
    """Summary statistics of per-run seconds.

    Keys (times in ms): ``count``, ``min_ms``, ``median_ms`` and ``median_ci_ms`` (its 95 % bootstrap interval,
    ``[lo, hi]``), ``mean_ms``, ``std_ms``, ``p10_ms``/``p90_ms``/``p95_ms``/``p99_ms``, ``mad_ms`` (median
    absolute deviation from the median, unscaled), ``spread`` ((p90 - p10) / median, a fraction), ``cv`` (std /
    mean, a fraction: outlier-sensitive, for reference), ``throughput_per_s`` and ``unstable`` (``spread`` above
    :data:`SPREAD_FLAG`).
    """
    arr = np.asarray(samples_s, dtype=np.float64)
    if arr.size == 0:
        raise BadInputError("no timing samples")
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    median = float(np.median(arr))
    p10, p90, p95, p99 = (float(v) for v in np.percentile(arr, [10, 90, 95, 99]))
    spread = (p90 - p10) / median if median > 0 else 0.0
    lo, hi = median_interval(arr)
    return {
        "count": int(arr.size),
        "min_ms": float(arr.min()) * 1e3,
        "median_ms": median * 1e3,
        "median_ci_ms": [lo * 1e3, hi * 1e3],
        "mean_ms": mean * 1e3,
        "std_ms": std * 1e3,
        "cv": std / mean if mean > 0 else 0.0,
        "p10_ms": p10 * 1e3,
        "p90_ms": p90 * 1e3,
        "p95_ms": p95 * 1e3,
        "p99_ms": p99 * 1e3,
        "mad_ms": float(np.median(np.abs(arr - median))) * 1e3,
        "spread": spread,
        "throughput_per_s": batch / median if median > 0 else float("inf"),
        "unstable": spread > SPREAD_FLAG,
    }


@dataclass
class TimingResult:
    """Raw samples (seconds) and their statistics."""

    samples_s: list[float]
    warmup_runs: int
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(run: Callable[[], Any], config: TimingConfig | None = None, batch: int = 1,
            clock: Callable[[], int] = time.perf_counter_ns) -> TimingResult:
    """Times ``run`` (which must block until its work is done).

    Warm-up runs until both ``warmup_iters`` and ``warmup_seconds`` are met; the
    timed loop until both ``min_iters`` and ``min_seconds`` are met and the
    median's 95 % interval is within +-``ci_target``, stopping at
    ``max_seconds`` or ``max_iters`` (never below ``min_iters``). The stats
    record the target and whether it was met (``ci_target``, ``ci_target_met``;
    None without a target).
    """
    cfg = config or TimingConfig()
    warm, start = 0, clock()
    while warm < cfg.warmup_iters or (clock() - start) < cfg.warmup_seconds * 1e9:
        run()
        warm += 1
        if (clock() - start) > cfg.max_seconds * 1e9 and warm >= cfg.warmup_iters:
            break
    samples: list[float] = []
    next_check = 0
    begin = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        samples.append((t1 - t0) / 1e9)
        elapsed = (t1 - begin) / 1e9
        n = len(samples)
        if n >= cfg.max_iters or (n >= cfg.min_iters and elapsed >= cfg.max_seconds):
            break
        if n >= cfg.min_iters and elapsed >= cfg.min_seconds:
            if not cfg.ci_target:
                break
            if n >= next_check:
                # Checking sorts the samples: at geometrically spaced counts, the checks cost O(n log n) in all.
                if _within(samples, cfg.ci_target):
                    break
                next_check = max(n + 1, int(n * 1.2))
    stats = statistics(samples, batch)
    stats["ci_target"] = cfg.ci_target or None
    stats["ci_target_met"] = ci_target_met(stats, cfg.ci_target) if cfg.ci_target else None
    return TimingResult(samples, warm, stats)


def _within(samples_s: list[float], target: float) -> bool:
    return ci_target_met({"median_ms": float(np.median(samples_s)), "median_ci_ms": median_interval(samples_s)}, target)
