"""Shared fixtures: one export cache per test session; tests/support on the path of every subprocess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlcbench_test_support import ROOT

# Worker processes (experiments, coverage) import the deliberately faulty test adapters from here.
SUPPORT = str(ROOT / "tests" / "support")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SUPPORT, os.environ.get("PYTHONPATH")]))


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
    from dlcbench.models.export import ExportConfig, export_model

    def get(name: str, batch: int = 2, **kwargs):
        return export_model(ExportConfig(name, preset="tiny", batch=batch, **kwargs))

    return get
