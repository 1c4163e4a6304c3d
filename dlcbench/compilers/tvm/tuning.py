"""MetaSchedule tuning for the TVM adapter (AutoTVM's successor in TVM 0.27).

The flow: ``relax.get_pipeline("zero")`` inside ``with target`` (the raw import
has no tunable tasks), task extraction, one ``tune_tasks`` call whose task
scheduler spends each batch where the measured, weighted latency is (every task
is measured once, heaviest by FLOPs first) and stops cleanly at a time budget
with the best so far, then ``MetaScheduleApplyDatabase`` inside
``with target, database``. Memory-bound tasks (GELU, softmax, layer norm) get
trials too: untuned, they took a quarter of BERT's time after its matmuls were
tuned.

One persistent database per target (``mcpu``, ``num-cores``) and TVM version
is shared by every model, so repeated layers and repeated compiles reuse
records: the records a model's tasks already have count towards its trial
budget, so a second compile with the same budget runs no new trial.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from dlcbench import jsonio
from dlcbench.cpus import pin_apart_from_pinned_threads, restore_affinity
from dlcbench.config import cache_dir
from dlcbench.errors import BackendRuntimeError, BackendUnavailableError, BadInputError, CompileError, one_line

#: The evolutionary search's defaults (MetaSchedule's own are 512 and 4): see ``TuningConfig``. One generation
#: per round, measured against four over the benchmark's 24 points: benchmarks/results/tvm-15min-g1-xeon-amx-b674a23.
SEARCH_POPULATION = 128
SEARCH_GENERATIONS = 1

META_FILE = "dlcbench-tuning.json"
#: Beside the records: where they were measured (``local``, ``rpc HOST:PORT key KEY``), one entry per place.
MEASURED_ON_FILE = "dlcbench-measured-on.json"
STRATEGIES = ("evolutionary", "replay-trace", "replay-func")
COST_MODELS = ("xgb", "mlp", "random")
DB_FILES = ("database_workload.json", "database_tuning_record.json")
DEFAULT_TRIALS_PER_TASK = 200


@dataclass
class TuningConfig:
    """A tuning budget.

    Attributes:
        trials: Total measured trials for the model, records already in the database included
            (0 = what ``minutes`` allows, up to ``DEFAULT_TRIALS_PER_TASK`` per task).
        minutes: Wall-clock budget; tuning stops between rounds once spent (0 = no time limit).
        db: Database directory; ``None`` = the per-target default under the dlcbench cache.
        max_trials_per_task: Cap for any single task.
        round_trials: Trials per batch (one task's candidates built and measured together).
        builder_timeout_s: Per-candidate build timeout (the default 30 s was hit on a loaded 2-core machine).
        seed: Search seed.
        strategy: MetaSchedule search strategy (``evolutionary``; ``replay-trace`` is cheaper per trial).
        cost_model: ``xgb`` (needs xgboost), ``mlp`` or ``random``.
        population: Evolutionary search population; at MetaSchedule's default 512 most of each batch went on
            mutating candidates (docs/tuning.md has the measurements). Below 100 the random samples a search
            round needs (MetaSchedule's ``init_min_unmeasured``, 50) drop to half the population, so that a
            round is not sampled twice over for a few invalid candidates.
        generations: Evolutionary search generations per round (MetaSchedule's ``genetic_num_iters``, 4): each
            one mutates and scores the whole population, so the search's cost per round grows with
            ``population * (generations + 1)``. One (the default) leaves more of the budget to building and
            measuring candidates (docs/tuning.md compares one and four over the benchmark's points).
        rpc: A :class:`dlcbench.compilers.tvm.rpc.Tracker`: candidates are built here and measured on every
            server of its key, in parallel (MetaSchedule's ``RPCRunner``); None measures on this machine.
    """

    trials: int = 0
    minutes: float = 0.0
    db: Path | None = None
    max_trials_per_task: int | None = None
    round_trials: int = 16
    population: int = SEARCH_POPULATION
    generations: int = SEARCH_GENERATIONS
    builder_timeout_s: float = 120.0
    seed: int = 0
    strategy: str = "evolutionary"
    cost_model: str = "xgb"
    rpc: Any = None

    def __post_init__(self):
        if self.trials < 0 or self.minutes < 0:
            raise BadInputError("tuning trials and minutes must be non-negative")
        if self.trials == 0 and self.minutes == 0 and self.db is None:
            raise BadInputError("tuning needs --tune-trials, --tune-minutes or --tuning-db")
        if self.strategy not in STRATEGIES:
            raise BadInputError(f"unknown tuning strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.cost_model not in COST_MODELS:
            raise BadInputError(f"unknown cost model {self.cost_model!r}; valid: {', '.join(COST_MODELS)}")
        if self.round_trials <= 0 or self.population <= 0:
            raise BadInputError("round_trials and population must be positive")
        if self.generations < 0:
            raise BadInputError(f"generations must be 0 or more, got {self.generations}")

    @property
    def tunes(self) -> bool:
        return self.trials > 0 or self.minutes > 0


def require_tuning_deps(cost_model: str = "xgb") -> None:
    """Checks MetaSchedule's optional dependencies up front (xgboost fails only after the first batch)."""
    missing = []
    for module in ("psutil", "cloudpickle") + (("xgboost",) if cost_model == "xgb" else ()):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BackendUnavailableError(
            f"tuning needs {', '.join(missing)} (install: pip install -e '.[tune]')"
        )


def target_identity(target: dict[str, Any]) -> dict[str, Any]:
    """What a database is only valid for: the target and TVM's version."""
    return {"target": {k: target[k] for k in sorted(target)}, "tvm_version": metadata.version("apache-tvm")}


def identity_difference(found: dict[str, Any], expected: dict[str, Any]) -> str:
    """``"mcpu skylake here znver4; ..."``: the target keys and TVM version that differ (long values digested)."""
    def show(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 40 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:8]

    flat_found = {**(found.get("target") or {}), "tvm_version": found.get("tvm_version")}
    flat_expected = {**(expected.get("target") or {}), "tvm_version": expected.get("tvm_version")}
    keys = sorted(k for k in flat_found.keys() | flat_expected.keys() if flat_found.get(k) != flat_expected.get(k))
    return "; ".join(f"{k} {show(flat_found.get(k))}, here {show(flat_expected.get(k))}" for k in keys)


def default_db_dir(target: dict[str, Any]) -> Path:
    """``<cache>/tuning/tvm-<version>-<kind>-<mcpu>-<cores>c[-<features digest>]``."""
    ident = target_identity(target)
    name = f"tvm-{ident['tvm_version']}-{target['kind']}-{target.get('mcpu', 'generic')}-{target.get('num-cores', 0)}c"
    if target.get("mattr"):
        name += "-" + hashlib.sha256(",".join(target["mattr"]).encode()).hexdigest()[:8]
    return cache_dir() / "tuning" / name


def validate_database(path: Path, target: dict[str, Any], create: bool) -> None:
    """Refuses a database of another target or TVM version, or one whose files are corrupt.

    Raises:
        BadInputError: missing (when not ``create``), foreign, or corrupt database.
    """
    path = Path(path)
    meta = path / META_FILE
    expected = target_identity(target)
    if not meta.is_file():
        if any((path / f).exists() for f in DB_FILES):
            raise BadInputError(f"tuning database {path} has no {META_FILE}: its target and TVM version are unknown")
        if not create:
            raise BadInputError(f"no tuning database at {path}")
        path.mkdir(parents=True, exist_ok=True)
        meta.write_text(jsonio.dumps(expected, indent=2))
        return
    try:
        found = json.loads(meta.read_text())
    except json.JSONDecodeError:
        raise BadInputError(f"corrupt tuning database {path}: {META_FILE} is not JSON") from None
    if found != expected:
        raise BadInputError(f"tuning database {path} was built for another target or TVM version "
                            f"({identity_difference(found, expected)}); refusing to apply it")
    for name in DB_FILES:
        file = path / name
        if not file.exists():
            continue
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError:
                raise BadInputError(f"corrupt tuning database {path}: {name} line {number} is not valid JSON") from None


def measured_places(path: Path) -> list[str]:
    """Where the records of a database were measured (its :data:`MEASURED_ON_FILE`; empty if it has none)."""
    file = Path(path) / MEASURED_ON_FILE
    try:
        places = json.loads(file.read_text()) if file.is_file() else []
    except (OSError, ValueError):
        places = []
    return [str(p) for p in places] if isinstance(places, list) else []


def record_measured_on(path: Path, where: str) -> None:
    """Adds ``where`` to the database's :data:`MEASURED_ON_FILE` (a device farm's records are that device's)."""
    file = Path(path) / MEASURED_ON_FILE
    try:
        places = json.loads(file.read_text()) if file.is_file() else []
    except (OSError, ValueError):
        places = []
    if where not in places:
        file.write_text(json.dumps([*places, where], indent=2))


def open_database(path: Path, target: dict[str, Any], create: bool = True):
    """Validates then opens a MetaSchedule JSON database directory."""
    from tvm.s_tir import meta_schedule as ms

    validate_database(path, target, create)
    try:
        return ms.database.JSONDatabase(work_dir=str(path), module_equality="structural")
    except Exception as err:
        raise BadInputError(f"corrupt tuning database {path}: {one_line(err, 200)}") from None


#: Convolution layouts a CPU compile can tune in: ``NHWC`` (weights ``OHWI``) or ``NCHW`` as imported.
CONV_LAYOUTS = ("NHWC", "NCHW")


def convert_conv_layout(mod, params: list, layout: str = "NHWC"):
    """Rewrites 2-D convolutions to ``layout`` before tuning; returns ``(mod, params, layout used)``.

    The layout used is ``None`` when the module has no 2-D convolution, ``NCHW`` when it keeps its layout.

    MetaSchedule's x86 rules vectorise the innermost axis: with channels last, that is the output channels,
    and its first random schedules of ResNet-50's convolutions were 1.5-3x faster than NCHW's at equal trials
    (as ONNX Runtime, which converts convolutions to blocked NCHWc, does). The weights' transposes are
    computed here, once, on ``params`` (given separately, ``main``'s parameters after ``num_input``): the
    returned module takes the converted weights; constant weights fold in :func:`prepare_module`.

    A quantized (QDQ) module keeps its layout: its quantize/dequantize pairs have no layout rule, and the
    conversion would put activation transposes around each of them.
    """
    import numpy as np
    import tvm
    from tvm import relax

    if layout not in CONV_LAYOUTS:
        raise BadInputError(f"unknown conv_layout {layout!r}; valid: {', '.join(CONV_LAYOUTS)}")
    ops = relax_ops(mod)
    if "relax.nn.conv2d" not in ops:
        return mod, params, None
    if layout == "NCHW" or ops & QDQ_OPS:
        return mod, params, "NCHW"
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": [layout, "OHWI"]})(mod)
    if not params:
        return mod, params, layout
    mod = relax.transform.LiftTransformParams()(mod)
    if "main_transform_params" not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod, params, layout
    # Only the transform (DeadCodeElimination keeps every externally visible function, main included).
    transform = relax.transform.DeadCodeElimination(["main_transform_params"])(
        tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint != "main"}, attrs=mod.attrs))
    vm = relax.VirtualMachine(tvm.compile(transform, target="llvm"), tvm.cpu())
    out = vm["main_transform_params"]([tvm.runtime.tensor(p) for p in params])
    converted = [np.asarray(t.numpy()) for t in out]
    kept = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint != "main_transform_params"},
                        attrs=mod.attrs)
    return relax.transform.DeadCodeElimination(["main"])(kept), converted, layout


#: Ops with no layout rule: around each, ConvertLayout would transpose activations back to NCHW and forth.
QDQ_OPS = frozenset({"relax.quantize", "relax.dequantize"})


def relax_ops(mod) -> set[str]:
    """Names of the Relax operators ``mod``'s Relax functions call (``relax.nn.conv2d``...)."""
    from tvm import relax

    found: set[str] = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            found.add(str(expr.op.name))

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def prepare_module(mod, target):
    """TVM's ``static_shape_tuning_pipeline`` up to tuning, with CPU weight prepacking.

    ``zero`` inside ``with target`` makes the tasks tunable PrimFuncs; ``AttachAttrLayoutFreeBuffers``
    lets MetaSchedule choose the weights' layout (packed, as ONNX Runtime's MLAS does), which
    :func:`apply_database` then lifts into a ``main_transform_params`` function run once at load.
    Small parameters are constants already (see ``import_onnx``), so ONNX Clip's NaN guards fold away.
    """
    import tvm
    from tvm import relax

    with target:
        return tvm.transform.Sequential([
            relax.transform.FoldConstant(),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
            relax.transform.AttachAttrLayoutFreeBuffers(),
        ])(mod)


def _task_flops(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0])) * float(task.weight)
    except Exception:  # some PrimFuncs (pure data movement) have no estimate
        return 0.0


def _records(database, task) -> list:
    workload = database.commit_workload(task.dispatched[0])
    return [r for r in database.get_top_k(workload, 100_000) if r.run_secs]


def _record_count(database, task, all_records) -> int:
    """Records of the task's workload, failed candidates included: each was a trial spent."""
    workload = database.commit_workload(task.dispatched[0])
    return sum(1 for r in all_records if r.workload.same_as(workload))


def _best_seconds(database, task) -> float | None:
    records = _records(database, task)
    if not records:
        return None
    return min(sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in records)


@dataclass
class TaskPlan:
    """One extracted task: its size, what the database already had, and what this run spent on it."""

    name: str
    weight: int
    flops: float
    share: float
    existing: int
    new_trials: int = 0
    best_ms: float | None = None
    failed: str | None = None
    #: Wall seconds from the previous batch's results to this task's (its search, build and measurement; the
    #: first batch also holds the run's set-up).
    seconds: float = 0.0


def plan_tasks(tasks, database) -> list[TaskPlan]:
    """Describes each task (FLOP share, calls per inference, records already in the database)."""
    flops = [_task_flops(t) for t in tasks]
    total = sum(flops) or 1.0
    all_records = database.get_all_tuning_records()
    plans = []
    for task, f in zip(tasks, flops):
        best = _best_seconds(database, task)
        plans.append(TaskPlan(task.task_name, int(task.weight), f, f / total, _record_count(database, task, all_records),
                              best_ms=best * 1e3 if best is not None else None))
    return plans


def global_budget(plans: list[TaskPlan], config: TuningConfig) -> int:
    """New trials for this run: the budget less the records the model's tasks already have."""
    budget = config.trials or DEFAULT_TRIALS_PER_TASK * len(plans)
    return max(0, budget - sum(p.existing for p in plans))


@dataclass
class TuningReport:
    """What tuning did: per-task plan, trials run, seconds, and the tuning curve.

    Each curve point holds ``trials`` and ``seconds`` so far, ``estimated_ms`` (the sum over measured tasks of
    best latency x calls per inference) and ``measured_tasks`` (how many of ``len(tasks)`` that sum covers).
    """

    db: str
    seconds: float
    new_trials: int
    stopped_by_time: bool
    tasks: list[dict[str, Any]]
    curve: list[dict[str, float]]
    measured_on: str = "local"
    #: Where the database's records were measured, this run's and earlier ones (a deferred round's device...).
    records_measured_on: list[str] = field(default_factory=list)
    #: Where the tuning time went: ``search``, ``build``, ``measure``, ``cost_model``, ``database``, ``other``
    #: (seconds, from MetaSchedule's profiler; ``other`` holds what no profiler scope covers, the search of the
    #: replay strategies included).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: The evolutionary search's ``search`` seconds by MetaSchedule's profiler scope, ``EvoSearch/`` left off:
    #: ``SampleInitPopulation`` (random schedules), ``Evolve/Mutation`` (mutating and postprocessing),
    #: ``Evolve/PredictNormalizedScore`` (the cost model's scores), ``Evolve/Misc...``, ``PickWithEpsGreedy``.
    search_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _build_candidate(mod, target):
    """MetaSchedule's ``default_build`` minus ``import tvm.s_tir.tensor_intrin``.

    That import costs ~26 s in every fresh process (mostly CUDA intrinsics); candidates that use an
    intrinsic already carry its body after tensorization, so building does not need the registry.
    """
    import os
    import tempfile

    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support.tar import tar

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    path = os.path.join(tempfile.mkdtemp(prefix="dlcbench-ms-"), "tvm_tmp_mod." + tar.output_format)
    tvm.compile(mod, target=target).export_library(path, fcompile=tar)
    return path


def make_builder(workers: int, timeout_s: float, build: Callable | None = None):
    """A MetaSchedule builder whose worker processes live across batches.

    ``LocalBuilder`` starts a fresh process pool for every batch; with the intrinsic import that cost
    ~30 s per batch of 16 candidates here, 80% of all tuning time. ``build(mod, target) -> path`` makes
    each artifact (default: :func:`_build_candidate`'s tar of objects, linked by the runner).
    """
    build_fn = build or _build_candidate
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            # Recycled now and then: PopenPool workers are known to leak over many builds.
            self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s, maximum_process_uses=200)

        def build(self, build_inputs):
            results = []
            jobs = [(b.mod, b.target) for b in build_inputs]
            for res in self.pool.map_with_error_catching(lambda job: build_fn(*job), jobs):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {timeout_s:g} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {res.value}"))
            return results

        def shutdown(self):
            self.pool.shutdown()

    return PooledBuilder()


def _evaluate_on_threads(threads: int, session, rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """MetaSchedule's RPC evaluator, with the server's pool set to the target's threads first (its default is
    the server's half of its hardware threads) and, on dlcbench's server, its calling thread on a core of its own
    (:func:`~dlcbench.compilers.tvm.rpc.configure_remote_pool`); a pool that cannot run them fails the
    candidate, saying why."""
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    from dlcbench.compilers.tvm.rpc import configure_remote_pool

    try:
        configure_remote_pool(session, threads)
    except BackendRuntimeError as err:  # crosses MetaSchedule's process pool: a builtin type pickles safely
        raise RuntimeError(str(err)) from None
    return run_evaluator_common(rt_mod, device, evaluator_config, repeated_args)


def _evaluate_apart(rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """MetaSchedule's local evaluator, run in its measuring worker with the calling thread on a core of its own.

    The worker's TVM pool pins its threads one per core and leaves the caller free over them; a candidate
    timed while the caller shared a worker's core ran up to 2x slower (see :mod:`dlcbench.cpus`).
    """
    import tvm
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    tvm.get_global_func("runtime.NumThreads")()  # creates this thread's pool (its workers pinned) if not yet
    pin_apart_from_pinned_threads()
    return run_evaluator_common(rt_mod, device, evaluator_config, repeated_args)


def _make_runner(config: TuningConfig, threads: int = 1):
    """Where candidates are measured: this machine (``LocalRunner``), or every server of an RPC key at once."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20)
    if config.rpc is None:
        return ms.runner.LocalRunner(timeout_sec=config.builder_timeout_s, evaluator_config=evaluator,
                                     f_run_evaluator=_evaluate_apart if threads > 1 else None)
    from dlcbench.compilers.tvm.rpc import servers_of, tracker_summary

    tracker = config.rpc
    registered, _ = servers_of(tracker_summary(tracker.host, tracker.port), tracker.key)
    if not registered:
        raise BackendUnavailableError(f"no RPC server with key {tracker.key!r} is registered at "
                                      f"{tracker.host}:{tracker.port}")
    rpc_config = ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port, tracker_key=tracker.key,
                                     session_priority=1, session_timeout_sec=int(config.builder_timeout_s))
    # RPCRunner's default is one worker whatever the farm: one per registered server measures them all at once,
    # but servers on this machine share its cores: as many at once as fit, each on the target's threads.
    workers = registered
    if tracker.host in ("127.0.0.1", "localhost", "::1"):
        workers = max(1, min(registered, (os.cpu_count() or 1) // max(1, threads)))
    return ms.runner.RPCRunner(rpc_config=rpc_config, evaluator_config=evaluator, max_workers=workers,
                               f_run_evaluator=functools.partial(_evaluate_on_threads, threads))


class _Tuner:
    """One tuning run: a task scheduler and a measure callback sharing state.

    The scheduler is MetaSchedule's gradient idea in Python, so that it can also honour a wall-clock
    deadline (returning -1 ends ``TaskScheduler.tune`` cleanly; the built-in one has no clock): every
    task is measured once, heaviest first, then each batch goes to the task whose weighted latency is
    falling fastest or is still largest per batch spent.

    With ``isolate_measurement`` (candidates measured on this machine) a batch's measurements finish before
    the next search starts. MetaSchedule overlaps them, so candidates were timed while the search held a core:
    with as many kernel threads as cores, the timings were of a contended machine. The search then has
    every core, which more than pays for the lost overlap.
    """

    ALPHA = 0.2  # weight of the recent gain against the remaining latency per batch, as MetaSchedule's
    WINDOW = 3
    EPSILON = 0.05

    def __init__(self, plans: list[TaskPlan], index: list[int], deadline: float, per_task_cap: int | None,
                 seed: int, on_batch: Callable[[int, list[float]], None], isolate_measurement: bool = True):
        import random

        self.plans, self.index, self.deadline = plans, index, deadline
        self.isolate_measurement = isolate_measurement
        self.per_task_cap = per_task_cap
        self.rng = random.Random(seed)
        self.on_batch = on_batch
        self.history: dict[int, list[float]] = {i: [] for i in range(len(index))}
        self.spent = {i: 0 for i in range(len(index))}
        self.last_task = -1
        self.stopped_by_time = False
        self.last_result_at = time.perf_counter()

    def best(self, i: int) -> float | None:
        """Best latency (ms) so far: the database's at the start, then lowered by each batch."""
        return self.plans[self.index[i]].best_ms

    def record(self, i: int, latencies_ms: list[float]) -> None:
        plan = self.plans[self.index[i]]
        self.spent[i] += 1
        best = min([plan.best_ms] * (plan.best_ms is not None) + latencies_ms, default=None)
        if best is not None:
            self.history[i].append(best)
            plan.best_ms = best

    def choose(self, alive: list[int]) -> int:
        unmeasured = [i for i in alive if self.best(i) is None]
        if unmeasured:
            return unmeasured[0]  # tasks come heaviest first
        if self.rng.random() < self.EPSILON:
            return self.rng.choice(alive)

        def score(i: int) -> float:
            weight = self.plans[self.index[i]].weight
            hist = self.history[i]
            remaining = self.best(i) / (self.spent[i] + 1)
            recent = (hist[-1 - self.WINDOW] - hist[-1]) / self.WINDOW if len(hist) > self.WINDOW else remaining
            return weight * (self.ALPHA * recent + (1 - self.ALPHA) * remaining)

        return max(alive, key=score)

    def scheduler(self):
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

        tuner = self

        @derived_object
        class DeadlineScheduler(PyTaskScheduler):
            def next_task_id(self) -> int:
                outer = self._outer()
                records = outer.tasks_
                for i in range(len(records)):
                    if tuner.isolate_measurement and records[i].runner_futures is not None:
                        self.join_running_task(i)  # the next search waits: it would share the measured cores
                    else:
                        outer.touch_task(i)  # joins finished measurements, so the latencies are current
                alive = [i for i in range(len(records)) if not records[i].is_terminated
                         and (tuner.per_task_cap is None
                              or tuner.plans[tuner.index[i]].existing + tuner.plans[tuner.index[i]].new_trials
                              < tuner.per_task_cap)]
                if not alive:
                    return -1
                # Checked after the first batch, so any time budget makes progress and ends with the best so far.
                if tuner.last_task >= 0 and time.perf_counter() >= tuner.deadline:
                    tuner.stopped_by_time = True
                    return -1
                pick = tuner.choose(alive)
                if records[pick].runner_futures is not None:
                    self.join_running_task(pick)
                tuner.last_task = pick
                return pick

        return DeadlineScheduler()

    def callback(self):
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        tuner = self

        @derived_object
        class Record(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                latencies = [sum(float(s) for s in r.run_secs) / len(r.run_secs) * 1e3
                             for r in runner_results if r.run_secs and r.error_msg is None]
                plan = tuner.plans[tuner.index[task_id]]
                plan.new_trials += len(measure_candidates)
                now = time.perf_counter()
                plan.seconds += now - tuner.last_result_at
                tuner.last_result_at = now
                tuner.record(task_id, latencies)
                tuner.on_batch(task_id, latencies)

        return Record()


def _estimated_ms(plans: list[TaskPlan]) -> float:
    """Sum over measured tasks of best latency x calls per inference."""
    return sum(p.best_ms * p.weight for p in plans if p.best_ms is not None)


def _measured(plans: list[TaskPlan]) -> int:
    return sum(1 for p in plans if p.best_ms is not None)


def tune_module(mod, target_dict: dict[str, Any], config: TuningConfig, progress: Callable[[str], None] | None = None):
    """Tunes a prepared module's tasks into the database (when the config asks for trials).

    Args:
        mod: A module after :func:`prepare_module`.
        target_dict: The target as dlcbench builds it (``kind``, ``mcpu``, ``num-cores``).
        config: The budget and database.
        progress: Called with a line now and then (trials done, best estimate).

    Returns:
        ``(database, TuningReport)``.
    """
    import os

    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    say = progress or (lambda line: None)
    target = tvm.target.Target(target_dict)
    db_path = Path(config.db) if config.db else default_db_dir(target_dict)
    database = open_database(db_path, target_dict, create=config.tunes)
    tasks = extract_tasks(mod, target)
    plans = plan_tasks(tasks, database)
    start = time.perf_counter()
    budget = global_budget(plans, config) if config.tunes else 0
    curve = [{"trials": 0, "seconds": 0.0, "estimated_ms": _estimated_ms(plans), "measured_tasks": _measured(plans)}]
    stopped = False
    done = 0
    stage_seconds: dict[str, float] = {}
    search_seconds: dict[str, float] = {}
    if budget:
        require_tuning_deps(config.cost_model)
        restore_affinity()  # the builder and runner pools start from this thread: all our CPUs, not a pinned one
        deadline = start + config.minutes * 60 if config.minutes else float("inf")
        # Heaviest first: with a tiny budget the big matmuls/convolutions get the trials.
        todo = sorted((i for i, t in enumerate(tasks) if not t.mod.attrs.get("tirx.is_scheduled", False)),
                      key=lambda i: -plans[i].flops)
        cores = os.cpu_count() or 1
        threads = int(target_dict.get("num-cores") or 1)
        restore_threads = _run_candidates_on(threads)
        builder = work = None
        try:
            builder = make_builder(workers=cores, timeout_s=config.builder_timeout_s)
            runner = _make_runner(config, threads)
            work = Path(tempfile.mkdtemp(prefix="dlcbench-tune-"))
        except BaseException:
            if builder is not None:
                builder.shutdown()
            restore_threads()
            raise
        last_line = [0.0]

        def on_batch(_task: int, _latencies: list[float]) -> None:
            trials = sum(p.new_trials for p in plans)
            elapsed = time.perf_counter() - start
            est = _estimated_ms(plans)
            curve.append({"trials": trials, "seconds": round(elapsed, 2), "estimated_ms": est,
                          "measured_tasks": _measured(plans)})
            if elapsed - last_line[0] >= 10 or trials >= budget:
                last_line[0] = elapsed
                say(f"tuning [{'#' * min(20, 20 * trials // budget):<20}] {trials}/{budget} trials, "
                    f"{elapsed:.0f} s, estimated {est:.3f} ms")

        try:
            while todo and not stopped:
                spent = sum(p.new_trials for p in plans)
                left = budget - spent
                if left <= 0 or (spent and time.perf_counter() >= deadline):
                    stopped = left > 0
                    break
                contexts = tune_contexts([tasks[i] for i in todo], work, config, cores, target_dict)
                # MetaSchedule builds every design space before the first batch; one that cannot be
                # built (a ScheduleError on depthwise conv + ReLU6, for one) would fail them all.
                keep = []
                for i, ctx in zip(todo, contexts):
                    try:
                        ctx.generate_design_space()
                        keep.append((i, ctx))
                    except Exception as err:
                        plans[i].failed = one_line(err, 200)
                        say(f"tuning: task {plans[i].name} keeps its default schedule: {plans[i].failed}")
                if not keep:
                    break
                todo, contexts = [i for i, _ in keep], [c for _, c in keep]
                tuner = _Tuner(plans, todo, deadline, config.max_trials_per_task, config.seed, on_batch,
                               isolate_measurement=config.rpc is None)
                quiet_meta_schedule()
                profiler, began = ms.Profiler(), time.perf_counter()
                try:
                    with profiler:
                        ms.tune_tasks(
                            tasks=contexts, task_weights=[float(tasks[i].weight) for i in todo], work_dir=str(work),
                            max_trials_global=left, max_trials_per_task=left,
                            num_trials_per_iter=min(config.round_trials, left), database=database,
                            cost_model=config.cost_model, builder=builder, runner=runner,
                            measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                            + [tuner.callback()],
                            task_scheduler=tuner.scheduler(),
                        )
                    stopped = tuner.stopped_by_time
                    _add_stage_seconds(stage_seconds, profiler, time.perf_counter() - began, search_seconds)
                    break
                except Exception as err:  # a MetaSchedule bug in one task must not cost the others
                    _add_stage_seconds(stage_seconds, profiler, time.perf_counter() - began, search_seconds)
                    if tuner.last_task < 0:
                        raise CompileError(f"MetaSchedule failed before tuning: {one_line(err, 300)}") from None
                    bad = todo[tuner.last_task]
                    plans[bad].failed = one_line(err, 200)
                    say(f"tuning: task {plans[bad].name} failed and keeps its default schedule: {plans[bad].failed}")
                    todo = [i for i in todo if i != bad]
        finally:
            builder.shutdown()
            restore_threads()
            shutil.rmtree(work, ignore_errors=True)
        done = sum(p.new_trials for p in plans)
    for plan, task in zip(plans, tasks):
        best = _best_seconds(database, task)
        plan.best_ms = best * 1e3 if best is not None else None
    report = TuningReport(
        db=str(db_path), seconds=round(time.perf_counter() - start, 2), new_trials=done, stopped_by_time=stopped,
        tasks=[p.__dict__.copy() for p in plans], curve=curve,
        measured_on=f"rpc {config.rpc.host}:{config.rpc.port} key {config.rpc.key}" if config.rpc else "local",
        stage_seconds={k: round(v, 2) for k, v in stage_seconds.items()},
        search_seconds={k: round(v, 2) for k, v in search_seconds.items()},
    )
    if done:
        record_measured_on(db_path, report.measured_on)
    report.records_measured_on = measured_places(db_path)
    return database, report


#: MetaSchedule profiler scopes by tuning stage, the first matching prefix wins (scopes not listed go to
#: ``other``). MetaSchedule's scopes do not nest (``EvoSearch/Evolve/Misc/CopyMeasuredWorkloads`` runs after
#: ``EvoSearch/Evolve/Misc``), and the replay strategies have none.
STAGE_SCOPES = {
    "database": ("MeasureCallback/AddToDatabase", "EvoSearch/PickBestFromDatabase"),
    "cost_model": ("MeasureCallback/UpdateCostModel",),
    "search": ("EvoSearch/",),
    "build": ("SendToBuilder",),
    "measure": ("SendToRunner", "JoinRunnerFutures"),
}


def _run_candidates_on(threads: int) -> Callable[[], None]:
    """Sets ``TVM_NUM_THREADS`` to the target's ``num-cores`` for the measuring workers started from now on;
    returns what puts the variable back.

    MetaSchedule's ``LocalRunner`` times candidates in worker processes whose TVM pool is sized by that variable
    when they start; unset, it is half the hardware threads on x86, so a 2-thread target on a 2-vCPU machine
    had its candidates timed on one thread and was tuned for one.
    """
    saved = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(max(1, threads))

    def restore() -> None:
        if saved is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved

    return restore


def _add_stage_seconds(totals: dict[str, float], profiler, wall_s: float,
                       search: dict[str, float] | None = None) -> None:
    """Adds a MetaSchedule profile of ``wall_s`` seconds to ``totals`` by stage (:data:`STAGE_SCOPES`); what no
    scope covers (the scheduler, the replay strategies' search, which has no scope) goes to ``other``. The
    ``search`` stage's scopes are also added to ``search`` one by one (``EvoSearch/`` left off)."""
    try:
        scopes = {str(k): float(v) for k, v in profiler.get().items()}
    except Exception:  # a diagnostic only
        return
    totals["other"] = totals.get("other", 0.0) + max(0.0, wall_s - sum(v for k, v in scopes.items() if k != "Total"))
    for name, seconds in scopes.items():
        if name == "Total":
            continue
        stage = next((st for st, prefixes in STAGE_SCOPES.items()
                      if any(name.startswith(prefix) for prefix in prefixes)), "other")
        totals[stage] = totals.get(stage, 0.0) + seconds
        if stage == "search" and search is not None:
            step = name.removeprefix("EvoSearch/")
            search[step] = search.get(step, 0.0) + seconds


def quiet_meta_schedule() -> None:
    """MetaSchedule's loggers set their own levels; its per-task tables would flood the progress output."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("tvm.s_tir.meta_schedule"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _load_cpu_intrinsics() -> None:
    """Registers only this host's CPU tensor intrinsics before MetaSchedule asks for all of them.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose CUDA, ROCm and Hexagon intrinsics take
    ~26 s to build on this machine and are never used by an LLVM target. The package is entered
    in ``sys.modules`` unexecuted, so that import is a no-op, and only the host's module is loaded.
    """
    import importlib
    import importlib.util
    import platform
    import sys

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    package = importlib.util.module_from_spec(importlib.util.find_spec(name))
    sys.modules[name] = package
    tvm.s_tir.tensor_intrin = package
    host = "arm_cpu" if platform.machine().lower() in ("aarch64", "arm64") else "x86"
    importlib.import_module(f"{name}.{host}")


def tune_contexts(tasks, work: Path, config: TuningConfig, cores: int, target_dict: dict[str, Any]):
    """MetaSchedule's tune contexts of ``tasks`` with the configured search strategy and dlcbench's CPU rules."""
    from tvm.s_tir import meta_schedule as ms

    if target_dict.get("kind") == "llvm":
        _load_cpu_intrinsics()
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    strategy: Any = config.strategy
    if strategy == "evolutionary":
        strategy = ms.search_strategy.EvolutionarySearch(
            population_size=config.population, genetic_num_iters=config.generations,
            init_min_unmeasured=min(50, max(1, config.population // 2)))
    # Every core: candidates are measured elsewhere, or here between searches (see _Tuner).
    contexts, _ = extracted_tasks_to_tune_contexts(tasks, str(work), strategy=strategy,
                                                   num_threads=max(1, cores), seed=config.seed)
    return contexts


def apply_database(mod, target, database):
    """Applies the best records (``MetaScheduleApplyDatabase`` inside ``with target, database``), then
    splits the weight-layout rewrites into ``main_transform_params`` (run once at load, like a prepack)."""
    import tvm
    from tvm import relax

    with target, database:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    with target:
        return tvm.transform.Sequential([
            relax.transform.SplitLayoutRewritePreproc(),
            relax.transform.LiftTransformParams(),
            relax.transform.FoldConstant(),
        ])(mod)


def plot_curve(curve: list[dict[str, float]], path: Path) -> None:
    """Saves the tuning curve (estimated latency against trials and seconds) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    trials = [c["trials"] for c in curve]
    secs = [c["seconds"] for c in curve]
    est = [c["estimated_ms"] for c in curve]
    a.plot(trials, est, marker=".")
    a.set_xlabel("trials")
    a.set_ylabel("estimated latency of tuned tasks (ms)")
    b.plot(secs, est, marker=".")
    b.set_xlabel("seconds")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle("MetaSchedule tuning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["TuningConfig", "tune_module", "apply_database", "open_database", "validate_database", "default_db_dir",
           "prepare_module", "plot_curve"]
