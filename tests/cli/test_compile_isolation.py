"""scripts/compile.py runs its job in a child process: crashes become one line, stdout carries only the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from dlcbench.errors import ExitCode
from dlcbench_faulty_adapters import REGISTRATION
from dlcbench_test_support import (ROOT, assert_one_line_error, live_processes_with, run_script, signal_when,
                                   wait_for)

FAST = ["--preset", "tiny", "--batch", "2", "--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0"]
FAULTY = {"DLCBENCH_BACKENDS": REGISTRATION}


def compile_cli(*args: str, env: dict | None = None, timeout: float = 600):
    return run_script("scripts/compile.py", *args, env={**FAULTY, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("backend, signal_name", [("crash", "SIGSEGV"), ("abort", "SIGABRT")])
def test_child_killed_by_a_signal_is_one_line_and_exit_7(tmp_path, backend, signal_name):
    proc = compile_cli("--backend", backend, "--model", "mlp", *FAST, "--out", str(tmp_path / "a"))
    assert_one_line_error(proc, ExitCode.JOB_DIED, f"crashed with {signal_name}", backend, "mlp")
    assert "... compiling with" in proc.stderr  # the child's progress streamed through
    assert proc.stdout == ""


def test_error_raised_in_the_child_keeps_its_exit_code_and_line(tmp_path):
    proc = compile_cli("--backend", "raise", "--model", "mlp", *FAST, "--out", str(tmp_path / "a"))
    assert_one_line_error(proc, ExitCode.BACKEND_ERROR, "boom from RaiseAdapter")


def test_json_is_the_only_stdout_even_when_the_backend_prints(tmp_path):
    proc = compile_cli("--backend", "print", "--model", "mlp", *FAST, "--json", "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["passed"] and result["manifest"]["backend"] == "print"
    assert "chatty library on stdout" in proc.stderr and "chatty native code on fd 1" in proc.stderr


def test_json_of_a_real_onnxruntime_job_parses(tmp_path):
    proc = compile_cli("--backend", "onnxruntime", "--model", "mlp", *FAST, "--json", "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["passed"] and result["timing"]["stats"]["count"] >= 3
    assert result == json.loads((tmp_path / "a" / "result.json").read_text())


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)],
                         ids=["SIGINT", "SIGTERM"])
def test_signalled_compile_ends_its_child(tmp_path, sig, code):
    marker, tmp = uuid.uuid4().hex, tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "compile.py"), "--backend", "hang", "--model", "mlp", *FAST,
         "--out", str(tmp_path / "a")],
        cwd=tmp_path, env={**os.environ, **FAULTY, "DLCBENCH_TEST_RUN": marker, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stderr = signal_when(
        proc, lambda: any("dlcbench.orchestrate.worker" in c for c in live_processes_with(marker).values()), sig)
    assert proc.returncode == code, stderr[-2000:]
    assert [ln for ln in stderr.splitlines() if ln.startswith("error:")] == [
        "error: interrupted" if sig == signal.SIGINT else "error: terminated"]
    assert not any("dlcbench.orchestrate.worker" in c for c in live_processes_with(marker).values())
    assert not list(tmp.glob("dlcbench-job-*"))
    assert wait_for(lambda: not live_processes_with(marker), 20)  # the janitor leaves once we are gone


def test_a_hanging_backend_is_killed_at_the_timeout(tmp_path):
    marker = uuid.uuid4().hex
    proc = compile_cli("--backend", "hang", "--model", "mlp", *FAST, "--timeout", "45", "--out", str(tmp_path / "a"),
                       env={"DLCBENCH_TEST_RUN": marker}, timeout=300)
    assert_one_line_error(proc, ExitCode.JOB_DIED, "the hang job on mlp had no result after 45 s; killed")
    assert not any("dlcbench.orchestrate.worker" in c for c in live_processes_with(marker).values())
    assert not (tmp_path / "a").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_json_parses_after_tvm_tuning(tmp_path):
    # MetaSchedule's logger writes to stdout; the child's stdout goes to stderr, so --json stays clean.
    proc = compile_cli("--backend", "tvm", "--model", "mlp", *FAST, "--option", "tune_strategy=replay-trace",
                       "--option", "tune_cost_model=random", "--tune-trials", "16",
                       "--tuning-db", str(tmp_path / "db"), "--json", "--out", str(tmp_path / "a"), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["passed"] and result["manifest"]["extra"]["tuning"]["new_trials"] >= 1
