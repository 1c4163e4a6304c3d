"""scripts/compile.py in a subprocess: the happy path and every bad input, one line each."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from dlcbench.errors import ExitCode
from dlcbench_test_support import assert_one_line_error, run_script

FAST = ["--preset", "tiny", "--batch", "2", "--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0"]


def compile_cli(*args: str, timeout: float = 600):
    return run_script("scripts/compile.py", *args, timeout=timeout)


def test_happy_path_tvm_writes_artifact_and_result(tmp_path):
    proc = compile_cli("--backend", "tvm", "--model", "mlp", *FAST, "--out", str(tmp_path / "a"))
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert "check     PASS" in proc.stdout and "median" in proc.stdout and "tvm.time_evaluator" in proc.stdout
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["passed"] and result["manifest"]["backend"] == "tvm"
    assert result["timing"]["stats"]["count"] == len(result["timing"]["samples_s"]) >= 3
    assert (tmp_path / "a" / "model.so").is_file()


def test_list_backends_says_why_unavailable():
    proc = compile_cli("--list-backends")
    assert proc.returncode == 0
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "available" in lines["tvm"] and "unavailable" not in lines["tvm"]
    assert "unavailable" in lines["trt"] and "install:" in lines["trt"]
    assert "2.18" in lines["tftrt"]


def test_failed_check_exits_one(tmp_path):
    proc = compile_cli("--backend", "onnxruntime", "--model", "mlp", *FAST, "--tolerance", "abs=0,rel=0,cosine=1.5",
                       "--out", str(tmp_path / "a"))
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stderr[-2000:]
    assert "check     FAIL" in proc.stdout and "output probs" in proc.stdout


@pytest.fixture(scope="module")
def celu_model(tmp_path_factory):
    """A valid ONNX model using Celu, which TVM 0.27's Relax importer lacks."""
    node = helper.make_node("Celu", ["input"], ["out"], alpha=1.0)
    graph = helper.make_graph(
        [node], "celu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path = tmp_path_factory.mktemp("celu") / "celu.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_unsupported_op_names_the_op(celu_model, tmp_path):
    proc = compile_cli("--backend", "tvm", "--model", celu_model, *FAST, "--out", str(tmp_path / "a"))
    assert_one_line_error(proc, ExitCode.UNSUPPORTED_OP, "Celu")
    ok = compile_cli("--backend", "onnxruntime", "--model", celu_model, *FAST, "--out", str(tmp_path / "b"))
    assert ok.returncode == 0, ok.stderr[-2000:]


@pytest.mark.parametrize(
    "args, code, fragments",
    [
        (["--backend", "nope", "--model", "mlp"], ExitCode.BAD_INPUT, ["unknown backend", "valid: tvm, onnxruntime"]),
        (["--backend", "tvm", "--model", "mlp", "--target", "tpu"], ExitCode.BAD_INPUT, ["valid: cpu, cuda"]),
        (["--backend", "trt", "--model", "mlp", "--target", "cuda"], ExitCode.UNAVAILABLE, ["trt is not available", "install:"]),
        (["--backend", "tftrt", "--model", "mlp", "--target", "cuda"], ExitCode.UNAVAILABLE, ["2.18"]),
        (["--backend", "onnxruntime", "--model", "mlp", "--precision", "fp16"], ExitCode.BAD_INPUT, ["fp16", "valid: fp32, int8"]),
        (["--backend", "onnxruntime", "--model", "mlp", "--threads", "0"], ExitCode.BAD_INPUT, ["threads"]),
        (["--backend", "onnxruntime", "--model", "mlp", "--batch", "0"], ExitCode.BAD_INPUT, ["batch"]),
        (["--backend", "onnxruntime", "--model", "nope"], ExitCode.BAD_INPUT, ["unknown model", "valid: mlp"]),
        (["--backend", "onnxruntime", "--model", "mlp", "--option", "opt_level=max"], ExitCode.BAD_INPUT, ["valid: disable"]),
        (["--backend", "onnxruntime", "--model", "mlp", "--option", "bogus=1"], ExitCode.BAD_INPUT, ["unknown option"]),
        (["--backend", "onnxruntime", "--model", "mlp", "--out", "/dev/null/x"], ExitCode.BAD_INPUT, ["cannot write"]),
        (["--backend", "onnxruntime"], ExitCode.BAD_INPUT, ["--model"]),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(args, code, fragments):
    proc = compile_cli(*args, "--preset", "tiny", "--batch", str(2) if "--batch" not in args else args[args.index("--batch") + 1])
    assert_one_line_error(proc, code, *fragments)


def test_tvm_cuda_compile_only_carries_device_code(tmp_path):
    import shutil

    if not shutil.which("nvcc"):
        pytest.skip("nvcc not on PATH: cannot cross-compile CUDA")
    from dlcbench.compilers.tvm.cuda import device_code_archs

    out = tmp_path / "cuda"
    proc = compile_cli("--backend", "tvm", "--model", "bert", "--target", "cuda", "--option", "arch=sm_90",
                       "--compile-only", *FAST, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device code: sm_90" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target_detail"] == {"kind": "cuda", "arch": "sm_90"}
    assert device_code_archs(out / "model.so") == ["sm_90"]
    assert (out / "reference.npz").is_file() and (out / "params.npz").is_file()
    # Without a GPU the artifact cannot run here: a clear "unavailable", not a crash.
    run = run_script("-c", "from dlcbench.compilers.registry import get_adapter; get_adapter('tvm').load(__import__('sys').argv[1])",
                     str(out))
    assert run.returncode != 0 and "no CUDA GPU" in run.stderr
