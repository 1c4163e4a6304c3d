#!/usr/bin/env python3
"""MetaSchedule-tuned TVM against ONNX Runtime on equal terms: one timed region, interleaved rounds, intervals.

For each zoo model x thread count x batch (a *point*), TVM is tuned for that point into its own fresh database
(so no model inherits another's records), then ONNX Runtime and the tuned TVM artifact are timed in the
``resident`` region (ONNX Runtime through I/O binding, TVM on device buffers) in K alternating rounds, each backend
in its own worker kept alive (:func:`dlcbench.orchestrate.launcher.run_interleaved`). The table gives each median
with its 95 % bootstrap interval, the ratio TVM / ORT with its interval over the rounds' paired ratios
(:func:`point_ratio`) and verdict, the tuning seconds, trials and inherited records, and the round-to-round
spread; then where the tuned TVM time goes.

Every point is written as soon as it is measured (Markdown, JSON and the curves' PNG), so a stopped run keeps
what it measured; ``--resume`` goes on with the points the JSON lacks. A run is of one commit and one machine:
resuming from another revision, on another CPU (name, SIMD flags, family and model numbers) or with other settings
is refused (start again with another ``--out``, or without ``--resume``).
``--render`` measures no point: it writes the Markdown and the curves again from the JSON with this checkout's
rendering and statistics (the medians, the ratio and their intervals are recomputed from the stored round medians).
The fp32 peak behind ``% peak`` is measured right after each point's rounds, at its thread count, and at every start
(run, sitting, or rendering on the run's machine), where each thread count keeps the run's best figure. A point is
held against its own measurement (:func:`point_peak`): a VM's speed can change between sittings, and when the
points' peaks differ by more than :data:`SITTING_SPEED_WARN` (between sittings or within one) the table says so
(milliseconds measured at different speeds are then not comparable; the ratios are).
The table ends with the issue's targets against the points measured so far: each ratio bound met (the whole
interval at or below it), not ruled out (only its lower end) or missed.

**Time to parity** is read from the tuning curve. The curve's estimate (the sum over measured tasks of their best
latency x calls) leaves out the VM's own overhead, so it is scaled by (measured tuned TVM median / final estimate);
it counts only once every task has been measured. Parity is the first curve point where that scaled latency is at
or below ONNX Runtime's median. The curves' PNG draws it, with ONNX Runtime's median as a line.

Example:
    python benchmarks/tvm_vs_onnxruntime.py --models mlp,cnn --threads 1,2 --batches 1,8 --tune-minutes 15
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from dlcbench.compilers.tvm.tuning import SEARCH_GENERATIONS, SEARCH_POPULATION
from dlcbench.errors import BadInputError, run_cli

BACKENDS = ("onnxruntime", "tvm")


def _timing(args):
    from dlcbench.measure.timing import TimingConfig

    # Totals over all rounds; each round warms up again (a poorly tuned batch-8 convnet runs seconds a call).
    return TimingConfig(warmup_iters=2, warmup_seconds=0.1, min_iters=4 * args.rounds, min_seconds=args.min_seconds,
                        max_seconds=args.max_seconds, ci_target=0.01)


def run_point(model: str, threads: int, batch: int, args) -> dict:
    """Tunes TVM for one point into a fresh database, then times ORT and tuned TVM in interleaved rounds."""
    import shutil

    from dlcbench.measure.job import JobConfig
    from dlcbench.measure.timing import compare_medians
    from dlcbench.orchestrate.launcher import run_interleaved

    work = Path(args.work) / f"{model}-t{threads}-b{batch}"
    db = work / "tuning-db"
    if db.exists():
        shutil.rmtree(db)  # ours (under --work): every point tunes from nothing
    common = dict(model=model, preset=args.preset, batch=batch, threads=threads, timing=_timing(args))
    jobs = [JobConfig(backend="onnxruntime", out_dir=work / "onnxruntime", **common),
            JobConfig(backend="tvm", out_dir=work / "tvm-tuned", **common,
                      backend_options={"tune_minutes": args.tune_minutes, "tuning_db": str(db),
                                       "tune_population": args.tune_population,
                                       "tune_generations": args.tune_generations})]
    start = time.perf_counter()
    rows = run_interleaved(jobs, args.rounds, args.tune_minutes * 60 + args.timeout, progress=_say)
    point = {"model": model, "threads": threads, "batch": batch, "seconds": round(time.perf_counter() - start, 1),
             "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    samples = {}
    for backend, row in zip(BACKENDS, rows):
        if row["status"] != "ok":
            point.setdefault("errors", []).append(f"{backend}: {row['category']}: {row.get('message')}")
            continue
        latency = next(m for m in row["metrics"] if m["name"] == "latency")
        samples[backend] = latency["samples"]
        detail = latency["detail"]
        point[backend] = {"median_ms": latency["value"], "ci_ms": detail["median_ci_ms"],
                          "pooled_median_ms": detail.get("pooled_median_ms") or latency["value"],
                          "pooled_ci_ms": detail.get("pooled_median_ci_ms") or detail["median_ci_ms"],
                          "count": detail["count"], "region": detail.get("region"),
                          "round_medians_ms": detail.get("round_medians_ms"),
                          "round_spread": detail.get("round_spread"),
                          "machine_load": detail.get("machine_load"),
                          "round_machine_load": detail.get("round_machine_load"),
                          "ci_target_met": detail.get("ci_target_met")}
        if backend == "tvm":
            tuning = (row["manifest"].get("extra") or {}).get("tuning") or {}
            tasks = tuning.get("tasks") or []
            point["tuning"] = {"seconds": tuning.get("seconds"), "new_trials": tuning.get("new_trials"),
                               "stopped_by_time": tuning.get("stopped_by_time"),
                               "inherited_records": sum(t.get("existing", 0) for t in tasks),
                               "tasks": sorted(tasks, key=lambda t: -t.get("new_trials", 0)),
                               "curve": tuning.get("curve"), "stage_seconds": tuning.get("stage_seconds"),
                               "search_seconds": tuning.get("search_seconds")}
    if len(samples) == 2:
        pooled = compare_medians(samples["onnxruntime"], samples["tvm"])
        point["ratio"] = {"pooled_ci": [1 / pooled["ci"][1], 1 / pooled["ci"][0]]}
        point["ratio"] = point_ratio(point)
        point["parity"] = time_to_parity(point)
        try:
            profile = profile_tuned(jobs[1])
            point["profile"], point["profile_threads"] = profile["functions"], profile["threads"]
        except Exception as err:  # the profile is a diagnostic: its failure does not lose the point
            point["profile_error"] = str(err)[:200]
    return point


def backend_latency(entry: dict) -> dict:
    """A backend's latency entry with its median ``median_ms`` and interval ``ci_ms`` taken over its round medians
    (:func:`dlcbench.measure.timing.rounds_median`, and :func:`~dlcbench.measure.timing.rounds_interval`, hull with
    the pooled runs' bootstrap); the pooled runs' figures are kept as ``pooled_median_ms`` and ``pooled_ci_ms``.
    An entry of one round keeps the pooled figures. ``--render`` rescores old runs with it."""
    from dlcbench.measure.timing import rounds_interval, rounds_median

    pooled_ci = entry.get("pooled_ci_ms") or entry["ci_ms"]
    pooled_median = entry.get("pooled_median_ms") or entry["median_ms"]
    rounds = entry.get("round_medians_ms") or []
    if len(rounds) < 2:
        return {**entry, "median_ms": pooled_median, "ci_ms": list(pooled_ci), "pooled_median_ms": pooled_median,
                "pooled_ci_ms": list(pooled_ci)}
    return {**entry, "median_ms": rounds_median(rounds), "ci_ms": rounds_interval(rounds, pooled_ci=pooled_ci),
            "pooled_median_ms": pooled_median, "pooled_ci_ms": list(pooled_ci)}


def point_ratio(point: dict) -> dict:
    """TVM / ORT latency with its 95 % interval and verdict, from the point's round medians (pooled medians for a
    point of one round).

    The ratio is the median of the rounds' paired ratios and the interval
    :func:`dlcbench.measure.timing.compare_rounds`' (Student's t over those ratios, widened to the pooled runs'
    bootstrap interval, ``ratio.pooled_ci``, if that is wider); the ratio of the pooled medians is kept as
    ``pooled_ratio``. A point measured before the ratio kept ``pooled_ci`` has its bootstrap interval in
    ``ratio.ci``, so ``--render`` rescores old runs the same way.
    """
    from dlcbench.measure.timing import compare_rounds, verdict_of

    earlier = point.get("ratio") or {}
    pooled_ci = earlier.get("pooled_ci") or earlier.get("ci")
    ort, tvm = point["onnxruntime"], point["tvm"]
    # compare_rounds gives ORT / TVM (>1: TVM faster); the table shows TVM / ORT, so its inverse.
    pooled = {"speedup": (ort.get("pooled_median_ms") or ort["median_ms"]) / (tvm.get("pooled_median_ms")
                                                                               or tvm["median_ms"]),
              "ci": [1 / pooled_ci[1], 1 / pooled_ci[0]]}
    rounds = (ort.get("round_medians_ms") or [], tvm.get("round_medians_ms") or [])
    if len(rounds[0]) >= 2 and len(rounds[0]) == len(rounds[1]):
        speed = compare_rounds(*rounds, pooled=pooled)
    else:  # a single round: only the pooled runs' interval
        speed = {**pooled, "verdict": verdict_of(*pooled["ci"]), "method": "pooled runs"}
    lo, hi = speed["ci"]
    return {"tvm_over_ort": 1 / speed["speedup"], "ci": [1 / hi, 1 / lo], "verdict": speed["verdict"],
            "method": speed["method"], "pooled_ci": list(pooled_ci), "pooled_ratio": 1 / pooled["speedup"],
            "round_ratios": [t / o for o, t in zip(*rounds)] if rounds[0] else None}


LOAD_FLAG_PCT = 10  # a round in which others (processes, hypervisor) took more of the machine is named


def load_lines(points: list[dict]) -> list[str]:
    """What else the machine did while the points were timed: the largest share of its CPU time that other
    processes and the hypervisor took in one round, and the rounds where that passed :data:`LOAD_FLAG_PCT`."""
    from dlcbench.measure.machine import worst_load

    recorded = [p for p in points if any((p.get(b) or {}).get("machine_load") for b in BACKENDS)]
    if not recorded:
        return ["Machine load during the rounds: not recorded (points timed before dlcbench recorded it)."]
    worst = worst_load([(p.get(b) or {}).get("machine_load") for p in recorded for b in BACKENDS])
    flagged = []
    for p in recorded:
        for b in BACKENDS:
            entry = p.get(b) or {}
            loads = entry.get("round_machine_load") or [entry.get("machine_load")]  # one round: its own load
            for i, load in enumerate(loads):
                if load and load["others_cpu_pct"] + load["steal_pct"] > LOAD_FLAG_PCT:
                    flagged.append(f"{p['model']} t{p['threads']} b{p['batch']} {b} round {i + 1} "
                                   f"({load['others_cpu_pct']:.0f} % others, {load['steal_pct']:.0f} % steal)")
    return [f"Machine load during the rounds ({len(recorded)} of {len(points)} points recorded it): other processes "
            f"took at most {worst['others_cpu_pct']:.0f} % of the machine's CPU time in a round, the hypervisor at "
            f"most {worst['steal_pct']:.0f} %; " + ("rounds above " f"{LOAD_FLAG_PCT} %: " + "; ".join(flagged) + "."
                                         if flagged else f"no round above {LOAD_FLAG_PCT} %.")]


def scaled_curve(point: dict) -> list[tuple[float, float]]:
    """``(tuning minutes, latency ms)`` of the tuning curve, scaled to the measured tuned latency; only the part
    where every task has been measured (see the module's docstring)."""
    tuning = point.get("tuning") or {}
    curve, tasks = tuning.get("curve") or [], tuning.get("tasks") or []
    tunable = sum(1 for t in tasks if t.get("best_ms") is not None)  # measured by the end
    if not curve or not point.get("tvm") or not curve[-1].get("estimated_ms"):
        return []
    scale = point["tvm"]["median_ms"] / curve[-1]["estimated_ms"]
    return [(c["seconds"] / 60, c["estimated_ms"] * scale) for c in curve
            if c.get("measured_tasks", 0) >= tunable and c.get("estimated_ms")]


def point_peak(point: dict, env: dict) -> float | None:
    """The fp32 peak (GFLOP/s) a point is held against, at its thread count, measured as close to its rounds as
    the run has one: right after them (``peak_gflops``); for points from before that was recorded, the last
    sitting's measurement taken before the point finished; else the run's best. A VM's speed can change from one
    sitting to the next (neighbours on the host), so the best of all sittings understates the slow sittings' points.
    """
    if point.get("peak_gflops"):
        return point["peak_gflops"]
    key, finished = str(point["threads"]), point.get("finished")
    before = sorted((s["collected"], s["gflops"][key]) for s in env.get("peak_sittings") or []
                    if finished and s.get("collected", "") <= finished and (s.get("gflops") or {}).get(key))
    return before[-1][1] if before else (env.get("peak_gflops_by_threads") or {}).get(key)


#: Above this ratio between the highest and lowest peaks the points are held against, the table warns that
#: milliseconds measured at different speeds are not comparable.
SITTING_SPEED_WARN = 1.2


def sitting_lines(points: list[dict], env: dict) -> list[str]:
    """How fast the machine was in each sitting of the run (the peaks its points are held against), and which
    points each sitting measured; a warning when those peaks differ by more than :data:`SITTING_SPEED_WARN`, between
    sittings or within one."""
    lines, spread = [], {}
    sittings = sorted({p.get("sitting", 1) for p in points})
    for sitting in sittings:
        mine = [p for p in points if p.get("sitting", 1) == sitting]
        peaks = {}
        for p in mine:
            peak = point_peak(p, env)
            if peak:
                peaks.setdefault(p["threads"], []).append(peak)
                spread.setdefault(p["threads"], []).append(peak)
        words = ", ".join(f"{min(v):g}" + (f"-{max(v):g}" if max(v) != min(v) else "") + f" GFLOP/s at {t} thread(s)"
                          for t, v in sorted(peaks.items(), reverse=True))
        lines.append(f"{sitting} ({(mine[0].get('finished') or '?')[:10]}, peak {words or 'unmeasured'}): "
                     + ", ".join(f"{p['model']} t{p['threads']} b{p['batch']}" for p in mine))
    worst = max((max(v) / min(v), t) for t, v in spread.items()) if spread else (1.0, 0)
    if len(sittings) < 2 and worst[0] <= SITTING_SPEED_WARN:
        return []
    text = "- **Sittings**: " + "; ".join(lines) + "."
    if worst[0] > SITTING_SPEED_WARN:
        text += (f" **The machine's speed changed during the run** ({worst[0]:.1f}x between the peaks its points are "
                 f"held against at {worst[1]} thread(s)): milliseconds of points measured at different speeds are not "
                 "comparable, their ratios are (each round times the two backends back to back).")
    return [text]


def share_of_peak(point: dict, backend: str, env: dict) -> float | None:
    """The model's FLOPs (TVM's estimate over its tasks) per second at ``backend``'s median, over the fp32 peak
    of :func:`point_peak`; None where a figure is missing."""
    peak = point_peak(point, env)
    flops = sum(t.get("flops") or 0 for t in (point.get("tuning") or {}).get("tasks") or [])
    if not peak or not flops or not point.get(backend):
        return None
    return flops / (point[backend]["median_ms"] / 1e3) / 1e9 / peak


#: The targets of issue #15, as (label, which points, bound of TVM / ORT).
RATIO_TARGETS = (("threads 1, batch 1: TVM at least as fast as ONNX Runtime on five of the six models",
                  lambda p: p["threads"] == 1 and p["batch"] == 1, 1.0),
                 ("threads 1, batch 1: within 1.2x on all six", lambda p: p["threads"] == 1 and p["batch"] == 1, 1.2),
                 ("threads 2 or batch 8: within 1.25x on all six", lambda p: p["threads"] > 1 or p["batch"] > 1, 1.25))
PEAK_TARGET = ("resnet50", 8, 0.5)  # model, batch, share of the measured peak


def target_lines(points: list[dict], env: dict) -> list[str]:
    """Each target against the points measured so far: a ratio bound is *met* when the ratio's whole 95 % interval
    is at or below it, *not ruled out* when only its lower end is (no significant difference from the bound), and
    *missed* otherwise; a point that failed misses."""
    lines = []
    for label, chosen, bound in RATIO_TARGETS:
        mine = [p for p in points if chosen(p)]
        if not mine:
            continue
        met, open_, missed = [], [], []
        for p in mine:
            name = f"{p['model']} t{p['threads']} b{p['batch']}"
            r = p.get("ratio")
            if not r:
                missed.append(f"{name} (failed)")
            elif r["ci"][1] <= bound:
                met.append(name)
            elif r["ci"][0] <= bound:
                open_.append(f"{name} {r['tvm_over_ort']:.2f}x")
            else:
                missed.append(f"{name} {r['tvm_over_ort']:.2f}x")
        lines.append(f"- **{label}** (TVM / ORT <= {bound:g}), so far: met on {len(met)} of {len(mine)} points"
                     + (f"; not ruled out on {', '.join(open_)}" if open_ else "")
                     + (f"; missed on {', '.join(missed)}" if missed else "") + ".")
    model, batch, share = PEAK_TARGET
    for p in (p for p in points if p["model"] == model and p["batch"] == batch):
        got = share_of_peak(p, "tvm", env)
        verdict = "unmeasured" if got is None else ("met" if got >= share else "missed")
        lines.append(f"- **{model} batch {batch}, {p['threads']} thread(s): tuned TVM at >= {share * 100:.0f} % of "
                     f"the measured fp32 peak**: {verdict}" + (f" ({got * 100:.0f} %)." if got is not None else "."))
    reached = [f"{p['model']} t{p['threads']} b{p['batch']} {p['parity']['minutes']:.1f} min" for p in points
               if (p.get("parity") or {}).get("minutes") is not None]
    lines.append(f"- **Time to parity** within the budget: {len(reached)} of {len(points)} points"
                 + (f" ({', '.join(reached)})" if reached else "") + ".")
    return lines


def trial_cost(point: dict) -> dict:
    """Seconds per trial from the tuning curve: over the first pass (until every task has been measured once) and
    over the later batches by thirds (empty when fewer than three); whether a trial grows dearer as the database
    fills is read from the thirds."""
    curve = (point.get("tuning") or {}).get("curve") or []
    final = curve[-1].get("measured_tasks", 0) if curve else 0
    first, later = [], []
    for a, b in zip(curve, curve[1:]):
        if b["trials"] > a["trials"]:
            (first if a.get("measured_tasks", 0) < final else later).append((b["seconds"] - a["seconds"],
                                                                              b["trials"] - a["trials"]))

    def rate(part):
        return sum(s for s, _ in part) / max(sum(n for _, n in part), 1)

    third = len(later) // 3
    return {"first_pass": rate(first) if first else None,
            "later": [rate(later[i * third:(i + 1) * third]) for i in range(3)] if third else []}


def time_to_parity(point: dict) -> dict:
    """Minutes of tuning until the scaled curve reaches ONNX Runtime's median (None: not within the budget)."""
    curve = scaled_curve(point)
    ort = point["onnxruntime"]["median_ms"]
    reached = next((minutes for minutes, ms in curve if ms <= ort), None)
    return {"minutes": reached, "all_tasks_measured_at_min": curve[0][0] if curve else None,
            "scale": point["tvm"]["median_ms"] / point["tuning"]["curve"][-1]["estimated_ms"]
            if curve else None}


def plot_curves(points: list[dict], path: Path) -> None:
    """One panel per model (its points as lines), ONNX Runtime's medians dashed in the same colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(p["model"] for p in points))
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        for i, p in enumerate(q for q in points if q["model"] == model):
            colour = f"C{i}"
            curve = scaled_curve(p)
            label = f"t{p['threads']} b{p['batch']}"
            if curve:
                ax.plot([c[0] for c in curve], [c[1] for c in curve], color=colour, label=label)
            if p.get("onnxruntime"):
                ax.axhline(p["onnxruntime"]["median_ms"], color=colour, linestyle="--", linewidth=0.8)
            reached = (p.get("parity") or {}).get("minutes")
            if reached is not None:
                ax.plot([reached], [p["onnxruntime"]["median_ms"]], marker="o", color=colour)
        ax.set_title(model, fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("tuning minutes", fontsize=8)
        ax.set_ylabel("ms (scaled estimate)", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle("Tuned TVM latency during tuning (solid)\nagainst ONNX Runtime (dashed); dot: parity", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


_PROFILE_CODE = """
import json, sys
from dlcbench.compilers.registry import get_adapter
from dlcbench.measure.job import export_for
from dlcbench.orchestrate.launcher import job_from_dict
job = job_from_dict(json.loads(sys.argv[1]))
adapter = get_adapter("tvm")
inputs = export_for(adapter, job).inputs()
with adapter.load(job.out_dir) as session:
    functions = session.profile(inputs)
import tvm
print(json.dumps({"functions": functions, "threads": tvm.get_global_func("runtime.NumThreads")()}))
"""


def profile_tuned(job) -> dict:
    """Per-function time of the tuned module in one inference (the VM's instrument hook), in a new process: TVM sizes
    a process's thread pool once, so a profile run here after a point of fewer threads would run on fewer. Returns
    ``functions`` (name, calls, ms, share) and ``threads`` (the size of the pool it ran on).

    Raises:
        RuntimeError: the profile failed (its stderr's tail) or ran past 30 minutes.
    """
    import subprocess

    from dlcbench.cpus import restore_affinity, worker_env
    from dlcbench.orchestrate.launcher import job_to_dict

    restore_affinity()  # the child starts with the calling thread's CPUs
    try:
        done = subprocess.run([sys.executable, "-c", _PROFILE_CODE, json.dumps(job_to_dict(job))], capture_output=True,
                              text=True, timeout=1800, env={**os.environ, **worker_env()})
    except subprocess.TimeoutExpired:
        raise RuntimeError("the profile ran past 30 minutes") from None
    if done.returncode != 0:
        raise RuntimeError(f"the profile failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def render(points: list[dict], args, env: dict, seconds: float, argv: list[str], sessions: int = 1) -> str:
    def ms(entry):
        if not entry:
            return "failed"
        lo, hi = entry["ci_ms"]
        return f"{entry['median_ms']:.4f} [{lo:.4f}, {hi:.4f}]"

    def ratio(point):
        r = point.get("ratio")
        return f"{r['tvm_over_ort']:.2f}x [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" if r else "-"

    def verdict(point):
        r = point.get("ratio")
        if not r:
            return "-"
        return {"faster": "TVM faster", "slower": "TVM slower"}.get(r["verdict"], "no significant difference")

    def peak_share(point, backend):
        share = share_of_peak(point, backend, env)
        return "-" if share is None else f"{share * 100:.0f}"

    def parity(point):
        found = point.get("parity") or {}
        if found.get("minutes") is not None:
            return f"{found['minutes']:.1f}"
        tuning = point.get("tuning") or {}
        return f"> {(tuning.get('seconds') or 0) / 60:.0f}" if point.get("ratio") else "-"

    def spread(point):
        values = [point[b]["round_spread"] for b in BACKENDS if point.get(b) and point[b].get("round_spread") is not None]
        return "/".join(f"{v * 100:.1f}" for v in values) or "-"

    lines = [
        "# TVM vs ONNX Runtime (CPU), on equal terms", "",
        f"Machine: {_cpu_words(env['cpu'])}, {env['cores']} cores; preset "
        f"`{args.preset}`; TVM {env['packages'].get('apache-tvm')}, ONNX Runtime {env['packages'].get('onnxruntime')}; "
        f"git {env.get('git_revision')}; one run of `benchmarks/tvm_vs_onnxruntime.py` "
        f"({' '.join(argv) or 'defaults'}), {seconds / 60:.1f} min of measuring in all"
        f"{f', in {sessions} sittings (--resume)' if sessions > 1 else ''}.", "",
        "- **Timed region**: `resident` for both (ONNX Runtime through I/O binding, TVM on device buffers). The "
        "same thread count for both backends (ORT intra-op threads, TVM_NUM_THREADS and the target's num-cores).",
        f"- **Tuning**: {args.tune_minutes:g} min of MetaSchedule per point (model x threads x batch), each point "
        "from its own fresh database: no point inherits records (the `inherited` column counts them). Evolutionary "
        f"search: population {args.tune_population}, generations per round {args.tune_generations}.",
        f"- **Timing**: {args.rounds} interleaved rounds per point (ORT, TVM; then TVM, ORT; ...), each backend in its "
        f"own worker kept alive; at least {args.min_seconds:g} s of timed runs per backend in all, each round longer "
        "until its median's 95 % bootstrap interval is within +-1 % (capped). Medians in ms over the rounds (the median "
        "of the round medians: every round weighs the same, however many runs fitted in it) with their 95 % interval "
        "over the rounds (Student's t over the rounds' log medians, widened to the pooled runs' bootstrap interval "
        "if that is wider), so the machine's drift between rounds counts.",
        "- **Ratio** = TVM / ORT latency (<1: TVM faster), with its 95 % interval over the rounds: each round gives one "
        "paired ratio (the two backends timed back to back, so a drift of the machine's speed cancels); the ratio is "
        "their median and the interval Student's t over the rounds' log ratios, widened to the pooled runs' bootstrap interval if that "
        "is wider. The verdict is read from the interval. `round spread` is (max - min round median) / median, "
        "ORT/TVM, in percent.",
        "- **Parity min**: minutes of tuning until the tuning curve, scaled to the measured tuned latency, reaches "
        "ORT's median (`> N`: not within the budget); see `tvm_vs_onnxruntime_curves.png`.",
        "- **% peak** = the model's FLOPs (TVM's estimate over its tasks) / median latency, against the fp32 "
        "matmul peak (numpy's BLAS) at the point's thread count measured in the point's own sitting: right after "
        "its rounds, or for points timed before dlcbench did that, at its sitting's start; ORT/TVM. The run's best "
        "peaks: " + ", ".join(f"{k} thread(s) {v if v else 'unmeasured'} GFLOP/s"
                              for k, v in (env.get("peak_gflops_by_threads") or {}).items())
        + (f" (of {len(env['peak_sittings'])} measurements at sittings' starts and renderings)"
           if len(env.get("peak_sittings") or []) > 1 else "") + ".",
        *sitting_lines(points, env), "",
        "| model | threads | batch | ORT ms [95% CI] | tuned TVM ms [95% CI] | TVM / ORT [95% CI] | verdict | "
        "tuning s | trials | inherited | parity min | % peak | round spread % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        tuning = p.get("tuning") or {}
        lines.append(
            f"| {p['model']} | {p['threads']} | {p['batch']} | {ms(p.get('onnxruntime'))} | {ms(p.get('tvm'))} | "
            f"{ratio(p)} | {verdict(p)} | {tuning.get('seconds') or 0:.0f} | {tuning.get('new_trials', 0)} | "
            f"{tuning.get('inherited_records', '-')} | {parity(p)} | "
            f"{peak_share(p, 'onnxruntime')}/{peak_share(p, 'tvm')} | {spread(p)} |")
    lines += ["", *load_lines(points)]
    lines += ["", "## Against the targets", "",
              f"The targets of issue #15 over the {len(points)} points measured so far. A ratio bound is met when the "
              "ratio's whole 95 % interval is at or below it, not ruled out when only the interval's lower end is.",
              "", *target_lines(points, env)]
    lines += ["", "## Where the tuned TVM time goes", "",
              "Per function of the tuned module, one inference, timed through the VM's instrument hook (a few "
              "microseconds of hook per call are included); then how the tuner spent its trials and its time "
              "(MetaSchedule's profiler: search, candidate builds, measurement, cost-model updates).", ""]
    for p in points:
        name = f"{p['model']} t{p['threads']} b{p['batch']}"
        prof = [f for f in p.get("profile") or [] if not f["name"].startswith("vm.builtin")]
        if prof:
            total = sum(f["ms"] for f in p["profile"])
            lines.append(f"- **{name}** time: " + "; ".join(
                f"{f['name']} x{f['calls']} {f['ms']:.3f} ms ({f['share'] * 100:.0f}%)" for f in prof[:5])
                + f" (the profile sums to {total:.1f} ms, against a median of {p['tvm']['median_ms']:.1f} ms"
                + (f"; profiled on {p['profile_threads']} thread(s)" if p.get("profile_threads") else "") + ")")
        tasks = [t for t in (p.get("tuning") or {}).get("tasks") or [] if t.get("new_trials")]
        if tasks:
            lines.append(f"- **{name}** trials ({len(tasks)} of {len(p['tuning']['tasks'])} tasks tuned): " + "; ".join(
                f"{t['name']} {t['new_trials']} -> {t['best_ms']:.4f} ms" for t in tasks[:5] if t.get("best_ms")))
        stages = (p.get("tuning") or {}).get("stage_seconds") or {}
        if stages and sum(stages.values()):
            trials = p["tuning"].get("new_trials") or 0
            lines.append(f"- **{name}** tuning time: {_shares(stages)}"
                         + (f"; {sum(stages.values()) / trials:.2f} s per trial" if trials else ""))
        search = (p.get("tuning") or {}).get("search_seconds") or {}
        if search and sum(search.values()):
            lines.append(f"- **{name}** search time (MetaSchedule's scopes): {_shares(search)}")
        cost = trial_cost(p)
        if cost["later"]:
            lines.append(f"- **{name}** seconds per trial: {cost['first_pass']:.2f} in the first pass (every task "
                         f"once), then {' / '.join(f'{v:.2f}' for v in cost['later'])} over the later batches by "
                         "thirds, while the database grew")
    errors = [f"{p['model']} t{p['threads']} b{p['batch']}: {e}" for p in points for e in p.get("errors", [])]
    if errors:
        lines += ["", "## Failures", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def _shares(seconds_by_part: dict[str, float]) -> str:
    """``"search 61%, build 25%, ..."``: each part's share of their sum, largest first."""
    total = sum(seconds_by_part.values())
    return ", ".join(f"{k} {v / total * 100:.0f}%" for k, v in sorted(seconds_by_part.items(), key=lambda kv: -kv[1]))


def main() -> int:
    from dlcbench.config import split_list

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,bert,gpt,mobilenetv2,resnet50")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    parser.add_argument("--tune-minutes", type=float, default=15.0, help="MetaSchedule minutes per point")
    parser.add_argument("--tune-population", type=int, default=SEARCH_POPULATION,
                        help=f"evolutionary search population (default: {SEARCH_POPULATION})")
    parser.add_argument("--tune-generations", type=int, default=SEARCH_GENERATIONS,
                        help="evolutionary search generations per round (MetaSchedule's genetic_num_iters; "
                             f"default: {SEARCH_GENERATIONS})")
    parser.add_argument("--rounds", type=int, default=8,
                        help="interleaved timing rounds per point (at least 2: the ratio's interval is over them)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per backend, all rounds")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap of timed seconds per backend")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per build or round, tuning excluded")
    parser.add_argument("--work", default=str(ROOT / "out" / "bench-tvm"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tvm_vs_onnxruntime.md")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the points --out's JSON lacks (same revision and settings only)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing but the fp32 peak (kept if higher than the run's); write --out's "
                             "Markdown and curves again from its JSON with this checkout's rendering")
    args = parser.parse_args()
    if args.rounds < 2:
        raise BadInputError(f"--rounds must be at least 2 (the ratio's interval is over the rounds), got {args.rounds}")
    if args.tune_population < 1 or args.tune_generations < 0:
        raise BadInputError(f"--tune-population must be at least 1 and --tune-generations at least 0, got "
                            f"{args.tune_population} and {args.tune_generations}")
    from dlcbench.results.env import environment

    start = time.perf_counter()
    path = args.out.with_suffix(".json")
    earlier = load_run(path) if args.resume or args.render else None
    if args.render:  # runs from before the search settings were recorded searched with the defaults of then
        vars(args).update({**UNRECORDED_SEARCH, **earlier["settings"]})
    threads = [int(t) for t in split_list(args.threads)]
    batches = [int(b) for b in split_list(args.batches)]
    settings = {k: getattr(args, k) for k in SETTINGS}
    env = dict(earlier["environment"]) if args.render else environment(max(threads), peak=False)
    points, earlier_seconds, sessions = [], 0.0, 1
    if args.resume:
        points, earlier_seconds, sessions = resumed(earlier, path, env, settings)
    best, sittings = {}, []
    if earlier:
        best = earlier["environment"].get("peak_gflops_by_threads") or {}
        sittings = earlier["environment"].get("peak_sittings") or []
    from dlcbench.results.env import cpu_info, measure_peak_gflops

    if env.get("cpu") == cpu_info():  # the roofline's compute roof at each thread count, of this run's machine only
        env.update(measured_peaks(threads, best, sittings))
    elif args.render:
        _say(f"not measuring the peak: this is {_cpu_words(cpu_info())}, the run was on {_cpu_words(env.get('cpu', {}))}")
    if args.render:
        print(write_run(earlier["points"], args, env, float(earlier["seconds"]), earlier.get("argv") or [],
                        int(earlier["sessions"]), settings))
        return 0
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    points = [p for p in points if not p.get("errors")]  # a failed point is measured again
    done = {(p["model"], p["threads"], p["batch"]) for p in points}
    text = render(points, args, env, earlier_seconds, argv, sessions)
    # Every model at one (threads, batch) before the next: a run stopped early has whole columns to compare.
    for batch in batches:
        for count in threads:
            for model in split_list(args.models):
                if (model, count, batch) in done:
                    continue
                _say(f"== {model} threads {count} batch {batch}")
                point = run_point(model, count, batch, args)
                points.append({**point, "sitting": sessions, "peak_gflops": measure_peak_gflops(count)})
                seconds = earlier_seconds + time.perf_counter() - start
                text = write_run(points, args, env, seconds, argv, sessions, settings)
    print(text)
    return 0


#: The search settings of runs from before the benchmark recorded them: dlcbench's defaults of then (four
#: generations were the default until the one-generation run of b674a23).
UNRECORDED_SEARCH = {"tune_population": 128, "tune_generations": 4}
#: What a resumed run must share with the run it goes on with (the model list may grow).
SETTINGS = ("preset", "threads", "batches", "tune_minutes", "tune_population", "tune_generations", "rounds",
            "min_seconds", "max_seconds")


def load_run(path: Path) -> dict:
    """A run's JSON as written after each point.

    Raises:
        BadInputError: no such file, or not a run of this benchmark.
    """
    from dlcbench.jsonio import load_file

    earlier = load_file(path)
    if not isinstance(earlier, dict) or not {"points", "environment", "settings"} <= set(earlier):
        raise BadInputError(f"{path} is not a run of this benchmark (no points, environment and settings)")
    earlier.setdefault("seconds", 0.0)
    earlier.setdefault("sessions", 1)
    return earlier


def write_run(points: list[dict], args, env: dict, seconds: float, argv: list[str], sessions: int,
              settings: dict) -> str:
    """Writes the run so far (Markdown, JSON, the curves' PNG when matplotlib is there); returns the Markdown."""
    points = [{**p, **{b: backend_latency(p[b]) for b in BACKENDS if p.get(b)},
               **({"ratio": point_ratio(p)} if p.get("ratio") else {})} for p in points]
    # The medians may have been rescored: parity is read against them.
    points = [{**p, "parity": time_to_parity(p)} if p.get("parity") and p.get("onnxruntime") and p.get("tvm") else p
              for p in points]
    text = render(points, args, env, seconds, argv, sessions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"points": points, "environment": env, "argv": argv, "settings": settings,
         "seconds": round(seconds, 1), "sessions": sessions}, indent=2, default=str))
    try:
        plot_curves(points, args.out.with_name(args.out.stem + "_curves.png"))
    except ImportError:
        pass  # matplotlib is optional
    return text


def measured_peaks(threads: list[int], best: dict, sittings: list[dict]) -> dict:
    """The fp32 peak at each thread count, measured now and merged with the run's earlier sittings.

    A roof is the best the machine reached: each thread count keeps the highest figure of any sitting (a sitting that
    measured while the machine was busy reads low). Returns ``peak_gflops_by_threads`` (the best) and
    ``peak_sittings`` (each sitting's own figures, with when they were taken).
    """
    from dlcbench.results.env import measure_peak_gflops

    now = {str(t): measure_peak_gflops(t) for t in threads}
    merged = dict(best)
    for key, value in now.items():
        if value is not None and (merged.get(key) is None or value > merged[key]):
            merged[key] = value
    sitting = {"collected": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gflops": now}
    return {"peak_gflops_by_threads": merged, "peak_sittings": [*sittings, sitting]}


def _cpu_words(cpu: dict) -> str:
    numbers = f" family {cpu['family']} model {cpu.get('model_number')}" if "family" in cpu else ""
    return f"{cpu.get('model')}{numbers} ({', '.join(cpu.get('flags') or []) or 'no flags recorded'})"


def resumed(earlier: dict, path: Path, env: dict, settings: dict) -> tuple[list[dict], float, int]:
    """The points of an earlier sitting of this run, its measuring seconds and the sitting count (this one included).

    Raises:
        BadInputError: another revision (or a dirty checkout), machine, versions or settings.
    """
    revision = earlier.get("environment", {}).get("git_revision")
    if not revision or revision.endswith("-dirty") or revision != env.get("git_revision"):
        raise BadInputError(f"cannot resume {path}: it was measured at revision {revision}, this checkout is "
                            f"{env.get('git_revision')} (a run is of one clean commit)")
    machine, here = earlier.get("environment", {}).get("cpu", {}), env.get("cpu", {})
    if machine != here:  # model name, SIMD flags, family and model numbers: one name can cover two generations
        raise BadInputError(f"cannot resume {path}: it was measured on {_cpu_words(machine)}, this is "
                            f"{_cpu_words(here)} (a run is of one machine: start another with another --out)")
    before, now = earlier.get("environment", {}), env
    changed = [name for name in ("apache-tvm", "onnxruntime", "numpy")
               if (before.get("packages") or {}).get(name) != (now.get("packages") or {}).get(name)]
    changed += ["cores"] * (before.get("cores") != now.get("cores"))
    if changed:
        raise BadInputError(f"cannot resume {path}: another {', '.join(changed)} than the run's")
    differ = [k for k in SETTINGS if earlier.get("settings", {}).get(k) != settings[k]]
    if differ:
        raise BadInputError(f"cannot resume {path}: other settings ({', '.join(differ)})")
    return earlier["points"], float(earlier.get("seconds", 0.0)), int(earlier.get("sessions", 1)) + 1


if __name__ == "__main__":
    run_cli(main)
