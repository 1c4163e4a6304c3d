"""Build a stage: a models x backends x precisions x batches matrix to check and time on another machine (a GPU
machine without TVM or dlcbench), with dlcbench's own job code.

Thin CLI over :func:`dlcbench.stage.build.build_stage` (``dlcbench stage``, ``scripts/stage.py``). Backends that
cross-compile (TVM: CUDA device code for ``--arch``, or ``--target cpu``) are built here; the others (torch,
inductor, jax, onnxruntime...) compile there from the staged model, and their compile time is measured there.
The stage carries dlcbench's source, TVM's runtime and the packages the target lacks. There, with Python and
numpy, run ``python3 DIR/run.py --out results.json`` (``--self-check`` first: it runs no job), then bring the JSON
back and load it with ``dlcbench import-results``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlcbench.cpus import default_threads
from dlcbench.errors import ExitCode, run_cli


def build_parser() -> argparse.ArgumentParser:
    from dlcbench.stage.build import DEFAULT_BACKENDS, DEFAULT_BATCHES, DEFAULT_LIMIT_MB, DEFAULT_MODELS, TARGETS

    parser = argparse.ArgumentParser(
        prog="dlcbench stage", description=__doc__, epilog=ExitCode.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="stage directory (replaced if it is an earlier stage)")
    parser.add_argument("--target", default="cuda", choices=TARGETS,
                        help="cuda (a GPU machine), or cpu (a CPU machine; this one too) (default: cuda)")
    parser.add_argument("--arch", default="sm_90", help="CUDA arch of TVM's device code (default: sm_90, H100/H200)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"zoo models, each optionally NAME:PRESET (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--preset", default="default", help="preset of models given without one (default: default)")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help=f"backends (default: {','.join(DEFAULT_BACKENDS)}; dlcbench compile --list-backends lists them)")
    parser.add_argument("--precision", "--precisions", dest="precisions", default="fp32",
                        help="precisions, e.g. fp32,fp16,bf16; a backend without one leaves that job out (default: fp32)")
    parser.add_argument("--batch", "--batches", dest="batches", default=",".join(map(str, DEFAULT_BATCHES)),
                        help=f"batch sizes (default: {','.join(map(str, DEFAULT_BATCHES))})")
    parser.add_argument("--backend-option", action="append", default=[], metavar="BACKEND:KEY=VALUE",
                        help="an option of one backend, e.g. inductor:mode=max-autotune or torch:tf32=true (repeatable)")
    parser.add_argument("--python", default=None,
                        help="Python version of the target, e.g. 3.12 (default: 3.12 for cuda, this one's for cpu)")
    parser.add_argument("--carry", default=None,
                        help="packages to carry, comma-separated, or none (default: for cuda, what the GPU image lacks "
                             "for the backends: onnx2torch, keras and its dependencies; for cpu, none)")
    parser.add_argument("--limit-mb", type=float, default=DEFAULT_LIMIT_MB,
                        help=f"refuse a stage bigger than this, in MB of 10^6 bytes (default: {DEFAULT_LIMIT_MB:g})")
    parser.add_argument("--skip-oversize", action="store_true",
                        help="leave out models that would pass the limit (reason in stage.json) instead of failing")
    parser.add_argument("--keep-going", action="store_true", help="leave out models that fail to export or compile")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="threads of every job (compiling here, running there) (default: the CPUs this process "
                             "may use)")
    parser.add_argument("--mcpu", default=None, help="LLVM CPU of TVM's --target cpu code (default: this host's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compress", dest="compress", action="store_false", help="store every file uncompressed")
    parser.add_argument("--build-dir", type=Path, default=None, help="keep the artifacts compiled here in this directory")
    parser.add_argument("--tvm-ffi-wheel", type=Path, default=None,
                        help="apache-tvm-ffi wheel for --python (default: this interpreter's copy or a cached pip download)")
    parser.add_argument("--tuning-trials", type=int, default=0,
                        help="a deferred MetaSchedule round: this many candidate schedules per task of every fp32 tvm "
                             "job, built here, timed there by run.py, committed back by import-results --stage "
                             "(default: 0, none)")
    parser.add_argument("--tuning-db", type=Path, default=None,
                        help="MetaSchedule database the rounds warm-start from (default: the target's under the cache)")
    parser.add_argument("--tuning-max-tasks", type=int, default=None,
                        help="only the heaviest tasks of each model get candidates (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dlcbench.stage.build import StageConfig, build_stage

    config = StageConfig(
        out_dir=args.out, target=args.target, arch=args.arch, models=args.models, preset=args.preset,
        backends=args.backends, precisions=args.precisions, batches=args.batches, backend_options=args.backend_option,
        python=args.python, carry=args.carry, limit_mb=args.limit_mb, skip_oversize=args.skip_oversize,
        keep_going=args.keep_going, threads=args.threads, mcpu=args.mcpu, seed=args.seed, compress=args.compress,
        build_dir=args.build_dir, tvm_ffi_wheel=args.tvm_ffi_wheel, tuning_trials=args.tuning_trials,
        tuning_db=args.tuning_db, tuning_max_tasks=args.tuning_max_tasks,
    )
    report = build_stage(config, progress=lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    print(report.summary())
    print(f"run there: python3 {args.out}/run.py --out results.json   (--self-check first: it runs no job)")
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
