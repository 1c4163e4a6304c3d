"""TVM's RPC tracker and servers: a device farm for MetaSchedule measurements and remote runs.

:func:`start_farm` starts a tracker and N servers (TVM's ``tvm.exec.rpc_tracker``, and TVM's server with one
dlcbench function more, :mod:`dlcbench.compilers.tvm.rpc_server`), each in its own process group, in the
background, and returns once every server is registered; it writes what it started to a state file
(``$DLCBENCH_CACHE/rpc/PORT.json``), so that :func:`stop_farm` ends exactly those processes and nothing it did
not start. Servers on other machines join a tracker the same way (``TVM_NUM_THREADS=$(nproc) python -m
dlcbench.compilers.tvm.rpc_server --tracker HOST:PORT --key KEY --host THEIR_ADDRESS``, or TVM's plain
``tvm.exec.rpc_server``; docs/scaling.md).
:func:`configure_remote_pool` sizes a server's pool for a session.

The tracker needs ``tornado`` (``pip install -e '.[cluster]'``); TVM's wheel does not pull it in. Both TVM
commands default to 0.0.0.0: dlcbench always passes the host it is given (default 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlcbench.config import cache_dir
from dlcbench.cpus import worker_env
from dlcbench.errors import BackendRuntimeError, BackendUnavailableError, BadInputError, one_line
from dlcbench.processes import group_exists, process_start, safe_python_env

INSTALL_HINT = "pip install -e '.[cluster]' (tornado, for TVM's RPC tracker)"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9190
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Tracker:
    """A tracker address and the key of the servers to use."""

    host: str
    port: int
    key: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port} (key {self.key})"


def parse_tracker(address: str | None, key: str | None,
                  flags: tuple[str, str] = ("--rpc-tracker", "--rpc-key")) -> Tracker | None:
    """``"HOST:PORT"`` and a key as a :class:`Tracker`; None when neither is given. ``flags`` names the two
    options in messages (a server takes them as ``--tracker`` and ``--key``).

    Raises:
        BadInputError: one without the other, a malformed address, or a key with characters TVM splits on.
    """
    if not address and not key:
        return None
    address_flag, key_flag = flags
    if not address or not key:
        raise BadInputError(f"{address_flag} HOST:PORT and {key_flag} KEY go together")
    match = re.fullmatch(r"\s*([\w.\-]+|\[[0-9a-fA-F:]+\]):(\d+)\s*", str(address))
    if not match:
        raise BadInputError(f"{address_flag} takes HOST:PORT, got {address!r}")
    check_key(key)
    return Tracker(match.group(1).strip("[]"), int(match.group(2)), key)


def check_key(key: str) -> str:
    """A server key is letters, digits, ``_``, ``.`` and ``-`` (the tracker splits keys on ``:``)."""
    if not _KEY_PATTERN.fullmatch(key or ""):
        raise BadInputError(f"an RPC key is letters, digits, '_', '.' and '-', got {key!r}")
    return key


def require_tornado() -> None:
    """TVM's tracker imports tornado when it starts; say so in one line before starting one."""
    try:
        import tornado  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(f"TVM's RPC tracker needs tornado, which is not installed: {INSTALL_HINT}") from None


def tracker_summary(host: str, port: int) -> dict[str, Any] | None:
    """The tracker's summary (``queue_info`` per key: free and pending servers; ``server_info``), or None if
    nothing answers there."""
    import tvm.rpc

    try:
        with closing(socket.create_connection((host, port), timeout=2)):
            pass
    except OSError:
        return None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # TVM's handshake waits forever for something that is not a tracker
    try:
        return tvm.rpc.connect_tracker(host, port).summary()
    except Exception:
        return None
    finally:
        socket.setdefaulttimeout(previous)


def servers_of(summary: dict[str, Any] | None, key: str) -> tuple[int, int]:
    """``(registered, free)`` servers of ``key`` in a tracker summary."""
    if not summary:
        return 0, 0
    registered = sum(1 for s in summary.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == key)
    return registered, int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def configure_remote_pool(session, threads: int) -> int | None:
    """Sets an RPC session's TVM pool to ``threads`` and, with more than one, binds the server's calling thread
    to a core its pinned workers leave free (on dlcbench's server; a plain ``tvm.exec.rpc_server`` leaves it
    where TVM does). Returns that core, or None where the caller keeps TVM's placement.

    Raises:
        BackendRuntimeError: the server's pool cannot run ``threads`` (it is sized once, by TVM_NUM_THREADS).
    """
    from dlcbench.compilers.tvm.rpc_server import PIN_FUNCTION

    session.get_function("runtime.config_threadpool")(1, threads)
    running = int(session.get_function("runtime.NumThreads")())
    if running != threads:
        raise BackendRuntimeError(f"the RPC server's TVM pool can run {running} of the {threads} threads asked; "
                                  f"start the server with TVM_NUM_THREADS set to its cores")
    if threads <= 1:
        return None
    try:
        pin = session.get_function(PIN_FUNCTION)
    except AttributeError:  # TVM's own server: no such function
        return None
    cpu = int(pin())
    return cpu if cpu >= 0 else None


def state_path(port: int) -> Path:
    """Where :func:`start_farm` records what it started on ``port``."""
    return cache_dir() / "rpc" / f"{port}.json"


def _free_port(host: str) -> int:
    with closing(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _spawn(argv: list[str], log: Path) -> dict[str, Any]:
    """Starts ``python -P ARGV`` in its own session (its pid is its process group), detached from us, with
    :func:`~dlcbench.processes.safe_python_env` (TVM's tracker starts Python processes of its own); returns its
    pid and start time (what tells it from a later process given the same pid).

    ``TVM_NUM_THREADS`` is every core: a server's TVM pool is sized once, when it starts, and each session then
    chooses its threads within it (``runtime.config_threadpool``)."""
    env = safe_python_env({**os.environ, **worker_env(), "TVM_NUM_THREADS": str(os.cpu_count() or 1)})
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-P", *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    return {"pgid": proc.pid, "started": process_start(proc.pid)}


def _ours(entry: dict[str, Any]) -> bool:
    """Whether the group ``entry`` names is still the one we started: its leader is gone (a group outliving its
    leader keeps the pid reserved) or is the very process we started."""
    now = process_start(int(entry["pgid"]))
    return now is None or entry.get("started") is None or now == entry["started"]


def _end_groups(pgids: list[int], grace_s: float = 5.0) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_exists(p) for p in pgids):
        time.sleep(0.1)
    for pgid in pgids:  # TVM's listen loops run in non-daemon threads of a child: TERM alone may not end them
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for pgid in pgids:  # reap the leaders if they are ours
        try:
            os.waitpid(pgid, os.WNOHANG)
        except ChildProcessError:
            pass


def start_farm(servers: int, key: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               timeout_s: float = 120.0) -> dict[str, Any]:
    """Starts a tracker on ``host:port`` and ``servers`` servers registered under ``key``; returns its state.

    Returns once every server is registered. Their processes keep running after this call, until
    :func:`stop_farm` (``dlcbench rpc stop --port PORT``).

    Raises:
        BadInputError: bad counts or key, or something already listening on the port.
        BackendUnavailableError: tornado missing, or the processes did not come up in ``timeout_s``.
    """
    check_key(key)
    if servers < 1:
        raise BadInputError(f"--servers must be at least 1, got {servers}")
    if not 0 < port < 65536:
        raise BadInputError(f"--port must be 1-65535, got {port}")
    require_tornado()
    state_file = state_path(port)
    if tracker_summary(host, port) is not None or state_file.exists() and _farm_alive(_read_state(state_file)):
        raise BadInputError(f"something already answers on {host}:{port}"
                            + (" (a dlcbench RPC farm: dlcbench rpc stop --port {port})".format(port=port)
                               if state_file.exists() else "; pick another --port"))
    state_file.parent.mkdir(parents=True, exist_ok=True)
    log = state_file.with_suffix(".log")
    state: dict[str, Any] = {"host": host, "port": port, "key": key, "log": str(log), "processes": [],
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        state["processes"].append(_spawn(["-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
                                      "--port-end", str(port + 1), "--silent"], log))
        _write_state(state_file, state)
        if not _wait(lambda: tracker_summary(host, port) is not None, timeout_s, state):
            raise BackendUnavailableError(f"the RPC tracker did not answer on {host}:{port} within {timeout_s:g} s "
                                          f"(log: {log})")
        tracker_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 host in brackets
        for _ in range(servers):
            server_port = _free_port(host)
            state["processes"].append(_spawn(["-m", "dlcbench.compilers.tvm.rpc_server", "--tracker", tracker_address,
                                              "--key", key, "--host", host, "--port", str(server_port),
                                              "--port-end", str(server_port + 1), "--silent"], log))
            _write_state(state_file, state)
        if not _wait(lambda: servers_of(tracker_summary(host, port), key)[1] >= servers, timeout_s, state):
            raise BackendUnavailableError(f"{servers} RPC server(s) did not register with {host}:{port} within "
                                          f"{timeout_s:g} s (log: {log})")
    except BaseException:
        _end_groups(_pgids(state))
        state_file.unlink(missing_ok=True)
        raise
    return state


def _pgids(state: dict[str, Any]) -> list[int]:
    """The process groups of a farm's state that are still the ones it started."""
    return [int(p["pgid"]) for p in state.get("processes", []) if _ours(p)]


def _wait(condition, timeout_s: float, state: dict[str, Any]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if not all(group_exists(p["pgid"]) for p in state["processes"]):
            return False
        time.sleep(0.2)
    return False


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"processes": []}


def _farm_alive(state: dict[str, Any]) -> bool:
    return any(group_exists(p) for p in _pgids(state))


def stop_farm(port: int = DEFAULT_PORT) -> dict[str, Any]:
    """Ends the tracker and servers :func:`start_farm` started on ``port`` (and only those); returns their state.

    Raises:
        BadInputError: dlcbench started no farm on that port.
    """
    path = state_path(port)
    if not path.exists():
        raise BadInputError(f"dlcbench started no RPC farm on port {port} (no {path}); nothing stopped")
    state = _read_state(path)
    _end_groups(_pgids(state))
    path.unlink(missing_ok=True)
    return state


def farm_status(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """What answers at ``host:port``: the tracker's summary per key, and whether dlcbench started it."""
    summary = tracker_summary(host, port)
    path = state_path(port)
    state = _read_state(path) if path.exists() else None
    keys = {}
    if summary:
        for key in sorted(set(summary.get("queue_info", {})) | {str(s.get("key", "")).split(":")[-1]
                                                                   for s in summary.get("server_info", [])}):
            registered, free = servers_of(summary, key)
            keys[key] = {"registered": registered, "free": free}
    return {"host": host, "port": port, "answers": summary is not None, "keys": keys,
            "started_by_dlcbench": bool(state and _farm_alive(state))}


def request_session(tracker: Tracker, timeout_s: float = 0):
    """An RPC session on a free server of ``tracker.key`` (TVM's ``tracker.request``).

    Raises:
        BackendUnavailableError: no tracker answers, or no server of the key is registered (TVM's own
            request would wait for one forever).
    """
    import tvm.rpc

    summary = tracker_summary(tracker.host, tracker.port)
    if summary is None:
        raise BackendUnavailableError(f"no RPC tracker answers at {tracker.host}:{tracker.port}")
    if servers_of(summary, tracker.key)[0] == 0:
        raise BackendUnavailableError(f"no RPC server with key {tracker.key!r} is registered at "
                                      f"{tracker.host}:{tracker.port}")
    try:
        return tvm.rpc.connect_tracker(tracker.host, tracker.port).request(tracker.key, priority=1,
                                                                           session_timeout=timeout_s)
    except Exception as err:
        raise BackendUnavailableError(f"RPC session on {tracker} failed: {one_line(err, 300)}") from None
