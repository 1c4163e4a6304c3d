"""compare --executor ray on a real local Ray instance (127.0.0.1 only): the same rows as the local executor,
crashes and lost workers as rows, an interrupted driver resumed with nothing lost or repeated, nothing left running."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dlcbench.results.store import ResultsStore
from dlcbench_faulty_adapters import REGISTRATION
from dlcbench_lost_worker_adapter import LOSE_REGISTRATION
from dlcbench_test_support import ROOT, assert_one_line_error, live_processes_with, signal_when, wait_for

# Not imported here: Ray reads some settings once, when imported, and the launcher is what sets them.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                                    reason="Ray is the cluster extra: pip install -e '.[cluster]'")]

FAST = ["--preset", "tiny", "--threads", "1", "--min-seconds", "0", "--min-iters", "3", "--warmup", "1"]


def compare(cwd: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def stored(db: Path, experiment: str) -> dict[str, dict]:
    with ResultsStore(db, readonly=True) as store:
        return {r["job_key"]: r for r in store.results(experiment)}


@pytest.fixture
def marker():
    """An environment marker: every process a test's command starts (Ray's too) carries it; none may outlive it."""
    value = f"ray-test-{uuid.uuid4().hex}"
    yield value
    left = wait_for(lambda: not live_processes_with(value), 30)
    assert left, f"processes left running: {live_processes_with(value)}"


def test_ray_rows_equal_the_local_executors(tmp_path, marker):
    matrix = ["--models", "mlp,cnn", "--backends", "onnxruntime,openvino", "--batch", "1,2", *FAST]
    local = compare(tmp_path, "--name", "m", *matrix, "--db", "local.sqlite")
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = compare(tmp_path, "--name", "m", *matrix, "--db", "ray.sqlite", "--executor", "ray",
                     env={"DLCBENCH_TEST_RUN": marker})
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert "started a local instance on 127.0.0.1" in on_ray.stderr
    assert on_ray.stdout.startswith("m: 8 ok, 0 failed, 0 already recorded (of 8)"), on_ray.stdout
    want, got = stored(tmp_path / "local.sqlite", "m"), stored(tmp_path / "ray.sqlite", "m")
    assert set(got) == set(want) and len(got) == 8
    for key, row in got.items():
        assert (row["status"], row["backend"], row["batch"]) == (want[key]["status"], want[key]["backend"],
                                                                 want[key]["batch"])
        assert row["metrics"]["latency"]["value"] > 0
    with ResultsStore(tmp_path / "ray.sqlite", readonly=True) as store:
        env = store.environment(next(iter(got.values()))["environment_id"])
    assert env["hostname"] and env.get("peak_gflops")  # the node's own record


def test_a_crash_is_a_row_a_lost_worker_is_retried_once_then_a_crash(tmp_path, marker):
    env = {"DLCBENCH_TEST_RUN": marker, "DLCBENCH_BACKENDS": f"{REGISTRATION},{LOSE_REGISTRATION}",
           "DLCBENCH_LOSE_MARKER": str(tmp_path / "lost-once")}
    proc = compare(tmp_path, "--name", "c", "--models", "mlp", "--backends", "crash,lose_worker,onnxruntime", *FAST,
                   "--db", "r.sqlite", "--executor", "ray", env=env)
    assert proc.returncode == 8, proc.stderr[-3000:]
    rows = {r["backend"]: r for r in stored(tmp_path / "r.sqlite", "c").values()}
    assert rows["crash"]["category"] == "crash" and "SIGSEGV" in rows["crash"]["message"]
    assert rows["lose_worker"]["status"] == "ok"  # its Ray worker died once: Ray ran it again
    assert (tmp_path / "lost-once").read_text() == "1"
    assert rows["onnxruntime"]["status"] == "ok"

    env.update(DLCBENCH_LOSE_MARKER=str(tmp_path / "lost-always"), DLCBENCH_LOSE_TIMES="99")
    proc = compare(tmp_path, "--name", "l", "--models", "mlp", "--backends", "lose_worker", *FAST, "--db", "r.sqlite",
                   "--executor", "ray", env=env)
    assert proc.returncode == 8, proc.stderr[-3000:]
    (row,) = stored(tmp_path / "r.sqlite", "l").values()
    assert row["category"] == "crash" and row["message"].startswith("ray: ")
    assert (tmp_path / "lost-always").read_text() == "2"  # the first try and one retry


def test_an_interrupted_driver_resumes_with_nothing_lost_or_repeated(tmp_path, marker):
    args = ["--name", "i", "--models", "mlp", "--backends", "onnxruntime,hang", "--batch", "1,2", *FAST,
            "--db", "r.sqlite", "--executor", "ray", "--timeout", "600"]
    env = {**os.environ, "DLCBENCH_TEST_RUN": marker, "DLCBENCH_BACKENDS": REGISTRATION}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "compare.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def onnxruntime_done():  # the first job stored; the first hang job holds the node's timing slot
        try:
            return sum(r["backend"] == "onnxruntime" for r in stored(tmp_path / "r.sqlite", "i").values()) == 1
        except Exception:
            return False

    stderr = signal_when(proc, onnxruntime_done, signal.SIGINT, timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert wait_for(lambda: not live_processes_with(marker), 30), live_processes_with(marker)
    before = stored(tmp_path / "r.sqlite", "i")
    assert {r["backend"] for r in before.values()} == {"onnxruntime"}

    again = compare(tmp_path, *args, "--timeout", "15", env=env)  # the hang jobs now end as timeouts
    assert again.returncode == 8, again.stderr[-3000:]
    after = stored(tmp_path / "r.sqlite", "i")
    assert again.stdout.startswith("i: 1 ok, 2 failed, 1 already recorded (of 4)"), again.stdout
    assert sorted((r["backend"], r["category"]) for k, r in after.items() if k not in before) == [
        ("hang", "timeout"), ("hang", "timeout"), ("onnxruntime", None)]
    assert {k: after[k] for k in before} == before  # nothing repeated
    assert len(after) == 4  # nothing lost


def loopback(ip: str) -> bool:
    """127.0.0.1, ::1, or 127.0.0.1 as an IPv6 socket shows it (``::ffff:127.0.0.1``)."""
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_every_socket_of_a_local_instance_is_on_loopback():
    psutil = pytest.importorskip("psutil")
    from dlcbench.orchestrate.ray_launcher import RayConfig, RayLauncher

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}  # e.g. the launcher's janitor of earlier tests
    with RayLauncher(RayConfig(), say=lambda line: None):
        listening = []
        children = [p for p in me.children(recursive=True) if p.pid not in before]
        for proc in [me, *children]:
            try:
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening.append((proc.name(), conn.laddr.ip, conn.laddr.port))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    assert len(listening) >= 3, listening  # GCS, raylet, object manager at least: we did look at Ray's sockets
    assert all(loopback(ip) for _, ip, _ in listening), listening
    def alive(proc) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    assert wait_for(lambda: not any(alive(p) for p in children), 30), [p for p in children if alive(p)]


def test_ray_matrix_errors_are_one_line(tmp_path):
    proc = compare(tmp_path, "--name", "x", "--models", "mlp", "--backends", "onnxruntime", *FAST,
                   "--ray-address", "auto")
    assert_one_line_error(proc, 2, "--ray-address goes with --executor ray")
    proc = compare(tmp_path, "--name", "x", "--models", "mlp", "--backends", "onnxruntime", *FAST,
                   "--executor", "ray", "--ray-address", "not an address")
    assert_one_line_error(proc, 2, "--ray-address takes auto, ray://HOST:PORT or HOST:PORT")
