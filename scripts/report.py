#!/usr/bin/env python3
"""Write a Markdown report with PNG plots for an experiment, or export its rows as CSV/JSON/Markdown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlcbench.errors import ExitCode, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/report.py", description=__doc__, epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", help="experiment name given to compare.py --name")
    parser.add_argument("--db", type=Path, default=Path("results/dlcbench.sqlite"))
    parser.add_argument("--out", type=Path, default=None, help="report directory (default: reports/EXPERIMENT)")
    parser.add_argument("--baseline", default=None, help="backend the speedups are relative to (default: onnxruntime)")
    parser.add_argument("--export", choices=["csv", "json", "md"], help="print the rows in this format instead")
    args = parser.parse_args(argv)
    from dlcbench.errors import BadInputError

    if not args.db.is_file():
        raise BadInputError(f"no results database at {args.db}")
    if args.export:
        from runner.store import ResultsStore

        with ResultsStore(args.db) as store:
            print(store.export(args.experiment, args.export), end="")
        return ExitCode.OK
    from runner.report import write_report

    path = write_report(args.db, args.experiment, args.out or Path("reports") / args.experiment, args.baseline)
    print(f"report: {path}")
    return ExitCode.OK


if __name__ == "__main__":
    run_cli(main)
