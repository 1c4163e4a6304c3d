"""Worker process of :mod:`dlcbench.orchestrate.launcher`: runs one job and writes its outcome as JSON.

``python -m dlcbench.orchestrate.worker JOB.json OUT.json`` (:func:`~dlcbench.orchestrate.launcher.run_isolated`):
OUT is a results-store row. ``python -m dlcbench.orchestrate.worker --cli JOB.json OUT.json``
(:func:`~dlcbench.orchestrate.launcher.run_supervised`, ``dlcbench compile``): progress lines on stderr; OUT is
``{"result": ..., "summary": ...}`` or ``{"error": {"message", "exit_code", "category"}}``.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the slow imports: end with the launcher
    from dlcbench.orchestrate.launcher import become_worker

    become_worker()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from dlcbench.errors import DlcbenchError, ExitCode, one_line  # noqa: E402


def main(job_path: str, out_path: str) -> int:
    from dlcbench.measure.trackers import failure_row, job_row
    from dlcbench.orchestrate.launcher import job_from_dict
    from dlcbench.measure.job import run_job

    try:
        job = job_from_dict(json.loads(Path(job_path).read_text()))
        row = job_row(run_job(job).to_dict())
    except DlcbenchError as err:
        row = failure_row(err.category, str(err))
    except Exception as err:  # the job failed in a way no adapter classified
        row = failure_row("runtime_error", f"{type(err).__name__}: {one_line(err, 800)}")
    _write(out_path, row)
    return 0


def main_cli(job_path: str, out_path: str) -> int:
    """The ``--cli`` mode: what ``dlcbench compile`` would print, and its error with the exit code."""
    from dlcbench.measure.job import format_summary, run_job
    from dlcbench.orchestrate.launcher import job_from_dict

    try:
        job = job_from_dict(json.loads(Path(job_path).read_text()))
        result = run_job(job, progress=lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
        outcome = {"result": result.to_dict(), "summary": format_summary(result)}
    except DlcbenchError as err:
        if os.environ.get("DLCBENCH_DEBUG"):
            traceback.print_exc()
        outcome = {"error": {"message": str(err), "exit_code": err.exit_code, "category": err.category}}
    except Exception as err:  # as run_cli reports it
        debug = bool(os.environ.get("DLCBENCH_DEBUG"))
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (DLCBENCH_DEBUG=1 for details)"
        outcome = {"error": {"message": f"unexpected {type(err).__name__}: {one_line(err)}{hint}",
                             "exit_code": ExitCode.BACKEND_ERROR, "category": "runtime_error"}}
    _write(out_path, outcome)
    return 0


def _write(out_path: str, data) -> None:
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    tmp.replace(out_path)


if __name__ == "__main__":
    if sys.argv[1] == "--cli":
        sys.exit(main_cli(sys.argv[2], sys.argv[3]))
    sys.exit(main(sys.argv[1], sys.argv[2]))
