"""``compile --region``: which timed region a figure is, recorded in the result; both regions in one job."""

from __future__ import annotations

import json

from dlcbench.errors import ExitCode
from dlcbench.measure.trackers import collect_metrics
from dlcbench_region_adapters import REGISTRATION
from dlcbench_test_support import assert_one_line_error, run_script

FAST = ["--model", "mlp", "--preset", "tiny", "--batch", "2", "--threads", "1", "--warmup", "1", "--min-iters", "5",
        "--min-seconds", "0", "--ci-target", "0"]


def test_region_both_records_both_figures_in_the_json(tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "onnxruntime", *FAST, "--region", "both", "--json",
                      "--out", str(tmp_path / "a"))
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    resident, end_to_end = result["timing"], result["timing_end_to_end"]
    assert resident["region"] == "resident" and end_to_end["region"] == "end_to_end"
    for timing in (resident, end_to_end):
        assert timing["stats"]["count"] == len(timing["samples_s"]) >= 5 and timing["stats"]["median_ms"] > 0
    assert result["config"]["region"] == "both"
    assert json.loads((tmp_path / "a" / "result.json").read_text())["timing_end_to_end"]["region"] == "end_to_end"
    metrics = {m.name: m for m in collect_metrics(result)}
    assert metrics["latency"].detail["region"] == "resident"
    assert metrics["latency_end_to_end"].detail["region"] == "end_to_end"
    assert metrics["latency_end_to_end"].value == end_to_end["stats"]["median_ms"]


def test_default_is_resident_and_the_summary_says_so(tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "onnxruntime", *FAST, "--out", str(tmp_path / "a"))
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert "region    resident (" in proc.stdout and "e2e " not in proc.stdout
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["timing"]["region"] == "resident" and result["timing_end_to_end"] is None
    assert [m.name for m in collect_metrics(result) if m.name.startswith("latency") and m.name != "latency_native"] \
        == ["latency"]


def test_end_to_end_only_is_latency_end_to_end(tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "onnxruntime", *FAST, "--region", "end_to_end", "--json",
                      "--out", str(tmp_path / "a"))
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["timing"]["region"] == "end_to_end" and result["timing_end_to_end"] is None
    names = {m.name for m in collect_metrics(result)}
    assert "latency_end_to_end" in names and "latency" not in names


def test_a_session_without_a_resident_region_is_timed_end_to_end_and_says_so(tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "e2eonly", *FAST, "--region", "both", "--json",
                      "--out", str(tmp_path / "a"), env={"DLCBENCH_BACKENDS": REGISTRATION})
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["timing"]["region"] == "end_to_end" and result["timing_end_to_end"] is None
    assert "EndToEndOnlySession has no resident region" in result["timing"]["region_note"]
    assert {m.name for m in collect_metrics(result)} & {"latency", "latency_end_to_end"} == {"latency_end_to_end"}


def test_unknown_region_is_one_line_error(tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "onnxruntime", *FAST, "--region", "device",
                      "--out", str(tmp_path / "a"))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "unknown region 'device'", "valid: resident, end_to_end, both")
    assert not (tmp_path / "a").exists()
    proc = run_script("scripts/compare.py", "--name", "x", "--models", "mlp", "--backends", "onnxruntime",
                      "--preset", "tiny", "--region", "all", "--db", str(tmp_path / "r.sqlite"))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "unknown region 'all'", "valid: resident, end_to_end, both")
    assert not (tmp_path / "r.sqlite").exists()
