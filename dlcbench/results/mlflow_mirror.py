"""A mirror of an experiment's rows in MLflow, where many teams already look (``compare --mlflow URI``).

One MLflow run per job, under an MLflow experiment named like the dlcbench experiment: the job's configuration
as params, its statistics and check figures as metrics, status and key as tags, and the environment record and
the artifact manifest as JSON artifacts. The SQLite store stays the source of truth: a row is mirrored after it
is stored, and a mirror that fails says so in one line and never loses or blocks the row.

Needs ``mlflow-skinny`` (``pip install -e '.[mlflow]'``). A local file store (``file:///PATH`` or a plain path)
needs ``MLFLOW_ALLOW_FILE_STORE=true`` in recent MLflow; dlcbench sets it for file URIs it is given.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from dlcbench.errors import BadInputError, one_line

INSTALL_HINT = "pip install -e '.[mlflow]' (mlflow-skinny)"
#: MLflow's limit on a param value's length.
PARAM_CHARS = 500


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def mlflow_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in keys (it takes letters, digits, ``_ - . / `` and space)
    replaced by ``_``, cut to its length limit."""
    return re.sub(r"[^\w\-./ ]", "_", name)[:250]


def job_params(config: dict[str, Any]) -> dict[str, str]:
    """A job's configuration as MLflow params (nested keys dotted; values as text, cut to MLflow's limit)."""
    flat: dict[str, Any] = {}
    _flatten("", config, flat)
    return {mlflow_key(key): str(value)[:PARAM_CHARS] for key, value in flat.items() if value not in (None, "", [], {})}


def job_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A stored row's figures as MLflow metrics: each tracker's value, each latency's statistics, the check's figures."""
    metrics: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        metrics[mlflow_key(name)] = float(value)

    for metric in row.get("metrics") or []:
        put(metric["name"], metric.get("value"))
        for key, value in (metric.get("detail") or {}).items():  # a latency's statistics: median_ms, p90_ms, ...
            put(f"{metric['name']}.{key}", value)
        ci = (metric.get("detail") or {}).get("median_ci_ms")
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            put(f"{metric['name']}.median_ci_lo_ms", ci[0])
            put(f"{metric['name']}.median_ci_hi_ms", ci[1])
    check = row.get("check_metrics") or {}
    if "passed" in check:
        put("check.passed", float(bool(check["passed"])))
    for output in check.get("outputs") or []:
        for key, value in (output.get("metrics") or {}).items():
            put(f"check.{output.get('name')}.{key}", value)
    return metrics


class MlflowMirror:
    """Logs finished jobs to an MLflow tracking server or file store."""

    def __init__(self, uri: str, experiment: str, say: Callable[[str], None] | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise BadInputError(f"--mlflow needs MLflow, which is not installed: {INSTALL_HINT}") from None
        self.say = say or (lambda line: None)
        self.uri = _tracking_uri(uri)
        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as err:
            raise BadInputError(f"--mlflow {uri}: {one_line(err, 300)}") from None
        self.failures = 0

    def log(self, name: str, key: str, config: dict[str, Any], row: dict[str, Any],
            environment: dict[str, Any] | None) -> str | None:
        """Mirrors one job (``name``: its label; ``key``: its job key); returns the MLflow run id, None on failure."""
        from mlflow.entities import Metric, Param, RunTag

        run_id = None
        try:
            tags = {"dlcbench.job_key": key, "dlcbench.status": row.get("status", ""),
                    "dlcbench.category": row.get("category") or "", "mlflow.runName": name}
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            run_id = run.info.run_id
            now = int(__import__("time").time() * 1000)
            params = [Param(k, v) for k, v in job_params(config).items()]
            metrics = [Metric(k, v, now, 0) for k, v in job_metrics(row).items()]
            for start in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limits
                self.client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100],
                                      tags=[RunTag("dlcbench.message", (row.get("message") or "")[:5000])]
                                      if start == 0 else [])
            if environment:
                self.client.log_dict(run_id, environment, "environment.json")
            if row.get("manifest"):
                self.client.log_dict(run_id, row["manifest"], "manifest.json")
            self.client.set_terminated(run_id, status="FINISHED" if row.get("status") == "ok" else "FAILED")
            return run_id
        except Exception as err:  # a mirror: the row is already in the database
            self.failures += 1
            if run_id is not None:
                try:  # not left RUNNING
                    self.client.set_terminated(run_id, status="FAILED")
                except Exception:
                    pass
            self.say(f"warning: MLflow mirror of {name} failed (the result is stored): {one_line(err, 200)}")
            return None


def _tracking_uri(uri: str) -> str:
    """A plain path becomes a ``file://`` URI (absolute); anything with a scheme is kept."""
    if "://" in uri or uri.startswith("file:"):
        return uri
    return Path(os.path.abspath(os.path.expanduser(uri))).as_uri()
