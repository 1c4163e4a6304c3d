"""The CPUs dlcbench's processes may run on, kept safe from libraries that pin the calling thread.

TVM's thread pool pins the thread that configures it: with ``TVM_NUM_THREADS=N`` (unless
``TVM_BIND_THREADS=0``) that thread is bound to the first N cores of the machine. Linux children inherit
the affinity of the thread that starts them, so a process that loaded a TVM session at one thread and then
started a worker would start that worker, and everything it times, on a single core, whatever thread count
it was asked for. dlcbench therefore records the CPUs its process was given when dlcbench was first imported
(the user's own ``taskset`` is respected), hands them to every worker it starts (:data:`CPUS_ENV`), and
gives them back to the calling thread (:func:`restore_affinity`) before it starts workers or tuning pools.

TVM's pool also pins each of its workers to one core but leaves the thread that runs the first share of each
parallel loop (the caller) free over all of them. When the scheduler puts the caller on a worker's core the two
take turns there while another core idles, and the caller spins while it waits for that worker:
:func:`pin_apart_from_pinned_threads` gives the caller a core of its own.
"""

from __future__ import annotations

import os
import threading

#: Environment variable through which a launcher hands its CPUs to a worker (comma-separated ids).
CPUS_ENV = "DLCBENCH_CPUS"


def _current() -> frozenset[int] | None:
    getter = getattr(os, "sched_getaffinity", None)
    return frozenset(getter(0)) if getter else None


def _from_env() -> frozenset[int] | None:
    text = os.environ.get(CPUS_ENV, "").strip()
    if not text:
        return None
    try:
        cpus = frozenset(int(part) for part in text.split(","))
    except ValueError:
        return None
    return cpus or None


_GIVEN = _from_env() or _current()


def allowed_cpus() -> frozenset[int] | None:
    """The CPUs this process was given (by its launcher, else when dlcbench was imported); None off Linux."""
    return _GIVEN


def default_threads() -> int:
    """The thread count a job gets when none is given: the CPUs this process may use (a user's ``taskset``,
    a container's cpuset), not every CPU of the machine."""
    return len(_GIVEN) if _GIVEN else (os.cpu_count() or 1)


def current_cpus() -> frozenset[int] | None:
    """The CPUs the calling thread may run on now; None off Linux."""
    return _current()


def restore_affinity() -> bool:
    """Gives the calling thread all of :func:`allowed_cpus` again; True if its affinity changed."""
    setter = getattr(os, "sched_setaffinity", None)
    if setter is None or not _GIVEN or _current() == _GIVEN:
        return False
    try:
        setter(0, _GIVEN)  # 0: the calling thread
    except OSError:  # a CPU taken away since (cgroup change): keep what we have
        return False
    return True


def worker_env() -> dict[str, str]:
    """The environment entry that hands :func:`allowed_cpus` to a worker."""
    return {CPUS_ENV: ",".join(map(str, sorted(_GIVEN)))} if _GIVEN else {}


def pin_apart_from_pinned_threads() -> int | None:
    """Binds the calling thread to the first CPU of its affinity that no other thread of this process is pinned to.

    A thread pinned to one CPU (a TVM pool worker) owns that CPU; the caller takes the lowest one left. Workers
    of other pools in the process (a pool belongs to an OS thread and outlives it) count as owners too, so
    with several pools every CPU may be taken. Returns that CPU, or None when nothing changed: off Linux, the
    caller already on one CPU, no other thread pinned, or every CPU taken (the caller then keeps its affinity).
    """
    getter, setter = getattr(os, "sched_getaffinity", None), getattr(os, "sched_setaffinity", None)
    if getter is None or setter is None:
        return None
    mine = set(getter(0))
    if len(mine) <= 1:
        return None
    me = threading.get_native_id()
    taken: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for name in tasks:
        if int(name) == me:
            continue
        try:
            theirs = getter(int(name))
        except OSError:  # the thread ended meanwhile
            continue
        if len(theirs) == 1:
            taken |= theirs
    free = sorted(mine - taken)
    if not taken or not free:  # nothing pinned (TVM_BIND_THREADS=0, more workers than cores), or nothing left
        return None
    try:
        setter(0, {free[0]})
    except OSError:
        return None
    return free[0]
