"""Quiet imports of noisy third-party libraries (TensorFlow, Keras, tf2onnx).

TensorFlow writes absl, cudart and CPU-feature lines to stderr from C++ while it is
being imported, before ``TF_CPP_MIN_LOG_LEVEL`` takes effect, which would turn
dlcbench's "one ``error:`` line on stderr" into a dozen. :func:`import_quietly` sets
the log-level variables, sends file descriptor 2 to ``/dev/null`` for the duration of
the import only, and raises the Python loggers of those libraries to ``ERROR``.
Numerics are untouched (``TF_ENABLE_ONEDNN_OPTS`` is left alone).

``--verbose`` (``DLCBENCH_VERBOSE=1``, inherited by worker processes) or
``DLCBENCH_DEBUG=1`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from types import ModuleType
from typing import Iterator

VERBOSE_VAR = "DLCBENCH_VERBOSE"
#: Read by the libraries at start-up; only set when the user has not set them.
LOG_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}
NOISY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "keras", "h5py")


def verbose() -> bool:
    """Whether third-party log output should be shown (``DLCBENCH_VERBOSE`` or ``DLCBENCH_DEBUG`` set)."""
    return bool(os.environ.get(VERBOSE_VAR) or os.environ.get("DLCBENCH_DEBUG"))


def set_verbose() -> None:
    """Shows third-party log output in this process and the processes it starts (``--verbose``)."""
    os.environ[VERBOSE_VAR] = "1"


def quiet_environment() -> None:
    """Sets the third-party log-level variables, unless verbose or already set by the user."""
    if not verbose():
        for key, value in LOG_ENV.items():
            os.environ.setdefault(key, value)


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Sends file descriptor 2 (C/C++ and Python writes alike) to ``/dev/null`` inside the block.

    Process-wide: another thread's stderr output during the block is lost too.
    """
    if sys.stderr:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to keep clean
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        if sys.stderr:
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_quietly(name: str) -> ModuleType:
    """Imports module ``name`` without its start-up log lines (unless :func:`verbose`); returns it.

    Import errors propagate unchanged; only the library's own log output is dropped.
    """
    quiet_environment()
    if verbose():
        return importlib.import_module(name)
    if name in sys.modules:
        module = sys.modules[name]
    else:
        with stderr_silenced():
            module = importlib.import_module(name)
    for logger in NOISY_LOGGERS:
        logging.getLogger(logger).setLevel(logging.ERROR)
    return module
