"""Zoo parameters are typed by their preset values: wrong types are refused, never truncated or coerced."""

from __future__ import annotations

import pytest

from dlcbench.errors import BadInputError
from dlcbench.models.zoo import get_model


@pytest.mark.parametrize(
    "model, overrides, fragments",
    [
        ("mlp", {"hidden": "abc"}, ["parameter 'hidden' of model mlp must be an integer, got 'abc'",
                                    "valid: classes, features, hidden (all int)"]),
        ("mlp", {"hidden": 1.7}, ["must be an integer, got 1.7"]),
        ("mlp", {"hidden": 64.0}, ["must be an integer, got 64.0"]),
        ("mlp", {"hidden": True}, ["must be an integer, got True"]),
        ("mlp", {"hidden": [1, 2]}, ["must be an integer, got [1, 2]"]),
        ("mlp", {"hidden": None}, ["must be an integer, got None"]),
        ("mobilenetv2", {"alpha": "wide"}, ["parameter 'alpha' of model mobilenetv2 must be a finite number",
                                            "valid: alpha, classes, size (alpha: float, classes: int, size: int)"]),
        ("mobilenetv2", {"alpha": float("inf")}, ["must be a finite number, got inf"]),
        ("mobilenetv2", {"alpha": False}, ["must be a finite number, got False"]),
        ("bert", {"hidden": 31}, ["divisible by heads"]),
        ("mlp", {"hidden": 0}, ["positive integer"]),
    ],
)
def test_wrong_types_are_refused_naming_parameter_type_and_valid_ones(model, overrides, fragments):
    with pytest.raises(BadInputError) as info:
        get_model(model).resolve_params("tiny", overrides)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_right_types_are_kept_and_ints_widen_to_floats():
    import numpy as np

    assert get_model("mlp").resolve_params("tiny", {"hidden": 32})["hidden"] == 32
    assert get_model("mlp").resolve_params("tiny", {"hidden": np.int64(32)})["hidden"] == 32
    alpha = get_model("mobilenetv2").resolve_params("tiny", {"alpha": 1})["alpha"]
    assert alpha == 1.0 and isinstance(alpha, float)
