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

