"""Markdown report and PNG plots of one experiment: latency, speedup heatmap, batch and thread scaling, roofline.

Speedups are ratios of medians with a 95 % bootstrap interval (both rows' stored samples resampled); a
backend is called faster or slower than the baseline only when the interval excludes 1.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import BackendUnavailableError, BadInputError
from dlcbench.measure.timing import (NO_DIFFERENCE, SPREAD_FLAG, compare_medians, compare_rounds, hull,
                                     statistics, verdict_of)
from dlcbench.measure.trackers import REGION_METRICS, UNRECORDED, metric_of, metric_region, region_latency, value_of
from dlcbench.outputs import OutputKind, Owned, staged_output
from dlcbench.results.store import ResultsStore


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise BackendUnavailableError("the report's plots need matplotlib, which is not installed: "
                                      "pip install -e '.[report]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def machine_name(environment: dict[str, Any]) -> str:
    """A machine as the report names it: its host name, CPU model (with its family and model numbers where
    recorded: VMs of two CPU generations can share a host and model name) and first GPU."""
    gpus = environment.get("gpus") or []
    gpu = f"; {gpus[0].get('name')}" if gpus and gpus[0].get("name") else ""
    cpu = environment.get("cpu") or {}
    numbers = f" {cpu['family']}/{cpu.get('model_number')}" if cpu.get("family") is not None else ""
    return f"{environment.get('hostname') or '?'} ({cpu.get('model') or '?'}{numbers}{gpu})"


def _label(row: dict[str, Any]) -> str:
    return Path(row["model"]).stem


def series(row: dict[str, Any]) -> str:
    """The plotted series of a row: the backend, with its target when not the CPU (``tvm@cuda``) and its precision
    when not fp32 (``onnxruntime[int8]``)."""
    target = row.get("target") or "cpu"
    precision = row.get("precision") or "fp32"
    name = row["backend"] if target == "cpu" else f"{row['backend']}@{target}"
    return name if precision == "fp32" else f"{name}[{precision}]"


def _cpu_threads(row: dict[str, Any]) -> int | None:
    """The thread count of a CPU row; None on a GPU, where it is only the compiler's."""
    return row.get("threads") if (row.get("target") or "cpu") == "cpu" else None


def _thread_sweep(rows) -> bool:
    return len({_cpu_threads(r) for r in rows} - {None}) > 1


def _series_threads(row: dict[str, Any], sweep: bool) -> str:
    """:func:`series`, with ``/tN`` in a thread sweep."""
    threads = _cpu_threads(row)
    return series(row) + (f"/t{threads}" if sweep and threads is not None else "")


def _samples(row: dict[str, Any]) -> np.ndarray | None:
    latency = metric_of(row, "latency")
    return np.asarray(latency["samples"], dtype=np.float64) if latency and latency.get("samples") else None


def _paired_rounds(base: dict[str, Any], row: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """The two rows' round medians when they were timed in the same interleaved rounds (one experiment, as many
    rounds each, at least two), else None."""
    medians = [((metric_of(r, "latency") or {}).get("detail") or {}).get("round_medians_ms") for r in (base, row)]
    if base.get("experiment") != row.get("experiment") or not all(medians) or len(medians[0]) != len(medians[1]):
        return None
    return (medians[0], medians[1]) if len(medians[0]) >= 2 else None


#: Timed regions a report shows, in order: each is reported on its own, never compared with another.
REPORT_REGIONS = (*REGION_METRICS, UNRECORDED)
#: How the report names each region.
REGION_TITLES = {
    "resident": "resident region (inputs staged, outputs left in the backend)",
    "end_to_end": "end-to-end region (numpy in, numpy out)",
    UNRECORDED: "region not recorded (timed before dlcbench recorded it; backends' timed calls differed then)",
}


def region_rows(rows, region: str) -> list[dict[str, Any]]:
    """The rows with a latency of ``region``, each a copy whose ``latency`` metric is that region's and whose other
    regions' latencies are dropped (``row["region"]`` names it): what every plot and speedup of one region reads."""
    out = []
    for row in rows:
        metric = region_latency(row, region)
        if metric:
            others = {k: v for k, v in (row.get("metrics") or {}).items() if k not in REGION_METRICS.values()}
            out.append({**row, "region": region, "metrics": {**others, "latency": metric}})
    return out


def rows_region(rows) -> str | None:
    """The one timed region of the ``latency`` figures in ``rows`` (None when they have none).

    Raises:
        BadInputError: the rows hold latencies of different regions (select one with :func:`region_rows`).
    """
    regions = {metric_region("latency", metric_of(r, "latency")) for r in rows} - {None}
    if len(regions) > 1:
        raise BadInputError(f"latencies of different timed regions ({', '.join(sorted(regions))}) cannot be "
                            "compared; select one region's rows with region_rows()")
    return next(iter(regions), None)


def _region_title(rows) -> str:
    """`` - REGION`` for plot titles."""
    region = rows_region(rows)
    return f" - {region}" if region else ""


def plot_latency(rows, path: Path) -> None:
    """Median latency per model and backend with p10-p90 error bars, one panel per batch (rows of one region)."""
    region = _region_title(rows)
    plt = _plt()
    batches = sorted({r["batch"] for r in rows})
    models = sorted({_label(r) for r in rows})
    sweep = _thread_sweep(rows)
    backends = sorted({_series_threads(r, sweep) for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(max(6, 2.5 * len(models)) * len(batches) / 1.5, 4), squeeze=False)
    width = 0.8 / max(len(backends), 1)
    for ax, batch in zip(axes[0], batches):
        for i, backend in enumerate(backends):
            meds, lo, hi = [], [], []
            for model in models:
                row = next((r for r in rows if _series_threads(r, sweep) == backend and _label(r) == model
                            and r["batch"] == batch), None)
                latency = metric_of(row, "latency") if row else None
                samples = np.asarray(latency["samples"]) if latency and latency.get("samples") else None
                if samples is None:
                    meds.append(np.nan), lo.append(0), hi.append(0)
                    continue
                med = float(latency.get("value") or np.median(samples))  # over the rounds, if timed in rounds
                # The whiskers are the pooled runs' p10-p90, which a median over skewed rounds can lie outside.
                meds.append(med), lo.append(max(0.0, med - np.percentile(samples, 10)))
                hi.append(max(0.0, np.percentile(samples, 90) - med))
            x = np.arange(len(models)) + i * width
            ax.bar(x, meds, width, yerr=[lo, hi], capsize=3, label=backend)
        ax.set_xticks(np.arange(len(models)) + width * (len(backends) - 1) / 2, models)
        ax.set_yscale("log")
        ax.set_ylabel("median latency (ms, log)")
        ax.set_title(f"batch {batch}{region} (bars: median, whiskers: p10-p90)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedup_comparisons(rows, baseline: str) -> list[dict[str, Any]]:
    """Every backend against ``baseline`` wherever both ran: the same model, batch, target (GPU rows are compared
    with GPU rows only) and machine, and the same thread count when both run on the CPU.

    Each comparison: ``model``, ``batch``, ``threads`` (the CPU side's; None for two GPU rows), ``backend``,
    ``speedup`` (baseline median / backend median, >1 = faster; for rows timed in the same interleaved rounds, the
    median of the rounds' paired ratios), ``ci`` (its 95 % interval, which holds it; None without stored samples), ``verdict`` (``faster``, ``slower``, ``no significant difference``, or ``no samples``) and ``method``.
    Rows timed in the same interleaved rounds get :func:`~dlcbench.measure.timing.compare_rounds`' interval
    (``paired rounds``: the drift between rounds counts); others the bootstrap of their pooled runs
    (``pooled runs``), which holds only on a machine whose speed did not drift.

    Raises:
        BadInputError: the rows' latencies are of different timed regions (see :func:`region_rows`).
    """
    rows_region(rows)
    timed = [r for r in rows if value_of(r, "latency")]
    bases = [r for r in timed if series(r) == baseline]
    out = []
    for row in timed:
        if series(row) == baseline:
            continue
        for base in bases:
            both_cpu = _cpu_threads(row) is not None and _cpu_threads(base) is not None
            same_threads = not both_cpu or row["threads"] == base["threads"]
            same_machine = row.get("machine") == base.get("machine")  # rows from a Ray cluster, or a stage's
            same_target = (row.get("target") or "cpu") == (base.get("target") or "cpu")
            if (_label(base) != _label(row) or base["batch"] != row["batch"] or not same_threads or not same_machine
                    or not same_target):
                continue
            a, b = _samples(base), _samples(row)
            if a is not None and b is not None:
                result = compare_medians(a, b)
                paired = _paired_rounds(base, row)
                if paired:
                    result = compare_rounds(*paired, pooled=result)
                    del result["round_speedups"]
                else:  # the ratio of the medians shown (over its rounds, for a row timed in rounds)
                    speedup = value_of(base, "latency") / value_of(row, "latency")
                    lo, hi = hull(result["ci"], [speedup, speedup])
                    result = {**result, "speedup": speedup, "ci": [lo, hi], "verdict": verdict_of(lo, hi)}
            else:
                result = {"speedup": value_of(base, "latency") / value_of(row, "latency"), "ci": None,
                          "verdict": "no samples", "method": None}
            threads = _cpu_threads(row) if _cpu_threads(row) is not None else _cpu_threads(base)
            out.append({"model": _label(row), "batch": row["batch"], "threads": threads, "backend": series(row),
                        "machine": row.get("machine"), **result})
    return sorted(out, key=lambda c: (c["model"], c["batch"], c["threads"] or 0, c["machine"] or "", c["backend"]))


def _heatmap_point(rows) -> tuple[int, int | None]:
    """The (batch, CPU thread count) the heatmap shows: the smallest of each."""
    threads = sorted({_cpu_threads(r) for r in rows} - {None})
    return min(r["batch"] for r in rows), (threads[0] if threads else None)


def _heatmap(rows, baseline: str) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    batch, threads = _heatmap_point(rows)
    models = sorted({_label(r) for r in rows})
    backends = sorted({series(r) for r in rows})
    cells = {}
    for c in speedup_comparisons([r for r in rows if r["batch"] == batch], baseline):
        if c["threads"] in (threads, None):
            cells.setdefault((c["model"], c["backend"]), c)
    for model in models:
        if any(_label(r) == model and series(r) == baseline and r["batch"] == batch and value_of(r, "latency")
               for r in rows):
            cells[(model, baseline)] = {"speedup": 1.0, "ci": None, "verdict": "baseline"}
    return models, backends, cells


def speedups(rows, baseline: str) -> tuple[list[str], list[str], np.ndarray]:
    """Speedup (baseline median / backend median) per (model, backend) at the smallest batch (and smallest
    thread count); NaN where missing. Intervals and verdicts: :func:`speedup_comparisons`."""
    models, backends, cells = _heatmap(rows, baseline)
    grid = np.full((len(models), len(backends)), np.nan)
    for i, model in enumerate(models):
        for j, backend in enumerate(backends):
            if (model, backend) in cells:
                grid[i, j] = cells[(model, backend)]["speedup"]
    return models, backends, grid


_SHORT = {"faster": "faster", "slower": "slower", NO_DIFFERENCE: "no sig. diff.", "no samples": "no samples",
          "baseline": "baseline"}


def plot_speedup(rows, baseline: str, path: Path) -> None:
    """Heatmap of speedups with their 95 % intervals and verdicts; a difference the interval does not show
    significant is coloured neutral."""
    plt = _plt()
    models, backends, cells = _heatmap(rows, baseline)
    grid = np.full((len(models), len(backends)), np.nan)
    for (model, backend), c in cells.items():
        significant = c["verdict"] in ("faster", "slower", "no samples")
        grid[models.index(model), backends.index(backend)] = np.log2(c["speedup"]) if significant else 0.0
    fig, ax = plt.subplots(figsize=(2.0 * len(backends) + 2, 0.9 * len(models) + 1.8))
    finite = grid[np.isfinite(grid)]
    span = max(abs(finite).max(), 1.0) if finite.size else 1.0
    im = ax.imshow(grid, cmap="RdYlGn", vmin=-span, vmax=span)
    for i, model in enumerate(models):
        for j, backend in enumerate(backends):
            c = cells.get((model, backend))
            text = "n/a"
            if c:
                interval = f"\n[{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]" if c["ci"] else ""
                text = f"{c['speedup']:.2f}x{interval}\n{_SHORT.get(c['verdict'], c['verdict'])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(backends)), backends)
    ax.set_yticks(range(len(models)), models)
    batch, threads = _heatmap_point(rows)
    where = f"batch {batch}" + (f", {threads} thread(s)" if threads is not None else "")
    ax.set_title(f"speedup over {baseline}{_region_title(rows)} ({where}; >1 = faster; [95 % CI])", fontsize=9)
    fig.colorbar(im, ax=ax, label="log2 speedup (0 where not significant)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(rows, path: Path) -> None:
    """Throughput against batch size per model, backend (and thread count), and against the CPU thread count
    per model, backend and batch."""
    plt = _plt()
    sweep = _thread_sweep(rows)
    by_batch, by_threads = defaultdict(list), defaultdict(list)
    for r in rows:
        throughput = (metric_of(r, "latency") or {}).get("detail", {}).get("throughput_per_s")
        if throughput:
            by_batch[(_label(r), _series_threads(r, sweep))].append((r["batch"], throughput))
            if _cpu_threads(r) is not None:
                by_threads[(_label(r), series(r), r["batch"])].append((r["threads"], throughput))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for (model, backend), points in sorted(by_batch.items()):
        points.sort()
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{model}/{backend}")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("batch size")
    left.set_ylabel("throughput (items/s)")
    left.set_title(f"batch-size scaling{_region_title(rows)}")
    left.legend(fontsize=7, ncol=2)
    if sweep:
        for (model, backend, batch), points in sorted(by_threads.items()):
            points.sort()
            right.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{model}/{backend}/b{batch}")
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.legend(fontsize=7, ncol=2)
    else:
        counts = sorted({p[0] for v in by_threads.values() for p in v})
        right.text(0.5, 0.5, f"one thread count ({', '.join(map(str, counts)) or 'GPU only'}):\n"
                   "compare --threads 1,2,... sweeps it", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("CPU threads")
    right.set_ylabel("throughput (items/s)")
    right.set_title(f"thread scaling (CPU rows){_region_title(rows)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roofline_points(rows) -> list[dict[str, Any]]:
    """Achieved GFLOP/s and arithmetic intensity (FLOPs per weight byte) of each successful row (rows of one region)."""
    rows_region(rows)
    points = []
    sweep = _thread_sweep(rows)
    for r in rows:
        median_ms, flops = value_of(r, "latency"), value_of(r, "flops")
        if not (median_ms and flops):
            continue
        manifest = r.get("manifest") or {}
        weight_bytes = 4 * (value_of(r, "parameters") or 0) or max(value_of(r, "artifact_size") or 0, 1)
        threads = f"/t{r['threads']}" if sweep and _cpu_threads(r) is not None else ""
        points.append({"label": f"{_label(r)}/{series(r)}/b{r['batch']}{threads}", "backend": series(r),
                       "gflops": flops / (median_ms / 1e3) / 1e9,
                       "intensity": flops / weight_bytes, "target": manifest.get("target")})
    return points


def plot_roofline(rows, environment: dict[str, Any], path: Path) -> None:
    plt = _plt()
    # The roofs are this CPU's measurements; GPU rows would sit against a roof nobody measured.
    points = roofline_points([r for r in rows if (r.get("target") or "cpu") == "cpu"])
    peak, bandwidth = environment.get("peak_gflops"), environment.get("peak_bandwidth_gbs")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.logspace(-1, 4, 200)
    if peak and bandwidth:
        ax.plot(xs, np.minimum(peak, bandwidth * xs), "k-", label=f"roof: {peak:.0f} GFLOP/s, {bandwidth:.0f} GB/s")
    elif peak:
        ax.axhline(peak, color="k", label=f"peak {peak:.0f} GFLOP/s")
    for backend in sorted({p["backend"] for p in points}):
        mine = [p for p in points if p["backend"] == backend]
        ax.scatter([p["intensity"] for p in mine], [p["gflops"] for p in mine], label=backend)
        for p in mine:
            ax.annotate(p["label"].split("/")[0] + "/b" + p["label"].split("/b")[-1], (p["intensity"], p["gflops"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per weight byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"CPU roofline{_region_title(rows)} (measured matmul peak and copy bandwidth)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _unstable(row: dict[str, Any]) -> bool:
    """The robust stability flag, recomputed from the samples for rows stored with the older cv-based one."""
    detail = metric_of(row, "latency")["detail"]
    if "spread" not in detail and _samples(row) is not None:
        return statistics(_samples(row) / 1e3)["unstable"]
    return bool(detail.get("unstable"))


def _speedup_lines(rows, baseline: str) -> list[str]:
    """The report's speedup table: every comparison with its interval and verdict."""
    comparisons = speedup_comparisons(rows, baseline)
    if not comparisons:
        return []
    machines = len({c["machine"] for c in comparisons}) > 1
    region = rows_region(rows)
    lines = [f"## Speedups relative to {baseline}" + (f", {REGION_TITLES.get(region, region)}" if region else ""), "",
             "Ratio of median latencies (>1 = faster than the baseline) with its 95 % interval; the verdict is read "
             "from the interval (it must exclude 1). `paired rounds`: both were timed in the same interleaved rounds, "
             "the speedup is the median of the rounds' ratios, and the interval (Student's t over the rounds' ratios, widened to the pooled runs' bootstrap if that is "
             "wider) counts the machine's drift between rounds; `pooled runs`: a bootstrap of all runs as if "
             "independent, which understates the uncertainty on a machine whose speed drifts (time with `compare --interleave K`)."
             + (" CPU rows from different machines are never compared: each machine has its own rows." if machines
                else ""), "",
             "| model | batch | threads |" + (" machine |" if machines else "") + " backend | speedup | 95 % interval | "
             "verdict | interval from |", "|---|---|---|" + ("---|" if machines else "") + "---|---|---|---|---|"]
    for c in comparisons:
        interval = f"{c['ci'][0]:.3f}-{c['ci'][1]:.3f}" if c["ci"] else ""
        lines.append(f"| {c['model']} | {c['batch']} | {c['threads'] if c['threads'] is not None else ''} | "
                     + (f"{c['machine'] or ''} | " if machines else "")
                     + f"{c['backend']} | {c['speedup']:.3f}x | {interval} | {c['verdict']} | {c.get('method') or ''} |")
    return lines + [""]


REPORT_FILES = ("report.md", "latency.png", "speedup.png", "scaling.png", "roofline.png", "accuracy.png")


def accuracy_rows(rows) -> list[dict[str, Any]]:
    """Rows with a measured top-1 accuracy and a latency (``--accuracy`` jobs that ran)."""
    return [r for r in rows if value_of(r, "accuracy_top1") is not None and value_of(r, "latency") is not None]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (lower latency, higher accuracy)."""
    return [i for i, (lat, acc) in enumerate(points)
            if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for l2, a2 in points)]


def plot_accuracy(rows, path: Path) -> None:
    """Per model, top-1 accuracy against median latency for every backend x precision, the Pareto front joined
    and the Keras model's accuracy as a line."""
    plt = _plt()
    models = sorted({_label(r) for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if _label(r) == model]
        points = [(value_of(r, "latency"), value_of(r, "accuracy_top1") * 100) for r in mine]
        for r, (lat, acc) in zip(mine, points):
            ax.scatter([lat], [acc])
            ax.annotate(f"{series(r)} b{r['batch']}", (lat, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for batch in sorted({r["batch"] for r in mine}):  # latencies of different batches are not comparable
            indices = [i for i, r in enumerate(mine) if r["batch"] == batch]
            front = sorted(points[indices[i]] for i in pareto_front([points[i] for i in indices]))
            if len(front) > 1:
                ax.plot(*zip(*front), "--", color="grey", linewidth=1, label=f"Pareto front, batch {batch}")
        reference = value_of(mine[0], "accuracy_reference_top1")
        if reference is not None:
            ax.axhline(reference * 100, color="black", linewidth=0.8, label="Keras")
        ax.set_xscale("log")
        ax.set_xlabel("median latency (ms, log)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accuracy_lines(rows) -> list[str]:
    lines = ["## Accuracy against latency", "",
             "Top-1 on the held-out split (the Keras model's own in the last column); `*` marks the Pareto front "
             "of each model, batch and thread count (nothing there is both faster and more accurate).", "",
             "| model | batch | threads | backend | latency ms | top-1 % | Keras top-1 % | Pareto |",
             "|---|---|---|---|---|---|---|---|"]
    groups = sorted({(_label(r), r["batch"], r.get("threads") or 0) for r in rows})
    for model, batch, threads in groups:
        mine = [r for r in rows if (_label(r), r["batch"], r.get("threads") or 0) == (model, batch, threads)]
        front = set(pareto_front([(value_of(r, "latency"), value_of(r, "accuracy_top1")) for r in mine]))
        for i, r in sorted(enumerate(mine), key=lambda item: value_of(item[1], "latency")):
            lines.append(f"| {model} | {batch} | {threads} | {series(r)} | {value_of(r, 'latency'):.4f} | "
                         f"{value_of(r, 'accuracy_top1') * 100:.2f} | {value_of(r, 'accuracy_reference_top1') * 100:.2f} "
                         f"| {'*' if i in front else ''} |")
    return lines + ["", "![accuracy](accuracy.png)", ""]


def _report_files(directory: Path) -> Owned | None:
    """Recognises a report written before reports carried dlcbench's output marker."""
    try:
        with open(Path(directory) / "report.md") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return None
    return Owned(frozenset(REPORT_FILES)) if first.startswith("# dlcbench report: ") else None


#: A report directory (``report --out``).
REPORT = OutputKind("report", "a dlcbench report", recognise=_report_files)


def write_report(db: Path, experiment: str, out_dir: Path, baseline: str | None = None) -> Path:
    """Writes ``report.md`` and the PNG plots for ``experiment`` into ``out_dir``; returns the report path.

    The report is written into a hidden sibling and renamed to ``out_dir`` when complete; an existing
    ``out_dir`` is replaced only if it is empty or an earlier report.

    Raises:
        BadInputError: unknown experiment, one with no successful job to plot, or an ``out_dir``
            that is a file or holds something other than a report.
        BackendUnavailableError: matplotlib is not installed.
    """
    _plt()  # before anything is written
    with staged_output(Path(out_dir), REPORT) as staging:
        _write_report_files(db, experiment, staging, baseline)
    return Path(out_dir) / "report.md"


def _write_report_files(db: Path, experiment: str, out_dir: Path, baseline: str | None) -> None:
    with ResultsStore(db, readonly=True) as store:
        rows = store.results(experiment)
        env_ids = sorted({r["environment_id"] for r in rows if r["environment_id"]})
        environments = [store.environment(i) for i in env_ids]
        host_of = {i: machine_name(e) for i, e in zip(env_ids, environments)}
        for row in rows:  # a row's machine: where its environment record was taken (Ray rows: their node)
            row["machine"] = host_of.get(row["environment_id"])
        cpu_envs = [e for e in environments if not e.get("gpus")] or environments
        environment = cpu_envs[0] if cpu_envs else {}
        table = store.export(experiment, "md")
    views = {region: region_rows(rows, region) for region in REPORT_REGIONS}
    views = {region: view for region, view in views.items() if view}
    if not views:
        raise BadInputError(f"experiment {experiment!r} has no timed job to report")
    good = [r for view in views.values() for r in view]
    backends = sorted({series(r) for r in good})
    wanted = baseline or "onnxruntime"
    if wanted not in backends:  # a backend named without its precision: its one precision in this experiment
        same = [b for b in backends if b.startswith(f"{wanted}[")]
        wanted = same[0] if len(same) == 1 else wanted
    baseline = wanted if wanted in backends or baseline else backends[0]
    if baseline not in backends:
        raise BadInputError(f"baseline {baseline!r} has no results in {experiment}; valid: {', '.join(backends)}")
    region_sections, speedup_sections = [], []
    machines_seen = sorted({r["machine"] for r in good}, key=str)
    several = len(machines_seen) > 1
    env_of = {host_of[i]: e for i, e in zip(env_ids, environments)}
    for index, (region, view) in enumerate(views.items()):
        # Each region has its own plots (the first one's without a suffix) and speedup table: never one comparison.
        if any(series(r) == baseline for r in view):
            speedup_sections += _speedup_lines(view, baseline)
        for number, machine in enumerate(machines_seen, 1):
            # ... and so has each machine: one plot never puts two machines' figures side by side.
            part = [r for r in view if r["machine"] == machine] if several else view
            if not part:
                continue
            suffix = ("" if index == 0 else f"_{region}") + (f"_m{number}" if several else "")
            names = {plot: f"{plot}{suffix}.png" for plot in ("latency", "speedup", "scaling", "roofline")}
            plot_latency(part, out_dir / names["latency"])
            has_baseline = baseline in {series(r) for r in part}
            if has_baseline:
                plot_speedup(part, baseline, out_dir / names["speedup"])
            plot_scaling(part, out_dir / names["scaling"])
            plot_roofline(part, env_of.get(machine, environment) if several else environment,
                          out_dir / names["roofline"])
            shown = [n for plot, n in names.items() if has_baseline or plot != "speedup"]
            title = REGION_TITLES[region] + (f", on {machine}" if several else "")
            where = f" on {machine}" if several else ""
            region_sections += [f"### {title}", "", *(line for n in shown for line in (f"![{n[:-4]}]({n})", "")),
                                *([] if has_baseline else
                                  [f"({baseline} has no {region} figures{where}: no speedups here.)", ""])]
    accuracy_sections = []
    scored = accuracy_rows(views.get("resident") or next(iter(views.values())))
    if scored:
        plot_accuracy(scored, out_dir / "accuracy.png")
        accuracy_sections = _accuracy_lines(scored)
    failures = [r for r in rows if r["status"] != "ok"]
    unstable = [r for r in good if _unstable(r)]
    machines = []
    for env in environments:
        gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in env.get("gpus", [])) or "none"
        peak = (f"; measured peak {env.get('peak_gflops')} GFLOP/s, {env.get('peak_bandwidth_gbs')} GB/s"
                if env.get("peak_gflops") else "")
        machines.append(f"- {env.get('cpu', {}).get('model', '?')}, {env.get('cores', '?')} cores, "
                        f"{env.get('memory_gb', '?')} GB; GPUs: {gpus}; git {env.get('git_revision')}{peak}")
    lines = [
        f"# dlcbench report: {experiment}", "",
        ("Machines (each has its own plots; its roofline uses its own measured peak):" if several else
         "Machines (the roofline uses the first CPU machine's peak):"), "",
        *machines, "",
        f"Speedups are relative to **{baseline}**. {len(failures)} failed job(s), {len(unstable)} unstable timing(s) "
        f"((p90 - p10) / median above {SPREAD_FLAG * 100:g} %). In the table, `spread_pct` is (p90 - p10) / median "
        "and `cv_pct` std / mean, both in percent (the cv grows with a few outliers among thousands of samples; "
        "stability is read from the spread); `round_spread_pct`, in interleaved experiments, is (largest - smallest "
        "round median) / median, the drift between rounds.", "",
        f"Timed regions: {'; '.join(f'{REGION_TITLES[r]}, {len(v)} job(s)' for r, v in views.items())}. Figures of "
        "different regions are never compared: each has its own speedups and plots. In the table, `latency_*` "
        "columns are the resident region (or a region not recorded), `latency_end_to_end_*` the end-to-end one.", "",
        "## Results", "", table, "",
        *speedup_sections,
        *accuracy_sections,
        "## Plots", "", *region_sections,
    ]
    if failures:
        lines += ["## Failures", ""] + [f"- {Path(r['model']).stem}/{series(r)}/b{r['batch']}: "
                                        f"**{r['category']}**: {r['message']}" for r in failures] + [""]
    (out_dir / "report.md").write_text("\n".join(lines))
