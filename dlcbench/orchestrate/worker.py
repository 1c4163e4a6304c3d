"""Worker process of :mod:`dlcbench.orchestrate.launcher`: runs one job and writes its outcome as JSON.

``python -m dlcbench.orchestrate.worker [--cli | --rounds FD] JOB.json OUT.json``: OUT is ``{"result": JobResult,
"summary": text}`` or ``{"error": {"message", "exit_code", "category"}}``.

With ``--rounds FD`` the worker serves an interleaved comparison
(:func:`~dlcbench.orchestrate.launcher.run_interleaved`): once the job is built and checked it writes
``{"ready": true}`` as a line on the file descriptor FD, then reads commands on stdin, one a line: ``time``
times one round and answers ``{"round": N, "median_ms": [...]}`` on FD; ``finish`` (or the end of stdin) writes
OUT from every round and exits. The launcher turns it into a results-store row
(:func:`~dlcbench.orchestrate.launcher.run_isolated`, where the trackers run, in the parent) or into what
``dlcbench compile`` prints (:func:`~dlcbench.orchestrate.launcher.run_supervised`); ``--cli`` adds progress
lines on stderr.
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


def main(job_path: str, out_path: str, progress: bool = False, reply_fd: int | None = None) -> int:
    """Runs the job in ``job_path``; writes its result, or its error with the exit code ``dlcbench`` would use.

    ``reply_fd`` given: the job's rounds are timed on command (the module docstring says how).
    """
    from dlcbench.measure.job import format_summary, open_job, run_job
    from dlcbench.orchestrate.launcher import job_from_dict

    say = (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)) if progress else None
    debug = bool(os.environ.get("DLCBENCH_DEBUG"))
    if reply_fd is not None:  # before the build: nothing the backend starts may hold the launcher's pipe open
        os.set_inheritable(reply_fd, False)
    try:
        job = job_from_dict(json.loads(Path(job_path).read_text()))
        if reply_fd is None:
            result = run_job(job, progress=say)
        else:
            with open_job(job, progress=say) as opened:
                result = _serve_rounds(opened, reply_fd)
        outcome = {"result": result.to_dict(), "summary": format_summary(result)}
    except DlcbenchError as err:
        if debug:
            traceback.print_exc()
        outcome = {"error": {"message": str(err), "exit_code": err.exit_code, "category": err.category}}
    except Exception as err:  # the job failed in a way no adapter classified; reported as run_cli would
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (DLCBENCH_DEBUG=1 for details)"
        outcome = {"error": {"message": f"unexpected {type(err).__name__}: {one_line(err, 800)}{hint}",
                             "exit_code": ExitCode.BACKEND_ERROR, "category": "runtime_error"}}
    _write(out_path, outcome)
    return 0


def _serve_rounds(opened, reply_fd: int):
    """Times a round per ``time`` command on stdin until ``finish`` (or end of input); returns the pooled result."""
    from dlcbench.measure.job import round_timing
    from dlcbench.orchestrate.launcher import ROUNDS_ENV

    reply = os.fdopen(reply_fd, "w", buffering=1)
    rounds = int(json.loads(os.environ.get(ROUNDS_ENV, "1")))
    timing = round_timing(opened.config.timing, rounds)
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        command = line.strip()
        if command == "finish":
            break
        if command == "time":
            timings = opened.time_round(timing)
            reply.write(json.dumps({"round": len(opened.rounds),
                                    "median_ms": [t["stats"]["median_ms"] for t in timings]}) + "\n")
    result = opened.finish()
    reply.close()
    return result


def _write(out_path: str, data) -> None:
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    tmp.replace(out_path)


if __name__ == "__main__":
    if sys.argv[1] == "--rounds":
        sys.exit(main(*sys.argv[3:5], reply_fd=int(sys.argv[2])))
    cli_mode = sys.argv[1] == "--cli"
    sys.exit(main(*sys.argv[2 if cli_mode else 1:][:2], progress=cli_mode))
