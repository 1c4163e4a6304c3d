"""Whether a process still runs, told apart from a zombie and from a later process that reused its pid; the
``PYTHONPATH`` of a Python process dlcbench starts.

Imports only the standard library.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc); None where gone, unreadable or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, given its :func:`process_start`, is still that process."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not Path("/proc/self/stat").exists():  # no /proc: the pid exists, that is all one can tell
        return True
    now = process_start(pid)
    return now is not None and (start is None or now == start)


def group_exists(pgid: int) -> bool:
    """Whether a live (not zombie) process is in group ``pgid``: our dead workers are orphans, and init may
    be slow to reap them."""
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        entries = None
    if entries is not None:
        for pid in entries:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    state, _, pgrp = fh.read().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(pgrp) == pgid and state not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_python_path(extra: str | None) -> str:
    """The ``PYTHONPATH`` of a ``python -P`` process dlcbench starts: the directory holding this dlcbench (unless
    it is a site directory, which Python adds anyway), then ``extra`` (the caller's entries)."""
    import site

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sites = {os.path.abspath(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    return os.pathsep.join(filter(None, [None if root in sites else root, extra]))


def safe_python_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a Python process dlcbench starts, and every Python process that one starts in turn.

    ``PYTHONSAFEPATH`` (what ``-P`` sets, inherited by children such as TVM's tuning and tracker pools) keeps
    the current directory off ``sys.path``, so a user's ``onnx.py`` or ``tvm.py`` there cannot stand in for a
    library; :func:`worker_python_path` keeps dlcbench itself importable, installed or not.
    """
    return {**env, "PYTHONSAFEPATH": "1", "PYTHONPATH": worker_python_path(env.get("PYTHONPATH"))}
