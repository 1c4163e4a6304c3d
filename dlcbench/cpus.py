"""The CPUs dlcbench's processes may run on, kept safe from libraries that pin the calling thread.

TVM's thread pool pins the thread that configures it: with ``TVM_NUM_THREADS=N`` (unless
``TVM_BIND_THREADS=0``) that thread is bound to the first N cores of the machine. Linux children inherit
the affinity of the thread that starts them, so a process that loaded a TVM session at one thread and then
started a worker would start that worker, and everything it times, on a single core, whatever thread count
it was asked for. dlcbench therefore records the CPUs its process was given when dlcbench was first imported
(the user's own ``taskset`` is respected), hands them to every worker it starts (:data:`CPUS_ENV`), and
gives them back to the calling thread (:func:`restore_affinity`) before it starts workers or tuning pools.
"""

from __future__ import annotations

import os

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
