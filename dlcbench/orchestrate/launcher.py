"""Isolated worker processes: the one place dlcbench starts a Python worker it must be able to stop.

Experiments (:func:`run_isolated`), ``dlcbench compile`` (:func:`run_supervised`) and the coverage workers
build on :func:`start_worker`, :func:`wait_worker`, :func:`end_group` and :func:`classify_exit`. A worker

* runs in its own session, so its process group (it and whatever it starts) is ended as one;
* dies with the thread that started it: :func:`become_worker`, a worker's first call, sets Linux's
  parent-death signal (SIGKILL), which fires when that *thread* ends, so start a worker from the thread
  that waits for it (elsewhere than Linux a watchdog thread polls the parent's pid instead);
* is ended (SIGTERM to its group, SIGKILL after a grace period) on a timeout, on any exception in the
  waiting thread (Ctrl-C; SIGTERM, which :func:`dlcbench.errors.run_cli` turns into an exception) and at
  interpreter exit;
* keeps its temporary files in a directory of :func:`owned_mkdtemp` (its ``TMPDIR``), removed on the way
  out, or, when this process is killed outright, by the janitor: a small watcher process that, once this
  process is gone, ends the worker groups and removes the directories still registered with it.

Experiment rows carry a category: ``unavailable``, ``export_error``, ``compile_error``,
``unsupported_op``, ``runtime_error``, ``crash``, ``timeout``, ``accuracy_fail``, ``accuracy_drop`` (top-1 accuracy beyond its budget), ``invalid_reference``
(the reference holds NaN/Inf, so the check cannot tell right from wrong) and ``bad_input``.

This module imports only the standard library and :mod:`dlcbench.errors` at module level (it also serves
machines without the rest of dlcbench); job-related modules are imported inside the functions that use them.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from dlcbench.cpus import restore_affinity, worker_env
from dlcbench.errors import DlcbenchError, ExitCode, JobCrashError, JobTimeoutError, one_line
from dlcbench.processes import group_exists, safe_python_env

if TYPE_CHECKING:
    from dlcbench.measure.job import JobConfig

#: How a worker learns its launcher's pid (read and removed by :func:`become_worker`).
LAUNCHER_PID_ENV = "DLCBENCH_LAUNCHER_PID"
#: How many rounds an interleaved worker will be asked for (each round's share of the timing minimums).
ROUNDS_ENV = "DLCBENCH_ROUNDS"
#: Seconds a worker group gets between SIGTERM and SIGKILL.
GRACE_S = 3.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# --------------------------------------------------------------------------- the worker side


def become_worker() -> None:
    """A worker's first call: die with the thread that started it; exit now if the launcher is already gone.

    Does nothing in a process not started by :func:`start_worker`.
    """
    launcher = os.environ.pop(LAUNCHER_PID_ENV, None)
    if not launcher:
        return
    restore_affinity()  # the launcher's CPUs, not those of whichever thread started us
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(int(launcher),), name="dlcbench-parent-watch",
                         daemon=True).start()
    if os.getppid() != int(launcher):  # it died before the signal was armed
        os._exit(ExitCode.TERMINATED)


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(0.5)
    _signal_group(os.getpgrp(), signal.SIGKILL)


# --------------------------------------------------------------------------- the launcher side


@dataclass(frozen=True)
class Exit:
    """How a worker ended.

    Attributes:
        status: ``ok`` (exit code 0), ``exit`` (another exit code), ``crash`` (killed by a signal) or
            ``timeout`` (killed for running past its time limit).
        returncode: The process's return code (negative: the signal's number).
        signal: The signal's name for a ``crash``.
        message: What happened, to follow "worker ...": ``crashed with SIGSEGV``, ``exited with code 3``...
    """

    status: str
    returncode: int | None
    signal: str | None
    message: str


def classify_exit(returncode: int | None, timeout_s: float | None = None) -> Exit:
    """Classifies a worker's end; ``timeout_s`` given means it was killed for running past that limit."""
    if timeout_s is not None:
        return Exit("timeout", returncode, None, f"had no result after {timeout_s:g} s; killed")
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        oom = " (possibly out of memory)" if -returncode == signal.SIGKILL else ""
        return Exit("crash", returncode, name, f"crashed with {name}{oom}")
    if returncode == 0:
        return Exit("ok", 0, None, "exited normally")
    return Exit("exit", returncode, None, f"exited with code {returncode}")


_live: dict[int, subprocess.Popen] = {}
_live_lock = threading.Lock()
_exiting = False


def start_worker(argv: list[str], env: dict[str, str] | None = None, **popen_kwargs: Any) -> subprocess.Popen:
    """Starts ``python -P ARGV`` as an isolated worker in its own session; ``env`` adds to this environment.

    ``-P`` and :func:`~dlcbench.processes.safe_python_env`: the current directory is on the ``sys.path`` of
    neither the worker nor the Python processes it starts (TVM's tuning pools), so a user's ``onnx.py`` there
    cannot stand in for a library; the dlcbench that starts it is on ``PYTHONPATH`` instead, installed or not.
    The worker should call :func:`become_worker` first. Pair every start with :func:`end_group` (or
    :func:`wait_worker`, which ends it).
    """
    environment = safe_python_env({**os.environ, **(env or {}), **worker_env(), LAUNCHER_PID_ENV: str(os.getpid())})
    with _live_lock:
        if _exiting:
            raise RuntimeError("the interpreter is exiting: no new worker")
        proc = subprocess.Popen([sys.executable, "-P", *argv], start_new_session=True, env=environment,
                                **popen_kwargs)
        _live[proc.pid] = proc
    _janitor.register("group", proc.pid)
    return proc


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def end_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Ends a worker's whole process group: SIGTERM, SIGKILL after ``grace_s``; waits for the worker, then
    (up to ``grace_s``, at least 1 s) until no live process is left in its group.

    Also right for a worker that already exited: what it started and left behind is ended too.
    """
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_group_gone(proc.pid, grace_s)
    with _live_lock:
        _live.pop(proc.pid, None)
    _janitor.unregister("group", proc.pid)


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    # kill() returns before the signal is acted on: a busy machine can take a while to end what was signalled.
    deadline = time.monotonic() + max(timeout_s, 1.0)
    while group_exists(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def wait_worker(proc: subprocess.Popen, timeout_s: float | None = None) -> tuple[Exit, Any]:
    """Waits for a worker up to ``timeout_s``, collecting what it writes to pipes; ends its group in every case.

    An exception while waiting (``KeyboardInterrupt``, :class:`dlcbench.errors.Terminated`) ends the group,
    then propagates. Returns the :class:`Exit` and the worker's stdout (None when not piped).
    """
    timed_out = False
    try:
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                output, _ = proc.communicate(timeout=GRACE_S)
            except subprocess.TimeoutExpired:  # something outside the group still holds the pipe
                output = None
    finally:
        end_group(proc)
    return classify_exit(proc.returncode, timeout_s if timed_out else None), output


def end_all() -> None:
    """Ends every worker this process started that is still running."""
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        end_group(proc, grace_s=1.0)


@atexit.register
def _end_all_at_exit() -> None:
    global _exiting
    with _live_lock:
        _exiting = True  # daemon threads still run: they must not start workers now
    end_all()


def owned_mkdtemp(prefix: str = "dlcbench-") -> Path:
    """A new temporary directory that the janitor removes if this process dies before :func:`remove_owned`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _janitor.register("dir", str(path))
    return path


def remove_owned(path: Path) -> None:
    """Removes a directory of :func:`owned_mkdtemp`."""
    shutil.rmtree(path, ignore_errors=True)
    _janitor.unregister("dir", str(path))


@contextmanager
def owned_temp_dir(prefix: str = "dlcbench-") -> Iterator[Path]:
    """:func:`owned_mkdtemp` as a context manager: removed on the way out, whatever the way."""
    path = owned_mkdtemp(prefix)
    try:
        yield path
    finally:
        remove_owned(path)


class _Janitor:
    """This process's janitor: a watcher process, started on first use, that cleans up once we are gone.

    We send it what to clean (JSON lines on its stdin: ``["+", "group", PGID]``, ``["-", "dir", PATH]``...);
    when its stdin reaches end of file, which happens when this process exits however it exits (SIGKILL
    included), it kills the groups and removes the directories still registered, then exits.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._owner = 0
        self._starts = 0
        self._items: set[tuple[str, Any]] = set()
        self._lock = threading.Lock()

    def register(self, kind: str, value: Any) -> None:
        with self._lock:
            self._items.add((kind, value))
            self._send("+", kind, value)

    def unregister(self, kind: str, value: Any) -> None:
        with self._lock:
            self._items.discard((kind, value))
            self._send("-", kind, value)

    def _send(self, op: str, kind: str, value: Any) -> None:
        try:
            if self._proc is None or self._owner != os.getpid() or self._proc.poll() is not None:
                if op == "-" or (self._owner == os.getpid() and self._starts >= 3):  # it keeps dying: do without
                    return
                self._start()
            else:
                self._proc.stdin.write(json.dumps([op, kind, value]) + "\n")
                self._proc.stdin.flush()
        except (OSError, ValueError):  # no janitor: the launcher still cleans up whenever it lives to
            self._proc = None

    def _start(self) -> None:
        # Its own session, so that a Ctrl-C at the terminal or a signal to our group does not reach it.
        if self._owner != os.getpid():
            self._owner, self._starts = os.getpid(), 0
        self._starts += 1
        # It imports the dlcbench this file belongs to, installed or not (a stage's run.py uses its copy).
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--janitor"],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                      start_new_session=True, env=env)
        self._proc.stdin.write("".join(json.dumps(["+", k, v]) + "\n" for k, v in sorted(self._items)))
        self._proc.stdin.flush()


_janitor = _Janitor()


def _janitor_main() -> int:
    groups: set[int] = set()
    dirs: set[str] = set()
    for line in sys.stdin:
        try:
            op, kind, value = json.loads(line)
        except ValueError:
            continue
        items = groups if kind == "group" else dirs
        (items.add if op == "+" else items.discard)(value)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while groups and time.monotonic() < deadline:  # a dying process may still be writing into its directory
        time.sleep(0.05)
        groups = {g for g in groups if group_exists(g)}
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    return 0


# --------------------------------------------------------------------------- jobs


def job_to_dict(job: JobConfig) -> dict[str, Any]:
    """A JSON-friendly form of a job config."""
    data = asdict(job)
    data["out_dir"] = str(job.out_dir)
    return data


def job_from_dict(data: dict[str, Any]) -> JobConfig:
    """Rebuilds a :class:`JobConfig` from :func:`job_to_dict`'s output."""
    from dlcbench.measure.job import JobConfig
    from dlcbench.measure.timing import TimingConfig

    data = dict(data)
    data["timing"] = TimingConfig(**data["timing"])
    return JobConfig(**data)


def _start_job(job: JobConfig, tmp: Path, mode: list[str], **popen_kwargs: Any) -> tuple[subprocess.Popen, Path]:
    job_file, out_file, scratch = tmp / "job.json", tmp / "result.json", tmp / "tmp"
    job_file.write_text(json.dumps(job_to_dict(job)))
    scratch.mkdir()
    env = {**(popen_kwargs.pop("env", None) or {}), "TMPDIR": str(scratch)}  # the job's temporary files stay inside
    proc = start_worker(["-m", "dlcbench.orchestrate.worker", *mode, str(job_file), str(out_file)], env=env,
                        **popen_kwargs)
    return proc, out_file


def run_isolated(job: JobConfig, timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``job`` in a fresh Python process; returns a results-store row (never raises for job failures).

    The row's metrics come from the trackers registered in this process (:mod:`dlcbench.measure.trackers`).
    """
    from dlcbench.measure.trackers import failure_row, job_row
    from dlcbench.outputs import remove_stale_siblings

    with owned_temp_dir("dlcbench-job-") as tmp:
        proc, out_file = _start_job(job, tmp, [], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
        ended, output = wait_worker(proc, timeout_s)
        payload = json.loads(out_file.read_text()) if out_file.is_file() else None
    if payload is None:
        remove_stale_siblings(job.out_dir)  # the half-written artifact of a worker that was killed
    if ended.status == "timeout":
        return failure_row("timeout", f"no result after {timeout_s:g} s; killed")
    if payload is None:
        tail = one_line(output[-600:], 600) if output else ""
        no_result = "" if ended.status == "crash" else " and no result"
        return failure_row("crash", f"worker {ended.message}{no_result}. {tail}".strip())
    if "error" in payload:
        return failure_row(payload["error"]["category"], payload["error"]["message"])
    return job_row(payload["result"])


class _RoundWorker:
    """One job of an interleaved group: its worker (``worker.py --rounds``), the pipe it answers on, its files."""

    def __init__(self, job: JobConfig, tmp: Path, rounds: int, env: dict[str, str] | None):
        self.job, self.tmp, self.row = job, tmp, None
        self.log = tmp / "worker.log"
        read_end, write_end = os.pipe()
        self.fd, self.buffer = read_end, b""
        try:
            with open(self.log, "w") as log:
                self.proc, self.out_file = _start_job(
                    job, tmp, ["--rounds", str(write_end)], env={**(env or {}), ROUNDS_ENV: str(rounds)},
                    stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_end,), text=True)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)

    @property
    def live(self) -> bool:
        return self.row is None

    def command(self, text: str, timeout_s: float) -> dict[str, Any] | None:
        """Sends ``text`` (none: only listens) and returns the worker's answer; on a death or timeout, records
        the failure row and returns None."""
        import select

        if text:
            try:
                self.proc.stdin.write(text + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                return self._fail(None)
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return self._fail(timeout_s)
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return self._fail(None)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def finish(self, timeout_s: float) -> dict[str, Any]:
        """Asks for the pooled result and returns the job's row."""
        from dlcbench.measure.trackers import job_row

        if self.live:
            try:
                self.proc.stdin.write("finish\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout_s)
                timed_out = None
            except subprocess.TimeoutExpired:
                timed_out = timeout_s
            payload = self._payload()
            if timed_out is None and payload and "result" in payload:
                self.row = job_row(payload["result"])
            else:
                self._fail(timed_out)
        return self.row

    def _payload(self) -> dict[str, Any] | None:
        return json.loads(self.out_file.read_text()) if self.out_file.is_file() else None

    def _fail(self, timeout_s: float | None) -> None:
        from dlcbench.measure.trackers import failure_row
        from dlcbench.outputs import remove_stale_siblings

        if timeout_s is None:
            try:
                self.proc.wait(GRACE_S)  # it is ending: its result file says why
            except subprocess.TimeoutExpired:
                pass
        self.close()
        ended = classify_exit(self.proc.returncode, timeout_s)
        payload = self._payload()
        if payload is None:
            remove_stale_siblings(self.job.out_dir)
        if ended.status == "timeout":
            self.row = failure_row("timeout", f"no answer after {timeout_s:g} s; killed")
        elif payload and "error" in payload:
            self.row = failure_row(payload["error"]["category"], payload["error"]["message"])
        else:
            log = self.log.read_text(errors="replace") if self.log.is_file() else ""
            tail = one_line(log[-600:], 600) if log else ""
            no_result = "" if ended.status == "crash" else " and no result"
            self.row = failure_row("crash", f"worker {ended.message}{no_result}. {tail}".strip())
        return None

    def close(self) -> None:
        """Ends the worker's group and closes the pipe (idempotent)."""
        end_group(self.proc)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def run_interleaved(jobs: list[JobConfig], rounds: int, timeout_s: float, env: dict[str, str] | None = None,
                    on_round: Callable[[int], None] | None = None,
                    progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Times ``jobs`` (the backends of one comparison point) in ``rounds`` alternating rounds; one row per job.

    Each job runs in its own worker, kept alive throughout: the workers are built and checked one after another
    (never two compiles at once), then every round times each live job once, the order reversed every other
    round (A B, B A, ...), so drift between rounds hits every backend alike. Each job's figures pool its rounds
    (:func:`dlcbench.measure.job.pool_rounds`: per-round medians and the round-to-round spread are kept).

    Building a job, and each of its rounds, gets ``timeout_s``. A job that fails, crashes or runs past that gets
    its failure row and the others go on. ``on_round(i)`` is called before round ``i`` (from 0).
    Like :func:`run_isolated`, never raises for job failures; every worker is ended on the way out.
    """
    from dlcbench.config import positive_int

    positive_int("rounds", rounds)
    say = progress or (lambda line: None)
    workers: list[_RoundWorker] = []
    with ExitStack() as stack:
        try:
            for job in jobs:
                tmp = stack.enter_context(owned_temp_dir("dlcbench-job-"))
                worker = _RoundWorker(job, tmp, rounds, env)
                workers.append(worker)
                worker.command("", timeout_s)  # ready, or its failure row
                say(f"    {job.backend}: {'ready' if worker.live else worker.row['category']}")
            for index in range(rounds):
                if not any(worker.live for worker in workers):
                    break
                if on_round:
                    on_round(index)
                order = workers if index % 2 == 0 else workers[::-1]
                medians = []
                for worker in order:
                    if worker.live:
                        answer = worker.command("time", timeout_s)
                        if answer:
                            name = worker.job.backend + ("" if worker.job.precision == "fp32" else f"[{worker.job.precision}]")
                            medians.append(f"{name} {answer['median_ms'][0]:.4f} ms")
                say(f"    round {index + 1}/{rounds}: {', '.join(medians) or 'no live job'}")
            return [worker.finish(timeout_s) for worker in workers]
        finally:
            for worker in workers:
                worker.close()


class WorkerError(DlcbenchError):
    """A :class:`dlcbench.errors.DlcbenchError` raised in a worker, raised again here with its exit code and category."""

    def __init__(self, message: str, exit_code: int, category: str):
        super().__init__(message)
        self.exit_code, self.category = exit_code, category


def run_supervised(job: JobConfig, timeout_s: float | None = None) -> dict[str, Any]:
    """Runs ``job`` as ``dlcbench compile`` does: in a worker whose output, stdout included, goes to our stderr.

    Only the caller prints on stdout, so a library printing there cannot corrupt ``--json``.

    Returns:
        ``{"result": JobResult.to_dict(), "summary": format_summary text}``.

    Raises:
        WorkerError: The job failed with a dlcbench error (same message, exit code and category).
        JobCrashError: The worker died (a signal, or an exit without a result).
        JobTimeoutError: It ran past ``timeout_s``.
    """
    what = f"the {job.backend} job on {job.model}"
    with owned_temp_dir("dlcbench-job-") as tmp:
        sys.stderr.flush()
        proc, out_file = _start_job(job, tmp, ["--cli"], stdin=subprocess.DEVNULL, stdout=2)
        ended, _ = wait_worker(proc, timeout_s)
        if not out_file.is_file():
            from dlcbench.outputs import remove_stale_siblings

            remove_stale_siblings(job.out_dir)  # the half-written artifact of the killed worker
            if ended.status == "timeout":
                raise JobTimeoutError(f"{what} had no result after {timeout_s:g} s; killed")
            detail = "" if ended.status == "crash" else " without a result"
            raise JobCrashError(f"{what} {ended.message}{detail} (its output is above)")
        payload = json.loads(out_file.read_text())
    if "error" in payload:
        error = payload["error"]
        raise WorkerError(error["message"], error["exit_code"], error["category"])
    return payload


if __name__ == "__main__" and sys.argv[1:] == ["--janitor"]:
    sys.exit(_janitor_main())
