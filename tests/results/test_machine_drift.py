"""benchmarks/machine_drift.py and measure_speed_drift on this machine (real matmuls in a fresh process)."""

from __future__ import annotations

import json

from dlcbench.errors import ExitCode
from dlcbench.results.env import measure_speed_drift
from dlcbench_test_support import assert_one_line_error, run_script


def test_drift_windows_are_measured_in_order():
    drift = measure_speed_drift(seconds=1.0, window_s=0.1, n=64)
    windows = drift["windows"]
    assert len(windows) >= 5 and all(w > 0 for w in windows)
    assert drift["min"] == min(windows) and drift["max"] == max(windows) and drift["swing"] >= 1
    assert -1 <= drift["lag1_autocorrelation"] <= 1


def test_script_writes_table_and_json(tmp_path):
    out = tmp_path / "drift.md"
    run = run_script("benchmarks/machine_drift.py", "--seconds", "1", "--window", "0.2", "--out", str(out), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["cpu"]["model"] and len(record["windows"]) >= 3
    assert f"| {record['min']:.1f} |" in out.read_text()


def test_bad_window_is_one_line(tmp_path):
    run = run_script("benchmarks/machine_drift.py", "--seconds", "1", "--window", "2", "--out", str(tmp_path / "x.md"),
                     timeout=120)
    assert_one_line_error(run, ExitCode.BAD_INPUT, "--window")
