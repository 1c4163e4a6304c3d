"""TVM pins the thread that configures its pool; workers started afterwards still get every CPU we were given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dlcbench.cpus import allowed_cpus, worker_env
from dlcbench.measure.job import native_repeat
from dlcbench.measure.timing import TimingConfig
from dlcbench_test_support import ROOT

needs_two_cpus = pytest.mark.skipif(len(allowed_cpus() or ()) < 2, reason="needs 2 or more CPUs (Linux affinity)")


@needs_two_cpus
def test_worker_started_after_tvm_pinned_the_launcher_gets_all_cpus():
    pytest.importorskip("tvm")
    # In a fresh interpreter (TVM's pool and the pin are process state): configure TVM's pool at one thread, as
    # loading a one-thread TVM session does, then start a worker and ask it where it may run.
    script = textwrap.dedent("""
        import json, os, subprocess, sys
        os.environ["TVM_NUM_THREADS"] = "1"
        import dlcbench
        from dlcbench.cpus import current_cpus, restore_affinity
        from dlcbench.orchestrate.launcher import start_worker, wait_worker
        import tvm
        tvm.get_global_func("runtime.config_threadpool")(0, 1)
        pinned = sorted(current_cpus())
        code = ("from dlcbench.orchestrate.launcher import become_worker; become_worker()\\n"
                "import os; print(sorted(os.sched_getaffinity(0)))")
        proc = start_worker(["-c", code], stdout=subprocess.PIPE, text=True)
        worker = proc.stdout.read().strip()
        wait_worker(proc, 60)
        restored = restore_affinity()
        print(json.dumps({"pinned": pinned, "worker": worker, "restored": restored, "after": sorted(current_cpus())}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, **worker_env()})
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    everything = sorted(allowed_cpus())
    assert len(seen["pinned"]) == 1, "TVM no longer pins the configuring thread: the guard may be moot, not wrong"
    assert json.loads(seen["worker"]) == everything
    assert seen["restored"] and seen["after"] == everything


@needs_two_cpus
def test_a_users_taskset_is_kept():
    cpu = max(allowed_cpus())  # not the core TVM pins to
    code = ("import dlcbench, json, subprocess\n"
            "from dlcbench.orchestrate.launcher import start_worker, wait_worker\n"
            "p = start_worker(['-c', 'from dlcbench.orchestrate.launcher import become_worker; become_worker()\\n"
            "import os; print(sorted(os.sched_getaffinity(0)))'], stdout=subprocess.PIPE, text=True)\n"
            "print(p.stdout.read().strip()); wait_worker(p, 60)\n")
    out = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [cpu]


def test_native_timer_runs_fit_the_time_cap():
    timing = TimingConfig(min_iters=16, max_seconds=20.0)
    assert native_repeat(timing, 1.0) == 16  # fast: the usual count
    assert native_repeat(timing, 1000.0) == 5  # 1 s a call: a quarter of 20 s
    assert native_repeat(timing, 23000.0) == 3  # never fewer than 3
