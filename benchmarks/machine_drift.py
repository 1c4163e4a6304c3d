#!/usr/bin/env python3
"""How much this machine's speed wanders over seconds: one thread's fp32 matmul GFLOP/s in short windows.

Run it before trusting timings on a shared machine: a swing far above a few percent says that runs timed at
different moments are not comparable, so compare backends only in interleaved rounds (``compare --interleave K``,
the TVM benchmark's rounds), whose paired ratios cancel the drift. Writes ``--out`` (Markdown) and its JSON.

Example:
    python benchmarks/machine_drift.py --seconds 40 --out benchmarks/results/machine-drift.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dlcbench.errors import BadInputError, run_cli

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from dlcbench.results.env import cpu_info, git_revision, measure_speed_drift

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to measure (default: 40)")
    parser.add_argument("--window", type=float, default=0.25, help="seconds per window (default: 0.25)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "machine-drift.md")
    args = parser.parse_args()
    if not (args.seconds > 0 and 0 < args.window <= args.seconds):
        raise BadInputError(f"need --seconds > 0 and 0 < --window <= --seconds (got {args.seconds}, {args.window})")
    drift = measure_speed_drift(args.seconds, args.window)
    cpu = cpu_info()
    record = {"cpu": cpu, "git_revision": git_revision(), **drift}
    windows = drift["windows"]
    text = "\n".join([
        "# Machine speed drift", "",
        f"Machine: {cpu.get('model')} family {cpu.get('family')} model {cpu.get('model_number')} "
        f"({', '.join(cpu.get('flags') or [])}); git {record['git_revision']}; one run of "
        f"`benchmarks/machine_drift.py` ({' '.join(sys.argv[1:]) or 'defaults'}).", "",
        f"One thread's fp32 matmul ({drift['n']}x{drift['n']}), the median product of each {drift['window_s']:g} s "
        f"window, for {drift['seconds']:g} s: {len(windows)} windows.", "",
        "| min GFLOP/s | median | max | max / min | lag-1 autocorrelation |", "|---|---|---|---|---|",
        f"| {drift['min']:.1f} | {drift['median']:.1f} | {drift['max']:.1f} | {drift['swing']:.2f} | "
        f"{drift['lag1_autocorrelation']:.2f} |", "",
        "Windows in order: " + " ".join(f"{w:.0f}" for w in windows), ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    run_cli(main)
