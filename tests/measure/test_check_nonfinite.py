"""Output checks that catch numerical failure: NaN/Inf judged by position, non-finite references, trivial checks.

References come from tiny ONNX graphs run on ONNX Runtime (Log of a negative constant, a division by zero,
Sqrt of a negative input); the outputs under test are those references or arrays made from them.
"""

from __future__ import annotations

import numpy as np
import pytest

from dlcbench.measure.check import ACCURACY_FAIL, INVALID_REFERENCE, check_outputs, join_batches
from dlcbench.measure.trackers import job_row
from dlcbench.models.export import run_onnxruntime
from dlcbench_onnx_graphs import onnx_graph

X = {"x": np.array([[1.0, -2.0, 3.0, -4.0], [0.5, 2.0, -1.5, 4.0]], np.float32)}


@pytest.fixture
def graph_output(tmp_path):
    """``name -> y`` of the graph ``name`` on :data:`X`."""
    return lambda name: run_onnxruntime(onnx_graph(tmp_path / f"{name}.onnx", name), X)["y"]


def test_nan_where_the_reference_is_finite_fails_naming_output_count_and_indices(graph_output):
    reference = {"y": graph_output("scaled")}
    got = {"y": reference["y"].copy()}
    got["y"][0, 1] = got["y"][1, 3] = np.nan
    report = check_outputs(got, reference)
    assert not report.passed and report.category == ACCURACY_FAIL
    message = report.failure_message()
    assert "output y: 2 NaN/Inf values where the reference is finite, first at [0, 1], [1, 3]" in message
    # an unbounded error, not the 0 of the finite positions; and no tolerance is offered as a cure
    assert report.max_abs_error == float("inf") and "would pass with n/a" in message
    # every element NaN (Log of a negative constant) fails the same way
    all_nan = check_outputs({"y": graph_output("log_negative")}, reference)
    assert not all_nan.passed and "8 NaN/Inf values where the reference is finite" in all_nan.failure_message()


def test_inf_where_the_reference_is_finite_fails(graph_output):
    report = check_outputs({"y": graph_output("div_zero")}, {"y": graph_output("scaled")})
    assert not report.passed and report.category == ACCURACY_FAIL
    assert "8 NaN/Inf values where the reference is finite, first at [0, 0]" in report.failure_message()


def test_finite_where_the_reference_is_nan_fails(graph_output):
    reference = {"y": graph_output("sqrt")}  # NaN at the negative inputs [0, 1], [0, 3], [1, 2]
    got = {"y": np.nan_to_num(reference["y"], nan=0.0)}
    report = check_outputs(got, reference)
    assert not report.passed
    reasons = report.outputs[0].reasons
    assert "3 finite values where the reference is NaN/Inf, first at [0, 1], [0, 3], [1, 2]" in reasons


def test_inf_of_the_opposite_sign_fails(graph_output):
    reference = {"y": graph_output("div_zero")}
    report = check_outputs({"y": -reference["y"]}, reference)
    assert not report.passed
    assert "8 Inf values of the opposite sign, first at [0, 0], [0, 1], [0, 2]" in report.outputs[0].reasons
    nan_for_inf = check_outputs({"y": np.full_like(reference["y"], np.nan)}, reference)
    assert any(r.startswith("8 NaN where the reference is Inf") for r in nan_for_inf.outputs[0].reasons)


def test_a_non_finite_reference_matched_exactly_is_invalid_reference_not_a_pass(graph_output):
    for name, where in (("sqrt", "3 NaN, 0 Inf, first at [0, 1], [0, 3], [1, 2]"),
                        ("div_zero", "0 NaN, 8 Inf, first at [0, 0], [0, 1], [0, 2]"),
                        ("log_negative", "8 NaN, 0 Inf, first at [0, 0], [0, 1], [0, 2]")):
        reference = {"y": graph_output(name)}
        report = check_outputs({"y": reference["y"].copy()}, reference)
        assert not report.passed and report.category == INVALID_REFERENCE, name
        assert report.outputs[0].reasons == [f"the reference is not finite ({where}): the check cannot tell right from wrong"]
        row = job_row({"passed": report.passed, "check": report.to_dict(), "failure_message": report.failure_message()})
        assert row["status"] == "failed" and row["category"] == INVALID_REFERENCE


def test_an_error_at_finite_positions_of_an_invalid_reference_is_an_accuracy_failure(graph_output):
    reference = {"y": graph_output("sqrt")}
    got = {"y": reference["y"] + 0.5}  # NaN still where NaN, the finite values off
    report = check_outputs(got, reference)
    assert report.category == ACCURACY_FAIL
    assert job_row({"passed": False, "check": report.to_dict()})["category"] == ACCURACY_FAIL


def test_an_output_that_ignores_its_input_is_a_trivial_check_not_a_failure(tmp_path):
    path = onnx_graph(tmp_path / "m.onnx", "const_and_scaled")
    batches = [{"x": np.random.default_rng(seed).standard_normal((1, 4)).astype(np.float32)} for seed in range(3)]
    inputs = join_batches(batches)
    reference = join_batches([run_onnxruntime(path, b) for b in batches])
    report = check_outputs(dict(reference), reference, inputs=inputs)
    assert report.passed and report.category is None and report.trivial_check
    const, scaled = report.outputs
    assert const.trivial == "the reference is the same for 3 different inputs" and const.metrics["ref_constant"]
    assert scaled.trivial == "" and not scaled.metrics["ref_constant"] and scaled.metrics["distinct_inputs"] == 3
    assert "TRIVIAL CHECK" in report.summary() and report.to_dict()["trivial_check"] is True
    # a backend whose output ignores the input is flagged too, and fails where the reference depends on it
    frozen = {"const": reference["const"], "scaled": np.repeat(reference["scaled"][:1], 3, axis=0)}
    flagged = check_outputs(frozen, reference, inputs=inputs)
    assert not flagged.passed and flagged.outputs[1].trivial == "the output is the same for 3 different inputs"


def test_trivial_needs_different_inputs_and_uses_rows_within_one_batch(tmp_path):
    path = onnx_graph(tmp_path / "m.onnx", "const_and_scaled")
    same = {"x": np.ones((3, 4), np.float32)}  # three rows, one input: nothing to judge
    reference = run_onnxruntime(path, same)
    report = check_outputs(dict(reference), reference, inputs=same)
    assert not report.trivial_check and "distinct_inputs" not in report.outputs[0].metrics
    assert not check_outputs(dict(reference), reference).trivial_check  # no inputs given: not judged
    distinct = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}  # one batch of three different rows
    reference = run_onnxruntime(path, distinct)
    report = check_outputs(dict(reference), reference, inputs=distinct)
    assert [o.trivial != "" for o in report.outputs] == [True, False]
