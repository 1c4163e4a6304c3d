"""Reports never compare figures of different timed regions: each region has its own speedups and plots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dlcbench.errors import BadInputError
from dlcbench.results.report import plot_latency, region_rows, rows_region, speedup_comparisons
from dlcbench.results.store import ResultsStore
from dlcbench_region_adapters import REGISTRATION
from dlcbench_test_support import ROOT, run_script


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """Experiment ``e``: onnxruntime timed in both regions, ``e2eonly`` (no resident region) end to end only."""
    path = tmp_path_factory.mktemp("results") / "r.sqlite"
    proc = run_script("scripts/compare.py", "--name", "e", "--models", "mlp", "--preset", "tiny", "--backends",
                      "onnxruntime,e2eonly", "--region", "both", "--db", str(path), "--min-seconds", "0",
                      "--min-iters", "5", "--ci-target", "0", "--out", str(path.parent / "out"),
                      env={"DLCBENCH_BACKENDS": REGISTRATION}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def rows(db: Path) -> list[dict]:
    with ResultsStore(db, readonly=True) as store:
        return store.results("e")


def test_each_region_is_its_own_metric(db):
    by_backend = {r["backend"]: r["metrics"] for r in rows(db)}
    ort, e2e = by_backend["onnxruntime"], by_backend["e2eonly"]
    assert ort["latency"]["detail"]["region"] == "resident"
    assert ort["latency_end_to_end"]["detail"]["region"] == "end_to_end"
    assert "latency" not in e2e and e2e["latency_end_to_end"]["detail"]["region"] == "end_to_end"
    assert "no resident region" in e2e["latency_end_to_end"]["detail"]["region_note"]


def test_a_resident_and_an_end_to_end_row_are_never_in_one_speedup_grid(db):
    stored = rows(db)
    resident, end_to_end = region_rows(stored, "resident"), region_rows(stored, "end_to_end")
    assert [r["backend"] for r in resident] == ["onnxruntime"]
    assert sorted(r["backend"] for r in end_to_end) == ["e2eonly", "onnxruntime"]
    assert speedup_comparisons(resident, "onnxruntime") == []  # e2eonly has no resident figure to compare
    [comparison] = speedup_comparisons(end_to_end, "onnxruntime")
    medians = {r["backend"]: r["metrics"]["latency_end_to_end"]["value"] for r in stored}
    assert comparison["backend"] == "e2eonly"
    assert comparison["speedup"] == pytest.approx(medians["onnxruntime"] / medians["e2eonly"])

    # A resident row beside an end-to-end row relabelled as a plain latency (as if recorded before regions):
    # every comparison and plot refuses the mix instead of putting both in one grid.
    legacy = {**end_to_end[0], "metrics": {"latency": {**end_to_end[0]["metrics"]["latency"], "detail": {}}}}
    assert rows_region([legacy]) == "unrecorded"
    for call in (lambda: speedup_comparisons([*resident, legacy], "onnxruntime"),
                 lambda: plot_latency([*resident, legacy], Path("never-written.png"))):
        with pytest.raises(BadInputError, match="different timed regions"):
            call()


@pytest.mark.slow
def test_report_has_one_section_per_region(db, tmp_path):
    out = tmp_path / "rep"
    proc = run_script("scripts/report.py", "e", "--db", str(db), "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "## Speedups relative to onnxruntime, end-to-end region" in text
    assert "Speedups relative to onnxruntime, resident" not in text
    speedups = text.split("## Speedups relative to onnxruntime, end-to-end region")[1].split("##")[0]
    assert "| e2eonly |" in speedups
    assert "### resident region" in text and "### end-to-end region" in text
    for name in ("latency.png", "speedup.png", "latency_end_to_end.png", "speedup_end_to_end.png",
                 "scaling_end_to_end.png"):
        assert (out / name).stat().st_size > 1000, name


@pytest.mark.slow
def test_results_recorded_before_regions_are_reported_on_their_own(tmp_path):
    db = tmp_path / "old.sqlite"
    shutil.copyfile(ROOT / "tests" / "support" / "results-schema1.sqlite", db)
    with ResultsStore(db) as store:  # upgrades the copy's schema
        experiment = store.experiments()[0]
        old = store.results(experiment)
    assert region_rows(old, "unrecorded") and not region_rows(old, "resident")
    proc = run_script("scripts/report.py", experiment, "--db", str(db), "--out", str(tmp_path / "rep"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "### region not recorded" in (tmp_path / "rep" / "report.md").read_text()
