"""Run one job in its own process with a timeout; every failure becomes a categorised record.

Categories: ``unavailable``, ``export_error``, ``compile_error``, ``unsupported_op``,
``runtime_error``, ``crash``, ``timeout``, ``accuracy_fail`` (and ``bad_input``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dlcbench.errors import one_line
from dlcbench.measure.job import JobConfig, JobResult
from dlcbench.measure.timing import TimingConfig


def job_to_dict(job: JobConfig) -> dict[str, Any]:
    """A JSON-friendly form of a job config."""
    data = asdict(job)
    data["out_dir"] = str(job.out_dir)
    return data


def job_from_dict(data: dict[str, Any]) -> JobConfig:
    """Rebuilds a :class:`JobConfig` from :func:`job_to_dict`'s output."""
    data = dict(data)
    data["timing"] = TimingConfig(**data["timing"])
    return JobConfig(**data)


def result_row(result: JobResult) -> dict[str, Any]:
    """Flattens a job result into a results-store row."""
    stats = result.timing["stats"]
    native = result.native_timing
    row = {
        "status": "ok" if result.passed else "failed",
        "category": None if result.passed else "accuracy_fail",
        "message": result.failure_message or None,
        "median_ms": stats["median_ms"], "p90_ms": stats["p90_ms"], "mean_ms": stats["mean_ms"],
        "std_ms": stats["std_ms"], "cv": stats["cv"], "unstable": stats["unstable"],
        "throughput": stats["throughput_per_s"],
        "native_median_ms": native["stats"]["median_ms"] if native else None,
        "compile_seconds": result.compile_seconds,
        "tuning_seconds": result.manifest.get("extra", {}).get("tuning_seconds"),
        "artifact_bytes": result.artifact_bytes, "peak_rss_mb": result.peak_rss_mb,
        "flops": result.model["summary"].get("flops"),
        "stats": {**stats, "parameters": result.model["summary"].get("parameters")}, "samples": result.timing["samples_s"], "native": native,
        "check_metrics": result.check, "manifest": result.manifest,
    }
    return row


def failure_row(category: str, message: str) -> dict[str, Any]:
    return {"status": "failed", "category": category, "message": one_line(message, 1000)}


def run_isolated(job: JobConfig, timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``job`` in a fresh Python process; returns a results-store row (never raises for job failures)."""
    with tempfile.TemporaryDirectory(prefix="dlcbench-job-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job_to_dict(job)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "dlcbench.orchestrate.worker", str(job_file), str(out_file)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return failure_row("timeout", f"no result after {timeout_s:g} s; killed")
        if out_file.is_file():
            return json.loads(out_file.read_text())
        tail = one_line(output[-600:], 600) if output else ""
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            oom = " (possibly out of memory)" if sig == "SIGKILL" else ""
            return failure_row("crash", f"worker died with {sig}{oom}. {tail}".strip())
        return failure_row("crash", f"worker exited with code {proc.returncode} and no result. {tail}".strip())
