"""Export of the zoo and of users' model files (real TensorFlow, tf2onnx, ONNX Runtime)."""

from __future__ import annotations

import json


import numpy as np
import onnx
import pytest

from dlcbench.errors import BadInputError, ExitCode
from dlcbench.models.export import ExportConfig, export_model, onnx_input_specs, run_onnxruntime
from dlcbench_test_support import HEAVY_TINY_MODELS, TINY_MODELS, assert_one_line_error, run_script


@pytest.mark.parametrize("name", TINY_MODELS + HEAVY_TINY_MODELS)
def test_tiny_zoo_model_exports_valid_onnx_matching_keras(tiny_export, name):
    exported = tiny_export(name)
    model = onnx.load(str(exported.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    got = run_onnxruntime(exported.onnx_path, exported.inputs())
    for out_name, expected in exported.reference().items():
        np.testing.assert_allclose(got[out_name], expected, rtol=1e-3, atol=1e-4)
    assert exported.meta["reference_source"] == "keras"
    assert exported.keras_path.is_file()
    # Dynamic batch by default: the same graph runs at another batch size.
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param


@pytest.mark.parametrize("name", ["bert", "gpt"])
def test_transformer_exports_are_standard_onnx_with_exact_gelu(tiny_export, name):
    exported = tiny_export(name)
    ops = {n.op_type for n in onnx.load(str(exported.onnx_path)).graph.node}
    assert "Erfc" not in ops and "Erf" in ops
    assert all(onnx.defs.has(n.op_type, n.domain) for n in onnx.load(str(exported.onnx_path)).graph.node)
    assert exported.meta["erfc_rewritten"] == 2  # one exact GELU per layer


def test_folded_variant_is_static_and_equal_to_unfolded(tiny_export):
    plain = tiny_export("bert")
    folded = tiny_export("bert", fold=True)
    model = onnx.load(str(folded.onnx_path))
    assert folded.meta["folded"] and folded.meta["static"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert "Shape" not in {n.op_type for n in model.graph.node}
    inputs = plain.inputs()
    a, b = run_onnxruntime(plain.onnx_path, inputs), run_onnxruntime(folded.onnx_path, inputs)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_static_export_bakes_batch(tiny_export):
    exported = tiny_export("mlp", batch=3, static=True)
    dim = onnx.load(str(exported.onnx_path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 3


def test_summary_counts_flops_of_mlp(tiny_export):
    summary = tiny_export("mlp").meta["summary"]
    # batch 2: Gemm 784x64 and 64x10, 2 FLOPs per MAC.
    assert summary["flops"] == 2 * 2 * (784 * 64 + 64 * 10)
    assert summary["parameters"] == 784 * 64 + 64 + 64 * 10 + 10
    assert summary["op_histogram"]["Relu"] == 1


def test_cache_hit_imports_no_tensorflow_and_misses_on_any_change(tiny_export, export_cache):
    first = tiny_export("mlp", batch=4)
    code = (
        "import sys; from dlcbench.models.export import ExportConfig, export_model;"
        "e = export_model(ExportConfig('mlp', preset='tiny', batch=4));"
        "print(e.cache_hit, 'tensorflow' in sys.modules, e.directory)"
    )
    proc = run_script("-c", code)
    assert proc.returncode == 0, proc.stderr
    hit, tf_loaded, directory = proc.stdout.split()
    assert (hit, tf_loaded, directory) == ("True", "False", str(first.directory))
    for change in ({"seed": 1}, {"opset": 16}, {"static": True}, {"params": {"hidden": 32}}):
        other = tiny_export("mlp", batch=4, **change)
        assert not other.cache_hit and other.directory != first.directory, change
    rebuilt = tiny_export("mlp", batch=4, force=True)
    assert not rebuilt.cache_hit and rebuilt.directory == first.directory
    leftovers = [p for p in (export_cache / "exports").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


def test_bring_your_own_keras_file(tmp_path, tiny_export):
    import keras

    src = keras.saving.load_model(tiny_export("cnn").keras_path)
    path = tmp_path / "mine.keras"
    src.save(path)
    exported = export_model(ExportConfig(str(path), batch=2))
    assert exported.meta["reference_source"] == "keras"
    np.testing.assert_allclose(exported.reference()["probs"], tiny_export("cnn").reference()["probs"], rtol=1e-5)


def test_bring_your_own_savedmodel(tmp_path, tiny_export):
    import keras

    model = keras.saving.load_model(tiny_export("mlp").keras_path)
    model.export(str(tmp_path / "sm"), format="tf_saved_model")
    exported = export_model(ExportConfig(str(tmp_path / "sm"), batch=2))
    assert exported.meta["reference_source"] == "tensorflow"
    (out,) = exported.reference().values()
    np.testing.assert_allclose(out, tiny_export("mlp").reference()["probs"], rtol=1e-5, atol=1e-6)


def test_bring_your_own_onnx_with_initializers_listed_as_inputs(tmp_path, tiny_export):
    model = onnx.load(str(tiny_export("mlp").onnx_path))
    # Old exporters list every weight as a graph input too.
    for init in model.graph.initializer:
        model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    assert [s.name for s in onnx_input_specs(model)] == ["input"]
    exported = export_model(ExportConfig(str(path), batch=2))
    assert exported.meta["reference_source"] == "onnxruntime, graph optimizations off"
    assert [i["name"] for i in exported.input_specs] == ["input"]
    assert exported.reference()["probs"].shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"model": "nope"}, "valid: mlp, cnn"),
        ({"model": "bert", "params": {"layers": 0}}, "layers"),
        ({"model": "bert", "params": {"heads": 3}}, "divisible"),
        ({"model": "mlp", "params": {"depth": 3}}, "valid: classes, features, hidden"),
        ({"model": "mlp", "batch": -1}, "batch"),
        ({"model": "mlp", "preset": "huge"}, "valid: tiny, default"),
    ],
)
def test_invalid_configs_raise_bad_input(kwargs, fragment):
    with pytest.raises(BadInputError, match=fragment):
        export_model(ExportConfig(**kwargs))


def _bad_paths(tmp_path, tiny_export):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_export("mlp").onnx_path.read_bytes()[:500])
    rand = tmp_path / "random.onnx"
    rand.write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "plain_dir").mkdir()
    return {
        "missing": (str(tmp_path / "missing.onnx"), "not found"),
        "missing_keras": (str(tmp_path / "missing.keras"), "not found"),
        "not_savedmodel": (str(tmp_path / "plain_dir"), "not a SavedModel"),
        "truncated": (str(truncated), "not a valid ONNX file"),
        "random": (str(rand), "not a valid ONNX file"),
    }


@pytest.mark.parametrize("case", ["missing", "missing_keras", "not_savedmodel", "truncated", "random"])
def test_bad_model_files_give_one_line_cli_errors(tmp_path, tiny_export, case):
    path, fragment = _bad_paths(tmp_path, tiny_export)[case]
    proc = run_script("-m", "dlcbench.models", "export", path, timeout=120)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [(["nope"], "valid: mlp"), (["bert", "--param", "layers=0"], "layers"), (["mlp", "--batch", "-1"], "batch")],
)
def test_bad_zoo_arguments_give_one_line_cli_errors(args, fragment):
    assert_one_line_error(run_script("-m", "dlcbench.models", "export", *args, timeout=120), ExitCode.BAD_INPUT, fragment)


def test_cli_export_prints_summary():
    proc = run_script("-m", "dlcbench.models", "export", "mlp", "--preset", "tiny", "--batch", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "model.onnx" in proc.stdout and "GFLOPs" in proc.stdout


def test_importing_packages_pulls_in_no_framework():
    code = (
        "import sys, dlcbench, dlcbench.models, dlcbench.models.zoo, dlcbench.models.export;"
        "dlcbench.models.zoo.get_model('bert').resolve_params('tiny');"
        "bad = [m for m in ('tensorflow', 'tvm', 'tensorrt', 'keras') if m in sys.modules];"
        "print(bad)"
    )
    proc = run_script("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr

