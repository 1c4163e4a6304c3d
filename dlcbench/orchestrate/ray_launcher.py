"""Experiments on Ray: each unit of work (one job, or the backends of one interleaved point) as a Ray task.

A unit runs on a Ray worker exactly as the local executor runs it: in dlcbench's own isolated worker process
(:func:`dlcbench.orchestrate.launcher.run_isolated` or :func:`~dlcbench.orchestrate.launcher.run_interleaved`), so
a job that crashes or hangs is a failure row and the Ray task itself succeeds. The driver alone writes the
results database; each row comes back with the environment record of the node that ran it.

- **Timing exclusivity.** A unit that times asks for one :data:`TIMING_RESOURCE`, of which every node has one:
  two timing units never share a node. Compile-only units ask for CPUs only. Every unit asks for as many CPUs
  as its thread count.
- **Lost nodes.** A unit whose Ray worker or node dies is retried once elsewhere (Ray's ``max_retries``); if it
  dies again, its jobs are recorded as ``crash``.
- **Local instance.** Without an address, a private Ray instance is started for the run, every process bound
  to 127.0.0.1, no dashboard, a small object store, its files in a temporary directory of ours; it is shut
  down (and its directory removed) when the run ends, however it ends.
- **Cluster.** ``--ray-address auto`` or ``ray://HOST:PORT`` joins a running cluster. Its nodes need dlcbench
  installed, the same model files at the same paths (or zoo names) and the timing resource:
  ``ray start ... --resources='{"dlcbench_timing": 1}'``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from dlcbench.cpus import default_threads
from dlcbench.errors import BadInputError, one_line

#: The custom Ray resource a timing unit holds: one per node, so timings never share a node.
TIMING_RESOURCE = "dlcbench_timing"
INSTALL_HINT = "pip install -e '.[cluster]' (Ray)"
#: Ray's own retries of a unit whose worker or node died, before its jobs are recorded as ``crash``.
MAX_RETRIES = 1


@dataclass
class RayConfig:
    """Where the Ray tasks run.

    Attributes:
        address: ``None`` to start a private local instance; ``auto`` (the cluster this machine belongs to) or
            ``ray://HOST:PORT`` (Ray Client) to join one.
        num_cpus: CPUs of the local instance (default: those this process may use, at least ``min_cpus``).
        min_cpus: The largest thread count of the jobs: the local instance offers at least that many CPUs.
        object_store_mb: Object-store size of the local instance (rows are small; Ray's default is 30 % of RAM).
    """

    address: str | None = None
    num_cpus: int | None = None
    min_cpus: int = 1
    object_store_mb: int = 80

    def __post_init__(self):
        if self.address is not None:
            self.address = str(self.address).strip()
            if self.address != "auto" and not re.fullmatch(r"(ray://)?[\w.\-]+:\d+", self.address):
                raise BadInputError(f"--ray-address takes auto, ray://HOST:PORT or HOST:PORT, got {self.address!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise BadInputError(f"the local Ray instance needs at least one CPU, got {self.num_cpus}")
        if self.object_store_mb < 80:  # Ray refuses stores under 75 MiB
            raise BadInputError(f"the Ray object store needs at least 80 MB, got {self.object_store_mb}")


def require_ray():
    """Imports Ray, or says in one line how to install it."""
    try:
        import ray
    except ImportError:
        raise BadInputError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _local_env() -> dict[str, str]:
    """Environment of a private local instance's processes: loopback only, no usage reports, no metrics
    exporter, and token authentication with a token of this run's own (Ray would otherwise write one to
    ``~/.ray/auth_token``)."""
    import secrets

    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_enable_metrics_collection": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(24)}


def _refresh_auth() -> None:
    """Makes a Ray imported before us see the authentication settings of the environment now (as Ray's own test
    helpers do); nothing to do when it is imported after they are set."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:
        pass


_NODE_ENVIRONMENTS: dict[int, dict[str, Any]] = {}


def _node_environment(threads: int) -> dict[str, Any]:
    """This node's environment record (measured once per Ray worker process and thread count)."""
    if threads not in _NODE_ENVIRONMENTS:
        from dlcbench.results.env import environment

        _NODE_ENVIRONMENTS[threads] = environment(threads)
    return _NODE_ENVIRONMENTS[threads]


def run_unit(jobs: list, interleave: int, timeout_s: float, peak_threads: int) -> dict[str, Any]:
    """What a Ray task runs (on its node): the unit's jobs, isolated as locally; their rows and the node's record
    (its matmul peak measured at ``peak_threads``, the experiment's largest thread count, as locally)."""
    from dlcbench.orchestrate.launcher import run_interleaved, run_isolated

    environment = _node_environment(peak_threads)
    if interleave > 1:
        rows = run_interleaved(jobs, interleave, timeout_s)
    else:
        rows = [run_isolated(job, timeout_s) for job in jobs]
    return {"rows": rows, "environment": environment}


class RayLauncher:
    """Runs units of jobs as Ray tasks; a context manager (the local instance lives as long as it).

    Use: ``with RayLauncher(config) as ray_launcher: ray_launcher.submit(...); for ... in ray_launcher.completed()``.
    """

    def __init__(self, config: RayConfig, say: Callable[[str], None] | None = None):
        self.config = config
        self.say = say or (lambda line: print(line, file=sys.stderr))
        self._ray = None
        self._remote = None
        self._pending: dict[Any, Any] = {}
        self._temp_dir: str | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_cluster_flag: Any = None
        self._before: set[int] | None = None
        self.cpus_per_node = 0.0

    def __enter__(self) -> "RayLauncher":
        try:
            if self.config.address is None:
                self._start_local()
            else:
                ray = require_ray()
                self._init(ray, address=self.config.address, log_to_driver=False, configure_logging=False)
                self.say(f"ray: joined the cluster at {self.config.address}")
            ray = self._ray
            resources = ray.cluster_resources()
            if resources.get(TIMING_RESOURCE, 0) < 1:
                raise BadInputError(f"the Ray cluster at {self.config.address} has no {TIMING_RESOURCE!r} resource, "
                                    "so timings could share a node: start each node with "
                                    f"ray start ... --resources='{{\"{TIMING_RESOURCE}\": 1}}'")
            self.cpus_per_node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
            self._remote = ray.remote(run_unit)
        except BadInputError:
            self.__exit__(None, None, None)
            raise
        except Exception as err:
            self.__exit__(None, None, None)
            raise BadInputError(f"could not start or reach Ray ({self.config.address or 'local'}): "
                                f"{one_line(err, 300)}") from None
        except BaseException:  # interrupted while starting: nothing of it stays
            self.__exit__(None, None, None)
            raise
        return self

    def _init(self, ray, **kwargs) -> None:
        """``ray.init``, keeping dlcbench's SIGTERM handler (Ray installs its own, which exits without a line)."""
        import signal

        handler = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(**kwargs)
        finally:
            self._ray = ray if ray.is_initialized() else None
            signal.signal(signal.SIGTERM, handler)

    def _start_local(self) -> None:
        import psutil

        for key, value in _local_env().items():  # read by Ray and the processes it starts; restored on exit
            if key == "RAY_AUTH_MODE" and os.environ.get(key):
                continue  # the user's choice
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        ray = require_ray()
        _refresh_auth()
        constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
        if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
            # Read once when Ray is imported (maybe before us): without it 127.0.0.1 becomes the LAN address.
            self._saved_cluster_flag = constants.ENABLE_RAY_CLUSTER
            constants.ENABLE_RAY_CLUSTER = False
        # The CPUs this process was given, not this thread's affinity (a TVM pool may have pinned the thread).
        cpus = self.config.num_cpus or max(default_threads(), self.config.min_cpus)
        # Short: Ray's Unix sockets live under it and their paths are limited to about 100 characters.
        self._temp_dir = tempfile.mkdtemp(prefix="dlcb-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self._init(ray, address="local", num_cpus=cpus, resources={TIMING_RESOURCE: 1},
                   object_store_memory=self.config.object_store_mb * 1024 * 1024, include_dashboard=False,
                   dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", _temp_dir=self._temp_dir,
                   log_to_driver=False, configure_logging=False,
                   _system_config={"enable_metrics_collection": False})
        addresses = {n.get("NodeManagerAddress") for n in ray.nodes()}
        if addresses != {"127.0.0.1"}:
            raise BadInputError(f"the local Ray instance came up on {', '.join(sorted(map(str, addresses)))}, not "
                                "127.0.0.1 only; refusing to run on it")
        self.say(f"ray: started a local instance on 127.0.0.1 ({cpus} CPUs)")

    def _end_leftovers(self) -> None:
        """Ends what the local instance started and ``ray.shutdown`` left (it leaves some monitors as zombies, and
        can leave a process alive): only our own descendants that appeared with the instance."""
        if self._before is None:
            return
        import psutil

        before, self._before = self._before, None
        leftovers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=10)

    def submit(self, unit: Any, jobs: list, interleave: int, timeout_s: float, peak_threads: int) -> None:
        """Starts ``jobs`` (one unit, told apart by ``unit``) as one Ray task."""
        threads = max(job.threads for job in jobs)
        if threads > self.cpus_per_node:
            raise BadInputError(f"{threads} threads asked, but no node of the Ray cluster has more than "
                                f"{self.cpus_per_node:g} CPUs")
        times = not all(job.compile_only for job in jobs)
        options: dict[str, Any] = {"num_cpus": threads, "max_retries": MAX_RETRIES}
        if times:
            options["resources"] = {TIMING_RESOURCE: 1}
        ref = self._remote.options(**options).remote(jobs, interleave, timeout_s, peak_threads)
        self._pending[ref] = unit

    def completed(self) -> Iterator[tuple[Any, dict[str, Any] | None, str | None]]:
        """Yields ``(unit, payload, None)`` as units finish, or ``(unit, None, message)`` for a unit whose task
        failed for good (its worker or node died twice, or the task could not run)."""
        ray = self._ray
        while self._pending:
            ready, _ = ray.wait(list(self._pending), num_returns=1)
            ref = ready[0]
            unit = self._pending.pop(ref)
            try:
                yield unit, ray.get(ref), None
            except ray.exceptions.RayError as err:
                yield unit, None, f"ray: {type(err).__name__}: {one_line(err, 400)}"

    def __exit__(self, *exc) -> None:
        ray, self._ray = self._ray, None
        try:
            if ray is not None:
                for ref in list(self._pending):  # an interrupted run: its tasks end with it
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:
                        pass
                self._pending.clear()
                if ray.is_initialized():
                    ray.shutdown()
        finally:
            self._end_leftovers()
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if self._saved_env:
                _refresh_auth()
            self._saved_env.clear()
            if self._saved_cluster_flag is not None:
                import ray as ray_module

                ray_module._private.ray_constants.ENABLE_RAY_CLUSTER = self._saved_cluster_flag
                self._saved_cluster_flag = None
            if self._temp_dir:
                shutil.rmtree(self._temp_dir, ignore_errors=True)  # ours: made in _start_local
                self._temp_dir = None
