"""Load the results JSON of a bundle's run.py into the results database, with that machine's environment record.

Thin CLI over :func:`dlcbench.stage.bundle.import_results`. Each artifact becomes one row with the metrics
dlcbench's trackers take from a CPU job (``latency`` on the host clock, ``latency_native`` on TVM's own
timer, CUDA events on a GPU, with their samples; compile time, artifact size, FLOPs...) and the check's
verdict and metrics; the environment record is the GPU machine's (GPU name, driver, CUDA runtime, CPU,
Python). Rows go to the experiment ``--experiment`` (default ``gpu-<gpu name>``, e.g. ``gpu-nvidia-h200``);
give the name of a CPU experiment to see GPU and CPU rows side by side in ``dlcbench report NAME --export
md``. A re-import replaces the rows of the same model, preset, batch, target and arch. Results files of
every runner version are read (``dlcbench-gpu-results/1`` and ``/2``).
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
    parser.add_argument("results", type=Path, help="results JSON written by a bundle's run.py")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="results database")
    parser.add_argument("--experiment", default=None, help="experiment name (default: gpu-<gpu name>)")
    parser.add_argument("--table", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    from dlcbench.stage.bundle import import_results, load_results, render_table

    summary = import_results(args.results, args.db, args.experiment)
    print(f"imported {summary['rows']} row(s) ({summary['ok']} ok, {summary['failed']} failed) into experiment "
          f"{summary['experiment']!r} of {args.db}")
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(render_table(load_results(args.results)))
        print(f"table: {args.table}")
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
