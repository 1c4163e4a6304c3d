"""Shared fixtures: one export cache per test session and the small model table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The small model table every test suite draws from: zoo name -> preset.
TINY_MODELS = ["mlp", "cnn", "bert", "gpt"]
HEAVY_TINY_MODELS = ["mobilenetv2", "resnet50"]


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """A fresh export cache for the session, also seen by CLI subprocesses."""
    cache = tmp_path_factory.mktemp("dlcbench-cache")
    old = os.environ.get("DLCBENCH_CACHE")
    os.environ["DLCBENCH_CACHE"] = str(cache)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    yield cache
    if old is None:
        os.environ.pop("DLCBENCH_CACHE", None)
    else:
        os.environ["DLCBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_export():
    """Returns a cached function ``(name, batch=2, **kw) -> ExportedModel`` for tiny zoo models."""
    from models.export import ExportConfig, export_model

    def get(name: str, batch: int = 2, **kwargs):
        return export_model(ExportConfig(name, preset="tiny", batch=batch, **kwargs))

    return get


def run_script(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``python *args`` from the repository root and captures its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """Asserts a CLI failed with ``code`` and a single ``error:`` line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
