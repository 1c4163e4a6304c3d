"""Per-output tolerance overrides must name an output the model has."""

from __future__ import annotations

import numpy as np
import pytest

from dlcbench.errors import BadInputError
from dlcbench.measure.check import check_outputs, check_override_outputs, parse_tolerance_overrides


def test_unknown_output_is_refused_naming_the_valid_outputs():
    overrides = parse_tolerance_overrides(["abs=1", "logits:rel=1", "probs:cos=0.5"])
    with pytest.raises(BadInputError, match=r"unknown output\(s\) 'logits'; valid outputs: probs, hidden"):
        check_override_outputs(overrides, ["probs", "hidden"])
    check_override_outputs(parse_tolerance_overrides(["abs=1", "probs:rel=1"]), ["probs"])  # known and '*' pass


def test_check_outputs_refuses_them_too():
    reference = {"probs": np.ones((2, 3), np.float32)}
    with pytest.raises(BadInputError, match="valid outputs: probs"):
        check_outputs(reference, reference, overrides=parse_tolerance_overrides(["prob:abs=1"]))
    assert check_outputs(reference, reference, overrides=parse_tolerance_overrides(["probs:abs=1"])).passed
