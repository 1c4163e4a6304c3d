"""Divergence bisect (``dlcbench bisect``): the first ONNX node whose output a backend computes differently from
ONNX Runtime, on real backends: an ONNX Runtime plugin that perturbs one known node, plain ONNX Runtime, and TVM
with fast math at zero tolerance."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlcbench.errors import CompileError, ExitCode
from dlcbench.measure.bisect import BisectConfig, bisect, format_report
from dlcbench_perturbing_adapter import FACTOR, REGISTRATION
from dlcbench_test_support import assert_one_line_error, run_script

FIRST_LINE = re.compile(r"^first diverging node: (\S+) \((\w+)\)$", re.M)
NO_DIVERGENCE = "no diverging node: the backend matches ONNX Runtime on every intermediate tensor"


def _save(path, nodes, initializers, width_out):
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width_out])],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return str(path)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> str:
    """MatMul -> Add -> Relu -> MatMul -> Softmax, ``x`` [N, 8] -> ``y`` [N, 4]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="matmul1"),
             helper.make_node("Add", ["h1", "b1"], ["h2"], name="add1"),
             helper.make_node("Relu", ["h2"], ["h3"], name="relu1"),
             helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="matmul2"),
             helper.make_node("Softmax", ["h4"], ["y"], name="softmax", axis=-1)]
    weights = {"w1": rng.normal(size=(8, 16)).astype(np.float32), "b1": np.full(16, 0.5, np.float32),
               "w2": rng.normal(size=(16, 4)).astype(np.float32)}
    return _save(tmp_path_factory.mktemp("bisect") / "mlp.onnx", nodes, weights, 4)


@pytest.fixture(scope="module")
def erf_graph(tmp_path_factory) -> str:
    """MatMul -> Erf -> Exp -> Tanh: the functions TVM's fast math approximates."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="matmul1"),
             helper.make_node("Erf", ["h1"], ["h2"], name="erf1"),
             helper.make_node("Exp", ["h2"], ["h3"], name="exp1"),
             helper.make_node("Tanh", ["h3"], ["y"], name="tanh1")]
    weights = {"w1": (rng.normal(size=(8, 16)) * 0.5).astype(np.float32)}
    return _save(tmp_path_factory.mktemp("bisect") / "erf.onnx", nodes, weights, 16)


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.setenv("DLCBENCH_BACKENDS", REGISTRATION)


def _bisect(args: list[str], **env) -> tuple:
    return run_script("scripts/bisect.py", "--threads", "1", "--batch", "2", *args, env=env, timeout=300)


def test_library_names_the_perturbed_node_and_the_chain_after_it(mlp, plugins):
    report = bisect(BisectConfig(backend="perturbing", model=mlp, batch=2, threads=1))
    assert report.diverged and report.compiles == 1 and not report.unchecked
    first = report.first
    assert (first.name, first.op_type, first.outputs) == ("relu1", "Relu", ["h3"])
    assert first.input_shapes == {"h2": [2, 16]}
    assert first.max_rel == pytest.approx(FACTOR - 1, rel=1e-3)
    assert [(d.name, d.downstream) for d in report.diverging[1:]] == [("matmul2", True), ("softmax", True)]
    assert report.tensors_checked == 5  # every node's output, the graph output included
    text = format_report(report)
    assert text.splitlines()[0] == "first diverging node: relu1 (Relu)"
    assert "inputs: h2 [2, 16]" in text and "matmul2 (MatMul) max abs error" in text


def test_a_backend_that_refuses_many_outputs_is_bisected_in_halves(mlp, plugins):
    """The picky backend compiles at most two graph outputs: the four intermediates are split until each fits."""
    report = bisect(BisectConfig(backend="picky", model=mlp, batch=2, threads=1))
    assert report.first.name == "relu1" and not report.unchecked
    assert report.compiles == 8  # 4 fail, the model as it is, 2 fail, 1, 1, 2 fail, 1, 1
    budget = bisect(BisectConfig(backend="picky", model=mlp, batch=2, threads=1, max_compiles=4))
    assert budget.compiles == 4 and set(budget.unchecked) == {"h2", "h3", "h4"}  # 4 fail, 0, 2 fail, 1, spent
    assert all("budget of 4 compiles" in why for why in budget.unchecked.values())
    assert budget.first.name == "softmax"  # relu1's output was never compared: the report says so
    assert "not compared: 3 tensor(s)" in format_report(budget)


def test_a_backend_that_cannot_compile_the_model_raises_its_error(mlp, monkeypatch):
    """Not 2n compiles of halves: the model as it is fails too, and that error is the answer."""
    from dlcbench_faulty_adapters import REGISTRATION as FAULTY

    monkeypatch.setenv("DLCBENCH_BACKENDS", FAULTY)
    with pytest.raises(CompileError, match="boom from RaiseAdapter"):
        bisect(BisectConfig(backend="raise", model=mlp, batch=2, threads=1))


def test_cli_names_the_perturbed_node_exit_one(mlp):
    proc = _bisect(["--backend", "perturbing", "--model", mlp], DLCBENCH_BACKENDS=REGISTRATION)
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stderr[-3000:]
    assert FIRST_LINE.findall(proc.stdout) == [("relu1", "Relu")]
    assert proc.stdout.splitlines()[0] == "first diverging node: relu1 (Relu)"
    assert "inputs: h2 [2, 16]" in proc.stdout and "softmax (Softmax)" in proc.stdout
    as_json = _bisect(["--backend", "perturbing", "--model", mlp, "--json"], DLCBENCH_BACKENDS=REGISTRATION)
    assert as_json.returncode == ExitCode.CHECK_FAILED, as_json.stderr[-3000:]
    report = json.loads(as_json.stdout)
    assert (report["first"]["name"], report["first"]["op_type"]) == ("relu1", "Relu")
    assert [d["name"] for d in report["diverging"]] == ["relu1", "matmul2", "softmax"]


@pytest.mark.parametrize("backend, extra", [
    ("onnxruntime", []),
    ("perturbing", ["--tolerance", "abs=1,rel=1"]),  # a 1 % error within a loose tolerance (applied to all)
])
def test_cli_finds_no_divergence_exit_zero(mlp, backend, extra):
    proc = _bisect(["--backend", backend, "--model", mlp, *extra], DLCBENCH_BACKENDS=REGISTRATION)
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == NO_DIVERGENCE
    assert "compared 5 tensors of 5 nodes" in proc.stdout


@pytest.mark.slow
def test_tvm_fast_math_at_zero_tolerance_names_an_approximated_function(erf_graph):
    from dlcbench.compilers.registry import availability

    if not availability("tvm"):
        pytest.skip("tvm is not available here")
    proc = _bisect(["--backend", "tvm", "--model", erf_graph, "--option", "fast_math=true",
                    "--tolerance", "abs=0,rel=0"])
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stderr[-3000:]
    (name, op), = FIRST_LINE.findall(proc.stdout)
    # TVM 0.27 against ONNX Runtime 1.31: the Erf (the MatMul before it matches bit for bit); Exp and Tanh
    # after it diverge too. Without fast math the Erf still differs by an ulp (libm erff against MLAS).
    assert op in ("Erf", "Exp", "Tanh") and name in ("erf1", "exp1", "tanh1"), proc.stdout
    assert re.search(r"max abs error \S+, max rel error \S+", proc.stdout), proc.stdout


@pytest.mark.parametrize("args, code, fragments", [
    (["--backend", "nope", "--model", "MODEL"], ExitCode.BAD_INPUT, ["unknown backend 'nope'"]),
    (["--backend", "onnxruntime", "--model", "missing/model.onnx"], ExitCode.BAD_INPUT, ["model file not found"]),
    (["--backend", "onnxruntime", "--model", "nozoo"], ExitCode.BAD_INPUT, ["nozoo"]),
    (["--backend", "onnxruntime", "--model", "MODEL", "--tolerance", "abs=x"], ExitCode.BAD_INPUT,
     ["bad tolerance value"]),
    (["--backend", "onnxruntime", "--model", "MODEL", "--tolerance", "nope:abs=0"], ExitCode.BAD_INPUT,
     ["unknown output(s) 'nope'"]),
    (["--backend", "onnxruntime", "--model", "MODEL", "--option", "opt_level=9"], ExitCode.BAD_INPUT,
     ["opt_level"]),
    (["--model", "MODEL"], ExitCode.BAD_INPUT, ["--backend and --model are required"]),
])
def test_cli_bad_input_is_one_line_exit_two(mlp, args, code, fragments):
    proc = _bisect([mlp if a == "MODEL" else a for a in args] + ["--json"])
    assert_one_line_error(proc, code, *fragments)
    assert proc.stdout == ""


@pytest.mark.parametrize("backend, code, fragment", [("crash", ExitCode.JOB_DIED, "crashed with SIGSEGV"),
                                                     ("raise", ExitCode.BACKEND_ERROR, "boom")])
def test_a_backend_that_crashes_is_one_line_and_leaves_nothing_running(mlp, backend, code, fragment):
    from dlcbench_faulty_adapters import REGISTRATION as FAULTY
    from dlcbench_test_support import live_processes_with

    proc = _bisect(["--backend", backend, "--model", mlp], DLCBENCH_BACKENDS=FAULTY, DLCBENCH_BISECT_MARK="bisect-crash")
    assert_one_line_error(proc, code, fragment)
    assert not live_processes_with("bisect-crash")


def test_a_backend_that_hangs_is_killed_at_the_timeout(mlp):
    from dlcbench_faulty_adapters import REGISTRATION as FAULTY
    from dlcbench_test_support import live_processes_with

    proc = _bisect(["--backend", "hang", "--model", mlp, "--timeout", "30"], DLCBENCH_BACKENDS=FAULTY,
                   DLCBENCH_BISECT_MARK="bisect-hang")
    assert_one_line_error(proc, ExitCode.JOB_DIED, "the bisect of hang on", "had no result after 30 s; killed")
    assert not live_processes_with("bisect-hang")
