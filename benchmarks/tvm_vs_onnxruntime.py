#!/usr/bin/env python3
"""MetaSchedule-tuned TVM against ONNX Runtime on equal terms: one timed region, interleaved rounds, intervals.

For each zoo model x thread count x batch (a *point*), TVM is tuned for that point into its own fresh database
(so no model inherits another's records), then ONNX Runtime and the tuned TVM artifact are timed in the
``resident`` region (ONNX Runtime through I/O binding, TVM on device buffers) in K alternating rounds, each backend
in its own worker kept alive (:func:`dlcbench.orchestrate.launcher.run_interleaved`). The table gives each median
with its 95 % bootstrap interval, the ratio TVM / ORT with its interval and verdict, the tuning seconds, trials and
inherited records, and the round-to-round spread; then where the tuned TVM time goes.

Every point is written as soon as it is measured (Markdown and JSON), so a stopped run keeps what it measured.

Example:
    python benchmarks/tvm_vs_onnxruntime.py --models mlp,cnn --threads 1,2 --batches 1,8 --tune-minutes 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from dlcbench.errors import run_cli

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
                      backend_options={"tune_minutes": args.tune_minutes, "tuning_db": str(db)})]
    start = time.perf_counter()
    rows = run_interleaved(jobs, args.rounds, args.tune_minutes * 60 + args.timeout, progress=_say)
    point = {"model": model, "threads": threads, "batch": batch, "seconds": round(time.perf_counter() - start, 1)}
    samples = {}
    for backend, row in zip(BACKENDS, rows):
        if row["status"] != "ok":
            point.setdefault("errors", []).append(f"{backend}: {row['category']}: {row.get('message')}")
            continue
        latency = next(m for m in row["metrics"] if m["name"] == "latency")
        samples[backend] = latency["samples"]
        point[backend] = {"median_ms": latency["value"], "ci_ms": latency["detail"]["median_ci_ms"],
                          "count": latency["detail"]["count"], "region": latency["detail"].get("region"),
                          "round_medians_ms": latency["detail"].get("round_medians_ms"),
                          "round_spread": latency["detail"].get("round_spread"),
                          "ci_target_met": latency["detail"].get("ci_target_met")}
        if backend == "tvm":
            tuning = (row["manifest"].get("extra") or {}).get("tuning") or {}
            tasks = tuning.get("tasks") or []
            point["tuning"] = {"seconds": tuning.get("seconds"), "new_trials": tuning.get("new_trials"),
                               "stopped_by_time": tuning.get("stopped_by_time"),
                               "inherited_records": sum(t.get("existing", 0) for t in tasks),
                               "tasks": sorted(tasks, key=lambda t: -t.get("new_trials", 0)),
                               "curve": tuning.get("curve")}
    if len(samples) == 2:
        # compare_medians gives ORT / TVM (>1: TVM faster); the table shows TVM / ORT, so its inverse.
        speed = compare_medians(samples["onnxruntime"], samples["tvm"])
        lo, hi = speed["ci"]
        point["ratio"] = {"tvm_over_ort": 1 / speed["speedup"], "ci": [1 / hi, 1 / lo], "verdict": speed["verdict"]}
        try:
            point["profile"] = profile_tuned(jobs[1])
        except Exception as err:  # the profile is a diagnostic: its failure does not lose the point
            point["profile_error"] = str(err)[:200]
    return point


def profile_tuned(job) -> list[dict]:
    """Per-function time of the tuned module in one inference (the VM's instrument hook)."""
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.measure.job import export_for

    adapter = get_adapter("tvm")
    inputs = export_for(adapter, job).inputs()
    with adapter.load(job.out_dir) as session:
        return session.profile(inputs)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def render(points: list[dict], args, env: dict, seconds: float) -> str:
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

    def spread(point):
        values = [point[b]["round_spread"] for b in BACKENDS if point.get(b) and point[b].get("round_spread") is not None]
        return "/".join(f"{v * 100:.1f}" for v in values) or "-"

    lines = [
        "# TVM vs ONNX Runtime (CPU), on equal terms", "",
        f"Machine: {env['cpu']['model']}, {env['cores']} cores ({', '.join(env['cpu']['flags'])}); preset "
        f"`{args.preset}`; TVM {env['packages'].get('apache-tvm')}, ONNX Runtime {env['packages'].get('onnxruntime')}; "
        f"git {env.get('git_revision')}; one run of `benchmarks/tvm_vs_onnxruntime.py` "
        f"({' '.join(sys.argv[1:]) or 'defaults'}), {seconds / 60:.1f} min in all.", "",
        f"- **Timed region**: `resident` for both (ONNX Runtime through I/O binding, TVM on device buffers). The "
        f"same thread count for both backends (ORT intra-op threads, TVM_NUM_THREADS and the target's num-cores).",
        f"- **Tuning**: {args.tune_minutes:g} min of MetaSchedule per point (model x threads x batch), each point "
        "from its own fresh database: no point inherits records (the `inherited` column counts them).",
        f"- **Timing**: {args.rounds} interleaved rounds per point (ORT, TVM; then TVM, ORT; ...), each backend in its "
        f"own worker kept alive; at least {args.min_seconds:g} s of timed runs per backend in all, more until the "
        "median's 95 % interval is within +-1 % (capped). Medians in ms with their 95 % bootstrap interval.",
        "- **Ratio** = TVM / ORT latency (<1: TVM faster), with its 95 % bootstrap interval; the verdict is read from "
        "the interval. `round spread` is (max - min round median) / median, ORT/TVM, in percent.", "",
        "| model | threads | batch | ORT ms [95% CI] | tuned TVM ms [95% CI] | TVM / ORT [95% CI] | verdict | "
        "tuning s | trials | inherited | round spread % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        tuning = p.get("tuning") or {}
        lines.append(
            f"| {p['model']} | {p['threads']} | {p['batch']} | {ms(p.get('onnxruntime'))} | {ms(p.get('tvm'))} | "
            f"{ratio(p)} | {verdict(p)} | {tuning.get('seconds') or 0:.0f} | {tuning.get('new_trials', 0)} | "
            f"{tuning.get('inherited_records', '-')} | {spread(p)} |")
    lines += ["", "## Where the tuned TVM time goes", "",
              "Per function of the tuned module, one inference, timed through the VM's instrument hook (a few "
              "microseconds of hook per call are included); then how the tuner spent its trials.", ""]
    for p in points:
        name = f"{p['model']} t{p['threads']} b{p['batch']}"
        prof = [f for f in p.get("profile") or [] if not f["name"].startswith("vm.builtin")]
        if prof:
            lines.append(f"- **{name}** time: " + "; ".join(
                f"{f['name']} x{f['calls']} {f['ms']:.3f} ms ({f['share'] * 100:.0f}%)" for f in prof[:5]))
        tasks = [t for t in (p.get("tuning") or {}).get("tasks") or [] if t.get("new_trials")]
        if tasks:
            lines.append(f"- **{name}** trials ({len(tasks)} of {len(p['tuning']['tasks'])} tasks tuned): " + "; ".join(
                f"{t['name']} {t['new_trials']} -> {t['best_ms']:.4f} ms" for t in tasks[:5] if t.get("best_ms")))
    errors = [f"{p['model']} t{p['threads']} b{p['batch']}: {e}" for p in points for e in p.get("errors", [])]
    if errors:
        lines += ["", "## Failures", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def main() -> int:
    from dlcbench.config import split_list

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,bert,gpt,mobilenetv2,resnet50")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    parser.add_argument("--tune-minutes", type=float, default=2.0, help="MetaSchedule minutes per point")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds per point")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per backend, all rounds")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap of timed seconds per backend")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per build or round, tuning excluded")
    parser.add_argument("--work", default=str(ROOT / "out" / "bench-tvm"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tvm_vs_onnxruntime.md")
    args = parser.parse_args()
    from dlcbench.results.env import environment

    start = time.perf_counter()
    threads = [int(t) for t in split_list(args.threads)]
    batches = [int(b) for b in split_list(args.batches)]
    env = environment(max(threads), peak=False)
    points: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model in split_list(args.models):
        for count in threads:
            for batch in batches:
                _say(f"== {model} threads {count} batch {batch}")
                points.append(run_point(model, count, batch, args))
                text = render(points, args, env, time.perf_counter() - start)
                args.out.write_text(text)
                args.out.with_suffix(".json").write_text(
                    json.dumps({"points": points, "environment": env, "argv": sys.argv[1:]}, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    run_cli(main)
