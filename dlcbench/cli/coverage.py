"""Run the ONNX backend node tests through every adapter that takes ONNX: an operator x backend matrix.

Thin CLI over :mod:`dlcbench.coverage`. Outcomes go to the results database (table ``coverage``), a Markdown
table and a summary on stdout. ``--all`` is the full run (benchmarks/results/coverage.md); ``--subset N``,
``--ops`` or ``--tests`` pick a few tests for CI.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from dlcbench.config import split_list
from dlcbench.errors import BadInputError, ExitCode, run_cli
from dlcbench.results.store import DEFAULT_DB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlcbench coverage", description=__doc__.splitlines()[0], epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pick = parser.add_argument_group("which tests (one is required)")
    pick.add_argument("--all", action="store_true", help="every node test (about 1400; see --expanded)")
    pick.add_argument("--subset", type=int, metavar="N", help="N tests spread over N operators (deterministic)")
    pick.add_argument("--ops", metavar="OP,...", help="the tests of these operators, e.g. Celu,Relu")
    pick.add_argument("--tests", metavar="NAME,...", help="these node tests, e.g. test_celu,test_relu")
    pick.add_argument("--list-ops", action="store_true", help="list the operators with node tests and exit")
    parser.add_argument("--expanded", action="store_true", help="also the *_expanded function-body variants")
    parser.add_argument("--backends", help="comma-separated (default: every available backend that takes ONNX)")
    parser.add_argument("--run", default="", help="run name in the database (default: onnx-VERSION); reruns resume")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="results database")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="Markdown output (default: benchmarks/results/coverage.md with --all, else "
                             "reports/coverage/RUN.md); an existing file only if empty or a coverage table dlcbench "
                             "wrote")
    parser.add_argument("--data", type=Path, default=None,
                        help="a node test directory (onnx/backend/test/data/node layout); default: generated "
                             "from the onnx package into the cache")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per test before it is killed (default 60)")
    parser.add_argument("--threads", type=int, default=1, help="threads per backend (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="backends tested at once, one process each (default 1)")
    parser.add_argument("--force", action="store_true", help="rerun tests already recorded in this run")
    args = parser.parse_args(argv)
    from dlcbench.coverage import (
        DEFAULT_MARKDOWN, CoverageConfig, discover, format_coverage_summary, onnx_version, run_coverage,
    )

    if args.list_ops:
        tests = discover(args.data, args.expanded)
        ops = sorted({t.qualified_op for t in tests}, key=str.lower)
        print(f"{len(ops)} operators, {len(tests)} node tests (onnx {onnx_version()}):")
        print(", ".join(ops))
        return ExitCode.OK
    if not (args.all or args.subset or args.ops or args.tests):
        raise BadInputError("choose the tests: --all, --subset N, --ops OP,... or --tests NAME,... (see --help)")
    run = args.run or f"onnx-{onnx_version()}"
    # Given to the config (not set after it) so that it is checked before any test runs.
    markdown = args.markdown or (DEFAULT_MARKDOWN if args.all and not (args.subset or args.ops or args.tests)
                                 else Path("reports") / "coverage" / f"{run}.md")
    config = CoverageConfig(
        run=run, backends=split_list(args.backends), ops=split_list(args.ops), tests=split_list(args.tests),
        subset=args.subset, expanded=args.expanded, data_dir=args.data, db=args.db, timeout_s=args.timeout,
        threads=args.threads, jobs=args.jobs, force=args.force, markdown=markdown,
    )
    result = run_coverage(config)
    print(format_coverage_summary(result["summary"]))
    print(f"{result['tests']} node tests x {len(result['backends'])} backends; run {result['run']} in {args.db}; "
          f"table {result['markdown']}")
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
