"""Metrics of a job, each produced by one tracker, and the results-store row built from them.

A job's measurements are a list of named :class:`Metric` values (latency on the host clock, latency on the
backend's own timer, compile time, artifact size, peak memory...). Each comes from a *tracker*: a small object
that reads one finished job (the ``result.json`` form of :class:`dlcbench.measure.job.JobResult`) and returns
its metrics. The results store keeps them in a long table (job, metric, value, unit, samples, detail) and the
report shows every metric it finds, so adding a metric is one tracker plus :func:`register_tracker`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from dlcbench.errors import one_line

#: Key statistics of a timing kept in a latency metric's ``detail`` (the rest stays in result.json).
TIMING_DETAIL = ("count", "min_ms", "mean_ms", "std_ms", "cv", "p10_ms", "p90_ms", "p95_ms", "p99_ms", "mad_ms",
                 "spread", "median_ci_ms", "pooled_median_ms", "pooled_median_ci_ms", "machine_load", "ci_target", "ci_target_met", "throughput_per_s",
                 "unstable", "round_spread")


@dataclass(frozen=True)
class Metric:
    """One measured value of a job.

    Attributes:
        name: Registered metric name (``latency``, ``compile_time``...).
        value: The headline figure (a latency's median), or None when not measured.
        unit: Unit of ``value`` and of ``samples``.
        samples: Every raw sample, where the metric has them.
        detail: Further statistics or context (a latency's p90 and stability, a timer's name).
    """

    name: str
    value: float | None
    unit: str
    samples: list[float] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tracker:
    """Produces the metrics of one kind from a finished job's result (``JobResult.to_dict()``)."""

    name: str
    unit: str
    description: str
    collect: Callable[[dict[str, Any]], list[Metric]]


_TRACKERS: dict[str, Tracker] = {}


def register_tracker(tracker: Tracker) -> Tracker:
    """Adds a tracker; its metrics are stored and reported from then on."""
    _TRACKERS[tracker.name] = tracker
    return tracker


def unregister_tracker(name: str) -> None:
    """Removes a tracker (its metrics already stored stay in the database)."""
    _TRACKERS.pop(name, None)


def trackers() -> dict[str, Tracker]:
    """The registered trackers by metric name, in registration order."""
    return dict(_TRACKERS)


def collect_metrics(result: dict[str, Any]) -> list[Metric]:
    """Every registered tracker's metrics for one job result (trackers with nothing to say return none).

    A tracker that raises does not cost the job its other metrics: its metric is recorded with no value and
    the error in ``detail["error"]``.
    """
    metrics = []
    for tracker in _TRACKERS.values():
        try:
            metrics += tracker.collect(result)
        except Exception as err:  # a metric's bug must not lose a finished job's result
            metrics.append(Metric(tracker.name, None, tracker.unit, None,
                                  {"error": f"{type(err).__name__}: {one_line(err, 300)}"}))
    return metrics


def _scalar(name: str, unit: str, description: str, get: Callable[[dict[str, Any]], Any]) -> Tracker:
    def collect(result: dict[str, Any]) -> list[Metric]:
        value = get(result)
        return [] if value is None else [Metric(name, float(value), unit)]

    return register_tracker(Tracker(name, unit, description, collect))


def latency_metric(name: str, samples_s: list[float], stats: dict[str, Any], **detail: Any) -> Metric:
    """A latency metric in milliseconds from raw seconds and their :func:`dlcbench.measure.timing.statistics`."""
    return Metric(name, stats["median_ms"], "ms", [s * 1e3 for s in samples_s],
                  {**{k: stats[k] for k in TIMING_DETAIL if k in stats}, **detail})


#: The latency metric of each timed region (:data:`dlcbench.compilers.base.REGIONS`): figures of different regions
#: are different metrics, so nothing that compares one metric across jobs can mix regions. A ``latency`` without
#: ``detail.region`` was recorded before regions existed (:data:`UNRECORDED`).
REGION_METRICS = {"resident": "latency", "end_to_end": "latency_end_to_end"}
#: The region of a ``latency`` recorded before dlcbench said which region it timed.
UNRECORDED = "unrecorded"


def _region_timings(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The host-clock timings of a job result (``timing``, and ``timing_end_to_end`` when both were timed)."""
    return [t for t in (result.get("timing"), result.get("timing_end_to_end")) if t and t.get("stats")]


def _host_latency_of(region: str) -> Callable[[dict[str, Any]], list[Metric]]:
    """The tracker of ``region``'s latency metric (``latency`` also takes a timing that names no region)."""

    def collect(result: dict[str, Any]) -> list[Metric]:
        metrics = []
        for timing in _region_timings(result):
            timed = timing.get("region")
            if timed == region or (region == "resident" and timed is None):
                extra = {"region": timed} if timed else {}
                if timing.get("region_note"):
                    extra["region_note"] = timing["region_note"]
                if timing.get("rounds"):  # interleaved: each round's median, in the order they ran
                    extra["round_medians_ms"] = [r["median_ms"] for r in timing["rounds"]]
                    if any(r.get("machine_load") for r in timing["rounds"]):
                        extra["round_machine_load"] = [r.get("machine_load") for r in timing["rounds"]]
                metrics.append(latency_metric(REGION_METRICS[region], timing["samples_s"], timing["stats"],
                                              clock="host", warmup_runs=timing.get("warmup_runs"), **extra))
        return metrics

    return collect


def metric_region(name: str, metric: dict[str, Any] | None) -> str | None:
    """The timed region of a stored latency metric ``name`` (:data:`UNRECORDED` for an old ``latency``), or None
    for a metric that is no region's latency."""
    if name not in REGION_METRICS.values() or not metric:
        return None
    return (metric.get("detail") or {}).get("region") or UNRECORDED


def region_latency(row: dict[str, Any], region: str) -> dict[str, Any] | None:
    """The measured latency metric of ``region`` (a :data:`REGION_METRICS` key or :data:`UNRECORDED`) in a stored
    row, or None."""
    name = REGION_METRICS.get(region, "latency")
    metric = metric_of(row, name)
    return metric if metric_region(name, metric) == region and metric.get("value") is not None else None


def _native_latency(result: dict[str, Any]) -> list[Metric]:
    native = result.get("native_timing")
    if not native or not native.get("stats"):
        return []
    return [latency_metric("latency_native", native["samples_s"], native["stats"], timer=native.get("timer"),
                           host_over_native=native.get("host_over_native"))]


register_tracker(Tracker("latency", "ms", "median latency of one inference on the host clock, resident region "
                         "(inputs staged, outputs left in the backend)", _host_latency_of("resident")))
register_tracker(Tracker("latency_end_to_end", "ms", "median latency of one inference on the host clock, end-to-end "
                         "region (numpy in, numpy out)", _host_latency_of("end_to_end")))
register_tracker(Tracker("latency_native", "ms", "median latency on the backend's own timer, where it has one",
                         _native_latency))
_scalar("accuracy_top1", "fraction", "top-1 accuracy on the held-out split of the model's dataset (--accuracy)",
        lambda r: (r.get("accuracy") or {}).get("top1"))
_scalar("accuracy_reference_top1", "fraction", "the Keras model's own top-1 accuracy on the same rows",
        lambda r: (r.get("accuracy") or {}).get("reference_top1"))
_scalar("compile_time", "s", "seconds to compile the artifact (tuning included)", lambda r: r.get("compile_seconds"))
_scalar("tuning_time", "s", "seconds of TVM tuning inside the compile",
        lambda r: ((r.get("manifest") or {}).get("extra") or {}).get("tuning_seconds"))
_scalar("export_time", "s", "seconds to export the model (near zero on a cache hit)", lambda r: r.get("export_seconds"))
_scalar("artifact_size", "bytes", "bytes of the artifact directory", lambda r: r.get("artifact_bytes"))
_scalar("peak_rss", "MiB", "peak resident memory of the job's process", lambda r: r.get("peak_rss_mb"))
_scalar("flops", "FLOP", "floating-point operations of one batch (Conv, Gemm, MatMul)",
        lambda r: ((r.get("model") or {}).get("summary") or {}).get("flops"))
_scalar("parameters", "count", "model parameters", lambda r: ((r.get("model") or {}).get("summary") or {}).get("parameters"))


def job_row(result: dict[str, Any]) -> dict[str, Any]:
    """A results-store row from a finished job's result: status, check, manifest and the metrics.

    A failed check's category is the check's own (``accuracy_fail`` or ``invalid_reference``).
    """
    passed = bool(result.get("passed"))
    return {
        "status": "ok" if passed else "failed",
        "category": None if passed else (result.get("failure_category") or (result.get("check") or {}).get("category")
                                         or "accuracy_fail"),
        "message": result.get("failure_message") or None,
        "check_metrics": result.get("check"), "manifest": result.get("manifest"),
        "metrics": [m.to_dict() for m in collect_metrics(result)],
    }


def failure_row(category: str, message: str) -> dict[str, Any]:
    """A results-store row for a job that produced no result (``category`` says why)."""
    return {"status": "failed", "category": category, "message": one_line(message, 1000), "metrics": []}


def metric_of(row: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The metric ``name`` of a stored row (``row["metrics"]`` as :meth:`ResultsStore.results` returns it)."""
    return (row.get("metrics") or {}).get(name)


def value_of(row: dict[str, Any], name: str) -> float | None:
    """The headline value of metric ``name`` in a stored row, or None."""
    metric = metric_of(row, name)
    return metric["value"] if metric else None
