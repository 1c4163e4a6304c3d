"""What a new user runs into first: the CPUs they gave the process, a model whose inputs have no shape or are
boolean, Keras models with named outputs, a file of theirs where dlcbench writes a table, a missing plotting
library, infinite durations, and a module of theirs that shares a library's name in the current directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dlcbench.errors import BadInputError, ExitCode
from dlcbench.models.export import ExportConfig, export_model
from dlcbench_test_support import ROOT, assert_one_line_error, run_script


def _save(path: Path, nodes, inputs, outputs) -> Path:
    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_default_threads_are_the_cpus_the_process_was_given():
    code = ("from dlcbench.measure.job import JobConfig; from dlcbench.cli.compile import build_parser; "
            "print(JobConfig(backend='onnxruntime', model='mlp').threads, build_parser().parse_args([]).threads)")
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1"]


def test_tune_refuses_zero_threads_instead_of_taking_all():
    proc = run_script("scripts/tune.py", "--model", "mlp", "--preset", "tiny", "--trials", "1", "--threads", "0",
                      timeout=120)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "threads must be a positive integer", "got 0")


def test_tune_option_refuses_what_a_flag_of_its_own_sets():
    proc = run_script("scripts/tune.py", "--model", "mlp", "--preset", "tiny", "--trials", "1",
                      "--option", "tune_minutes=3", timeout=120)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "--option tune_minutes: give --minutes instead")


def test_models_export_takes_the_input_shape_its_own_error_asks_for(tmp_path):
    model = _save(tmp_path / "dyn.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])])
    proc = run_script("-m", "dlcbench", "models", "export", str(model), "--cache-dir", str(tmp_path / "cache"))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "--input-shape x=1,WIDTH")
    proc = run_script("-m", "dlcbench", "models", "export", str(model), "--input-shape", "x=3,5",
                      "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    [onnx_line] = [line for line in proc.stdout.splitlines() if line.startswith("onnx: ")]
    meta = json.loads((Path(onnx_line[len("onnx: "):]).parent / "meta.json").read_text())
    assert meta["inputs"][0]["shape"][1:] == [5] and meta["batch"] == 3  # the batch from the shape


def test_inputs_declared_without_a_shape_are_refused_in_one_line(tmp_path):
    model = _save(tmp_path / "norank.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(BadInputError, match="ONNX checker rejected the model: Field 'shape'"):
        export_model(ExportConfig(str(model), batch=2, input_shapes=["x=2,3"], cache_dir=tmp_path / "cache"))


def test_boolean_inputs_hold_both_values(tmp_path):
    model = _save(tmp_path / "mask.onnx", [helper.make_node("Not", ["mask"], ["y"])],
                  [helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 64])],
                  [helper.make_tensor_value_info("y", TensorProto.BOOL, ["batch", 64])])
    mask = export_model(ExportConfig(str(model), batch=2, cache_dir=tmp_path / "cache")).inputs()["mask"]
    assert mask.dtype == np.bool_ and 0 < mask.sum() < mask.size


@pytest.mark.slow
def test_keras_model_with_named_outputs_exports_them_by_name(tmp_path):
    import keras

    x = keras.Input((4,), name="x")
    keras.Model(x, {"scores": keras.layers.Dense(3, name="d3")(x),
                    "embedding": keras.layers.Dense(2, name="d2")(x)}).save(tmp_path / "named.keras")
    exported = export_model(ExportConfig(str(tmp_path / "named.keras"), batch=2, cache_dir=tmp_path / "cache"))
    reference = exported.reference()
    assert sorted(reference) == ["embedding", "scores"]
    assert reference["scores"].shape == (2, 3) and reference["embedding"].shape == (2, 2)
    assert [o.name for o in onnx.load(str(exported.onnx_path)).graph.output] == ["embedding", "scores"]


def test_tables_are_never_written_over_a_users_file(tmp_path):
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    proc = run_script("scripts/coverage.py", "--ops", "Relu", "--backends", "onnxruntime",
                      "--db", str(tmp_path / "c.sqlite"), "--markdown", str(mine), timeout=300)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "refusing to overwrite", "not a coverage table dlcbench wrote")
    assert not (tmp_path / "c.sqlite").exists()  # refused before any test ran
    proc = run_script("scripts/import_results.py", str(ROOT / "benchmarks" / "results" / "gpu-h200.json"),
                      "--db", str(tmp_path / "r.sqlite"), "--table", str(mine), timeout=300)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "refusing to overwrite", "not a results table dlcbench wrote")
    assert mine.read_text() == "my notes\n" and not (tmp_path / "r.sqlite").exists()
    proc = run_script("scripts/import_results.py", str(ROOT / "benchmarks" / "results" / "gpu-h200.json"),
                      "--db", str(tmp_path / "r.sqlite"), "--table", str(tmp_path), timeout=300)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "is a directory")


def test_a_table_dlcbench_wrote_is_replaced(tmp_path):
    table = tmp_path / "gpu.md"
    for _ in range(2):
        proc = run_script("scripts/import_results.py", str(ROOT / "benchmarks" / "results" / "gpu-h200.json"),
                          "--db", str(tmp_path / "r.sqlite"), "--table", str(table), timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert table.read_text() == (ROOT / "benchmarks" / "results" / "gpu-h200.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_report_without_matplotlib_names_the_install(tmp_path):
    from dlcbench.results.store import ResultsStore

    db = tmp_path / "r.sqlite"
    with ResultsStore(db):
        pass
    hide = ("import sys; sys.modules['matplotlib'] = None; from dlcbench.cli import cli; "
            f"sys.argv = ['dlcbench', 'report', 'x', '--db', {str(db)!r}, '--out', {str(tmp_path / 'rep')!r}]; cli()")
    proc = run_script("-c", hide, timeout=120)
    assert_one_line_error(proc, ExitCode.UNAVAILABLE, "matplotlib", "pip install -e '.[report]'")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("script, args, fragment", [
    ("scripts/compare.py", ["--name", "t", "--models", "mlp", "--backends", "onnxruntime", "--timeout", "inf"],
     "the job timeout must be a positive finite number, got inf"),
    ("scripts/compile.py", ["--backend", "onnxruntime", "--model", "mlp", "--min-seconds", "nan"],
     "min_seconds must be a finite number >= 0, got nan"),
    ("scripts/compile.py", ["--backend", "tvm", "--model", "mlp", "--tune-minutes", "inf"],
     "option tune_minutes must be a finite number, got inf"),
])
def test_infinite_or_nan_durations_are_refused(tmp_path, script, args, fragment):
    proc = run_script(script, *args, "--preset", "tiny", "--db" if "compare" in script else "--out",
                      str(tmp_path / "x"), timeout=300)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, fragment)


def test_a_module_in_the_current_directory_does_not_replace_a_library_in_the_worker(tmp_path):
    (tmp_path / "onnx.py").write_text("raise SystemExit('shadowed')\n")
    proc = run_script("scripts/compile.py", "--backend", "onnxruntime", "--model", "mlp", "--preset", "tiny",
                      "--threads", "1", "--warmup", "1", "--min-iters", "2", "--min-seconds", "0",
                      "--out", str(tmp_path / "a"), cwd=tmp_path, timeout=300)
    assert proc.returncode == ExitCode.OK, proc.stderr[-2000:]
    assert "check     PASS" in proc.stdout
