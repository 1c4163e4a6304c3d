"""Build a self-contained bundle of TVM artifacts to run, check and time on a machine that has no TVM.

Thin CLI over :func:`dlcbench.stage.bundle.build_bundle` (``dlcbench bundle``, ``scripts/bundle.py``). The
bundle directory holds the compiled artifacts (CUDA for a GPU machine, or ``--target cpu``), their reference
inputs and outputs, the minimal TVM runtime for the target Python, ``run.py`` and the dlcbench modules it
runs (the output check, the timing, the worker processes: the same code as a CPU job). There, with only
Python and numpy, run ``python3 DIR/run.py --out results.json``, then bring the JSON back and load it with
``dlcbench import-results``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


from dlcbench.errors import ExitCode, run_cli


def build_parser() -> argparse.ArgumentParser:
    from dlcbench.stage.bundle import DEFAULT_BATCHES, DEFAULT_LIMIT_MB, DEFAULT_MODELS

    parser = argparse.ArgumentParser(
        prog="dlcbench bundle", description=__doc__, epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="bundle directory (replaced if it is an earlier bundle)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"zoo models, each optionally NAME:PRESET (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--preset", default="default", help="preset of models given without one (default: default)")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)),
                        help=f"batch sizes (default: {','.join(map(str, DEFAULT_BATCHES))})")
    parser.add_argument("--arch", default="sm_90", help="CUDA arch of the device code (default: sm_90, H100/H200)")
    parser.add_argument("--target", default="cuda", help="cuda, or cpu for a bundle that runs on a CPU machine like this one "
                        "(default: cuda)")
    parser.add_argument("--python", default="3.12", help="Python version that will run the bundle (default: 3.12)")
    parser.add_argument("--limit-mb", type=float, default=DEFAULT_LIMIT_MB,
                        help=f"refuse a bundle bigger than this, in MB of 10^6 bytes (default: {DEFAULT_LIMIT_MB:g})")
    parser.add_argument("--skip-oversize", action="store_true",
                        help="leave out models that would pass the limit (reason in bundle.json) instead of failing")
    parser.add_argument("--keep-going", action="store_true", help="leave out models that fail to export or compile")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="compile threads")
    parser.add_argument("--mcpu", default=None, help="LLVM CPU for --target cpu (default: this host's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compress", dest="compress", action="store_false", help="store every file uncompressed")
    parser.add_argument("--build-dir", type=Path, default=None, help="keep the compiled artifacts here")
    parser.add_argument("--tvm-ffi-wheel", type=Path, default=None,
                        help="apache-tvm-ffi wheel for --python (default: this interpreter's copy or a cached pip download)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dlcbench.stage.bundle import BundleConfig, build_bundle

    config = BundleConfig(
        out_dir=args.out, models=args.models, preset=args.preset, batches=args.batches, arch=args.arch,
        target=args.target, python=args.python, limit_mb=args.limit_mb, skip_oversize=args.skip_oversize,
        keep_going=args.keep_going, threads=args.threads, mcpu=args.mcpu, seed=args.seed, compress=args.compress,
        build_dir=args.build_dir, tvm_ffi_wheel=args.tvm_ffi_wheel,
    )
    report = build_bundle(config, progress=lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    print(report.summary())
    print(f"run there: python3 {args.out}/run.py --out results.json   (--self-check needs no GPU)")
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
