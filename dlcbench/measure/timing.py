"""Fair timing: warm-up outside the timed loop, then a minimum count and a minimum duration.

Defaults (documented in README): at least 10 warm-up runs and 0.2 s of warm-up
(trtexec warms up for 200 ms; optimum-benchmark runs 10 warm-ups), then at
least 20 timed runs and 1 s of timed runs (trtexec: >= 10 runs and >= 3 s;
raise ``min_seconds`` for publication-grade numbers), capped by ``max_seconds``.
Every sample is kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from dlcbench.errors import BadInputError

#: A coefficient of variation above this is flagged as unstable.
CV_FLAG = 0.025


@dataclass
class TimingConfig:
    """How long to warm up and measure."""

    warmup_iters: int = 10
    warmup_seconds: float = 0.2
    min_iters: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 60.0
    max_iters: int = 100_000

    def __post_init__(self):
        if self.warmup_iters < 0 or self.min_iters < 1 or self.max_iters < self.min_iters:
            raise BadInputError("timing needs warmup_iters >= 0 and 1 <= min_iters <= max_iters")
        if self.warmup_seconds < 0 or self.min_seconds < 0 or self.max_seconds <= 0:
            raise BadInputError("timing durations must be non-negative (max_seconds positive)")


def statistics(samples_s: list[float], batch: int = 1) -> dict[str, Any]:
    """Summary statistics of per-run seconds: min, median, mean, std, cv, p90/p95/p99, throughput."""
    arr = np.asarray(samples_s, dtype=np.float64)
    if arr.size == 0:
        raise BadInputError("no timing samples")
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    median = float(np.median(arr))
    cv = std / mean if mean > 0 else 0.0
    return {
        "count": int(arr.size),
        "min_ms": float(arr.min()) * 1e3,
        "median_ms": median * 1e3,
        "mean_ms": mean * 1e3,
        "std_ms": std * 1e3,
        "cv": cv,
        "p90_ms": float(np.percentile(arr, 90)) * 1e3,
        "p95_ms": float(np.percentile(arr, 95)) * 1e3,
        "p99_ms": float(np.percentile(arr, 99)) * 1e3,
        "throughput_per_s": batch / median if median > 0 else float("inf"),
        "unstable": cv > CV_FLAG,
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
    timed loop until both ``min_iters`` and ``min_seconds`` are met, stopping
    at ``max_seconds`` or ``max_iters`` (never below ``min_iters``).
    """
    cfg = config or TimingConfig()
    warm, start = 0, clock()
    while warm < cfg.warmup_iters or (clock() - start) < cfg.warmup_seconds * 1e9:
        run()
        warm += 1
        if (clock() - start) > cfg.max_seconds * 1e9 and warm >= cfg.warmup_iters:
            break
    samples: list[float] = []
    begin = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        samples.append((t1 - t0) / 1e9)
        elapsed = (t1 - begin) / 1e9
        if len(samples) >= cfg.min_iters and (elapsed >= cfg.min_seconds or elapsed >= cfg.max_seconds):
            break
        if len(samples) >= cfg.max_iters:
            break
    return TimingResult(samples, warm, statistics(samples, batch))
