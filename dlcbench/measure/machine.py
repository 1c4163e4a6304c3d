"""What else the machine did while a timing ran: other processes' CPU time and the hypervisor's steal.

A shared VM's speed wanders (``benchmarks/machine_drift.py``): a round in which another process held a core, or
the host ran other guests on ours (``steal``), is slower for reasons that are not the backend's. Each timing
records both, from ``/proc/stat`` (the whole machine, or the VM) and this process's own CPU time, so a slow round
can be told from a slow backend. Linux only; elsewhere nothing is recorded.
"""

from __future__ import annotations

import os
import time
from typing import Any

_STAT = "/proc/stat"


def cpu_snapshot() -> dict[str, float] | None:
    """The machine's CPU time counters (seconds, summed over CPUs) and this process's, now; None off Linux."""
    try:
        with open(_STAT) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) / tick for v in fields[1:9])
    own = os.times()
    return {"wall": time.monotonic(), "busy": user + nice + system + irq + softirq, "idle": idle + iowait,
            "steal": steal, "own": own.user + own.system}


def machine_load(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any] | None:
    """The share of the machine's CPU time, between two :func:`cpu_snapshot` s, that went to other processes
    (``others_cpu_pct``: busy time not this process's) and to the hypervisor (``steal_pct``), in percent of all
    its CPUs over that time; None without both snapshots or with no time between them."""
    if not before or not after:
        return None
    total = sum(after[k] - before[k] for k in ("busy", "idle", "steal"))
    if total <= 0:
        return None
    others = max(0.0, (after["busy"] - before["busy"]) - (after["own"] - before["own"]))
    return {"others_cpu_pct": round(100 * others / total, 2),
            "steal_pct": round(100 * max(0.0, after["steal"] - before["steal"]) / total, 2),
            "seconds": round(after["wall"] - before["wall"], 3)}


def worst_load(loads: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The largest ``others_cpu_pct`` and ``steal_pct`` over several timings (rounds); None if none recorded."""
    known = [load for load in loads if load]
    if not known:
        return None
    return {"others_cpu_pct": max(load["others_cpu_pct"] for load in known),
            "steal_pct": max(load["steal_pct"] for load in known),
            "seconds": round(sum(load["seconds"] for load in known), 3)}
