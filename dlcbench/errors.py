"""One exception family for dlcbench, mapped to process exit codes at the CLI edge.

Library code raises these; only the scripts catch them (see :func:`run_cli`).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Callable


class ExitCode:
    """Process exit codes shared by every dlcbench script."""

    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    UNAVAILABLE = 3
    BACKEND_ERROR = 4
    UNSUPPORTED_OP = 5
    EXPORT_ERROR = 6
    JOB_DIED = 7
    JOBS_FAILED = 8
    INTERRUPTED = 130
    TERMINATED = 143

    DESCRIPTIONS = {
        OK: "success",
        CHECK_FAILED: "outputs did not match the reference, or the reference holds NaN/Inf (invalid_reference)",
        BAD_INPUT: "bad usage or input (model file, name, parameter, path)",
        UNAVAILABLE: "backend not available on this machine",
        BACKEND_ERROR: "backend failed to compile or run",
        UNSUPPORTED_OP: "model uses an operator the backend does not support",
        EXPORT_ERROR: "model could not be exported to ONNX, or ONNX Runtime could not compute its reference",
        JOB_DIED: "a job crashed or timed out",
        JOBS_FAILED: "an experiment finished with failed jobs; they are in the database",
        INTERRUPTED: "interrupted (SIGINT, Ctrl-C)",
        TERMINATED: "terminated (SIGTERM)",
    }

    @classmethod
    def help_text(cls) -> str:
        """Returns a one-line-per-code description for ``--help`` epilogs."""
        return "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in cls.DESCRIPTIONS.items())


class DlcbenchError(Exception):
    """Base class of every error dlcbench reports to a user."""

    exit_code = ExitCode.BACKEND_ERROR
    category = "runtime_error"


class BadInputError(DlcbenchError):
    """Bad usage or input: unknown name, invalid parameter, missing or corrupt file."""

    exit_code = ExitCode.BAD_INPUT
    category = "bad_input"


class ExportError(DlcbenchError):
    """A model could not be exported to valid ONNX."""

    exit_code = ExitCode.EXPORT_ERROR
    category = "export_error"


class BackendUnavailableError(DlcbenchError):
    """The backend's library (or hardware) is missing on this machine."""

    exit_code = ExitCode.UNAVAILABLE
    category = "unavailable"


class CompileError(DlcbenchError):
    """A backend failed to compile a model."""

    exit_code = ExitCode.BACKEND_ERROR
    category = "compile_error"


class UnsupportedOpError(CompileError):
    """The model uses an operator the backend cannot handle."""

    exit_code = ExitCode.UNSUPPORTED_OP
    category = "unsupported_op"

    def __init__(self, backend: str, ops: list[str] | str, detail: str = ""):
        self.ops = [ops] if isinstance(ops, str) else list(ops)
        msg = f"{backend} does not support operator(s): {', '.join(self.ops)}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class BackendRuntimeError(DlcbenchError):
    """A compiled artifact failed while loading or running."""

    exit_code = ExitCode.BACKEND_ERROR
    category = "runtime_error"


class JobTimeoutError(DlcbenchError):
    """An isolated job exceeded its time limit."""

    exit_code = ExitCode.JOB_DIED
    category = "timeout"


class JobCrashError(DlcbenchError):
    """An isolated job's process died (signal, abort, out of memory)."""

    exit_code = ExitCode.JOB_DIED
    category = "crash"


class Terminated(BaseException):
    """This process received SIGTERM (raised by :func:`run_cli`'s handler).

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception`` in library code does not
    swallow it and ``finally`` blocks (which end worker processes, remove temporary files) still run.
    """

    exit_code = ExitCode.TERMINATED


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def one_line(text: str, limit: int = 400) -> str:
    """Collapses a message to one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _leave_now(code: int) -> None:
    """Exits after an interrupt without finalizing the interpreter: the ``finally`` blocks have run, the
    ``atexit`` handlers (which end workers and remove owned directories) run here, then the process ends.

    A native library interrupted mid-call (TensorFlow building a graph) can leave threads that crash the
    interpreter's own shutdown (SIGSEGV), which would replace the documented exit code.
    """
    import atexit

    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def run_cli(main: Callable[[], int]) -> None:
    """Runs a script's ``main`` and exits with its code; errors become one line on stderr.

    With ``DLCBENCH_DEBUG=1`` the traceback is printed above that line; the exit code stays the same.
    SIGINT (Ctrl-C) exits with :attr:`ExitCode.INTERRUPTED`, SIGTERM with :attr:`ExitCode.TERMINATED`, each
    after the ``finally`` blocks on the way out have ended this process's workers.
    """
    debug = bool(os.environ.get("DLCBENCH_DEBUG"))
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = main()
    except DlcbenchError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(err)}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        _leave_now(ExitCode.INTERRUPTED)
    except Terminated:
        print("error: terminated", file=sys.stderr)
        _leave_now(ExitCode.TERMINATED)
    except Exception as err:  # last resort: still one line; DLCBENCH_DEBUG=1 shows the traceback
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (DLCBENCH_DEBUG=1 for details)"
        print(f"error: unexpected {type(err).__name__}: {one_line(err)}{hint}", file=sys.stderr)
        code = ExitCode.BACKEND_ERROR
    sys.exit(code or 0)
