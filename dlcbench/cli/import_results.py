"""Load the results JSON of a stage's run.py into the results database, with that machine's environment record.

Thin CLI over :func:`dlcbench.stage.results.import_results`. Each job becomes one row with the metrics dlcbench's
trackers took where it ran (``latency`` on the host clock, ``latency_native`` on the backend's own timer, CUDA
events on a GPU, with their samples; compile time, artifact size, FLOPs...) and the check's verdict and metrics;
the environment record is that machine's (GPUs, driver, PyTorch's CUDA and cuDNN, CPU, Python). Rows go to the
experiment ``--experiment`` (default ``gpu-<gpu name>``, e.g. ``gpu-nvidia-h200``, or ``stage-cpu-<cpu>``); the
report compares them as it compares CPU rows, GPU rows with GPU rows of the same machine only. A re-import
replaces the rows of the same jobs. With ``--stage DIR`` (the stage that ran), the candidates its tuning rounds
timed there are committed to the MetaSchedule database (``--tuning-db``, default the one each round was sampled
from): a next stage built with ``--backend-option tvm:tuning_db=DB`` applies them. Results of the earlier TVM-only bundles (``dlcbench-gpu-results/1`` and
``/2``) are read too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dlcbench.errors import ExitCode, run_cli
from dlcbench.results.store import DEFAULT_DB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlcbench import-results", description=__doc__, epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", type=Path, help="results JSON written by a stage's run.py")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="results database")
    parser.add_argument("--experiment", default=None, help="experiment name (default: gpu-<gpu name> or stage-cpu-<cpu>)")
    parser.add_argument("--table", type=Path, default=None,
                        help="also write the Markdown comparison table here (an existing file only if empty or a "
                             "table dlcbench wrote)")
    parser.add_argument("--stage", type=Path, default=None,
                        help="the stage that ran: its measured tuning rounds are committed to the MetaSchedule database")
    parser.add_argument("--tuning-db", type=Path, default=None,
                        help="commit the rounds into this MetaSchedule database (default: the one each was sampled from)")
    parser.add_argument("--baseline", default=None,
                        help="the table's speedup baseline series (default: torch@cuda on a GPU, torch on a CPU)")
    args = parser.parse_args(argv)
    from dlcbench.outputs import check_file_replaceable, write_file_atomically
    from dlcbench.stage.results import TABLE_TITLE, import_results, render_table

    if args.table:  # before anything is imported: never over a file dlcbench did not write
        check_file_replaceable(args.table, TABLE_TITLE, "a results table")

    summary = import_results(args.results, args.db, args.experiment, stage_dir=args.stage, tuning_db=args.tuning_db)
    print(f"imported {summary['rows']} row(s) ({summary['ok']} ok, {summary['failed']} failed) into experiment "
          f"{summary['experiment']!r} of {args.db}")
    if summary.get("tuning_not_committed"):
        print(f"the results hold tuning rounds ({', '.join(summary['tuning_not_committed'])}): give --stage DIR (the "
              "stage that ran) to commit them to the tuning database")
    for t in summary.get("tuning") or []:
        if t.get("already_committed"):
            print(f"tuning round of {t['job']}: already committed to {t['database']}; nothing added")
            continue
        if t.get("error"):
            print(f"tuning round of {t['job']}: not measured there: {t['error']}")
            continue
        improved = [x for x in t["tasks"] if x.get("best_secs") and x.get("default_secs") and x["best_secs"] < x["default_secs"]]
        print(f"tuning round of {t['job']}: {t['committed']} record(s) committed, {t['failed']} failed, into "
              f"{t['database']}; {len(improved)} of {len(t['tasks'])} task(s) beat their default schedule")
    if args.table:
        from dlcbench.stage import legacy

        if summary.get("legacy"):  # an earlier bundle's results
            text = legacy.render_bundle_table(legacy.load_bundle_results(args.results))
        else:
            text = render_table(args.db, summary["experiment"], args.baseline)
        write_file_atomically(args.table, text)
        print(f"table: {args.table}")
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
