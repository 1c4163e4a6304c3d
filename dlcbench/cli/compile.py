"""Compile a model with one backend, check its outputs against the reference and time it.

Thin CLI: builds one :class:`dlcbench.measure.job.JobConfig` and runs :func:`dlcbench.measure.job.run_job` in a
child process (:func:`dlcbench.orchestrate.launcher.run_supervised`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from dlcbench.cli.common import (add_input_arguments, add_job_timeout_argument, add_timing_arguments, backend_help,
                                  batch_of, input_config, job_timeout, model_help, parse_params, timing_config)
from dlcbench import jsonio
from dlcbench.cpus import default_threads
from dlcbench.errors import BadInputError, ExitCode, run_cli
from dlcbench.quiet import set_verbose


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlcbench compile",
        description="Export (cached), compile, check against the reference, and time one model on one backend."
                    " The job runs in a child process: a crash there is reported as one error line (exit 7),"
                    " its output (stdout included) goes to stderr, and stdout carries only the summary or --json."
                    " The check runs at least three input rows (extra seeded batches below batch 3): NaN/Inf must"
                    " match the reference by position, a reference holding NaN/Inf fails as INVALID REFERENCE (exit 1),"
                    " and an output that is the same for every input is flagged TRIVIAL CHECK (not a failure).",
        epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--list-backends", action="store_true", help="list backends and whether they run here")
    parser.add_argument("--backend", help=backend_help())
    parser.add_argument("--model", help=model_help())
    parser.add_argument("--preset", default="default", help="zoo size preset: tiny or default (default: default)")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="override a zoo parameter (VALUE is JSON, of the type of the preset's value)")
    parser.add_argument("--target", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16, bf16 or int8 (default: fp32)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: the leading dimension of the first --input-shape, else 1)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for the backend (default: the CPUs this process may use)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="backend option, e.g. opt_level=basic (typed as the backend's Options field; target, "
                             "precision, threads and batch have their own flags)")
    parser.add_argument("--tolerance", action="append", metavar="[OUT:]abs=X,rel=Y,cosine=Z",
                        help="override tolerances, of every output or of output OUT (one the model has)")
    add_timing_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="artifact directory (default: out/MODEL-BACKEND-...); an existing one is replaced only if "
                             "it is empty or an earlier artifact")
    parser.add_argument("--force-export", action="store_true", help="rebuild the model's export cache entry")
    add_input_arguments(parser)
    tuning = parser.add_argument_group("TVM tuning (MetaSchedule, AutoTVM's successor)")
    tuning.add_argument("--tune-trials", type=int, default=None, help="measured trials for this model")
    tuning.add_argument("--tune-minutes", type=float, default=None, help="time budget; stops cleanly with the best so far")
    tuning.add_argument("--tuning-db", default=None, help="database directory to use/export (default: one per target)")
    tuning.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                        help="measure on TVM RPC servers (dlcbench rpc start): tuning candidates on every free server "
                             "of --rpc-key, then the artifact is checked and timed on one of them")
    tuning.add_argument("--rpc-key", default=None, metavar="KEY", help="the RPC servers' key (with --rpc-tracker)")
    add_job_timeout_argument(parser, "export, compile, tuning, check and timing all count")
    parser.add_argument("--compile-only", action="store_true",
                        help="write the artifact (with inputs and reference) without running it, e.g. --target cuda here")
    parser.add_argument("--json", action="store_true", help="print the result JSON (only it, on stdout) instead of the summary")
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party start-up logs (TensorFlow's absl/oneDNN/CUDA lines); "
                             "same as DLCBENCH_VERBOSE=1")
    return parser


def list_backends() -> int:
    from dlcbench.compilers.registry import describe_backends

    for name, status, origin in describe_backends():
        line = f"{name:<12} {'available' if status else 'unavailable'}"
        if not status:
            line += f": {status.reason}" + (f" (install: {status.install_hint})" if status.install_hint else "")
        if origin != "builtin":
            line += f" [{origin}]"
        print(line)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        set_verbose()
    if args.list_backends:
        return list_backends()
    if not args.backend or not args.model:
        raise BadInputError("--backend and --model are required (see --help)")
    backend_options = parse_params(args.option, "--option")
    for flag, key in (("tune_trials", "tune_trials"), ("tune_minutes", "tune_minutes"), ("tuning_db", "tuning_db"),
                      ("rpc_tracker", "rpc_tracker"), ("rpc_key", "rpc_key")):
        if getattr(args, flag) is not None:
            if args.backend != "tvm":
                raise BadInputError(f"--{flag.replace('_', '-')} applies to --backend tvm only")
            backend_options[key] = getattr(args, flag)
    from dlcbench.measure.job import JobConfig

    args.batch = batch_of(args)
    timeout = job_timeout(args)
    config = JobConfig(
        backend=args.backend, model=args.model, preset=args.preset, params=parse_params(args.param),
        target=args.target, precision=args.precision, batch=args.batch, threads=args.threads, out_dir=args.out,
        backend_options=backend_options, tolerances=args.tolerance or [],
        timing=timing_config(args),
        seed=args.seed, compile_only=args.compile_only, force_export=args.force_export, region=args.region,
        **input_config(args),
    )
    from dlcbench.orchestrate.launcher import run_supervised

    # The job runs in a child process: a crash there becomes one error line here, and only this process
    # writes to stdout (the child's stdout goes to stderr), so libraries that print cannot break --json.
    outcome = run_supervised(config, timeout)
    result = outcome["result"]
    print(jsonio.dumps(result, indent=2, default=str) if args.json else outcome["summary"])
    print(f"artifact  {config.out_dir} (result.json inside)", file=sys.stderr)
    return ExitCode.OK if result["passed"] else ExitCode.CHECK_FAILED


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
