"""Markdown report and PNG plots of one experiment: latency, speedup heatmap, batch scaling, roofline."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import BadInputError
from dlcbench.measure.trackers import metric_of, value_of
from dlcbench.outputs import OutputKind, Owned, staged_output
from dlcbench.results.store import ResultsStore


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row: dict[str, Any]) -> str:
    return Path(row["model"]).stem


def series(row: dict[str, Any]) -> str:
    """The plotted series of a row: the backend, with its target when not the CPU (``tvm@cuda``)."""
    target = row.get("target") or "cpu"
    return row["backend"] if target == "cpu" else f"{row['backend']}@{target}"


def plot_latency(rows, path: Path) -> None:
    """Median latency per model and backend with p10-p90 error bars, one panel per batch."""
    plt = _plt()
    batches = sorted({r["batch"] for r in rows})
    models = sorted({_label(r) for r in rows})
    backends = sorted({series(r) for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(max(6, 2.5 * len(models)) * len(batches) / 1.5, 4), squeeze=False)
    width = 0.8 / max(len(backends), 1)
    for ax, batch in zip(axes[0], batches):
        for i, backend in enumerate(backends):
            meds, lo, hi = [], [], []
            for model in models:
                row = next((r for r in rows if series(r) == backend and _label(r) == model and r["batch"] == batch), None)
                latency = metric_of(row, "latency") if row else None
                samples = np.asarray(latency["samples"]) if latency and latency.get("samples") else None
                if samples is None:
                    meds.append(np.nan), lo.append(0), hi.append(0)
                    continue
                med = float(np.median(samples))
                meds.append(med), lo.append(med - np.percentile(samples, 10)), hi.append(np.percentile(samples, 90) - med)
            x = np.arange(len(models)) + i * width
            ax.bar(x, meds, width, yerr=[lo, hi], capsize=3, label=backend)
        ax.set_xticks(np.arange(len(models)) + width * (len(backends) - 1) / 2, models)
        ax.set_yscale("log")
        ax.set_ylabel("median latency (ms, log)")
        ax.set_title(f"batch {batch} (bars: median, whiskers: p10-p90)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedups(rows, baseline: str) -> tuple[list[str], list[str], np.ndarray]:
    """Baseline median / backend median per (model at smallest batch, backend); NaN where missing."""
    batch = min(r["batch"] for r in rows)
    models = sorted({_label(r) for r in rows})
    backends = sorted({series(r) for r in rows})
    med = {(_label(r), series(r)): value_of(r, "latency") for r in rows if r["batch"] == batch and value_of(r, "latency")}
    grid = np.full((len(models), len(backends)), np.nan)
    for i, model in enumerate(models):
        base = med.get((model, baseline))
        for j, backend in enumerate(backends):
            if base and med.get((model, backend)):
                grid[i, j] = base / med[(model, backend)]
    return models, backends, grid


def plot_speedup(rows, baseline: str, path: Path) -> None:
    plt = _plt()
    models, backends, grid = speedups(rows, baseline)
    fig, ax = plt.subplots(figsize=(1.6 * len(backends) + 2, 0.7 * len(models) + 1.8))
    finite = grid[np.isfinite(grid)]
    span = max(abs(np.log2(finite)).max(), 1.0) if finite.size else 1.0
    im = ax.imshow(np.log2(grid), cmap="RdYlGn", vmin=-span, vmax=span)
    for i in range(len(models)):
        for j in range(len(backends)):
            ax.text(j, i, "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}x", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(backends)), backends)
    ax.set_yticks(range(len(models)), models)
    ax.set_title(f"speedup over {baseline} (batch {min(r['batch'] for r in rows)}; >1 = faster)")
    fig.colorbar(im, ax=ax, label="log2 speedup")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(rows, path: Path) -> None:
    """Throughput against batch size per model and backend."""
    plt = _plt()
    lines = defaultdict(list)
    for r in rows:
        throughput = (metric_of(r, "latency") or {}).get("detail", {}).get("throughput_per_s")
        if throughput:
            lines[(_label(r), series(r))].append((r["batch"], throughput))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, backend), points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{model}/{backend}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (items/s)")
    ax.set_title("batch-size scaling")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roofline_points(rows) -> list[dict[str, Any]]:
    """Achieved GFLOP/s and arithmetic intensity (FLOPs per weight byte) of each successful row."""
    points = []
    for r in rows:
        median_ms, flops = value_of(r, "latency"), value_of(r, "flops")
        if not (median_ms and flops):
            continue
        manifest = r.get("manifest") or {}
        weight_bytes = 4 * (value_of(r, "parameters") or 0) or max(value_of(r, "artifact_size") or 0, 1)
        points.append({"label": f"{_label(r)}/{series(r)}/b{r['batch']}", "backend": series(r),
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
    ax.set_title("CPU roofline (measured matmul peak and copy bandwidth)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REPORT_FILES = ("report.md", "latency.png", "speedup.png", "scaling.png", "roofline.png")


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
    """
    with staged_output(Path(out_dir), REPORT) as staging:
        _write_report_files(db, experiment, staging, baseline)
    return Path(out_dir) / "report.md"


def _write_report_files(db: Path, experiment: str, out_dir: Path, baseline: str | None) -> None:
    with ResultsStore(db, readonly=True) as store:
        rows = store.results(experiment)
        env_ids = sorted({r["environment_id"] for r in rows if r["environment_id"]})
        environments = [store.environment(i) for i in env_ids]
        cpu_envs = [e for e in environments if not e.get("gpus")] or environments
        environment = cpu_envs[0] if cpu_envs else {}
        table = store.export(experiment, "md")
    good = [r for r in rows if value_of(r, "latency") is not None]
    if not good:
        raise BadInputError(f"experiment {experiment!r} has no timed job to report")
    backends = sorted({series(r) for r in good})
    baseline = baseline or ("onnxruntime" if "onnxruntime" in backends else backends[0])
    if baseline not in backends:
        raise BadInputError(f"baseline {baseline!r} has no results in {experiment}; valid: {', '.join(backends)}")
    plot_latency(good, out_dir / "latency.png")
    plot_speedup(good, baseline, out_dir / "speedup.png")
    plot_scaling(good, out_dir / "scaling.png")
    plot_roofline(good, environment, out_dir / "roofline.png")
    failures = [r for r in rows if r["status"] != "ok"]
    unstable = [r for r in good if metric_of(r, "latency")["detail"].get("unstable")]
    machines = []
    for env in environments:
        gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in env.get("gpus", [])) or "none"
        peak = (f"; measured peak {env.get('peak_gflops')} GFLOP/s, {env.get('peak_bandwidth_gbs')} GB/s"
                if env.get("peak_gflops") else "")
        machines.append(f"- {env.get('cpu', {}).get('model', '?')}, {env.get('cores', '?')} cores, "
                        f"{env.get('memory_gb', '?')} GB; GPUs: {gpus}; git {env.get('git_revision')}{peak}")
    lines = [
        f"# dlcbench report: {experiment}", "", "Machines (the roofline uses the first CPU machine's peak):", "",
        *machines, "",
        f"Speedups are relative to **{baseline}**. {len(failures)} failed job(s), {len(unstable)} unstable timing(s) "
        "(coefficient of variation above 2.5 %).", "",
        "## Results", "", table, "",
        "## Plots", "", "![latency](latency.png)", "", "![speedup](speedup.png)", "",
        "![scaling](scaling.png)", "", "![roofline](roofline.png)", "",
    ]
    if failures:
        lines += ["## Failures", ""] + [f"- {Path(r['model']).stem}/{series(r)}/b{r['batch']}: "
                                        f"**{r['category']}**: {r['message']}" for r in failures] + [""]
    (out_dir / "report.md").write_text("\n".join(lines))
