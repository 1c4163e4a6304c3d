"""Run a models x backends x batches x threads comparison; resumable; results go to SQLite.

The whole matrix is checked before anything runs. A rerun skips recorded jobs (--retry-failed reruns the failed
ones, --force all); two runs of one experiment at once split its jobs; a result the database cannot take because
another process keeps it locked waits in DB.pending/ for the next run. Exits 8 when a job failed.

Thin CLI: builds one :class:`dlcbench.orchestrate.experiment.ExperimentConfig` and calls
:func:`dlcbench.orchestrate.experiment.run_experiment`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from dlcbench.cli.common import (add_input_arguments, add_timing_arguments, backend_help, input_config, model_help,
                                  timing_config)
from dlcbench.errors import ExitCode, run_cli
from dlcbench.results.store import DEFAULT_DB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlcbench compare", description="\n\n".join(__doc__.split("\n\n")[:2]), epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="experiment name (a rerun resumes it)")
    parser.add_argument("--models", required=True,
                        help=model_help(plural=True))
    parser.add_argument("--backends", required=True, help=backend_help(plural=True))
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes (default: 1)")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated precisions: fp32, fp16, bf16, int8; with several, each backend runs "
                             "those it has (default: fp32)")
    parser.add_argument("--threads", default="1",
                        help="comma-separated thread counts, each applied to every backend: a sweep is one experiment "
                             "(default: 1)")
    parser.add_argument("--preset", default="default", help="zoo preset: tiny or default")
    parser.add_argument("--target", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB,
                        help="results database (default: results/dlcbench.sqlite, created if missing)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per job before it is killed")
    parser.add_argument("--out", type=Path, default=Path("out") / "experiments",
                        help="artifact directory, one subdirectory per job (default: ./out/experiments)")
    parser.add_argument("--force", action="store_true", help="rerun every job, recorded or not")
    parser.add_argument("--retry-failed", action="store_true", help="rerun the jobs recorded as failed")
    parser.add_argument("--interleave", type=int, default=1, metavar="K",
                        help="time the backends of each (model, threads, batch) point in K alternating rounds, each "
                             "backend in its own worker kept alive, so drift hits them alike (default: 1, each job "
                             "timed alone); the timing minimums are shared out between the rounds")
    parser.add_argument("--executor", default="local", choices=("local", "ray"),
                        help="local: each job in a worker process here, one after the other (default); ray: each job "
                             "(or interleaved point) as a Ray task, timings never two to a node (needs the cluster "
                             "extra: pip install -e '.[cluster]')")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="with --executor ray: auto or ray://HOST:PORT joins a cluster whose nodes have the "
                             "dlcbench_timing resource; without it, a private local Ray instance on 127.0.0.1 runs "
                             "for this command only")
    parser.add_argument("--mlflow", default=None, metavar="URI",
                        help="also log each job as an MLflow run (tracking URI, or a directory for a file store); "
                             "the database stays the source of truth (needs: pip install -e '.[mlflow]')")
    add_timing_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--db-wait", type=float, default=None, metavar="SECONDS",
                        help="how long a database write waits for another process's lock before the result is "
                             "kept in DB.pending/ (default: $DLCBENCH_DB_WAIT or 30)")
    args = parser.parse_args(argv)
    from dlcbench.orchestrate.experiment import ExperimentConfig, run_experiment, summary_line

    config = ExperimentConfig(
        name=args.name, models=args.models, backends=args.backends, batches=args.batch, precision=args.precision,
        threads=args.threads, preset=args.preset, target=args.target, db=args.db, timeout_s=args.timeout,
        force=args.force, timing=timing_config(args),
        out_root=args.out, retry_failed=args.retry_failed, db_wait=args.db_wait, region=args.region,
        interleave=args.interleave, executor=args.executor, ray_address=args.ray_address, mlflow_uri=args.mlflow,
        **input_config(args),
    )
    counts = run_experiment(config)
    print(summary_line(config, counts))
    return ExitCode.JOBS_FAILED if counts["failed"] else ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
