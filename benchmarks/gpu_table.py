#!/usr/bin/env python3
"""Render the Markdown table of an earlier TVM-only GPU bundle run (GPU, driver, per-model latency, check verdict).

A stage's table: ``dlcbench import-results RESULTS --table OUT.md``.

From the results JSON of a bundle's run.py, or from an experiment already imported into the results
database (``--db DB --experiment NAME``). Writes to ``--out`` (e.g. ``benchmarks/results/gpu-h200.md``)
or prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from dlcbench.errors import BadInputError, ExitCode, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_table.py", description=__doc__, epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", type=Path, nargs="?", help="results JSON written by a bundle's run.py")
    parser.add_argument("--db", type=Path, default=None, help="read an imported experiment from this database instead")
    parser.add_argument("--experiment", default=None, help="experiment name in --db")
    parser.add_argument("--out", type=Path, default=None, help="write the table here (default: print)")
    args = parser.parse_args(argv)
    from dlcbench.stage.legacy import load_bundle_results as load_results
    from dlcbench.stage.legacy import render_bundle_table as render_table
    from dlcbench.stage.legacy import results_from_store

    if args.results is not None:
        data = load_results(args.results)
    elif args.db is not None and args.experiment:
        if not args.db.is_file():
            raise BadInputError(f"no results database at {args.db}")
        data = results_from_store(args.db, args.experiment)
    else:
        raise BadInputError("give a results JSON file, or --db and --experiment")
    text = render_table(data)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"table: {args.out}")
    else:
        print(text, end="")
    return ExitCode.OK


if __name__ == "__main__":
    run_cli(main)
