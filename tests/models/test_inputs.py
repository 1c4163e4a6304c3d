"""A model's own inputs: dynamic dimensions fixed by --input-shape (or refused), integer ranges from the model or
--input-range, real data from --inputs, legacy IR-3 models, zero-input models and outputs not led by the batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlcbench.errors import BadInputError
from dlcbench.measure.job import JobConfig, run_job
from dlcbench.models.export import ExportConfig, export_model
from dlcbench.models.inputs import (DEFAULT_INT_RANGE, DeclaredInput, onnx_declared_inputs, parse_input_ranges,
                                    parse_input_shapes, resolve_inputs)
from dlcbench_test_support import ROOT, assert_one_line_error


def _save(path: Path, nodes, inputs, outputs, initializers=(), ir_version=8, opset=17) -> Path:
    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.save(model, str(path))
    return path


def conv_model(tmp_path: Path) -> Path:
    """``image [batch, 3, height, width]`` -> conv -> global pool -> ``pooled [batch, 4]``."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    return _save(tmp_path / "dyn.onnx",
                 [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["pooled"])],
                 [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                 [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])], [w])


def embedding_model(tmp_path: Path, rows: int = 37) -> Path:
    """``ids [batch, seq] int64`` -> Cast -> Gather of a ``rows x 8`` table -> ReduceMean -> ``[batch, 8]``."""
    table = numpy_helper.from_array(np.random.default_rng(1).standard_normal((rows, 8)).astype(np.float32), "table")
    return _save(tmp_path / "emb.onnx",
                 [helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
                  helper.make_node("Gather", ["table", "ids32"], ["e"]),
                  helper.make_node("ReduceMean", ["e"], ["mean"], axes=[1], keepdims=0)],
                 [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5])],
                 [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 8])], [table])


def test_dynamic_dimensions_are_refused_naming_each_and_the_flag(tmp_path):
    model = conv_model(tmp_path)
    with pytest.raises(BadInputError, match=r"image \[batch, 3, height, width\].*--input-shape image=1,3,HEIGHT,WIDTH"):
        export_model(ExportConfig(str(model), cache_dir=tmp_path / "cache"))
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile.py"), "--backend", "onnxruntime",
                          "--model", str(model), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=300)
    assert_one_line_error(run, 2, "dynamic dimensions", "--input-shape image=")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("shape, message", [
    ("image=1,4,8,8", "dimension 1 of image is fixed at 3"),
    ("image=2,3,8,8", "has batch 2 but the batch is 1"),
    ("imag=1,3,8,8", "names imag, which the model does not take; its inputs: image"),
    ("image=1,3,8", "has 3 dimensions, the model's input has 4"),
])
def test_a_shape_that_contradicts_the_model_is_refused(tmp_path, shape, message):
    with pytest.raises(BadInputError, match=message):
        export_model(ExportConfig(str(conv_model(tmp_path)), input_shapes=[shape], cache_dir=tmp_path / "cache"))


@pytest.mark.parametrize("text", ["image", "image=", "image=1,x", "=1,2", "image=0,3"])
def test_bad_shape_flags(text):
    with pytest.raises(BadInputError, match="input-shape"):
        parse_input_shapes([text])


def test_bad_range_flags():
    for text in ("ids=5", "ids=5,5", "ids=a,b"):
        with pytest.raises(BadInputError, match="input-range"):
            parse_input_ranges([text])
    assert parse_input_ranges(["a:0=-3,4"]) == {"a:0": (-3, 4)}


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_given_shapes_run_on_the_plain_and_folded_paths(tmp_path, backend):
    result = run_job(JobConfig(backend=backend, model=str(conv_model(tmp_path)), batch=2, threads=1,
                               input_shapes=["image=2,3,16,24"], out_dir=tmp_path / backend,
                               timing=_quick()))
    assert result.passed, result.failure_message
    export = Path(result.model["export_dir"])
    meta_inputs = json.loads((export / "meta.json").read_text())["inputs"]
    assert meta_inputs[0]["shape"][1:] == [3, 16, 24]
    with np.load(export / "inputs.npz") as data:
        assert data["image"].shape == (2, 3, 16, 24)


def _quick():
    from dlcbench.measure.timing import TimingConfig

    return TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0, ci_target=0)


def test_integer_inputs_are_drawn_from_the_model_table_or_the_given_range(tmp_path):
    model = str(embedding_model(tmp_path, rows=37))
    export = export_model(ExportConfig(model, batch=4, cache_dir=tmp_path / "cache"))
    ids = export.inputs()["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 37 and ids.max() >= 10  # not the old [0, 10)
    assert export.input_specs[0]["range"] == [0, 37]
    assert "table of 37 rows" in export.input_specs[0]["range_source"]
    given = export_model(ExportConfig(model, batch=4, input_ranges=["ids=30,33"], cache_dir=tmp_path / "cache"))
    assert set(np.unique(given.inputs()["ids"])) <= {30, 31, 32}
    assert given.input_specs[0]["range"] == [30, 33] and given.input_specs[0]["range_source"] == "--input-range"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile.py"), "--backend", "onnxruntime",
                          "--model", model, "--batch", "2", "--min-seconds", "0", "--min-iters", "3",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "inputs    ids int64 in [0, 37) (model: indexes a table of 37 rows)" in run.stdout  # the summary says it


def test_an_index_reshaped_before_its_gather_still_takes_the_tables_range():
    table = numpy_helper.from_array(np.zeros((50, 4), np.float32), "table")
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["ids", "axes"], ["u"]), helper.make_node("Squeeze", ["u", "axes"], ["s"]),
         helper.make_node("Identity", ["s"], ["i"]), helper.make_node("Gather", ["table", "i"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 4])], [table, axes])
    (ids,) = onnx_declared_inputs(helper.make_model(graph))
    assert ids.int_range == (0, 50)


def test_integer_defaults_suit_masks_and_bytes_and_ranges_fit_the_dtype():
    declared = [DeclaredInput("attention_mask", [None, 4], "int64"), DeclaredInput("pixels", [None, 4], "uint8"),
                DeclaredInput("ids", [None, 4], "int8", int_range=(0, 1000), range_source="model: table"),
                DeclaredInput("other", [None, 4], "int32")]
    specs = {s.name: s for s in resolve_inputs(declared, batch=2)}
    assert (specs["attention_mask"].low, specs["attention_mask"].high) == (0, 2)
    assert "mask" in specs["attention_mask"].range_source
    assert (specs["pixels"].low, specs["pixels"].high) == (0, 256)
    assert (specs["ids"].low, specs["ids"].high) == (0, 128) and "cut to what int8 holds" in specs["ids"].range_source
    assert (specs["other"].low, specs["other"].high) == DEFAULT_INT_RANGE
    with pytest.raises(BadInputError, match=r"--input-range pixels=0,300: the input is uint8, which holds 0 to 255"):
        resolve_inputs(declared, batch=2, ranges={"pixels": (0, 300)})
    assert resolve_inputs(declared, batch=2, ranges={"pixels": (0, 256)})[1].high == 256


def test_outputs_the_check_cannot_compare_are_refused_by_name(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    model = _save(tmp_path / "odd.onnx",
                  [helper.make_node("Cast", ["x"], ["text"], to=TensorProto.STRING),
                   helper.make_node("SequenceConstruct", ["x", "x"], ["seq"]), helper.make_node("Relu", ["x"], ["y"])],
                  [x], [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 3]),
                        helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None),
                        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile.py"), "--backend", "onnxruntime",
                          "--model", str(model), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=300)
    assert_one_line_error(run, 2, "compares numeric and bool tensor outputs only; not text (string tensor), "
                                  "seq (sequence)")
    assert not (tmp_path / "o").exists()


def test_weights_kept_beside_the_graph_are_part_of_the_cache_key(tmp_path):
    from dlcbench.models.export import external_data_files

    def save(scale: float) -> bytes:
        table = numpy_helper.from_array(np.full((7, 4), scale, np.float32), "table")
        graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "ext",
                                  [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4])], [table])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        (tmp_path / "ext.onnx.data").unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
                        size_threshold=0)
        return (tmp_path / "ext.onnx").read_bytes()

    graph_bytes = save(1.0)
    assert external_data_files(tmp_path / "ext.onnx") == ["ext.onnx.data"]
    first = export_model(ExportConfig(str(tmp_path / "ext.onnx"), batch=2, cache_dir=tmp_path / "cache"))
    assert np.all(first.reference()["y"] == 1.0)
    assert save(2.0) == graph_bytes  # only the weights file changed
    second = export_model(ExportConfig(str(tmp_path / "ext.onnx"), batch=2, cache_dir=tmp_path / "cache"))
    assert not second.cache_hit and np.all(second.reference()["y"] == 2.0)


def test_an_output_whose_shape_depends_on_the_data_is_checked_batch_by_batch(tmp_path):
    """``NonZero`` keeps as many positions as the input has positive values: each check batch its own count."""
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    model = _save(tmp_path / "nz.onnx",
                  [helper.make_node("Greater", ["x", "zero"], ["positive"]),
                   helper.make_node("NonZero", ["positive"], ["where"]), helper.make_node("Relu", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                  [helper.make_tensor_value_info("where", TensorProto.INT64, [2, "found"]),
                   helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [zero])
    result = run_job(JobConfig(backend="onnxruntime", model=str(model), batch=1, threads=1, out_dir=tmp_path / "ort",
                               timing=_quick()))
    assert result.passed, result.failure_message
    assert "checked batch by batch" in result.check["note"]
    static = export_model(ExportConfig(str(model), batch=1, static=True, fold=True, cache_dir=tmp_path / "cache"))
    (where,) = [o for o in onnx.load(str(static.onnx_path)).graph.output if o.name == "where"]
    dims = where.type.tensor_type.shape.dim
    assert dims[0].dim_value == 2 and not dims[1].HasField("dim_value")  # not fixed at the first batch's count


def test_real_inputs_are_checked_batch_by_batch(tmp_path):
    model = str(embedding_model(tmp_path, rows=37))
    rows = np.arange(30, dtype=np.int64).reshape(6, 5) % 37
    np.savez(tmp_path / "ids.npz", ids=rows)
    result = run_job(JobConfig(backend="onnxruntime", model=model, batch=2, threads=1, inputs_file=str(tmp_path / "ids.npz"),
                               out_dir=tmp_path / "ort", timing=_quick()))
    assert result.passed
    export = Path(result.model["export_dir"])
    with np.load(export / "inputs.npz") as data:
        np.testing.assert_array_equal(data["ids"], rows[:2])
    meta = json.loads((export / "meta.json").read_text())
    assert meta["input_data"]["batches"] == 3 and meta["check_batches"] == 2
    with pytest.raises(BadInputError, match="is int32, the model takes int64"):
        np.savez(tmp_path / "bad.npz", ids=rows.astype(np.int32))
        export_model(ExportConfig(model, batch=2, inputs_file=str(tmp_path / "bad.npz"), cache_dir=tmp_path / "c"))
    with pytest.raises(BadInputError, match="no array for input"):
        np.savez(tmp_path / "other.npz", tokens=rows)
        export_model(ExportConfig(model, batch=2, inputs_file=str(tmp_path / "other.npz"), cache_dir=tmp_path / "c"))
    with pytest.raises(BadInputError, match="fewer than the batch 8"):
        export_model(ExportConfig(model, batch=8, inputs_file=str(tmp_path / "ids.npz"), cache_dir=tmp_path / "c"))
    with pytest.raises(BadInputError, match="dimension 1 of ids is 4, the model fixes it at 5"):
        np.savez(tmp_path / "short.npz", ids=rows[:, :4])
        export_model(ExportConfig(model, batch=2, inputs_file=str(tmp_path / "short.npz"), cache_dir=tmp_path / "c"))
    (tmp_path / "junk.npz").write_text("not numpy")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile.py"), "--backend", "onnxruntime",
                          "--model", model, "--inputs", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert_one_line_error(run, 2, "not a NumPy .npz file")


def legacy_model(tmp_path: Path) -> Path:
    """IR version 3, opset 9, its weights listed among the graph inputs (as old model zoos shipped them)."""
    w = np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32)
    b = np.random.default_rng(3).standard_normal((4,)).astype(np.float32)
    return _save(tmp_path / "legacy.onnx",
                 [helper.make_node("Gemm", ["x", "w", "b"], ["y0"]), helper.make_node("Relu", ["y0"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6]),
                  helper.make_tensor_value_info("w", TensorProto.FLOAT, [6, 4]),
                  helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                 [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")], ir_version=3, opset=9)


def zero_input_model(tmp_path: Path) -> Path:
    """No inputs: ``Log`` of a positive constant table."""
    c = numpy_helper.from_array(np.arange(1, 7, dtype=np.float32).reshape(2, 3), "c")
    return _save(tmp_path / "noinput.onnx", [helper.make_node("Log", ["c"], ["y"])], [],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [c])


def non_batch_output_model(tmp_path: Path) -> Path:
    """``x [batch, 4]`` -> ``rowsum [batch]`` and ``colmean [4]`` (no batch dimension) and ``t [4, batch]``."""
    axes1 = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes1")
    return _save(tmp_path / "nonbatch.onnx",
                 [helper.make_node("ReduceSum", ["x", "axes1"], ["rowsum"], keepdims=0),
                  helper.make_node("ReduceMean", ["x"], ["colmean"], axes=[0], keepdims=0),
                  helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                 [helper.make_tensor_value_info("rowsum", TensorProto.FLOAT, ["batch"]),
                  helper.make_tensor_value_info("colmean", TensorProto.FLOAT, [4]),
                  helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, "batch"])], [axes1])


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
@pytest.mark.parametrize("make, batch", [(legacy_model, 1), (zero_input_model, 1), (non_batch_output_model, 3)])
def test_models_from_the_wild_run_on_the_plain_and_folded_paths(tmp_path, backend, make, batch):
    result = run_job(JobConfig(backend=backend, model=str(make(tmp_path)), batch=batch, threads=1,
                               out_dir=tmp_path / backend, timing=_quick()))
    assert result.passed, result.failure_message
    if make is legacy_model:
        meta = json.loads((Path(result.model["export_dir"]) / "meta.json").read_text())
        assert meta["upgraded"] == ["IR version 3 -> 4", "2 initializer(s) no longer listed as graph inputs"]
    if make is non_batch_output_model:
        with np.load(Path(result.model["export_dir"]) / "reference.npz") as ref:
            assert ref["colmean"].shape == (4,) and ref["t"].shape == (4, 3) and ref["rowsum"].shape == (3,)


def test_inputs_dlcbench_cannot_batch_are_refused_in_one_line(tmp_path):
    scalar = _save(tmp_path / "scalar.onnx", [helper.make_node("Mul", ["x", "s"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
                    helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    with pytest.raises(BadInputError, match="input s is a scalar"):
        export_model(ExportConfig(str(scalar), cache_dir=tmp_path / "cache"))
    mixed = _save(tmp_path / "mixed.onnx", [helper.make_node("Add", ["x", "bias"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
                   helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    with pytest.raises(BadInputError, match="leading dimension of bias is fixed at 1, not the batch 2"):
        export_model(ExportConfig(str(mixed), batch=2, cache_dir=tmp_path / "cache"))
    with pytest.raises(BadInputError, match="ranges apply to integer inputs"):
        export_model(ExportConfig(str(conv_model(tmp_path)), input_shapes=["image=1,3,8,8"], input_ranges=["image=0,3"],
                                  cache_dir=tmp_path / "cache"))
    with pytest.raises(BadInputError, match="takes no input, so it has no batch"):
        export_model(ExportConfig(str(zero_input_model(tmp_path)), batch=4, cache_dir=tmp_path / "cache"))


def test_a_batch_sweep_gives_each_job_its_own_batch_in_the_shape(tmp_path):
    from dlcbench.orchestrate.experiment import ExperimentConfig

    model = conv_model(tmp_path)
    config = ExperimentConfig(name="x", models=[str(model)], backends=["onnxruntime"], batches="1,8",
                              input_shapes=["image=1,3,16,16"], db=tmp_path / "r.sqlite")
    assert [(j.batch, j.input_shapes["image"]) for j in config.jobs()] == [(1, [1, 3, 16, 16]), (8, [8, 3, 16, 16])]
