"""Find the first ONNX node whose output a backend computes beyond tolerance from ONNX Runtime.

Thin CLI over :func:`dlcbench.measure.bisect.bisect`, which runs in an isolated worker (a backend that crashes,
or hangs past ``--timeout``, is one line and exit 7, as for ``dlcbench compile``); exit 0 when every
intermediate tensor matches, 1 when a node diverges.
"""

from __future__ import annotations

if __name__ == "__main__":  # the worker side: first, before the slow imports, end with the launcher
    from dlcbench.orchestrate.launcher import become_worker

    become_worker()

import argparse
import contextlib
import os
import sys
from typing import Iterator

from dlcbench import jsonio
from dlcbench.cli.common import (add_input_arguments, add_job_timeout_argument, backend_help, batch_of, job_timeout,
                                  model_help, parse_params)
from dlcbench.cpus import default_threads
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
    parser.add_argument("--backend", help=backend_help())
    parser.add_argument("--model", help=model_help())
    parser.add_argument("--preset", default="default", help="zoo size preset: tiny or default (default: default)")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="override a zoo parameter (VALUE is JSON, of the type of the preset's value)")
    parser.add_argument("--target", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32, fp16, bf16 or int8: the backend's precision and the default tolerances")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: the leading dimension of the first --input-shape, else 1)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for the backend (default: the CPUs this process may use)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="backend option, e.g. fast_math=true (typed as the backend's Options field)")
    parser.add_argument("--tolerance", action="append", metavar="[TENSOR:]abs=X,rel=Y,cosine=Z",
                        help="override the precision's tolerances, of every tensor compared or of one tensor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force-export", action="store_true", help="rebuild the model's export cache entry")
    parser.add_argument("--max-compiles", type=int, default=32,
                        help="most backend compiles when the exposed tensors must be split in halves (default: 32)")
    add_input_arguments(parser, accuracy=False)
    add_job_timeout_argument(parser, "the export and every compile and run of the bisect count")
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
    from dlcbench.measure.bisect import BisectConfig

    args.batch = batch_of(args)
    timeout = job_timeout(args)
    config = BisectConfig(
        backend=args.backend, model=args.model, preset=args.preset, params=parse_params(args.param),
        target=args.target, precision=args.precision, batch=args.batch, threads=args.threads,
        backend_options=parse_params(args.option, "--option"), tolerances=args.tolerance or [], seed=args.seed,
        force_export=args.force_export, max_compiles=args.max_compiles, input_shapes=args.input_shape,
        input_ranges=args.input_range, inputs_file=args.inputs,
    )
    outcome = _run_isolated(config, timeout)
    print(jsonio.dumps(outcome["report"], indent=2) if args.json else outcome["text"])
    return ExitCode.CHECK_FAILED if outcome["diverged"] else ExitCode.OK


def _run_isolated(config, timeout_s: float | None = None) -> dict:
    """Runs :func:`dlcbench.measure.bisect.bisect` in a worker whose output (stdout included) goes to our stderr,
    killed after ``timeout_s`` (None: no limit); returns ``{"report", "text", "diverged"}`` or raises the
    worker's error (its message and exit code)."""
    import json
    import subprocess
    from dataclasses import asdict

    from dlcbench.errors import JobCrashError, JobTimeoutError
    from dlcbench.orchestrate.launcher import WorkerError, owned_temp_dir, start_worker, wait_worker

    with owned_temp_dir("dlcbench-bisect-") as tmp:
        (tmp / "config.json").write_text(jsonio.dumps(asdict(config), default=str))
        scratch = tmp / "tmp"
        scratch.mkdir()
        sys.stderr.flush()
        proc = start_worker(["-m", "dlcbench.cli.bisect", "--worker", str(tmp / "config.json"), str(tmp / "out.json")],
                            env={"TMPDIR": str(scratch)}, stdin=subprocess.DEVNULL, stdout=2)
        ended, _ = wait_worker(proc, timeout_s)
        if not (tmp / "out.json").is_file():
            if ended.status == "timeout":
                raise JobTimeoutError(f"the bisect of {config.backend} on {config.model} {ended.message}")
            raise JobCrashError(f"the bisect of {config.backend} on {config.model}: worker {ended.message} "
                                "(its output is above)")
        outcome = json.loads((tmp / "out.json").read_text())
    if "error" in outcome:
        error = outcome["error"]
        raise WorkerError(error["message"], error["exit_code"], error["category"])
    return outcome


def _worker(config_path: str, out_path: str) -> int:
    """The worker: runs the bisect of ``config_path``; writes its report, or its error with its exit code."""
    import json
    import traceback
    from pathlib import Path

    from dlcbench.errors import DlcbenchError, one_line
    from dlcbench.measure.bisect import BisectConfig, bisect, format_report

    try:
        config = BisectConfig(**json.loads(Path(config_path).read_text()))
        with _stdout_to_stderr():
            report = bisect(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
        outcome = {"report": report.to_dict(), "text": format_report(report), "diverged": report.diverged}
    except DlcbenchError as err:
        outcome = {"error": {"message": str(err), "exit_code": err.exit_code, "category": err.category}}
    except Exception as err:  # what no adapter classified, reported as run_cli would
        if os.environ.get("DLCBENCH_DEBUG"):
            traceback.print_exc()
        outcome = {"error": {"message": f"unexpected {type(err).__name__}: {one_line(err, 800)}",
                             "exit_code": ExitCode.BACKEND_ERROR, "category": "runtime_error"}}
    tmp = Path(out_path + ".tmp")
    tmp.write_text(jsonio.dumps(outcome, default=str))
    tmp.replace(out_path)
    return 0


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    sys.exit(_worker(sys.argv[2], sys.argv[3]))
