"""MetaSchedule tuning for the TVM adapter (AutoTVM's successor in TVM 0.27).

The flow: ``relax.get_pipeline("zero")`` inside ``with target`` (the raw import
has no tunable tasks), task extraction, a budget spent where the FLOPs are,
tuning in small rounds so a time budget ends cleanly with the best so far, and
``MetaScheduleApplyDatabase`` inside ``with target, database``.

One persistent database per target (``mcpu``, ``num-cores``) and TVM version
is shared by every model, so repeated layers and repeated compiles reuse
records: a task's existing records count towards its budget, and a second
compile with the same budget runs no new trial.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from dlcbench.errors import BackendUnavailableError, BadInputError, one_line

META_FILE = "dlcbench-tuning.json"
STRATEGIES = ("evolutionary", "replay-trace", "replay-func")
COST_MODELS = ("xgb", "mlp", "random")
DB_FILES = ("database_workload.json", "database_tuning_record.json")


@dataclass
class TuningConfig:
    """A tuning budget.

    Attributes:
        trials: Total measured trials for the model (0 = only what ``minutes`` allows, capped at 64/task).
        minutes: Wall-clock budget; tuning stops between rounds once spent (0 = no time limit).
        db: Database directory; ``None`` = the per-target default under the dlcbench cache.
        max_trials_per_task: Cap for any single task.
        trivial_share: Tasks below this share of the model's FLOPs get no trials.
        round_trials: Trials per task per round (smaller = finer time-budget stops).
        builder_timeout_s: Per-candidate build timeout (the default 30 s was hit on a loaded 2-core machine).
        seed: Search seed.
        strategy: MetaSchedule search strategy (``evolutionary``; ``replay-trace`` is cheaper per trial).
        cost_model: ``xgb`` (needs xgboost), ``mlp`` or ``random``.
    """

    trials: int = 0
    minutes: float = 0.0
    db: Path | None = None
    max_trials_per_task: int | None = None
    trivial_share: float = 0.01
    round_trials: int = 16
    builder_timeout_s: float = 120.0
    seed: int = 0
    strategy: str = "evolutionary"
    cost_model: str = "xgb"

    def __post_init__(self):
        if self.trials < 0 or self.minutes < 0:
            raise BadInputError("tuning trials and minutes must be non-negative")
        if self.trials == 0 and self.minutes == 0 and self.db is None:
            raise BadInputError("tuning needs --tune-trials, --tune-minutes or --tuning-db")
        if self.strategy not in STRATEGIES:
            raise BadInputError(f"unknown tuning strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.cost_model not in COST_MODELS:
            raise BadInputError(f"unknown cost model {self.cost_model!r}; valid: {', '.join(COST_MODELS)}")
        if self.round_trials <= 0 or not 0 <= self.trivial_share < 1:
            raise BadInputError("round_trials must be positive and trivial_share in [0, 1)")

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


def default_db_dir(target: dict[str, Any]) -> Path:
    """``<cache>/tuning/tvm-<version>-<kind>-<mcpu>-<cores>c``."""
    from models.export import default_cache_dir

    ident = target_identity(target)
    name = f"tvm-{ident['tvm_version']}-{target['kind']}-{target.get('mcpu', 'generic')}-{target.get('num-cores', 0)}c"
    return default_cache_dir() / "tuning" / name


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
        meta.write_text(json.dumps(expected, indent=2))
        return
    try:
        found = json.loads(meta.read_text())
    except json.JSONDecodeError:
        raise BadInputError(f"corrupt tuning database {path}: {META_FILE} is not JSON") from None
    if found != expected:
        raise BadInputError(
            f"tuning database {path} was built for {json.dumps(found, sort_keys=True)}, "
            f"not {json.dumps(expected, sort_keys=True)}; refusing to apply it"
        )
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


def open_database(path: Path, target: dict[str, Any], create: bool = True):
    """Validates then opens a MetaSchedule JSON database directory."""
    from tvm.s_tir import meta_schedule as ms

    validate_database(path, target, create)
    try:
        return ms.database.JSONDatabase(work_dir=str(path), module_equality="structural")
    except Exception as err:
        raise BadInputError(f"corrupt tuning database {path}: {one_line(err, 200)}") from None


def prepare_module(mod, target):
    """Runs the ``zero`` pipeline inside ``with target`` so tasks become tunable PrimFuncs."""
    from tvm import relax

    with target:
        return relax.get_pipeline("zero")(mod)


def _task_flops(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0])) * float(task.weight)
    except Exception:  # some PrimFuncs (pure data movement) have no estimate
        return 0.0


def _records(database, task) -> list:
    workload = database.commit_workload(task.dispatched[0])
    return [r for r in database.get_top_k(workload, 100_000) if r.run_secs]


def _best_seconds(database, task) -> float | None:
    records = _records(database, task)
    if not records:
        return None
    return min(sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in records)


@dataclass
class TaskPlan:
    """Budget of one extracted task."""

    name: str
    flops: float
    share: float
    existing: int
    budget: int

    @property
    def new_trials(self) -> int:
        return max(0, self.budget - self.existing)


def plan_budget(tasks, database, config: TuningConfig) -> list[TaskPlan]:
    """Shares the trial budget across tasks by FLOPs; trivial tasks get none; records already there count."""
    flops = [_task_flops(t) for t in tasks]
    total = sum(flops) or 1.0
    heavy = [i for i, f in enumerate(flops) if f / total >= config.trivial_share]
    heavy_total = sum(flops[i] for i in heavy) or 1.0
    budget_total = config.trials or 64 * len(heavy)
    plans = []
    for i, task in enumerate(tasks):
        budget = 0
        if i in heavy:
            budget = max(1, int(math.ceil(budget_total * flops[i] / heavy_total)))
            if config.max_trials_per_task:
                budget = min(budget, config.max_trials_per_task)
        plans.append(TaskPlan(task.task_name, flops[i], flops[i] / total, len(_records(database, task)), budget))
    return plans


@dataclass
class TuningReport:
    """What tuning did: per-task plan, trials run, seconds, and the tuning curve."""

    db: str
    seconds: float
    new_trials: int
    stopped_by_time: bool
    tasks: list[dict[str, Any]]
    curve: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _estimated_ms(database, tasks) -> float:
    total = 0.0
    for task in tasks:
        best = _best_seconds(database, task)
        if best is not None:
            total += best * float(task.weight)
    return total * 1e3


def tune_module(mod, target_dict: dict[str, Any], config: TuningConfig, progress: Callable[[str], None] | None = None):
    """Tunes a prepared module's tasks into the database (when the config asks for trials).

    Args:
        mod: A module after :func:`prepare_module`.
        target_dict: The target as dlcbench builds it (``kind``, ``mcpu``, ``num-cores``).
        config: The budget and database.
        progress: Called with one line after each round.

    Returns:
        ``(database, TuningReport)``.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts

    say = progress or (lambda line: None)
    target = tvm.target.Target(target_dict)
    db_path = Path(config.db) if config.db else default_db_dir(target_dict)
    database = open_database(db_path, target_dict, create=config.tunes)
    tasks = extract_tasks(mod, target)
    if not config.tunes:
        plans = plan_budget(tasks, database, config)
        plans = [TaskPlan(p.name, p.flops, p.share, p.existing, 0) for p in plans]
        report = TuningReport(str(db_path), 0.0, 0, False, [p.__dict__ for p in plans], [])
        return database, report
    plans = plan_budget(tasks, database, config)
    start = time.perf_counter()
    deadline = start + config.minutes * 60 if config.minutes else float("inf")
    done = 0
    todo = sum(p.new_trials for p in plans)
    curve = [{"trials": 0, "seconds": 0.0, "estimated_ms": _estimated_ms(database, tasks)}]
    stopped = False
    failed: dict[str, str] = {}
    if todo:
        require_tuning_deps(config.cost_model)
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        work = Path(tempfile.mkdtemp(prefix="dlcbench-tune-"))
        contexts, _ = extracted_tasks_to_tune_contexts(
            tasks, str(work), strategy=config.strategy, num_threads=target_dict.get("num-cores", "physical"),
            seed=config.seed,
        )
        remaining = {i: p.new_trials for i, p in enumerate(plans) if p.new_trials > 0}
        # One builder and runner for every round: their worker pools are slow to start.
        builder = ms.builder.LocalBuilder(timeout_sec=config.builder_timeout_s)
        runner = ms.runner.LocalRunner(
            timeout_sec=config.builder_timeout_s,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20),
        )
        try:
            while remaining and not stopped:
                for i in sorted(remaining, key=lambda k: -plans[k].flops):
                    if stopped:
                        break
                    n = min(config.round_trials, remaining[i])
                    try:
                        ms.tune_tasks(
                            tasks=[contexts[i]], task_weights=[1.0], work_dir=str(work), max_trials_global=n,
                            num_trials_per_iter=n, database=database, cost_model=config.cost_model,
                            builder=builder, runner=runner,
                        )
                    except Exception as err:  # a MetaSchedule bug in one task must not cost the others
                        failed[plans[i].name] = one_line(err, 200)
                        say(f"tuning: task {plans[i].name} failed and keeps its default schedule: {failed[plans[i].name]}")
                        del remaining[i]
                        continue
                    remaining[i] -= n
                    done += n
                    if remaining[i] <= 0:
                        del remaining[i]
                    # Checked after each round, so any budget makes progress and ends with the best so far.
                    stopped = bool(remaining) and time.perf_counter() >= deadline
                    est = _estimated_ms(database, tasks)
                    curve.append({"trials": done, "seconds": time.perf_counter() - start, "estimated_ms": est})
                    say(f"tuning [{'#' * (20 * done // max(todo, 1)):<20}] {done}/{todo} trials, "
                        f"best estimate {est:.3f} ms ({plans[i].name})")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report = TuningReport(
        db=str(db_path), seconds=round(time.perf_counter() - start, 2), new_trials=done, stopped_by_time=stopped,
        tasks=[{**p.__dict__, "best_ms": (_best_seconds(database, t) or 0) * 1e3 or None,
                "failed": failed.get(p.name)} for p, t in zip(plans, tasks)],
        curve=curve,
    )
    return database, report


def apply_database(mod, target, database):
    """Applies the best records with ``MetaScheduleApplyDatabase`` inside ``with target, database``."""
    from tvm import relax

    with target, database:
        return relax.transform.MetaScheduleApplyDatabase()(mod)


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
