"""Output checks: metrics, tolerances by precision, NaN handling and per-output overrides."""

from __future__ import annotations

import numpy as np
import pytest

from dlcbench.errors import BadInputError
from dlcbench.measure.check import TOLERANCES, check_outputs, compare_output, parse_tolerance_overrides, tolerance_for


@pytest.fixture
def reference():
    rng = np.random.default_rng(0)
    return {"probs": rng.random((4, 10)).astype(np.float32), "hidden": rng.standard_normal((4, 8)).astype(np.float32)}


def test_identical_outputs_pass_with_perfect_metrics(reference):
    report = check_outputs(dict(reference), reference, classifier=True)
    assert report.passed
    probs = report.outputs[0].metrics
    assert probs["max_abs"] == 0 and probs["cosine"] == pytest.approx(1.0) and probs["top1_agreement"] == 1.0
    assert probs["top5_agreement"] == 1.0


def test_small_noise_passes_fp32(reference):
    got = {k: v + 1e-6 for k, v in reference.items()}
    assert check_outputs(got, reference).passed


def test_abs_error_fails_and_reports_worst_element_and_needed_tolerance(reference):
    got = {k: v.copy() for k, v in reference.items()}
    got["hidden"][2, 3] += 0.5
    report = check_outputs(got, reference)
    assert not report.passed
    failed = [o for o in report.outputs if not o.passed]
    assert [o.name for o in failed] == ["hidden"]
    assert failed[0].worst[0]["index"] == [2, 3]
    assert failed[0].needed["abs"] == pytest.approx(0.5 - 1e-3 * abs(reference["hidden"][2, 3]), rel=1e-3)
    message = report.failure_message()
    assert "output hidden" in message and "[2, 3]" in message and "would pass with abs>=" in message
    # the tolerances it names do pass
    needed = failed[0].needed
    assert set(needed) == {"abs", "rel", "cosine"}
    loosened = {"abs": needed["abs"] * 1.01, "cosine": needed["cosine"] - 1e-9}
    assert check_outputs(got, reference, overrides={"hidden": loosened}).passed


def test_relative_error_fails():
    ref = {"y": np.full((3,), 100.0, np.float32)}
    assert not check_outputs({"y": ref["y"] * 1.01}, ref).passed  # 1 abs > 1e-4 + 1e-3*100
    assert check_outputs({"y": ref["y"] * 1.0005}, ref).passed


def test_cosine_fails_even_when_elementwise_tolerance_is_loose(reference):
    got = {k: -v for k, v in reference.items()}
    report = check_outputs(got, reference, overrides={"*": {"abs": 10.0}})
    assert not report.passed
    assert any("cosine" in r for o in report.outputs for r in o.reasons)


def test_top1_disagreement_fails_int8():
    ref = {"logits": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    swapped = {"logits": np.array([[0.9, 0.1], [0.8, 0.2]], np.float32)}
    report = check_outputs(swapped, ref, precision="int8", classifier=True)
    assert not report.passed and report.outputs[0].metrics["top1_agreement"] == 0.5
    assert any("top-1" in r for r in report.outputs[0].reasons)


def test_nan_not_in_reference_fails_and_matching_nan_is_no_pass_either(reference):
    got = {k: v.copy() for k, v in reference.items()}
    got["probs"][0, 0] = np.nan
    report = check_outputs(got, reference)
    assert not report.passed and report.outputs[0].metrics["nan"] == 1
    ref_nan = {"y": np.array([np.nan, 1.0], np.float32)}
    matched = check_outputs({"y": np.array([np.nan, 1.0], np.float32)}, ref_nan)  # see test_check_nonfinite.py
    assert not matched.passed and matched.category == "invalid_reference"
    inf = check_outputs({"y": np.array([np.inf, 1.0], np.float32)}, {"y": np.array([0.0, 1.0], np.float32)})
    assert not inf.passed and inf.outputs[0].metrics["inf"] == 1


def test_missing_output_and_shape_mismatch_fail(reference):
    assert not check_outputs({"probs": reference["probs"]}, reference).passed
    bad = compare_output("probs", reference["probs"][:2], reference["probs"], TOLERANCES["fp32"])
    assert not bad.passed and "shape" in bad.reasons[0]


def test_precision_defaults_and_per_output_overrides():
    assert tolerance_for("fp16", "x").abs == 1e-2 and tolerance_for("bf16", "x").cosine == 0.99
    overrides = parse_tolerance_overrides(["abs=1e-3", "probs:rel=0.5,cos=0.9"])
    assert tolerance_for("fp32", "probs", overrides).rel == 0.5
    assert tolerance_for("fp32", "probs", overrides).abs == 1e-3
    assert tolerance_for("fp32", "other", overrides).rel == 1e-3
    with pytest.raises(BadInputError):
        parse_tolerance_overrides(["probs:speed=1"])
    with pytest.raises(BadInputError):
        tolerance_for("fp8", "x")
