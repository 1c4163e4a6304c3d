"""Top-1 accuracy of a compiled model on the held-out split of the dataset it was trained on.

What a compiler's user cares about after speed: does the compiled model still classify correctly? The reference
is the Keras model's own accuracy on the same rows (recorded at export). A drop beyond the budget of the precision
(:data:`BUDGET_POINTS`) fails the job with the category ``accuracy_drop``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlcbench.errors import BadInputError

#: Accuracy a precision may lose against the Keras model, in percentage points: fp32 nothing; fp16/bf16 0.5; int8 1.
BUDGET_POINTS = {"fp32": 0.0, "fp16": 0.5, "bf16": 0.5, "int8": 1.0}
#: The failure category of a job whose accuracy dropped beyond its budget.
ACCURACY_DROP = "accuracy_drop"


def measure_accuracy(session, model, batch: int, precision: str) -> dict[str, Any]:
    """Runs the held-out rows through ``session`` in batches of ``batch`` (the last one padded with its own first
    rows, whose predictions are dropped) and compares top-1 with the Keras model's.

    Returns:
        ``top1`` and ``reference_top1`` (fractions), ``rows``, ``drop_points`` (reference - top1, in points),
        ``budget_points``, ``within_budget`` and ``dataset``.

    Raises:
        BadInputError: the model has no labelled data.
    """
    from dlcbench.models.datasets import top1

    labelled = model.labelled()
    if labelled is None:
        raise BadInputError(f"--accuracy needs a model trained on labelled data (digits-mlp, digits-cnn); "
                            f"{model.name} has none")
    images, labels = labelled
    name = model.input_specs[0]["name"]
    output = model.output_names[0]
    scores = []
    for start in range(0, len(labels), batch):
        rows = images[start:start + batch]
        count = len(rows)
        if count < batch:
            rows = np.concatenate([rows, np.resize(rows, (batch - count, *rows.shape[1:]))])
        scores.append(np.asarray(session.run({name: np.ascontiguousarray(rows)})[output])[:count])
    dataset = model.meta["dataset"]
    measured = top1(np.concatenate(scores), labels)
    drop = (dataset["reference_top1"] - measured) * 100
    budget = BUDGET_POINTS[precision]
    return {"dataset": dataset["name"], "rows": int(len(labels)), "top1": measured,
            "reference_top1": dataset["reference_top1"], "drop_points": drop, "budget_points": budget,
            "within_budget": drop <= budget + 1e-9}


def accuracy_failure(accuracy: dict[str, Any], precision: str) -> str:
    """The failure message of an accuracy beyond its budget."""
    return (f"accuracy dropped {accuracy['drop_points']:.2f} points: top-1 {accuracy['top1'] * 100:.2f}% against "
            f"Keras {accuracy['reference_top1'] * 100:.2f}% on {accuracy['rows']} held-out rows "
            f"(budget {accuracy['budget_points']:g} points at {precision})")
