"""A real TVM RPC tracker with two servers on 127.0.0.1 (dlcbench rpc start): MetaSchedule measures through
them, compile --rpc-tracker checks and times a model on one; nothing listens beyond loopback or outlives stop."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from contextlib import closing

import psutil
import pytest

from dlcbench.cpus import allowed_cpus
from dlcbench_test_support import assert_one_line_error, live_processes_with, run_script, wait_for

pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado: pip install -e '.[cluster]'")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A tracker and two servers started by ``scripts/rpc.py start``; stopped (and checked gone) at the end.

    Started from a directory holding a ``tvm.py``: the tracker and servers run with ``python -P``, so it cannot
    stand in for TVM there."""
    marker = f"rpc-test-{uuid.uuid4().hex}"
    port, key = free_port(), "dlcbench-test"
    cwd = tmp_path_factory.mktemp("rpc-cwd")
    (cwd / "tvm.py").write_text("raise SystemExit('shadowed')\n")
    started = run_script("scripts/rpc.py", "start", "--servers", "2", "--key", key, "--port", str(port),
                         env={"DLCBENCH_TEST_RUN": marker}, cwd=cwd, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield {"port": port, "key": key, "marker": marker, "tracker": f"127.0.0.1:{port}"}
    finally:
        stopped = run_script("scripts/rpc.py", "stop", "--port", str(port))
        assert stopped.returncode == 0, stopped.stderr
        assert wait_for(lambda: not live_processes_with(marker), 30), live_processes_with(marker)


def test_start_registers_two_servers_all_on_loopback(farm):
    status = run_script("scripts/rpc.py", "status", "--port", str(farm["port"]))
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["keys"][farm["key"]] == {"registered": 2, "free": 2} and report["started_by_dlcbench"]
    listening = []
    for pid in live_processes_with(farm["marker"]):
        try:
            listening += [c.laddr for c in psutil.Process(pid).net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    assert len(listening) >= 3, listening  # the tracker and two servers: we did look at their sockets
    assert all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_tuning_measures_on_the_servers_and_lands_records(farm, tmp_path):
    db = tmp_path / "db"
    # Two threads: each candidate sets the server's pool to the target's threads (the server's default is half
    # its hardware threads); the checked run after tuning refuses a pool that cannot run them.
    proc = run_script("scripts/tune.py", "--model", "mlp", "--preset", "tiny", "--trials", "16", "--threads", "2",
                      "--rpc-tracker", farm["tracker"], "--rpc-key", farm["key"], "--tuning-db", str(db),
                      "--out", str(tmp_path / "tuned"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"measured on rpc {farm['tracker']} key {farm['key']}" in proc.stdout
    records = [json.loads(line) for line in (db / "database_tuning_record.json").read_text().splitlines() if line]
    assert len(records) >= 8
    assert any(rec[1][1] and min(rec[1][1]) < 1e9 for rec in records)  # measured run times, not failures
    assert json.loads((db / "dlcbench-measured-on.json").read_text()) == [f"rpc {farm['tracker']} key {farm['key']}"]


@pytest.mark.skipif(len(allowed_cpus() or ()) < 2, reason="needs 2 or more CPUs (a pool worker and the caller)")
def test_a_servers_calling_thread_gets_a_core_its_pool_workers_leave(farm):
    """dlcbench's server registers its placement function in the process its sessions fork from: a session's
    serving thread (the one that calls the kernels) ends on a core no pinned pool worker of that session holds."""
    from dlcbench.compilers.tvm.rpc import configure_remote_pool, parse_tracker, request_session

    session = request_session(parse_tracker(farm["tracker"], farm["key"]))
    try:
        cpu = configure_remote_pool(session, 2)
        assert cpu is not None, "the server's session lacks dlcbench's placement function"
        pinned: dict[int, dict[int, int]] = {}  # pid -> {tid: its one cpu}
        for pid in live_processes_with(farm["marker"]):
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                continue
            for tid in tids:
                try:
                    cpus = os.sched_getaffinity(tid)
                except OSError:
                    continue
                if len(cpus) == 1:
                    pinned.setdefault(pid, {})[tid] = min(cpus)
        # a forked session's serving thread is its main thread; another session may still be alive, placed alike
        serving = [pid for pid, threads in pinned.items() if threads.get(pid) == cpu]
        assert serving, pinned
        for pid in serving:
            workers = [c for tid, c in pinned[pid].items() if tid != pid]
            assert workers and cpu not in workers, pinned
    finally:
        del session


def test_compile_checks_and_times_on_a_server(farm, tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "tvm", "--model", "mlp", "--preset", "tiny",
                      "--threads", "1", "--min-seconds", "0.2", "--rpc-tracker", farm["tracker"],
                      "--rpc-key", farm["key"], "--out", str(tmp_path / "a"), "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["passed"] and result["manifest"]["extra"]["rpc"] == {"tracker": farm["tracker"], "key": farm["key"]}
    assert result["timing"]["stats"]["median_ms"] > 0
    assert result["native_timing"]["timer"] == "tvm.time_evaluator"  # timed on the server, by the server's clock
    assert result["native_timing"]["stats"]["median_ms"] > 0


def test_rpc_mistakes_are_one_line(farm, tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "tvm", "--model", "mlp", "--preset", "tiny",
                      "--rpc-tracker", farm["tracker"], "--rpc-key", "nobody", "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, 3, "no RPC server with key 'nobody'")
    proc = run_script("scripts/compile.py", "--backend", "tvm", "--model", "mlp", "--preset", "tiny",
                      "--rpc-tracker", farm["tracker"], "--out", str(tmp_path / "c"))
    assert_one_line_error(proc, 2, "--rpc-tracker HOST:PORT and --rpc-key KEY go together")
    too_many = (os.cpu_count() or 1) + 1  # dlcbench's servers size their pool to every core
    proc = run_script("scripts/compile.py", "--backend", "tvm", "--model", "mlp", "--preset", "tiny", "--threads",
                      str(too_many), "--rpc-tracker", farm["tracker"], "--rpc-key", farm["key"],
                      "--out", str(tmp_path / "d"))
    assert_one_line_error(proc, 4, f"the RPC server's TVM pool can run {too_many - 1} of the {too_many} threads asked")
    proc = run_script("scripts/rpc.py", "start", "--servers", "1", "--key", "other", "--port", str(farm["port"]))
    assert_one_line_error(proc, 2, "already answers")
    proc = run_script("scripts/rpc.py", "stop", "--port", str(free_port()))
    assert_one_line_error(proc, 2, "dlcbench started no RPC farm")
    for args, says in ((["--tracker", "nowhere", "--key", "k"], "--tracker takes HOST:PORT, got 'nowhere'"),
                       (["--tracker", farm["tracker"]], "--tracker HOST:PORT and --key KEY go together"),
                       (["--tracker", farm["tracker"], "--key", "a:b"], "an RPC key is letters"),
                       (["--key", "a b"], "an RPC key is letters")):
        proc = subprocess.run([sys.executable, "-m", "dlcbench.compilers.tvm.rpc_server", *args],
                              capture_output=True, text=True, timeout=60)
        assert_one_line_error(proc, 2, says)
