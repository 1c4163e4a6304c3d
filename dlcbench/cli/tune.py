"""Tune a model's TVM tasks with MetaSchedule into the persistent tuning database (no check, no timing).

Where AutoTVM used to be: MetaSchedule is its successor in TVM 0.27. The database is shared by every model
compiled for the same target and TVM version; `dlcbench compile --backend tvm --tune-trials N` then reuses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dlcbench.cli.common import (add_input_arguments, add_job_timeout_argument, batch_of, input_config, job_timeout,
                                  model_help, parse_params)
from dlcbench.compilers.tvm.tuning import SEARCH_GENERATIONS, SEARCH_POPULATION
from dlcbench.errors import BadInputError, ExitCode, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlcbench tune", description=__doc__, epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help=model_help())
    parser.add_argument("--preset", default="default")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: the leading dimension of the first --input-shape, else 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="num-cores of the target (default: the CPUs this process may use)")
    parser.add_argument("--trials", type=int, default=0, help="measured trials for this model")
    parser.add_argument("--minutes", type=float, default=0.0, help="time budget")
    parser.add_argument("--tuning-db", default=None, help="database directory (default: one per target)")
    parser.add_argument("--strategy", default="evolutionary", help="evolutionary, replay-trace or replay-func")
    parser.add_argument("--cost-model", default="xgb", help="xgb, mlp or random")
    parser.add_argument("--population", type=int, default=SEARCH_POPULATION,
                        help=f"evolutionary search population (default: {SEARCH_POPULATION}; MetaSchedule's own is 512)")
    parser.add_argument("--generations", type=int, default=SEARCH_GENERATIONS,
                        help="evolutionary search generations per round (MetaSchedule's genetic_num_iters, "
                             f"default: {SEARCH_GENERATIONS}); "
                             "the search's cost per round grows with population x (generations + 1)")
    parser.add_argument("--conv-layout", default="NHWC",
                        help="layout of 2-D convolutions: NHWC (default) or NCHW as imported; a database applies to "
                             "the layout it was tuned in")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="another TVM option, as compile's --option (e.g. mcpu=skylake-avx512 to tune for a "
                             "remote CPU; give compile the same); those with a flag of their own here take the flag")
    parser.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                        help="measure candidates on the TVM RPC servers of --rpc-key (dlcbench rpc start), all at once")
    parser.add_argument("--rpc-key", default=None, metavar="KEY", help="the RPC servers' key (with --rpc-tracker)")
    parser.add_argument("--out", type=Path, default=None,
                        help="artifact directory (default: out/tune-MODEL-bN); an existing one is replaced only if "
                             "it is empty or an earlier artifact")
    add_job_timeout_argument(parser, "give --minutes some slack")
    add_input_arguments(parser, accuracy=False)
    args = parser.parse_args(argv)
    if not args.trials and not args.minutes:
        raise BadInputError("give --trials and/or --minutes")
    from dlcbench.cpus import default_threads
    from dlcbench.measure.job import JobConfig
    from dlcbench.orchestrate.launcher import run_supervised

    args.batch = batch_of(args)
    timeout = job_timeout(args)
    options = {"tune_trials": args.trials, "tune_minutes": args.minutes, "tune_strategy": args.strategy,
               "tune_cost_model": args.cost_model, "conv_layout": args.conv_layout,
               "tune_population": args.population, "tune_generations": args.generations}
    flagged = {**{key: f"--{key.removeprefix('tune_').replace('_', '-')}" for key in options},
               "tuning_db": "--tuning-db", "rpc_tracker": "--rpc-tracker", "rpc_key": "--rpc-key"}
    for key, value in parse_params(args.option, "--option").items():
        if key in flagged:
            raise BadInputError(f"--option {key}: give {flagged[key]} instead")
        options[key] = value
    if args.tuning_db:
        options["tuning_db"] = args.tuning_db
    if args.rpc_tracker or args.rpc_key:
        options.update(rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key)
    job = JobConfig(backend="tvm", model=args.model, preset=args.preset, batch=args.batch,
                    threads=default_threads() if args.threads is None else args.threads, backend_options=options,
                    compile_only=True, **input_config(args),
                    out_dir=args.out or Path("out") / f"tune-{Path(args.model).stem}-b{args.batch}")
    result = run_supervised(job, timeout)["result"]  # in its own worker: a crash in TVM is one line, exit 7
    tuning = result["manifest"]["extra"]["tuning"]
    print(f"database  {tuning['db']}")
    print(f"tuning    {tuning['new_trials']} new trials in {tuning['seconds']:.1f} s"
          f"{' (stopped by the time budget)' if tuning['stopped_by_time'] else ''}, measured on "
          f"{tuning.get('measured_on', 'local')}")
    for label, key in (("time", "stage_seconds"), ("search", "search_seconds")):  # the search is a stage's parts
        seconds_by_part = tuning.get(key) or {}
        if sum(seconds_by_part.values()):
            print(f"{label:<10}" + ", ".join(f"{name} {seconds:.1f} s" for name, seconds
                                             in sorted(seconds_by_part.items(), key=lambda kv: -kv[1])))
    print(f"{'task':<40} {'calls':>5} {'FLOP share':>10} {'had':>5} {'new':>5} {'best ms':>9} {'tuning s':>8}")
    for task in sorted(tuning["tasks"], key=lambda t: -t["new_trials"]):
        best = f"{task['best_ms']:.4f}" if task["best_ms"] else "-"
        note = f"  failed: {task['failed'][:60]}" if task.get("failed") else ""
        print(f"{task['name'][:40]:<40} {task['weight']:>5} {task['share'] * 100:>9.1f}% {task['existing']:>5} "
              f"{task['new_trials']:>5} {best:>9} {task.get('seconds', 0):>8.1f}{note}")
    files = result["manifest"].get("files") or {}
    curve = files.get("tuning_curve_plot") or files.get("tuning_curve")  # no plot without matplotlib
    if curve:
        print(f"curve     {job.out_dir / curve}")
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
