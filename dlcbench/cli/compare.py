"""Run a models x backends x batches comparison; resumable; results go to SQLite.

Thin CLI: builds one :class:`dlcbench.orchestrate.experiment.ExperimentConfig` and calls
:func:`dlcbench.orchestrate.experiment.run_experiment`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from dlcbench.errors import ExitCode, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlcbench compare", description=__doc__.splitlines()[0], epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="experiment name (a rerun resumes it)")
    parser.add_argument("--models", required=True, help="comma-separated zoo names or model paths")
    parser.add_argument("--backends", required=True, help="comma-separated backend names")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes (default: 1)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="one thread count for every backend (default: 1)")
    parser.add_argument("--preset", default="default", help="zoo preset: tiny or default")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--db", type=Path, default=Path("results/dlcbench.sqlite"), help="results database")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per job before it is killed")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed seconds per job")
    parser.add_argument("--min-iters", type=int, default=20, help="minimum timed runs per job")
    parser.add_argument("--force", action="store_true", help="rerun jobs already recorded")
    args = parser.parse_args(argv)
    from dlcbench.orchestrate.experiment import ExperimentConfig, run_experiment
    from dlcbench.measure.timing import TimingConfig

    config = ExperimentConfig(
        name=args.name, models=args.models, backends=args.backends, batches=args.batch, precision=args.precision,
        threads=args.threads, preset=args.preset, target=args.target, db=args.db, timeout_s=args.timeout,
        force=args.force, timing=TimingConfig(min_seconds=args.min_seconds, min_iters=args.min_iters),
    )
    counts = run_experiment(config)
    print(f"{args.name}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} already recorded "
          f"(of {counts['total']}); database {args.db}")
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
