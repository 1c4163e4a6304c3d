"""TVM adapter internals the conformance suite does not see: import, fast math, profiling."""

from __future__ import annotations

import onnx
import pytest

from dlcbench.compilers.base import CompileOptions
from dlcbench.compilers.registry import get_adapter
from dlcbench.compilers.tvm.adapter import SMALL_PARAM_ELEMENTS, TvmOptions, cpu_target, import_onnx


def _imported(export):
    return import_onnx(onnx.load(str(export.onnx_path)), {k: list(v.shape) for k, v in export.inputs().items()}, True)


def test_small_params_are_constants_so_clip_guards_fold_and_every_task_is_schedulable(tiny_export, tmp_path):
    """ReLU6's Clip bounds used to be parameters: their NaN guards fused into each depthwise conv and
    MetaSchedule raised a reverse-compute-at ScheduleError building those tasks' design spaces."""
    import tvm
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts

    from dlcbench.compilers.tvm.tuning import _load_cpu_intrinsics, prepare_module

    mod, params = _imported(tiny_export("mobilenetv2", batch=1, fold=True))
    assert params and all(p.size > SMALL_PARAM_ELEMENTS for p in params)
    target = tvm.target.Target(cpu_target(1))
    tasks = extract_tasks(prepare_module(mod, target), target)
    assert not [t.task_name for t in tasks if "isnan" in t.task_name]
    _load_cpu_intrinsics()
    relu6_convs = [t for t in tasks if "conv2d" in t.task_name and "minimum" in t.task_name]
    assert relu6_convs
    contexts, _ = extracted_tasks_to_tune_contexts(relu6_convs, str(tmp_path), num_threads=1, seed=0)
    for ctx in contexts:
        assert ctx.generate_design_space()  # raised ScheduleError before


@pytest.mark.parametrize("fast_math", [True, False])
def test_fast_math_replaces_libm_erf_and_still_matches_the_reference(tiny_export, tmp_path, fast_math):
    export = tiny_export("bert", batch=1, fold=True)
    adapter = get_adapter("tvm")
    options = TvmOptions(threads=1, fast_math=fast_math)
    adapter.compile(export, options, tmp_path)
    with adapter.load(tmp_path) as session:
        outputs = session.run(export.inputs())
    from dlcbench.measure.check import check_outputs

    report = check_outputs(outputs, export.reference())
    assert report.passed, report.summary()
    source = (tmp_path / "model.so").read_bytes()
    assert (b"erff" in source) != fast_math  # libm's scalar erf is only called without fast math


def test_profile_attributes_time_to_the_model_functions(tiny_export, tmp_path):
    export = tiny_export("mlp", batch=1, fold=True)
    adapter = get_adapter("tvm")
    adapter.compile(export, TvmOptions(threads=1), tmp_path)
    with adapter.load(tmp_path) as session:
        rows = session.profile(export.inputs(), repeat=3)
    names = [r["name"] for r in rows]
    assert any("matmul" in n for n in names) and any("softmax" in n for n in names)
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-6
    assert all(r["ms"] >= 0 and r["calls"] >= 1 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["ms"])


def test_fast_math_option_is_validated():
    assert issubclass(TvmOptions, CompileOptions) and TvmOptions().fast_math
    from dlcbench.errors import BadInputError

    with pytest.raises(BadInputError, match="fast_math must be true or false"):
        TvmOptions(fast_math="yes")


@pytest.mark.parametrize("options, message", [
    ({"tune_population": 0}, "tune_population must be a positive integer, got 0"),
    ({"tune_population": "64"}, "tune_population must be a positive integer, got '64'"),
    ({"tune_generations": -1}, "tune_generations must be an integer of 0 or more, got -1"),
    ({"tune_generations": True}, "tune_generations must be an integer of 0 or more, got True"),
])
def test_search_options_are_validated(options, message):
    from dlcbench.errors import BadInputError

    with pytest.raises(BadInputError, match=message):
        TvmOptions(**options)
    assert TvmOptions(tune_population=16, tune_generations=0).tune_generations == 0



def _clip_model(opset: int, bounds):
    """Conv -> Clip -> Conv -> Clip as ONNX: Clip's bounds as attributes before opset 11, else as initializers
    of the given shapes (``None``: the bound is left out)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1])]
    lo, hi = bounds
    for i, src in enumerate(["c1", "c2"]):
        if opset < 11:
            nodes.append(helper.make_node("Clip", [src], [f"r{i}"], min=float(lo), max=float(hi)))
        else:
            names = []
            for name, value in ((f"lo{i}", lo), (f"hi{i}", hi)):
                if value is None:
                    names.append("")
                    continue
                inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
                names.append(name)
            nodes.append(helper.make_node("Clip", [src, *names], [f"r{i}"]))
        if i == 0:
            nodes.append(helper.make_node("Conv", ["r0", "w2"], ["c2"], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("r1", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, rng.normal(scale=4, size=(1, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("opset, bounds", [
    (6, (0.0, 6.0)),                # attributes
    (17, (0.0, 6.0)),               # scalar initializers (tf2onnx's ReLU6)
    (13, ([-1.0], [2.0])),          # one-element bounds, as some exporters write them
    (17, (float("nan"), 3.0)),      # a NaN bound is no bound
    (17, (None, 1.5)),              # only a maximum
])
@pytest.mark.parametrize("separate_params", [True, False])
def test_clip_imports_as_relax_ops_layout_conversion_sees_through_and_matches_onnxruntime(opset, bounds,
                                                                                            separate_params):
    """TVM imports Clip as opaque call_tir; dlcbench's converter emits relax maximum/minimum, which have a layout
    rule, so a channels-last conversion adds no transposes around a ReLU6 (it added two per Clip)."""
    import numpy as np
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from dlcbench.compilers.tvm.tuning import convert_conv_layout, prepare_module

    model, x = _clip_model(opset, bounds)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    mod, params = import_onnx(model, {"x": [1, 3, 8, 8]}, separate_params)
    assert "call_tir" not in mod.script()
    mod, params, layout = convert_conv_layout(mod, params)
    assert layout == "NHWC"
    # The input's and the output's transposes only (weights were transposed at compile time, or are constants).
    assert mod.script().count("R.permute_dims(") <= 2 + (0 if separate_params else 2)
    target = tvm.target.Target(cpu_target(1))
    vm = relax.VirtualMachine(tvm.compile(prepare_module(mod, target), target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in params]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_sessions_run_on_their_threads_in_any_order_and_a_pool_too_small_is_refused(tiny_export, tmp_path,
                                                                                     monkeypatch):
    """TVM sizes an OS thread's pool once: a 2-thread session loaded after a 1-thread one used to run on one
    thread, and be recorded as two. Each case runs on a new OS thread (a new pool), one after the other."""
    import os
    import threading

    import tvm

    from dlcbench.errors import BackendRuntimeError

    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # put back for the rest of the session afterwards
    export = tiny_export("mlp", batch=1, fold=True)
    adapter = get_adapter("tvm")
    for n in (1, 2):
        adapter.compile(export, TvmOptions(threads=n), tmp_path / f"t{n}")
    num_threads = tvm.get_global_func("runtime.NumThreads")
    seen: dict[str, object] = {}

    def in_order(*order):
        running = []
        for n in order:
            with adapter.load(tmp_path / f"t{n}") as session:
                session.run(export.inputs())
                running.append(int(num_threads()))
        seen[order] = running

    def pool_made_elsewhere():
        saved = os.environ.get("TVM_NUM_THREADS")
        os.environ["TVM_NUM_THREADS"] = "1"
        num_threads()  # another library's first use of TVM on this thread: a 1-worker pool
        if saved is not None:
            os.environ["TVM_NUM_THREADS"] = saved
        try:
            adapter.load(tmp_path / "t2")
        except BackendRuntimeError as err:
            seen["elsewhere"] = str(err)

    for target, args in ((in_order, (1, 2, 1)), (in_order, (2, 1, 2)), (pool_made_elsewhere, ())):
        thread = threading.Thread(target=target, args=args)
        thread.start()
        thread.join()
    assert seen[(1, 2, 1)] == [1, 2, 1] and seen[(2, 1, 2)] == [2, 1, 2]
    assert "can run 1 of the 2 threads asked" in seen["elsewhere"]
    assert os.environ["TVM_NUM_THREADS"] in {"1", "2"}  # what the last load asked, for processes started later
