"""Other processes' CPU time and the hypervisor's steal, recorded beside each timing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dlcbench.measure.machine import cpu_snapshot, machine_load, worst_load

linux_only = pytest.mark.skipif(cpu_snapshot() is None, reason="needs /proc/stat (Linux)")


def _snap(wall, busy, idle, steal, own):
    return {"wall": wall, "busy": busy, "idle": idle, "steal": steal, "own": own}


def test_load_is_the_share_of_all_cpu_time_not_this_process():
    # 2 s on 2 CPUs = 4 CPU-seconds: 3 busy (1 of them ours), 0.6 idle, 0.4 stolen.
    load = machine_load(_snap(0, 10, 10, 1, 5), _snap(2, 13, 10.6, 1.4, 6))
    assert load == {"others_cpu_pct": 50.0, "steal_pct": 10.0, "seconds": 2}
    assert machine_load(_snap(0, 10, 10, 1, 5), _snap(1, 10, 12, 1, 6))["others_cpu_pct"] == 0  # never below 0
    assert machine_load(None, _snap(1, 1, 1, 1, 1)) is None
    assert machine_load(_snap(0, 1, 1, 1, 1), _snap(0, 1, 1, 1, 1)) is None  # no time between them
    assert worst_load([None, {"others_cpu_pct": 3, "steal_pct": 9, "seconds": 1},
                       {"others_cpu_pct": 40, "steal_pct": 1, "seconds": 2}]) == {
        "others_cpu_pct": 40, "steal_pct": 9, "seconds": 3}
    assert worst_load([None]) is None


@linux_only
def test_a_spinning_process_shows_as_other_load():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)  # the interpreter started and spins
        before = cpu_snapshot()
        time.sleep(1.5)
        load = machine_load(before, cpu_snapshot())
    finally:
        spinner.kill()
        spinner.wait()
    # One spinning process holds up to one CPU of the machine's; on a loaded machine it gets less, never nothing.
    assert load is not None and load["others_cpu_pct"] >= 10, load
    assert 1.4 <= load["seconds"] <= 3
