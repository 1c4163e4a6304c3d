"""``dlcbench models list|export`` (also ``python -m dlcbench.models``): list the zoo or export one model to ONNX."""

from __future__ import annotations

import argparse

from dlcbench.cli.common import add_input_arguments, batch_of, parse_params
from dlcbench.errors import ExitCode, run_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlcbench models",
        description="dlcbench model zoo",
        epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    lst = sub.add_parser("list", help="list zoo models with parameter counts")
    lst.add_argument("--preset", default="tiny", choices=["tiny", "default"])
    lst.add_argument("--no-build", action="store_true", help="skip building models (no parameter counts)")
    exp = sub.add_parser("export", help="export a zoo model or a model file to ONNX")
    exp.add_argument("model", help="zoo name, .keras file, SavedModel directory or .onnx file")
    exp.add_argument("--preset", default="default", choices=["tiny", "default"])
    exp.add_argument("--param", action="append", metavar="KEY=VALUE", help="override a preset parameter")
    exp.add_argument("--batch", type=int, default=None,
                     help="batch size (default: the leading dimension of the first --input-shape, else 1)")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--opset", type=int, default=17)
    exp.add_argument("--static", action="store_true", help="static batch instead of a dynamic one")
    exp.add_argument("--fold", action="store_true", help="TVM-friendly variant: static shapes + constant folding")
    exp.add_argument("--force", action="store_true", help="rebuild even if cached")
    exp.add_argument("--cache-dir", default=None)
    add_input_arguments(exp, accuracy=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dlcbench.models.zoo import get_model, model_names

    if args.command == "list":
        print(f"{'model':<12} {'params':>12}  description")
        for name in model_names():
            spec = get_model(name)
            count = ""
            if not args.no_build:
                count = f"{spec.build(spec.resolve_params(args.preset)).count_params():,}"
            print(f"{name:<12} {count:>12}  {spec.description}")
        return ExitCode.OK
    from dlcbench.models.export import ExportConfig, export_model

    exported = export_model(
        ExportConfig(
            model=args.model, preset=args.preset, params=parse_params(args.param), batch=batch_of(args),
            seed=args.seed, opset=args.opset, static=args.static, fold=args.fold, force=args.force,
            cache_dir=args.cache_dir, input_shapes=args.input_shape, input_ranges=args.input_range,
            inputs_file=args.inputs,
        )
    )
    summary = exported.meta["summary"]
    print(f"onnx: {exported.onnx_path}")
    print(f"cache: {'hit' if exported.cache_hit else 'miss'}; reference from {exported.meta['reference_source']}")
    print(f"parameters: {summary['parameters']:,}; GFLOPs at batch {exported.batch}: {summary['flops'] / 1e9:.3f}")
    print("ops: " + ", ".join(f"{k}={v}" for k, v in summary["op_histogram"].items()))
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
