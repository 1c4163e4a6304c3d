"""The launcher with real processes and real signals: nothing of a run outlives it, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from dlcbench.errors import ExitCode
from dlcbench.orchestrate.launcher import end_group, start_worker, wait_worker
from dlcbench_faulty_adapters import REGISTRATION
from dlcbench_test_support import ROOT, live_processes_with, signal_when, wait_for

# A worker as the launcher runs one: become_worker() first, then the given code.
WORKER = "from dlcbench.orchestrate.launcher import become_worker; become_worker()\n"


def _worker(code: str, marker: str, **kwargs) -> subprocess.Popen:
    return start_worker(["-c", WORKER + textwrap.dedent(code)], env={"DLCBENCH_TEST_RUN": marker}, **kwargs)


@pytest.mark.parametrize("code, status, text", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "crash", "crashed with SIGSEGV"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "crash", "SIGKILL (possibly out of memory)"),
    ("raise SystemExit(3)", "exit", "exited with code 3"),
    ("pass", "ok", "exited normally"),
])
def test_exits_are_classified(code, status, text):
    ended, _ = wait_worker(_worker(code, uuid.uuid4().hex), timeout_s=60)
    assert ended.status == status and text in ended.message


def test_timeout_ends_the_whole_group_including_grandchildren():
    marker = uuid.uuid4().hex
    proc = _worker("""
        import subprocess, sys, time
        subprocess.Popen(["sleep", "600"])
        print("started", flush=True)
        time.sleep(600)
    """, marker, stdout=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(live_processes_with(marker)) == 2, 30)
    ended, output = wait_worker(proc, timeout_s=2)
    assert ended.status == "timeout" and "started" in output
    assert not live_processes_with(marker)


def test_what_an_exited_worker_left_running_is_ended():
    marker = uuid.uuid4().hex
    proc = _worker('import subprocess; subprocess.Popen(["sleep", "600"])', marker)
    proc.wait(60)
    assert wait_for(lambda: live_processes_with(marker), 10)  # the orphaned sleep
    end_group(proc)
    assert not live_processes_with(marker)


def test_worker_dies_with_the_thread_that_started_it():
    # Linux's parent-death signal follows the starting thread, not the process: start a worker from the
    # thread that waits for it.
    started: list[subprocess.Popen] = []

    def start_then_end():
        proc = _worker('import time; print("armed", flush=True); time.sleep(600)', uuid.uuid4().hex,
                       stdout=subprocess.PIPE, text=True)
        started.append(proc)
        proc.stdout.readline()  # become_worker() has run

    thread = threading.Thread(target=start_then_end)
    thread.start()
    thread.join()
    proc = started[0]
    try:
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        end_group(proc)


def _job_dirs(tmp):
    return sorted(p.name for p in tmp.glob("dlcbench-job-*"))


@pytest.mark.parametrize("sig, code, line", [
    (signal.SIGINT, ExitCode.INTERRUPTED, "error: interrupted"),
    (signal.SIGTERM, ExitCode.TERMINATED, "error: terminated"),
    (signal.SIGKILL, -signal.SIGKILL, None),
], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_signalled_compare_leaves_no_process_and_no_temp_dir(tmp_path, sig, code, line):
    marker, tmp = uuid.uuid4().hex, tmp_path / "tmp"
    tmp.mkdir()
    env = {"DLCBENCH_TEST_RUN": marker, "TMPDIR": str(tmp), "DLCBENCH_BACKENDS": REGISTRATION}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "compare.py"), "--name", "sig", "--models", "mlp", "--backends",
         "hang", "--preset", "tiny", "--db", str(tmp_path / "r.sqlite"), "--timeout", "600"],
        cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stderr = signal_when(proc, lambda: _job_dirs(tmp) and any("dlcbench.orchestrate.worker" in cmd
                                                              for cmd in live_processes_with(marker).values()), sig)
    assert proc.returncode == code, stderr[-2000:]
    if line:
        assert [ln for ln in stderr.splitlines() if ln.startswith("error:")] == [line], stderr[-2000:]
        assert "Traceback" not in stderr
        # Ended before the parent exited: the worker is gone and the job directory removed already.
        assert not any("dlcbench.orchestrate.worker" in cmd for cmd in live_processes_with(marker).values())
        assert not _job_dirs(tmp)
    # Killed outright, the parent cleaned nothing: the worker's parent-death signal and the janitor do.
    assert wait_for(lambda: not live_processes_with(marker), 20), live_processes_with(marker)
    assert wait_for(lambda: not _job_dirs(tmp), 10), _job_dirs(tmp)
