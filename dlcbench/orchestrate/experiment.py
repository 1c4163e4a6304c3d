"""Experiments: a models x backends x batches x threads matrix, run job by job, resumable, stored in SQLite."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

from dlcbench.config import positive_int, positive_seconds, split_list
from dlcbench.errors import BackendUnavailableError, BadInputError
from dlcbench.orchestrate.launcher import run_interleaved, run_isolated
from dlcbench.models.export import names_a_file
from dlcbench.measure.job import JobConfig, check_region
from dlcbench.measure.trackers import REGION_METRICS
from dlcbench.results.store import DEFAULT_DB, ResultsStore, pending_dir_of
from dlcbench.measure.timing import TimingConfig


#: How an experiment's jobs are run (:attr:`ExperimentConfig.executor`).
EXECUTORS = ("local", "ray")


def _unique(items: list, what: str, repeated: list[str]) -> list:
    """``items`` without repeats, first occurrence kept; each repeat is noted in ``repeated``."""
    seen: list = []
    for item in items:
        if item in seen:
            repeated.append(f"{what} {item}")
        else:
            seen.append(item)
    return seen


@dataclass
class ExperimentConfig:
    """A comparison matrix.

    Attributes:
        name: Experiment name (rows are keyed by it; a rerun resumes it).
        models: Zoo names or model paths.
        backends: Registered backend names.
        batches: Batch sizes.
        precision: Precision(s) (one or a list, ``"fp32,int8"`` too): each is a point of the matrix for every backend
            that has it (a backend without it is left out of that precision's jobs).
        threads: Thread counts (one count or a list, ``"1,2"`` too), each applied to every backend by its own
            mechanism; each count is a point of the matrix (a thread sweep is one experiment).
        preset: Zoo preset.
        target: ``cpu`` or ``cuda``.
        db: Results database path.
        timeout_s: Per-job time limit (export + compile + check + timing).
        force: Rerun jobs already recorded.
        timing: Warm-up and measurement rules.
        out_root: Where artifacts go (one directory per job); relative to the caller's working directory.
        retry_failed: Rerun the jobs recorded as failed (not the successful ones).
        db_wait: Seconds a database write waits for another process's lock (None: the store's default).
        region: The timed region of every job: ``resident``, ``end_to_end`` or ``both``
            (:data:`dlcbench.measure.job.REGION_CHOICES`).
        interleave: Rounds per comparison point (model, thread count, batch). 1: each job is timed alone, one
            after the other. K >= 2: the backends of a point are built, then timed in K alternating rounds, each
            in its own worker kept alive (:func:`dlcbench.orchestrate.launcher.run_interleaved`), so drift hits
            them alike; per-round medians are stored.
        input_shapes, input_ranges, inputs_file, accuracy: Applied to every model of the matrix
            (:class:`dlcbench.measure.job.JobConfig`); a name a model lacks fails that model's jobs.
        executor: ``local`` (each job in a worker process here, one after the other) or ``ray`` (each job, or
            each interleaved point, as a Ray task: :mod:`dlcbench.orchestrate.ray_launcher`). Either way this
            process alone writes the database, and the stored rows are the same.
        mlflow_uri: Also mirror each stored row to MLflow at this tracking URI (or file-store path):
            :mod:`dlcbench.results.mlflow_mirror`. The database stays the source of truth.
        ray_address: With ``executor="ray"``: ``None`` starts a private local instance on 127.0.0.1; ``auto``
            or ``ray://HOST:PORT`` joins a cluster.

    Validation happens here, for the whole matrix at once: repeated models, backends and batches are
    dropped (listed in ``repeated``); model paths are made absolute against the working directory. ``threads``
    becomes a list.

    Raises:
        BadInputError: an unknown backend, model, precision, target or preset; a missing model file; a
            precision or target no backend of the matrix can compile; a non-positive batch, thread count or
            timeout.
    """

    name: str
    models: list[str]
    backends: list[str]
    batches: list[int] = field(default_factory=lambda: [1])
    precision: str | list[str] = "fp32"
    threads: int | list[int] = 1
    preset: str = "default"
    target: str = "cpu"
    db: Path = DEFAULT_DB
    timeout_s: float = 1800.0
    force: bool = False
    timing: TimingConfig = field(default_factory=TimingConfig)
    out_root: Path = Path("out") / "experiments"
    retry_failed: bool = False
    db_wait: float | None = None
    region: str = "resident"
    interleave: int = 1
    input_shapes: dict[str, list[int]] | list[str] = field(default_factory=dict)
    input_ranges: dict[str, list[int]] | list[str] = field(default_factory=dict)
    inputs_file: str | None = None
    accuracy: bool = False
    executor: str = "local"
    ray_address: str | None = None
    mlflow_uri: str | None = None

    def __post_init__(self):
        from dlcbench.compilers.base import PRECISIONS, TARGETS
        from dlcbench.compilers.registry import get_adapter_class
        from dlcbench.models.zoo import PRESETS, get_model

        self.models, self.backends = split_list(self.models), split_list(self.backends)
        try:
            self.batches = [int(b) for b in split_list(self.batches)]
        except ValueError:
            raise BadInputError(f"batches must be integers, got {self.batches}") from None
        threads = split_list(self.threads) if isinstance(self.threads, (str, list, tuple)) else [self.threads]
        try:
            self.threads = [int(t) if isinstance(t, str) else t for t in threads]
        except ValueError:
            raise BadInputError(f"threads must be integers, got {self.threads}") from None
        if not self.name or not self.models or not self.backends or not self.batches or not self.threads:
            raise BadInputError("empty matrix: give a --name and at least one model, backend, batch and thread count")
        for batch in self.batches:
            positive_int("batch", batch)
        for count in self.threads:
            positive_int("threads", count)
        positive_seconds("the job timeout", self.timeout_s)
        check_region(self.region)
        from dlcbench.models.inputs import parse_input_ranges, parse_input_shapes

        self.input_shapes = {k: list(v) for k, v in parse_input_shapes(self.input_shapes).items()}
        self.input_ranges = {k: list(v) for k, v in parse_input_ranges(self.input_ranges).items()}
        if self.inputs_file is not None:
            self.inputs_file = os.path.abspath(os.path.expanduser(str(self.inputs_file)))
            if not os.path.isfile(self.inputs_file):
                raise BadInputError(f"--inputs: file not found: {self.inputs_file}")
        if isinstance(self.interleave, bool) or not isinstance(self.interleave, int) or self.interleave < 1:
            raise BadInputError(f"--interleave takes a number of rounds >= 1 (1: no interleaving), got {self.interleave}")
        if self.executor not in EXECUTORS:
            raise BadInputError(f"unknown executor {self.executor!r}; valid: {', '.join(EXECUTORS)}")
        if self.ray_address is not None and self.executor != "ray":
            raise BadInputError("--ray-address goes with --executor ray")
        if self.executor == "ray":
            from dlcbench.orchestrate.ray_launcher import RayConfig

            self.ray_address = RayConfig(self.ray_address).address  # validated here, with the rest
        if self.db_wait is not None:
            positive_seconds("the database wait", self.db_wait, allow_zero=True)
        self.precision = split_list(self.precision) if isinstance(self.precision, (str, list, tuple)) else []
        if not self.precision:
            raise BadInputError(f"give at least one precision; valid: {', '.join(PRECISIONS)}")
        for precision in self.precision:
            if precision not in PRECISIONS:
                raise BadInputError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise BadInputError(f"unknown target {self.target!r}; valid: {', '.join(TARGETS)}")
        if self.preset not in PRESETS:
            raise BadInputError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        classes = {}
        for backend in self.backends:  # unknown: one line listing the valid names
            try:
                classes[backend] = get_adapter_class(backend)
            except BackendUnavailableError:  # a plugin that fails to import: its jobs record `unavailable`
                continue
        for what, value in [*(("precision", p) for p in self.precision), ("target", self.target)]:
            if classes and not any(value in getattr(cls, what + "s") for cls in classes.values()):
                can = "; ".join(f"{b}: {', '.join(getattr(cls, what + 's'))}" for b, cls in classes.items())
                raise BadInputError(f"no backend of the matrix has {what} {value} ({can})")
        models = []
        for model in self.models:
            if names_a_file(model):
                path = Path(os.path.abspath(Path(model).expanduser()))  # the caller's directory, not the worker's
                if not path.exists():
                    raise BadInputError(f"model file not found: {model} (looked for {path})")
                models.append(str(path))
            else:
                get_model(model).resolve_params(self.preset)
                models.append(model)
        self.repeated: list[str] = []
        self.models = _unique(models, "model", self.repeated)
        stems: dict[str, str] = {}
        for model in self.models:  # artifacts and report labels are named by the model's stem
            other = stems.setdefault(Path(model).stem, model)
            if other != model:
                raise BadInputError(f"two models of the matrix are both named {Path(model).stem!r} ({other}, {model}): "
                                    "rename one, their artifacts and report rows would be confused")
        self.backends = _unique(self.backends, "backend", self.repeated)
        self.batches = _unique(self.batches, "batch", self.repeated)
        self.threads = _unique(self.threads, "thread count", self.repeated)
        self.precision = _unique(self.precision, "precision", self.repeated)
        self._precisions_of = {b: getattr(cls, "precisions", ()) for b, cls in classes.items()}
        self.db, self.out_root = Path(self.db), Path(os.path.abspath(self.out_root))

    def jobs(self) -> list[JobConfig]:
        """The matrix as job configs: models outermost, then thread counts, batches, precisions, backends (the
        backends of one point run one after another). With several precisions, a backend joins only those it has."""
        sweep, several = len(self.threads) > 1, len(self.precision) > 1
        return [
            JobConfig(backend=b, model=m, preset=self.preset, target=self.target, precision=p,
                      batch=n, threads=t, timing=self.timing, region=self.region,
                      input_shapes={k: [n, *v[1:]] for k, v in self.input_shapes.items()},  # each job's own batch
                      input_ranges=self.input_ranges, inputs_file=self.inputs_file, accuracy=self.accuracy,
                      out_dir=self.out_root / self.name / (f"{Path(m).stem}-{b}-b{n}{f'-t{t}' if sweep else ''}"
                                                           f"{f'-{p}' if several else ''}"))
            for m in self.models for t in self.threads for n in self.batches for p in self.precision
            for b in self.backends if not several or p in self._precisions_of.get(b, (p,))
        ]


#: The JobConfig fields every job key has hashed from the start (the thread count among them).
_KEY_FIELDS = ("backend", "model", "preset", "params", "target", "precision", "batch", "threads", "backend_options",
               "tolerances", "seed", "opset", "compile_only")
#: JobConfig fields that never make a job different (where it writes, how long it times, cache refresh).
_NOT_KEY_FIELDS = ("out_dir", "timing", "force_export")


def job_key(job: JobConfig) -> str:
    """Identity of a job inside an experiment (what a rerun skips).

    The fields of :data:`_KEY_FIELDS`; a JobConfig field added since joins the key only when it differs from its
    default, so adding a field leaves the jobs already in a database recognised.
    """
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(JobConfig) if f.name not in _KEY_FIELDS and f.name not in _NOT_KEY_FIELDS}
    ident = {k: v for k, v in asdict(job).items()
             if k in _KEY_FIELDS or (k in defaults and v != _plain(defaults[k]))}
    if job.inputs_file and os.path.isfile(job.inputs_file):  # new data at the same path is a new job
        from dlcbench.files import sha256_file

        ident["inputs_file"] = [job.inputs_file, sha256_file(Path(job.inputs_file))]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _plain(value: Any) -> Any:
    """A default as ``asdict`` renders it (a dataclass default becomes a dict)."""
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def run_experiment(config: ExperimentConfig, progress: Callable[[str], None] | None = None,
                   environment: dict[str, Any] | None = None) -> dict[str, int]:
    """Runs every job not yet recorded, each isolated; stores each row as soon as it exists.

    Each job is claimed in the database first, so a second run of the same experiment skips the jobs
    this one is running (and the reverse). A finished job's row that cannot be written because another
    process keeps the database locked goes to the store's journal (``NAME.pending/``), which the next run
    imports; it is never dropped. ``environment`` replaces the environment record collected here (the local
    executor); with the Ray executor each row has the record of the node that ran it instead.

    Returns:
        Counts: ``total`` (distinct jobs), ``skipped`` (already recorded), ``held`` (another run has them),
        ``ok``, ``failed`` (run now; journaled ones included), ``journaled`` (waiting in the journal),
        ``repeated`` (duplicate matrix entries dropped).
    """
    from dlcbench.results.env import environment as collect_environment

    say = progress or (lambda line: print(line, file=sys.stderr))
    for entry in config.repeated:
        say(f"{config.name}: ignoring repeated {entry}")
    skip_statuses = () if config.force else ("ok",) if config.retry_failed else ("ok", "failed")
    exp_config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    mirror = None
    if config.mlflow_uri:  # before any job runs: a bad URI or a missing MLflow is one line, not a lost run
        from dlcbench.results.mlflow_mirror import MlflowMirror

        mirror = MlflowMirror(config.mlflow_uri, config.name, say=say)
    with ResultsStore(config.db, timeout=config.db_wait, say=say) as store:
        store.ensure_experiment(config.name, exp_config)
        jobs = config.jobs()
        done = store.done_keys(config.name, skip_statuses)
        todo = [j for j in jobs if job_key(j) not in done]
        counts = {"total": len(jobs), "skipped": len(jobs) - len(todo), "held": 0, "ok": 0, "failed": 0,
                  "journaled": 0, "repeated": len(config.repeated)}
        if not todo:
            hint = "--retry-failed reruns failed ones, --force all" if not config.retry_failed else "--force reruns all"
            say(f"{config.name}: all {len(jobs)} jobs already recorded ({hint})")
            return counts
        try:
            groups: dict[tuple, list[JobConfig]] = {}
            for position, job in enumerate(todo):  # interleaved: the backends of a point (else one job) together
                point = (job.model, job.threads, job.batch, job.precision) if config.interleave > 1 else (position,)
                groups.setdefault(point, []).append(job)
            if config.executor == "ray":
                _run_on_ray(config, store, groups, counts, skip_statuses, exp_config, say, len(todo), mirror)
                return counts
            record = environment or collect_environment(max(config.threads))  # the roofline's peak: all threads
            env_id = store.add_environment(record)
            index = 0
            for group in groups.values():
                claimed = []
                for job in group:
                    index += 1
                    if _claim(store, config, job, skip_statuses, counts, say):
                        claimed.append((index, job))
                if not claimed:
                    continue
                if config.interleave > 1:
                    first = claimed[0][1]
                    bar = "#" * (20 * (claimed[0][0] - 1) // len(todo))
                    say(f"[{bar:<20}] {claimed[0][0]}-{claimed[-1][0]}/{len(todo)} {_label(first, config, point=True)}: "
                        f"{', '.join(j.backend for _, j in claimed)}, {config.interleave} interleaved rounds ...")
                    start = time.perf_counter()
                    rows = run_interleaved([j for _, j in claimed], config.interleave, config.timeout_s, progress=say)
                    for (_, job), row in zip(claimed, rows):
                        _record(store, config, job, row, counts, record, exp_config, env_id, say, start, mirror)
                    continue
                for position, job in claimed:
                    bar = "#" * (20 * (position - 1) // len(todo))
                    say(f"[{bar:<20}] {position}/{len(todo)} {_label(job, config)} ...")
                    start = time.perf_counter()
                    row = run_isolated(job, config.timeout_s)
                    _record(store, config, job, row, counts, record, exp_config, env_id, say, start, mirror)
        finally:
            store.release_claims()
        return counts


def _claim(store: ResultsStore, config: ExperimentConfig, job: JobConfig, skip_statuses, counts: dict[str, int],
           say) -> bool:
    """Claims ``job`` in the database; False (and counted) when another run holds it or it is recorded by now."""
    refusal = store.claim(config.name, job_key(job), skip_statuses)
    if refusal:
        counts["held" if refusal.kind == "held" else "skipped"] += 1
        say(f"    {_label(job, config)}: skipped, {refusal.reason}")
    return not refusal


def _run_on_ray(config: ExperimentConfig, store: ResultsStore, groups: dict[tuple, list[JobConfig]],
                counts: dict[str, int], skip_statuses, exp_config: dict[str, Any], say, total: int, mirror) -> None:
    """The Ray executor: claims every unit, submits each as a Ray task, records rows as units finish."""
    from dlcbench.measure.trackers import failure_row
    from dlcbench.orchestrate.ray_launcher import RayConfig, RayLauncher

    with RayLauncher(RayConfig(config.ray_address, min_cpus=max(config.threads)), say=say) as ray_launcher:
        units = [claimed for group in groups.values()  # claimed once Ray is up: a Ray that fails claims nothing
                 if (claimed := [job for job in group if _claim(store, config, job, skip_statuses, counts, say)])]
        start = time.perf_counter()
        for number, jobs in enumerate(units):
            ray_launcher.submit(number, jobs, config.interleave, config.timeout_s, peak_threads=max(config.threads))
        say(f"ray: {sum(map(len, units))} of {total} jobs submitted as {len(units)} tasks")
        env_ids: dict[str, int] = {}
        for number, payload, error in ray_launcher.completed():
            jobs = units[number]
            if payload is None:  # the task died twice (its worker or node) or could not run: no node record
                rows, record, env_id = [failure_row("crash", error) for _ in jobs], {}, None
            else:
                rows, record = payload["rows"], payload["environment"]
                digest = json.dumps(record, sort_keys=True, default=str)
                if digest not in env_ids:
                    env_ids[digest] = store.add_environment(record)
                env_id = env_ids[digest]
            for job, row in zip(jobs, rows):
                _record(store, config, job, row, counts, record, exp_config, env_id, say, start, mirror)


def _label(job: JobConfig, config: ExperimentConfig, point: bool = False) -> str:
    """``model/backend/bBATCH[/tTHREADS]`` (without the backend for a whole point)."""
    label = f"{Path(job.model).stem}{'' if point else '/' + job.backend}/b{job.batch}"
    label += f"/{job.precision}" if len(config.precision) > 1 else ""
    return label + (f"/t{job.threads}" if len(config.threads) > 1 else "")


def _record(store: ResultsStore, config: ExperimentConfig, job: JobConfig, row: dict[str, Any], counts: dict[str, int],
            record: dict[str, Any], exp_config: dict[str, Any], env_id: int, say, start: float, mirror=None) -> None:
    """Stores a finished job's row (or journals it when the database stays locked), mirrors it to MLflow when
    asked, and says how it went."""
    label = _label(job, config)
    row.update(model=job.model, backend=job.backend, target=job.target, precision=job.precision,
               batch=job.batch, threads=job.threads,
               config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(job).items()})
    counts["ok" if row["status"] == "ok" else "failed"] += 1
    key = job_key(job)
    try:
        store.add_result(config.name, key, row, env_id)
    except BadInputError as err:  # locked (or unwritable): keep the row beside the database
        path = store.journal_result(config.name, key, row, record, exp_config)
        counts["journaled"] += 1
        say(f"warning: {err}; the result of {label} is kept in {path} and the next run imports it")
    if mirror is not None:
        mirror.log(label, key, row["config"], row, record)
    latencies = [m for m in row.get("metrics", []) if m["name"] in REGION_METRICS.values()]
    outcome = ", ".join(f"{m['value']:.4f} ms {m['detail'].get('region', '')}".strip() for m in latencies)
    if row["status"] != "ok":
        outcome = f"{row['category']}: {(row.get('message') or '')[:160]} {outcome}".strip()
    say(f"    {label}: {outcome} ({time.perf_counter() - start:.1f} s)")


def summary_line(config: ExperimentConfig, counts: dict[str, int]) -> str:
    """One line saying what a run did (what ``compare`` prints)."""
    extra = [f"{counts['held']} held by another run" if counts.get("held") else "",
             f"{counts['journaled']} waiting in {pending_dir_of(config.db)}" if counts.get("journaled") else "",
             f"{counts['repeated']} repeated matrix entries ignored" if counts.get("repeated") else ""]
    extra_text = "".join(f", {e}" for e in extra if e)
    return (f"{config.name}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} already recorded"
            f"{extra_text} (of {counts['total']}); database {config.db}")
