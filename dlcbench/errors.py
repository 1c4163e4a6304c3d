"""One exception family for dlcbench, mapped to process exit codes at the CLI edge.

Library code raises these; only the scripts catch them (see :func:`run_cli`).
"""

from __future__ import annotations

import os
import sys
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
    TIMEOUT = 7
    INTERRUPTED = 130

    DESCRIPTIONS = {
        OK: "success",
        CHECK_FAILED: "outputs did not match the reference",
        BAD_INPUT: "bad usage or input (model file, name, parameter, path)",
        UNAVAILABLE: "backend not available on this machine",
        BACKEND_ERROR: "backend failed to compile or run",
        UNSUPPORTED_OP: "model uses an operator the backend does not support",
        EXPORT_ERROR: "model could not be exported to ONNX",
        TIMEOUT: "a job crashed or timed out",
        INTERRUPTED: "interrupted",
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


class CheckFailedError(DlcbenchError):
    """Backend outputs did not match the reference within tolerance."""

    exit_code = ExitCode.CHECK_FAILED
    category = "accuracy_fail"


class JobTimeoutError(DlcbenchError):
    """An isolated job exceeded its time limit."""

    exit_code = ExitCode.TIMEOUT
    category = "timeout"


class JobCrashError(DlcbenchError):
    """An isolated job's process died (signal, abort, out of memory)."""

    exit_code = ExitCode.TIMEOUT
    category = "crash"


def one_line(text: str, limit: int = 400) -> str:
    """Collapses a message to one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def run_cli(main: Callable[[], int]) -> None:
    """Runs a script's ``main`` and exits with its code; errors become one line on stderr."""
    try:
        code = main()
    except DlcbenchError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    except Exception as err:  # last resort: still one line; DLCBENCH_DEBUG=1 shows the traceback
        if os.environ.get("DLCBENCH_DEBUG"):
            raise
        print(f"error: unexpected {type(err).__name__}: {one_line(err)} (DLCBENCH_DEBUG=1 for details)", file=sys.stderr)
        code = ExitCode.BACKEND_ERROR
    sys.exit(code or 0)
