"""Helpers the test modules share (on ``sys.path`` through pytest's ``pythonpath``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The small model table every test suite draws from: zoo name -> preset.
TINY_MODELS = ["mlp", "cnn", "bert", "gpt"]
HEAVY_TINY_MODELS = ["mobilenetv2", "resnet50"]


#: Environment variable naming the scratch directory scripts run in (set per test session by conftest.py).
WORKDIR_ENV = "DLCBENCH_TEST_WORKDIR"


def run_script(*args: str, timeout: float = 600, env: dict | None = None,
               cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """Runs ``python *args`` and captures its output.

    A first argument like ``scripts/compile.py`` is taken relative to the repository; the command runs in
    ``cwd`` (default: the session's scratch directory), so whatever a script writes by default (``./out``,
    ``./results``, ``./reports``) lands there and never in the repository.
    """
    full_env = {**os.environ, **(env or {})}
    if args and args[0].endswith(".py") and not Path(args[0]).is_absolute():
        args = (str(ROOT / args[0]), *args[1:])
    workdir = cwd or os.environ.get(WORKDIR_ENV) or ROOT
    return subprocess.run(
        [sys.executable, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """Asserts a CLI failed with ``code`` and a single ``error:`` line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


def live_processes_with(marker: str) -> dict[int, str]:
    """Live (not zombie) processes whose environment contains ``marker``: ``{pid: command line}`` (Linux /proc)."""
    found = {}
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle not in fh.read():
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                found[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
    return found


def wait_for(condition, timeout: float, interval: float = 0.1):
    """Polls ``condition()`` until it returns something truthy (returned) or ``timeout`` seconds pass (None)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(interval)


def signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 60) -> str:
    """Waits until ``ready()`` is truthy, sends ``sig`` to ``proc`` and returns its stderr once it ended.

    ``proc`` is killed on the way out if it is still running (a failed wait, a hang after the signal).
    """
    try:
        assert wait_for(ready, timeout), "the process never got ready for the signal"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return stderr
