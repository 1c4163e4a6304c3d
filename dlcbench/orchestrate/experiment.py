"""Experiments: a models x backends x batches matrix, run job by job, resumable, stored in SQLite."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from dlcbench.errors import BadInputError
from dlcbench.orchestrate.launcher import run_isolated
from dlcbench.measure.job import JobConfig
from dlcbench.results.store import DEFAULT_DB, ResultsStore
from dlcbench.measure.timing import TimingConfig


def _split(value: str | list) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(i).strip() for i in items if str(i).strip()]


@dataclass
class ExperimentConfig:
    """A comparison matrix.

    Attributes:
        name: Experiment name (rows are keyed by it; a rerun resumes it).
        models: Zoo names or model paths.
        backends: Registered backend names.
        batches: Batch sizes.
        precision: One precision for the whole comparison.
        threads: One thread count, applied to every backend by its own mechanism.
        preset: Zoo preset.
        target: ``cpu`` or ``cuda``.
        db: Results database path.
        timeout_s: Per-job time limit (export + compile + check + timing).
        force: Rerun jobs already recorded.
        timing: Warm-up and measurement rules.
        out_root: Where artifacts go (one directory per job).
    """

    name: str
    models: list[str]
    backends: list[str]
    batches: list[int] = field(default_factory=lambda: [1])
    precision: str = "fp32"
    threads: int = 1
    preset: str = "default"
    target: str = "cpu"
    db: Path = DEFAULT_DB
    timeout_s: float = 1800.0
    force: bool = False
    timing: TimingConfig = field(default_factory=TimingConfig)
    out_root: Path = Path("out") / "experiments"

    def __post_init__(self):
        from dlcbench.compilers.registry import backend_names
        from dlcbench.models.zoo import get_model

        self.models, self.backends = _split(self.models), _split(self.backends)
        try:
            self.batches = [int(b) for b in _split(self.batches)]
        except ValueError:
            raise BadInputError(f"batches must be integers, got {self.batches}") from None
        if not self.name or not self.models or not self.backends or not self.batches:
            raise BadInputError("empty matrix: give a --name and at least one model, backend and batch")
        known = backend_names()
        for backend in self.backends:
            if backend not in known:
                raise BadInputError(f"unknown backend {backend!r}; valid: {', '.join(known)}")
        for model in self.models:
            if not any(model.endswith(s) for s in (".onnx", ".keras")) and not Path(model).is_dir():
                get_model(model)
        if any(b <= 0 for b in self.batches) or self.threads <= 0 or self.timeout_s <= 0:
            raise BadInputError("batches, threads and timeout must be positive")
        self.db, self.out_root = Path(self.db), Path(self.out_root)

    def jobs(self) -> list[JobConfig]:
        """The matrix as job configs, models outermost."""
        return [
            JobConfig(backend=b, model=m, preset=self.preset, target=self.target, precision=self.precision,
                      batch=n, threads=self.threads, timing=self.timing,
                      out_dir=self.out_root / self.name / f"{Path(m).stem}-{b}-b{n}")
            for m in self.models for n in self.batches for b in self.backends
        ]


def job_key(job: JobConfig) -> str:
    """Identity of a job inside an experiment (what a rerun skips)."""
    ident = {k: v for k, v in asdict(job).items() if k not in ("out_dir", "timing")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def run_experiment(config: ExperimentConfig, progress: Callable[[str], None] | None = None,
                   environment: dict[str, Any] | None = None) -> dict[str, int]:
    """Runs every job not yet recorded, each isolated; stores each row as soon as it exists.

    Returns:
        Counts: ``total``, ``skipped`` (already done), ``ok``, ``failed``.
    """
    from dlcbench.results.env import environment as collect_environment

    say = progress or (lambda line: print(line, file=sys.stderr))
    with ResultsStore(config.db) as store:
        store.ensure_experiment(config.name, {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()})
        jobs = config.jobs()
        done = set() if config.force else store.done_keys(config.name)
        todo = [j for j in jobs if job_key(j) not in done]
        counts = {"total": len(jobs), "skipped": len(jobs) - len(todo), "ok": 0, "failed": 0}
        if not todo:
            say(f"{config.name}: all {len(jobs)} jobs already recorded (use --force to rerun)")
            return counts
        env_id = store.add_environment(environment or collect_environment(config.threads))
        for index, job in enumerate(todo, 1):
            label = f"{Path(job.model).stem}/{job.backend}/b{job.batch}"
            bar = "#" * (20 * (index - 1) // len(todo))
            say(f"[{bar:<20}] {index}/{len(todo)} {label} ...")
            start = time.perf_counter()
            row = run_isolated(job, config.timeout_s)
            row.update(model=job.model, backend=job.backend, target=job.target, precision=job.precision,
                       batch=job.batch, threads=job.threads,
                       config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(job).items()})
            store.add_result(config.name, job_key(job), row, env_id)
            counts["ok" if row["status"] == "ok" else "failed"] += 1
            outcome = f"{row['median_ms']:.4f} ms" if row.get("median_ms") is not None else ""
            if row["status"] != "ok":
                outcome = f"{row['category']}: {row.get('message', '')[:160]} {outcome}".strip()
            say(f"    {label}: {outcome} ({time.perf_counter() - start:.1f} s)")
        return counts
