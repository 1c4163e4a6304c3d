"""Write a Markdown report with PNG plots for an experiment, or export its rows as CSV/JSON/Markdown."""

from __future__ import annotations

import argparse
from pathlib import Path


from dlcbench.errors import ExitCode, run_cli
from dlcbench.results.store import DEFAULT_DB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlcbench report", description=__doc__, epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", help="experiment name given to dlcbench compare --name")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    parser.add_argument("--out", type=Path, default=None,
                        help="report directory (default: reports/EXPERIMENT); an existing one is replaced only if "
                             "it is empty or an earlier report")
    parser.add_argument("--baseline", default=None, help="series the speedups are relative to: a backend, BACKEND@TARGET off the CPU, BACKEND[PRECISION] "
                             "off fp32; a backend with one precision in the experiment may be named alone "
                             "(default: onnxruntime)")
    parser.add_argument("--export", choices=["csv", "json", "md"], help="print the rows in this format instead")
    args = parser.parse_args(argv)
    from dlcbench.errors import BadInputError

    if not args.db.is_file():
        raise BadInputError(f"no results database at {args.db}")
    if args.export:
        from dlcbench.results.store import ResultsStore

        with ResultsStore(args.db, readonly=True) as store:  # reading needs no write access
            print(store.export(args.experiment, args.export), end="")
        return ExitCode.OK
    from dlcbench.results.report import write_report

    path = write_report(args.db, args.experiment, args.out or Path("reports") / args.experiment, args.baseline)
    print(f"report: {path}")
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
