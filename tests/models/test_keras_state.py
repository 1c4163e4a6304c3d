"""Keras models whose state is not trainable weights export whole: every variable and captured tensor (a
``Normalization`` layer's adapted mean and variance, batch-norm moving statistics) becomes a constant of the ONNX
graph, checked against Keras on ONNX Runtime and TVM; a Keras model with dynamic spatial dimensions needs a shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlcbench.errors import BadInputError
from dlcbench.measure.job import JobConfig, run_job
from dlcbench.measure.timing import TimingConfig

QUICK = TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0, ci_target=0)


def _normalized_model(path: Path, spatial=(8, 8)) -> Path:
    import keras

    inp = keras.Input((*spatial, 3), name="input")
    x = keras.layers.Normalization(axis=-1)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    model.layers[1].adapt(np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32") * 5 + 2)
    model.save(path)
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_normalization_state_is_frozen_into_the_graph(tmp_path, backend):
    model = _normalized_model(tmp_path / "norm.keras")
    result = run_job(JobConfig(backend=backend, model=str(model), threads=1, out_dir=tmp_path / backend, timing=QUICK))
    assert result.passed, result.failure_message


def test_a_keras_model_with_dynamic_spatial_dimensions_needs_a_shape(tmp_path):
    model = _normalized_model(tmp_path / "dyn.keras", spatial=(None, None))
    with pytest.raises(BadInputError, match=r"input \[batch, \?, \?, 3\]; give them, e.g. --input-shape input=1,N,N,3"):
        run_job(JobConfig(backend="onnxruntime", model=str(model), threads=1, out_dir=tmp_path / "o", timing=QUICK))
    result = run_job(JobConfig(backend="onnxruntime", model=str(model), threads=1, out_dir=tmp_path / "o",
                               timing=QUICK, input_shapes=["input=1,12,10,3"]))
    assert result.passed, result.failure_message


@pytest.fixture(scope="module")
def application_file(tmp_path_factory):
    """``application -> .keras path``, each saved once: its second backend reuses the first one's export (the
    export cache keys a user's file by its content)."""
    saved: dict[str, Path] = {}

    def get(application: str) -> Path:
        if application not in saved:
            import keras

            path = tmp_path_factory.mktemp(application) / f"{application}.keras"
            getattr(keras.applications, application)(weights=None, input_shape=(32, 32, 3), classes=10).save(path)
            saved[application] = path
        return saved[application]

    return get


@pytest.mark.parametrize("application, backend", [("EfficientNetB0", "onnxruntime"), ("EfficientNetB0", "tvm"),
                                                  ("DenseNet121", "onnxruntime"), ("DenseNet121", "tvm")])
def test_keras_applications_built_without_weights(tmp_path, application_file, application, backend):
    path = application_file(application)
    result = run_job(JobConfig(backend=backend, model=str(path), threads=2, out_dir=tmp_path / backend, timing=QUICK))
    assert result.passed, result.failure_message
