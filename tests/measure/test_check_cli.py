"""The output check end to end: ``scripts/compile.py`` on tiny ONNX graphs (``onnx.helper``) with ONNX Runtime.

A reference holding NaN (Sqrt of a negative input) is an ``invalid_reference`` failure, exit 1; a backend
returning NaN where the reference is finite fails naming the output and indices; an output that ignores its
input is flagged TRIVIAL CHECK (not a failure); one that depends on it is not.
"""

from __future__ import annotations

import json

from dlcbench.errors import ExitCode
from dlcbench.measure.trackers import job_row
from dlcbench_faulty_adapters import NAN_REGISTRATION
from dlcbench_onnx_graphs import onnx_graph
from dlcbench_test_support import run_script

FAST = ["--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0"]


def compile_graph(tmp_path, graph: str, backend: str = "onnxruntime", env: dict | None = None):
    """Runs compile.py on graph ``graph``; returns (process, result.json)."""
    out = tmp_path / f"{graph}-{backend}"
    proc = run_script("scripts/compile.py", "--backend", backend, "--model", str(onnx_graph(tmp_path / f"{graph}.onnx", graph)),
                      "--out", str(out), *FAST, timeout=300, env=env)
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr, proc.stderr
    return proc, json.loads((out / "result.json").read_text())


def test_a_reference_with_nan_is_an_invalid_reference_failure_with_exit_1(tmp_path):
    proc, result = compile_graph(tmp_path, "sqrt")
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stderr
    assert "check     INVALID REFERENCE" in proc.stdout
    assert "the reference is not finite" in proc.stdout and "cannot tell right from wrong" in proc.stdout
    assert not result["passed"] and result["check"]["category"] == "invalid_reference"
    assert job_row(result)["category"] == "invalid_reference"


def test_a_discriminating_check_passes_without_a_flag(tmp_path):
    proc, result = compile_graph(tmp_path, "scaled")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "check     PASS" in proc.stdout and "TRIVIAL" not in proc.stdout and result["trivial_check"] is False
    assert result["check"]["outputs"][0]["metrics"]["distinct_inputs"] == 3  # batch 1 and two extra check batches


def test_a_nan_where_the_reference_is_finite_fails_naming_output_and_indices(tmp_path):
    proc, result = compile_graph(tmp_path, "scaled", "nan", env={"DLCBENCH_BACKENDS": NAN_REGISTRATION})
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stderr
    # the first element of each of the three batches' outputs: rows 0, 1 and 2
    assert "output y: 3 NaN/Inf values where the reference is finite, first at [0, 0], [1, 0], [2, 0]" in proc.stdout
    assert result["check"]["category"] == "accuracy_fail" and job_row(result)["category"] == "accuracy_fail"


def test_an_output_that_ignores_its_input_is_flagged_trivial_and_still_passes(tmp_path):
    proc, result = compile_graph(tmp_path, "const_and_scaled")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "TRIVIAL CHECK (output const: the reference is the same for 3 different inputs)" in proc.stdout
    assert result["passed"] and result["trivial_check"] and result["check"]["trivial_check"]
    assert [o["trivial"] != "" for o in result["check"]["outputs"]] == [True, False]
