"""The model zoo registry: names, presets, input specs and seeded sample inputs.

Importing this module imports no TensorFlow: a model's Keras builder is only
imported when :meth:`ModelSpec.build` is called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from dlcbench.config import positive_int
from dlcbench.errors import BadInputError
from dlcbench.fieldtypes import coerce_value

PRESETS = ("tiny", "default")


@dataclass(frozen=True)
class InputSpec:
    """One named model input.

    Attributes:
        name: Input name, shared by Keras, ONNX and every backend.
        shape: Shape without the batch dimension.
        dtype: NumPy dtype name (``float32``, ``int32``...).
        high: For integer inputs, values are drawn from ``[low, high)``.
        low: See ``high``.
        range_source: Where an integer input's range comes from (the model, ``--input-range``, a default).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    high: int = 0
    low: int = 0
    range_source: str = ""

    def with_batch(self, batch: int | None) -> tuple[int | None, ...]:
        """Returns the full shape with a leading batch dimension."""
        return (batch, *self.shape)


def sample_inputs(specs: list[InputSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Generates deterministic sample inputs for ``specs`` at ``batch``.

    Floats are standard normal, integers uniform in ``[spec.low, spec.high)``, booleans True or False with
    equal odds; the same seed always gives the same arrays, so every backend sees identical data.
    """
    positive_int("batch", batch)
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        shape = (batch, *spec.shape)
        if np.dtype(spec.dtype) == np.bool_:
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            arrays[spec.name] = rng.integers(spec.low, max(spec.high, spec.low + 1), size=shape).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return arrays


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry.

    Attributes:
        name: Zoo name (``mlp``, ``bert``...).
        description: One line for listings.
        builder: ``"module:function"`` taking ``(**params)`` and returning a Keras model.
        inputs: Function from resolved params to the model's input specs.
        presets: Parameter sets by preset name; ``tiny`` exports in seconds.
        task: ``classifier`` when outputs are class scores (enables top-k checks).
        dataset: The labelled dataset it is trained on when built (:mod:`dlcbench.models.datasets`), if any: its
            exports carry the held-out split, so ``--accuracy`` can measure top-1 accuracy.
    """

    name: str
    description: str
    builder: str
    inputs: Callable[[Mapping[str, Any]], list[InputSpec]]
    presets: Mapping[str, Mapping[str, Any]]
    task: str = "generic"
    checks: tuple[Callable[[Mapping[str, Any]], str | None], ...] = field(default=())
    dataset: str | None = None

    def resolve_params(self, preset: str = "default", overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Returns validated parameters: the preset updated with ``overrides``.

        A parameter's type is that of its preset value: an int takes only positive integers (``1.7`` is
        refused, not truncated), a float any finite number, a bool only ``true``/``false``.

        Raises:
            BadInputError: unknown preset or parameter, or a value of the wrong type or range.
        """
        if preset not in self.presets:
            raise BadInputError(f"unknown preset {preset!r} for {self.name}; valid: {', '.join(self.presets)}")
        params = dict(self.presets[preset])
        kinds = {key: type(value).__name__ for key, value in sorted(params.items())}
        types = (f"all {next(iter(kinds.values()))}" if len(set(kinds.values())) == 1
                 else ", ".join(f"{key}: {kind}" for key, kind in kinds.items()))
        valid = f"{', '.join(kinds)} ({types})"
        for key, value in (overrides or {}).items():
            if key not in params:
                raise BadInputError(f"unknown parameter {key!r} for model {self.name}; valid: {valid}")
            params[key] = coerce_value(type(params[key]), value, f"parameter {key!r} of model {self.name}", valid)
        integers = [k for k, v in self.presets[preset].items() if isinstance(v, int) and not isinstance(v, bool)]
        for key in integers:  # sizes and counts, all of them
            if params[key] <= 0:
                raise BadInputError(f"parameter {key} of {self.name} must be a positive integer, got {params[key]}")
        for check in self.checks:
            problem = check(params)
            if problem:
                raise BadInputError(f"{self.name}: {problem}")
        return params

    def input_specs(self, params: Mapping[str, Any]) -> list[InputSpec]:
        """Returns the input specs for resolved ``params``."""
        return self.inputs(params)

    def build(self, params: Mapping[str, Any], seed: int = 0):
        """Builds the Keras model (imports TensorFlow/Keras on first call)."""
        module_name, func_name = self.builder.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        return func(seed=seed, **params)


def _divisible_heads(params: Mapping[str, Any]) -> str | None:
    if params["hidden"] % params["heads"]:
        return f"hidden ({params['hidden']}) must be divisible by heads ({params['heads']})"
    return None


def _token_inputs(params: Mapping[str, Any]) -> list[InputSpec]:
    return [InputSpec("input_ids", (params["seq_len"],), "int32", high=params["vocab"])]


_ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="mlp",
            description="Dense(512, relu) -> Dropout(0.2) -> Dense(10, softmax) on 784 inputs",
            builder="dlcbench.models.builders:build_mlp",
            inputs=lambda p: [InputSpec("input", (p["features"],))],
            presets={
                "tiny": {"features": 784, "hidden": 64, "classes": 10},
                "default": {"features": 784, "hidden": 512, "classes": 10},
            },
            task="classifier",
        ),
        ModelSpec(
            name="cnn",
            description="small conv net on 32x32x3 with BatchNorm and pooling",
            builder="dlcbench.models.builders:build_cnn",
            inputs=lambda p: [InputSpec("input", (p["size"], p["size"], 3))],
            presets={
                "tiny": {"size": 32, "width": 8, "classes": 10},
                "default": {"size": 32, "width": 32, "classes": 10},
            },
            task="classifier",
        ),
        ModelSpec(
            name="resnet50",
            description="keras.applications.ResNet50, weights=None",
            builder="dlcbench.models.builders:build_resnet50",
            inputs=lambda p: [InputSpec("input", (p["size"], p["size"], 3))],
            presets={"tiny": {"size": 32, "classes": 10}, "default": {"size": 224, "classes": 1000}},
            task="classifier",
        ),
        ModelSpec(
            name="mobilenetv2",
            description="keras.applications.MobileNetV2, weights=None",
            builder="dlcbench.models.builders:build_mobilenetv2",
            inputs=lambda p: [InputSpec("input", (p["size"], p["size"], 3))],
            presets={
                "tiny": {"size": 32, "classes": 10, "alpha": 0.35},
                "default": {"size": 224, "classes": 1000, "alpha": 1.0},
            },
            task="classifier",
        ),
        ModelSpec(
            name="bert",
            description="transformer encoder: embeddings + N x [MHA, LayerNorm, exact-GELU FFN]",
            builder="dlcbench.models.builders:build_bert",
            inputs=_token_inputs,
            presets={
                "tiny": {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64, "seq_len": 16, "vocab": 100},
                "default": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024, "seq_len": 128, "vocab": 8000},
            },
            checks=(_divisible_heads,),
        ),
        ModelSpec(
            name="gpt",
            description="decoder with causal attention producing next-token logits",
            builder="dlcbench.models.builders:build_gpt",
            inputs=_token_inputs,
            presets={
                "tiny": {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64, "seq_len": 16, "vocab": 100},
                "default": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024, "seq_len": 128, "vocab": 8000},
            },
            task="classifier",
            checks=(_divisible_heads,),
        ),
        ModelSpec(
            name="digits-mlp",
            description="MLP trained on scikit-learn's 8x8 digits (64 pixels -> Dense relu -> 10 classes)",
            builder="dlcbench.models.builders:build_digits_mlp",
            inputs=lambda p: [InputSpec("input", (64,))],
            presets={"tiny": {"hidden": 32, "epochs": 30}, "default": {"hidden": 64, "epochs": 40}},
            task="classifier",
            dataset="digits",
        ),
        ModelSpec(
            name="digits-cnn",
            description="conv net trained on scikit-learn's 8x8x1 digits",
            builder="dlcbench.models.builders:build_digits_cnn",
            inputs=lambda p: [InputSpec("input", (8, 8, 1))],
            presets={"tiny": {"width": 8, "epochs": 20}, "default": {"width": 16, "epochs": 30}},
            task="classifier",
            dataset="digits",
        ),
    ]
}


def model_names() -> list[str]:
    """Returns the zoo's model names."""
    return list(_ZOO)


def get_model(name: str) -> ModelSpec:
    """Returns the zoo entry for ``name``.

    Raises:
        BadInputError: ``name`` is not in the zoo (the message lists valid names).
    """
    try:
        return _ZOO[name]
    except KeyError:
        raise BadInputError(f"unknown model {name!r}; valid: {', '.join(_ZOO)} (or a .keras/.onnx path)") from None
