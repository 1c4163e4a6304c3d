#!/usr/bin/env python3
"""TVM (untuned and MetaSchedule-tuned) against ONNX Runtime, TensorFlow and XLA, in one run.

For each zoo model at its preset and batch 1, with the same thread count for every backend, prints and writes a
Markdown table of median latencies and ratios to ONNX Runtime, the tuning time and trials, and the per-task
breakdown of the tuned TVM module (where the time goes). Target of issue 5: tuned TVM within 1.5x of ONNX Runtime
on every model and faster on at least two, with at most 20 minutes of tuning per model on a 2-core machine.

Example:
    python benchmarks/tvm_vs_onnxruntime.py --models mlp,cnn,bert --tune-minutes 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from dlcbench.errors import DlcbenchError, one_line, run_cli

BASELINES = ("onnxruntime", "tensorflow", "xla")


def _job(backend, model, args, out, quick=False, **options):
    from dlcbench.measure.job import JobConfig
    from dlcbench.measure.timing import TimingConfig

    # Untuned TVM runs seconds per inference on the big models: a few timed runs say enough there.
    timing = (TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0) if quick else
              TimingConfig(warmup_iters=5, warmup_seconds=0.2, min_iters=10, min_seconds=args.min_seconds))
    return JobConfig(backend=backend, model=model, preset=args.preset, batch=1, threads=args.threads,
                     out_dir=out, backend_options=options, timing=timing)


def run_model(model: str, args) -> dict:
    from dlcbench.measure.job import run_job

    work = Path(args.work) / model
    row: dict = {"model": model}
    for backend in BASELINES + ("tvm",):
        try:
            result = run_job(_job(backend, model, args, work / backend, quick=backend == "tvm"))
            row[backend] = result.timing["stats"]["median_ms"] if result.passed else None
        except DlcbenchError as err:
            row[backend] = None
            row.setdefault("errors", []).append(f"{backend}: {one_line(err, 160)}")
        print(f"  {model:<12} {backend:<12} {row[backend] if row[backend] is not None else 'failed'}", file=sys.stderr)
    options = {"tune_minutes": args.tune_minutes, "tune_trials": args.tune_trials}
    if args.tuning_db:
        options["tuning_db"] = args.tuning_db
    try:
        job = _job("tvm", model, args, work / "tvm-tuned", **options)
        result = run_job(job)
        tuning = result.manifest["extra"]["tuning"]
        row.update(tvm_tuned=result.timing["stats"]["median_ms"] if result.passed else None,
                   tuning_seconds=tuning["seconds"], new_trials=tuning["new_trials"],
                   stopped_by_time=tuning["stopped_by_time"],
                   tasks=sorted(tuning["tasks"], key=lambda t: -t["new_trials"]),
                   profile=profile_tuned(job))
    except DlcbenchError as err:
        row["tvm_tuned"] = None
        row.setdefault("errors", []).append(f"tvm tuned: {one_line(err, 160)}")
    print(f"  {model:<12} tvm-tuned    {row.get('tvm_tuned')}", file=sys.stderr)
    return row


def profile_tuned(job) -> list[dict]:
    """Per-function time of the tuned module in one inference (the VM's instrument hook)."""
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.measure.job import export_for

    adapter = get_adapter("tvm")
    inputs = export_for(adapter, job).inputs()
    with adapter.load(job.out_dir) as session:
        return session.profile(inputs)


def render(rows: list[dict], args, env: dict, seconds: float) -> str:
    def ms(v):
        return f"{v:.4f}" if v is not None else "failed"

    def ratio(v, base):
        return f"{v / base:.2f}x" if v is not None and base else "-"

    lines = [
        "# TVM vs ONNX Runtime (CPU)", "",
        f"Machine: {env['cpu']['model']}, {env['cores']} cores ({', '.join(env['cpu']['flags'])}); "
        f"threads {args.threads} for every backend; preset `{args.preset}`, batch 1; "
        f"TVM {env['packages'].get('apache-tvm')}, ONNX Runtime {env['packages'].get('onnxruntime')}, "
        f"TensorFlow {env['packages'].get('tensorflow')}; git {env.get('git_revision')}.",
        f"Tuning budget per model: {args.tune_minutes:g} min"
        f"{f', {args.tune_trials} trials' if args.tune_trials else ''} (MetaSchedule, evolutionary search, xgb cost model, "
        "one shared database per target). Ratios are latency / ONNX Runtime latency (lower is better; <1 = faster than ORT). "
        f"Whole run: {seconds / 60:.1f} min.", "",
        "| model | ORT ms | TF ms | XLA ms | TVM untuned ms | TVM tuned ms | untuned / ORT | tuned / ORT | tuning s | new trials |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = r.get("onnxruntime")
        lines.append(
            f"| {r['model']} | {ms(base)} | {ms(r.get('tensorflow'))} | {ms(r.get('xla'))} | {ms(r.get('tvm'))} | "
            f"{ms(r.get('tvm_tuned'))} | {ratio(r.get('tvm'), base)} | {ratio(r.get('tvm_tuned'), base)} | "
            f"{r.get('tuning_seconds', 0):.0f} | {r.get('new_trials', 0)} |"
        )
    lines += ["", "## Where the tuned TVM time goes", "",
              "Per function of the tuned module, one inference, timed through the VM's instrument hook "
              "(a few microseconds of hook per call are included); then how the tuner spent its trials.", ""]
    for r in rows:
        prof = [p for p in r.get("profile") or [] if not p["name"].startswith("vm.builtin")]
        if prof:
            lines.append(f"- **{r['model']}** time: " + "; ".join(
                f"{p['name']} x{p['calls']} {p['ms']:.3f} ms ({p['share'] * 100:.0f}%)" for p in prof[:6]))
        tasks = [t for t in r.get("tasks") or [] if t["new_trials"]]
        if tasks:
            lines.append(f"- **{r['model']}** trials ({len(tasks)} of {len(r['tasks'])} tasks tuned): " + "; ".join(
                f"{t['name']} {t['new_trials']} -> {t['best_ms']:.4f} ms" for t in tasks[:6] if t["best_ms"]))
    errors = [e for r in rows for e in r.get("errors", [])]
    if errors:
        lines += ["", "## Failures", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,bert,gpt,mobilenetv2,resnet50")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tune-minutes", type=float, default=20.0)
    parser.add_argument("--tune-trials", type=int, default=0)
    parser.add_argument("--tuning-db", default=None)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--work", default=str(ROOT / "out" / "bench-tvm"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tvm_vs_onnxruntime.md")
    args = parser.parse_args()
    from dlcbench.results.env import environment

    start = time.perf_counter()
    env = environment(args.threads, peak=False)
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model in (m.strip() for m in args.models.split(",") if m.strip()):
        rows.append(run_model(model, args))
        # Written after every model: a long run that is stopped keeps what it measured.
        text = render(rows, args, env, time.perf_counter() - start)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "environment": env}, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    run_cli(main)
