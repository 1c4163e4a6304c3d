"""TensorRT and TF-TRT adapters on a machine without them: clear unavailability, option checks, lazy imports."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from types import SimpleNamespace

import numpy as np
import pytest

from dlcbench.compilers.registry import availability, describe_backends, get_adapter
from dlcbench.errors import BackendUnavailableError, BadInputError, UnsupportedOpError
from dlcbench_test_support import run_script

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _tf_version() -> tuple[int, int]:
    major, minor = metadata.version("tensorflow").split(".")[:2]
    return int(major), int(minor)


@pytest.fixture(scope="module")
def mlp():
    from dlcbench.models.export import ExportConfig, export_model

    return export_model(ExportConfig("mlp", preset="tiny", batch=2))


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_trt_is_unavailable_with_a_clear_reason():
    status = availability("trt")
    assert not status
    assert "tensorrt is not installed" in status.reason and "TensorRT 10.x" in status.reason
    assert "tensorrt>=10,<11" in status.install_hint


@pytest.mark.skipif(_tf_version() <= (2, 17), reason="this TensorFlow may still ship TF-TRT")
def test_tftrt_is_unavailable_because_tensorflow_dropped_it():
    status = availability("tftrt")
    assert not status
    version = metadata.version("tensorflow")
    assert status.reason == (
        "TF-TRT was removed in TensorFlow 2.18 (2.17 was the last release built with TensorRT); "
        f"this machine has TensorFlow {version}, built without TensorRT"
    )
    assert "2.17" in status.install_hint


def test_registry_lists_both_adapters():
    listed = {name: (status, origin) for name, status, origin in describe_backends()}
    for name in ("trt", "tftrt"):
        status, origin = listed[name]
        assert origin == "builtin"
        assert get_adapter(name).targets == ("cuda",)
        if name == "tftrt" or not HAS_TENSORRT:
            assert not status and status.reason


def test_trt_options_defaults_follow_the_batch():
    options = get_adapter("trt").make_options(batch=4)
    assert (options.target, options.workspace_mb) == ("cuda", 1024)
    assert (options.min_batch, options.opt_batch, options.max_batch) == (1, 4, 4)
    assert get_adapter("trt").make_options(batch=4, max_batch=16).opt_batch == 4


@pytest.mark.parametrize(
    "values, message",
    [
        ({"workspace_mb": 0}, "workspace_mb must be a positive integer, got 0"),
        ({"workspace_mb": True}, "workspace_mb must be an integer, got True"),
        ({"min_batch": 4, "opt_batch": 2, "max_batch": 8}, "min_batch <= opt_batch <= max_batch, got 4, 2, 8"),
        ({"batch": 16, "max_batch": 8}, r"batch 16 is outside the optimisation profile \[1, 8\]"),
        ({"batch": 1, "min_batch": 2}, r"batch 1 is outside the optimisation profile \[2, 2\]"),
        ({"int8_calibration_batches": 0}, "int8_calibration_batches must be a positive integer"),
        ({"timing_cache": ""}, "timing_cache must be a file path or None"),
        ({"builder_optimization_level": 6}, r"builder_optimization_level must be an integer in \[0, 5\]"),
        ({"precision": "bf16"}, "backend trt cannot compile precision bf16; valid: fp32, fp16, int8"),
        ({"target": "cpu"}, "backend trt has no target 'cpu'; valid: cuda"),
    ],
)
def test_trt_option_errors(values, message):
    with pytest.raises(BadInputError, match=message) as info:
        get_adapter("trt").make_options(**values)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_workspace_size_bytes": 0}, "max_workspace_size_bytes must be an integer >= 1, got 0"),
        ({"maximum_cached_engines": 0}, "maximum_cached_engines must be an integer >= 1, got 0"),
        ({"minimum_segment_size": 0}, "minimum_segment_size must be a positive integer or -1, got 0"),
        ({"use_dynamic_shape": "yes"}, "use_dynamic_shape must be true or false"),
        ({"precision": "bf16"}, "backend tftrt cannot compile precision bf16; valid: fp32, fp16, int8"),
        ({"target": "cpu"}, "backend tftrt has no target 'cpu'; valid: cuda"),
    ],
)
def test_tftrt_option_errors(values, message):
    with pytest.raises(BadInputError, match=message):
        get_adapter("tftrt").make_options(**values)


def test_tftrt_accepts_minus_one_segment_size():
    assert get_adapter("tftrt").make_options(minimum_segment_size=-1).minimum_segment_size == -1


@pytest.mark.parametrize("backend", ["trt", "tftrt"])
def test_compile_without_the_backend_raises_unavailable_and_writes_nothing(mlp, backend, tmp_path):
    adapter = get_adapter(backend)
    if adapter.available():
        pytest.skip(f"{backend} is available here")
    out = tmp_path / "artifact"
    with pytest.raises(BackendUnavailableError, match=f"backend {backend} is not available: "):
        adapter.compile(mlp, adapter.make_options(batch=2), out)
    assert not (out / "manifest.json").exists()


def test_modules_import_no_backend_library():
    code = (
        "import sys; import dlcbench.compilers.trt_adapter, dlcbench.compilers.tftrt_adapter;"
        "from dlcbench.compilers.registry import get_adapter; get_adapter('trt').make_options(); get_adapter('tftrt');"
        "print([m for m in ('tensorrt', 'cuda', 'tensorflow', 'keras') if m in sys.modules])"
    )
    proc = run_script("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_fit_batch_cycles_rows():
    from dlcbench.compilers.trt_adapter import fit_batch

    x = np.arange(6).reshape(3, 2)
    assert fit_batch({"x": x}, 4, offset=2)["x"].tolist() == [[4, 5], [0, 1], [2, 3], [4, 5]]


def _parser_error(code: str, desc: str, node: int = -1, operator: str = ""):
    return SimpleNamespace(
        code=lambda: SimpleNamespace(name=code), desc=lambda: desc, node=lambda: node, node_operator=lambda: operator
    )


def test_parser_errors_naming_an_operator_become_unsupported_op(mlp):
    from dlcbench.compilers.trt_adapter import _parser_failure

    errors = [
        _parser_error("UNSUPPORTED_NODE", "No importer registered for op: FancyOp", 3, "FancyOp"),
        _parser_error("UNSUPPORTED_NODE_DATATYPE", "bad type", 0),  # operator found from the ONNX node index
    ]
    parser = SimpleNamespace(num_errors=len(errors), get_error=lambda i: errors[i])
    error = _parser_failure(parser, mlp)
    assert isinstance(error, UnsupportedOpError)
    assert error.ops[0] == "FancyOp" and len(error.ops) == 2
    assert "No importer registered for op: FancyOp" in str(error)

    other = [_parser_error("INVALID_GRAPH", "graph is broken")]
    error = _parser_failure(SimpleNamespace(num_errors=1, get_error=lambda i: other[i]), mlp)
    assert not isinstance(error, UnsupportedOpError) and "graph is broken" in str(error)


def test_profile_shapes_cover_the_dynamic_batch_and_reject_a_wrong_static_batch(mlp):
    adapter = get_adapter("trt")
    network = SimpleNamespace(num_inputs=1, get_input=lambda i: SimpleNamespace(name="input", shape=(-1, 784)))
    shapes = adapter._profile_shapes(network, mlp, adapter.make_options(batch=2, max_batch=8))
    assert shapes == {"input": ((1, 784), (2, 784), (8, 784))}

    static = SimpleNamespace(num_inputs=1, get_input=lambda i: SimpleNamespace(name="input", shape=(2, 784)))
    assert adapter._profile_shapes(static, mlp, adapter.make_options(batch=2)) == {}
    with pytest.raises(BadInputError, match="static batch of 2"):
        adapter._profile_shapes(static, mlp, adapter.make_options(batch=4))


def test_tftrt_maps_keras_output_keys_by_position():
    from dlcbench.compilers.tftrt_adapter import _name_map

    assert _name_map(["a", "b"], ["a", "b", "c"], "inputs") == {"a": "a", "b": "b"}
    keys = ["output_10", "output_2", "output_0"]
    assert _name_map(["x", "y", "z"], keys, "outputs") == {"x": "output_0", "y": "output_2", "z": "output_10"}
