"""Find the first ONNX node whose output a backend computes beyond tolerance from ONNX Runtime.

Thin CLI over :func:`dlcbench.measure.bisect.bisect`; exit 0 when every intermediate tensor matches, 1 when a node
diverges.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator

from dlcbench import jsonio
from dlcbench.cli.common import add_input_arguments, parse_params
from dlcbench.errors import BadInputError, ExitCode, run_cli
from dlcbench.quiet import set_verbose


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlcbench bisect",
        description="Export the model as the backend compiles it, expose every float node output as a graph output, "
                    "run the graph on ONNX Runtime (the reference) and on the backend with the same sample inputs, "
                    "and name the first node, in topological order, whose output differs beyond tolerance "
                    "(exit 1), with its inputs' shapes, its errors and the diverging nodes after it; exit 0 when "
                    "every intermediate tensor matches.",
        epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", help="tvm, onnxruntime, trt, openvino, torch, or a plugin's name")
    parser.add_argument("--model", help="zoo name or .onnx/.keras/SavedModel path")
    parser.add_argument("--preset", default="default", help="zoo size preset: tiny or default (default: default)")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="override a zoo parameter (VALUE is JSON, of the type of the preset's value)")
    parser.add_argument("--target", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32, fp16, bf16 or int8: the backend's precision and the default tolerances")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: the leading dimension of the first --input-shape, else 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for the backend")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="backend option, e.g. fast_math=true (typed as the backend's Options field)")
    parser.add_argument("--tolerance", action="append", metavar="[TENSOR:]abs=X,rel=Y,cosine=Z",
                        help="override the precision's tolerances, of every tensor compared or of one tensor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force-export", action="store_true", help="rebuild the model's export cache entry")
    parser.add_argument("--max-compiles", type=int, default=32,
                        help="most backend compiles when the exposed tensors must be split in halves (default: 32)")
    add_input_arguments(parser, accuracy=False)
    parser.add_argument("--json", action="store_true", help="print the report as JSON (only it, on stdout)")
    parser.add_argument("--verbose", action="store_true", help="show third-party start-up logs")
    return parser


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Sends file descriptor 1 (Python and native writes) to stderr inside the block: stdout carries the report."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        set_verbose()
    if not args.backend or not args.model:
        raise BadInputError("--backend and --model are required (see --help)")
    from dlcbench.measure.bisect import BisectConfig, bisect, format_report
    from dlcbench.models.inputs import parse_input_shapes

    if args.batch is None:
        shapes = parse_input_shapes(args.input_shape)
        args.batch = next(iter(shapes.values()))[0] if shapes else 1
    config = BisectConfig(
        backend=args.backend, model=args.model, preset=args.preset, params=parse_params(args.param),
        target=args.target, precision=args.precision, batch=args.batch, threads=args.threads,
        backend_options=parse_params(args.option, "--option"), tolerances=args.tolerance or [], seed=args.seed,
        force_export=args.force_export, max_compiles=args.max_compiles, input_shapes=args.input_shape,
        input_ranges=args.input_range, inputs_file=args.inputs,
    )
    with _stdout_to_stderr():
        report = bisect(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(jsonio.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return ExitCode.CHECK_FAILED if report.diverged else ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
