"""Users' models in the forms a new user brings them: Keras models with several integer inputs, models that declare
no inputs, ONNX files with ONNX Runtime's own (``com.microsoft``) operators (real TensorFlow, tf2onnx, ONNX Runtime
and TVM)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlcbench.errors import BadInputError, ExitCode, ExportError, UnsupportedOpError
from dlcbench.measure.job import JobConfig, run_job
from dlcbench.measure.timing import TimingConfig
from dlcbench.models.export import ExportConfig, export_model, runtime_kernels
from dlcbench_test_support import assert_one_line_error, run_script

QUICK = TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0, ci_target=0)


def two_table_keras_model(path: Path) -> Path:
    """Token ids into a 100-row table and segment ids into a 3-row one (BERT's inputs), summed and pooled."""
    import keras

    tokens = keras.Input((6,), dtype="int32", name="tokens")
    segments = keras.Input((6,), dtype="int32", name="segments")
    summed = keras.layers.Add()([keras.layers.Embedding(100, 4, name="tok")(tokens),
                                 keras.layers.Embedding(3, 4, name="seg")(segments)])
    keras.Model([tokens, segments], keras.layers.GlobalAveragePooling1D()(summed)).save(path)
    return path


@pytest.mark.slow
def test_each_integer_input_of_a_keras_model_takes_the_rows_of_its_own_table(tmp_path):
    exported = export_model(ExportConfig(str(two_table_keras_model(tmp_path / "two.keras")), batch=8,
                                         cache_dir=tmp_path / "cache"))
    specs = {s["name"]: s for s in exported.input_specs}
    assert specs["tokens"]["range"] == [0, 100] and specs["segments"]["range"] == [0, 3]
    assert "table of 3 rows" in specs["segments"]["range_source"]
    rows = np.concatenate([batch["segments"].ravel() for batch, _ in exported.check_batches()])
    assert set(np.unique(rows)) <= {0, 1, 2}
    tokens = exported.inputs()["tokens"]
    assert tokens.max() >= 10 and tokens.max() < 100  # drawn over the table, not the default [0, 10)
    # a SavedModel of the same model: the converted graph says the same
    import keras

    keras.saving.load_model(tmp_path / "two.keras").export(str(tmp_path / "sm"), format="tf_saved_model")
    saved = export_model(ExportConfig(str(tmp_path / "sm"), batch=2, cache_dir=tmp_path / "cache"))
    assert {s["name"]: s["range"] for s in saved.input_specs} == {"tokens": [0, 100], "segments": [0, 3]}


@pytest.mark.slow
def test_a_keras_model_that_declares_no_inputs_is_refused_in_one_line_or_taken_at_its_built_shape(tmp_path):
    import keras

    unbuilt = tmp_path / "unbuilt.keras"
    keras.Sequential([keras.layers.Dense(3), keras.layers.Dense(2)]).save(unbuilt)
    with pytest.raises(BadInputError, match="declares no inputs"):
        export_model(ExportConfig(str(unbuilt), cache_dir=tmp_path / "cache"))
    proc = run_script("-m", "dlcbench.models", "export", str(unbuilt), "--cache-dir", str(tmp_path / "cache"),
                      timeout=300)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "keras.Input")

    @keras.saving.register_keras_serializable(package="dlcbench_tests")
    class TwoDense(keras.Model):  # subclassed: no symbolic inputs or outputs
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(3, activation="relu")
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(self.hidden(x))

    subclassed = TwoDense()
    subclassed(np.ones((1, 5), np.float32))
    subclassed.save(tmp_path / "sub.keras")
    exported = export_model(ExportConfig(str(tmp_path / "sub.keras"), batch=2, cache_dir=tmp_path / "cache"))
    ((_, output),) = exported.reference().items()
    assert exported.input_specs == [{"name": "input", "shape": [None, 5], "dtype": "float32"}]
    assert exported.inputs()["input"].shape == (2, 5) and output.shape == (2, 2)
    np.testing.assert_allclose(output, np.asarray(subclassed(exported.inputs()["input"])), rtol=1e-5, atol=1e-6)


def contrib_model(path: Path, op: str = "FusedMatMul", domain: str = "com.microsoft") -> Path:
    """``x [batch, 4]`` -> ``FusedMatMul(x, w, alpha=0.5)`` of ONNX Runtime's contrib domain -> Relu."""
    w = numpy_helper.from_array(np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["m"], domain=domain, alpha=0.5), helper.make_node("Relu", ["m"], ["y"])],
        "contrib", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)],
                              ir_version=8)
    onnx.save(model, str(path))
    return path


def test_onnx_runtime_lists_its_contrib_kernels():
    kernels = runtime_kernels()
    assert kernels is not None and ("com.microsoft", "FusedMatMul") in kernels and ("", "Relu") in kernels


def test_onnx_runtime_contrib_operators_get_a_reference_and_each_backend_takes_or_refuses_them(tmp_path):
    path = contrib_model(tmp_path / "fused.onnx")
    exported = export_model(ExportConfig(str(path), batch=2))
    w = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    for inputs, reference in exported.check_batches():
        np.testing.assert_allclose(reference["y"], np.maximum(0.5 * inputs["x"] @ w, 0), rtol=1e-5, atol=1e-6)
    result = run_job(JobConfig(backend="onnxruntime", model=str(path), batch=2, threads=1, out_dir=tmp_path / "ort",
                               timing=QUICK))
    assert result.passed, result.failure_message
    with pytest.raises(UnsupportedOpError, match="FusedMatMul"):  # TVM's importer has none: refused by name
        run_job(JobConfig(backend="tvm", model=str(path), batch=2, threads=1, out_dir=tmp_path / "tvm", timing=QUICK))


def test_operators_neither_onnx_nor_onnx_runtime_define_are_refused_by_name(tmp_path):
    path = contrib_model(tmp_path / "custom.onnx", op="MyFancyOp", domain="org.example")
    with pytest.raises(BadInputError, match=r"nor ONNX Runtime's CPU provider runs: org\.example\.MyFancyOp"):
        export_model(ExportConfig(str(path), cache_dir=tmp_path / "cache"))


def test_a_model_onnx_runtime_cannot_run_names_the_users_file_and_the_runtime(tmp_path):
    # valid ONNX that ONNX Runtime refuses when it builds the session: FusedMatMul on int64 has no kernel
    path = tmp_path / "int_fused.onnx"
    graph = helper.make_graph(
        [helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft")], "g",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 2])],
        [numpy_helper.from_array(np.eye(2, dtype=np.int64), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)], ir_version=8), str(path))
    with pytest.raises(ExportError, match=r"ONNX Runtime \d+\.\d+\S* cannot compute the reference of .*int_fused\.onnx"):
        export_model(ExportConfig(str(path), cache_dir=tmp_path / "cache"))
    assert list((tmp_path / "cache").rglob("meta.json")) == []  # nothing half-exported left in the cache


def test_a_model_over_two_gib_with_its_external_data_is_refused_in_one_line(tmp_path):
    path = contrib_model(tmp_path / "big.onnx", op="MatMul", domain="")
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    os.truncate(tmp_path / "weights.bin", 2 ** 31)  # sparse: nothing is written or read
    with pytest.raises(BadInputError, match=r"big\.onnx holds 2\.0 GiB with its external data"):
        export_model(ExportConfig(str(path), cache_dir=tmp_path / "cache"))


def test_position_ids_computed_from_an_inputs_shape_do_not_narrow_its_range():
    from dlcbench.models.inputs import onnx_declared_inputs

    vocab = numpy_helper.from_array(np.zeros((1000, 4), np.float32), "vocab")
    positions = numpy_helper.from_array(np.zeros((16, 4), np.float32), "positions")
    scalars = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in ((0, "zero"), (1, "one"))]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["vocab", "ids"], ["tok"]),
         helper.make_node("Shape", ["ids"], ["shape"]),
         helper.make_node("Gather", ["shape", "one"], ["length"]),
         helper.make_node("Range", ["zero", "length", "one"], ["pos_ids"]),
         helper.make_node("Gather", ["positions", "pos_ids"], ["pos"]),
         helper.make_node("Add", ["tok", "pos"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 4])], [vocab, positions, *scalars])
    (ids,) = onnx_declared_inputs(helper.make_model(graph))
    assert ids.int_range == (0, 1000) and ids.range_source == "model: indexes a table of 1000 rows"
