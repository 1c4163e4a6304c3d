"""MetaSchedule tuning: records, reuse across processes, refusal of foreign or corrupt databases, time budget."""

from __future__ import annotations

import json

import pytest

from dlcbench.compilers.tvm.adapter import cpu_target
from dlcbench.compilers.tvm.tuning import META_FILE, TuningConfig, default_db_dir, target_identity, validate_database
from dlcbench.errors import BadInputError, ExitCode
from dlcbench_test_support import assert_one_line_error, run_script

# replay-trace + a random cost model: real MetaSchedule search, cheap enough for CI.
CHEAP = ["--option", "tune_strategy=replay-trace", "--option", "tune_cost_model=random"]
FAST = ["--preset", "tiny", "--batch", "1", "--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0"]


def _compile(*args):
    return run_script("scripts/compile.py", "--backend", "tvm", "--model", "mlp", *FAST, *CHEAP, *args, timeout=1200)


@pytest.mark.slow
def test_tiny_budget_tunes_then_reuses_then_time_budget_stops(tmp_path):
    db = tmp_path / "db"
    first = _compile("--tune-trials", "4", "--tuning-db", str(db), "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    tuning = manifest["extra"]["tuning"]
    assert tuning["new_trials"] >= 4 and not tuning["stopped_by_time"]
    records = (db / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= 4
    assert "check     PASS" in first.stdout  # the tuned module matches the reference
    assert (tmp_path / "a" / "tuning_curve.png").stat().st_size > 1000
    # Heaviest task first: with a budget of one batch, the big matmul gets every trial.
    tasks = sorted(tuning["tasks"], key=lambda t: -t["flops"])
    assert tasks[0]["name"].startswith("fused_matmul") and tasks[0]["new_trials"] == 4 and tasks[0]["best_ms"] > 0
    assert all(t["new_trials"] == 0 for t in tasks[1:])
    assert tasks[0]["seconds"] > 0 and all(t["seconds"] == 0 for t in tasks[1:])
    # Where the time went, from MetaSchedule's profiler (replay-trace's search has no scope: it is in "other").
    stages = tuning["stage_seconds"]
    assert all(stages.get(k, 0) > 0 for k in ("build", "measure", "other")), stages
    assert sum(stages.values()) <= tuning["seconds"] * 1.05

    second = _compile("--tune-trials", "4", "--tuning-db", str(db), "--out", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "b" / "manifest.json").read_text())["extra"]["tuning"]
    assert again["new_trials"] == 0 and "check     PASS" in second.stdout

    third = _compile("--tune-trials", "400", "--tune-minutes", "0.001", "--tuning-db", str(db), "--out", str(tmp_path / "c"))
    assert third.returncode == 0, third.stderr[-3000:]
    stopped = json.loads((tmp_path / "c" / "manifest.json").read_text())["extra"]["tuning"]
    assert stopped["stopped_by_time"] and 0 < stopped["new_trials"] <= 16  # one round, then the clock stops it
    assert "check     PASS" in third.stdout


def _db_for(tmp_path, target):
    db = tmp_path / "db"
    db.mkdir()
    (db / META_FILE).write_text(json.dumps(target_identity(target)))
    return db


def test_database_of_another_target_is_refused(tmp_path):
    here = cpu_target(1)
    db = _db_for(tmp_path, {**here, "mcpu": "skylake" if here["mcpu"] != "skylake" else "znver4"})
    with pytest.raises(BadInputError, match="refusing to apply"):
        validate_database(db, here, create=False)
    proc = _compile("--tuning-db", str(db), "--out", str(tmp_path / "a"))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "was built for", "mcpu")


def test_database_of_another_tvm_version_is_refused(tmp_path):
    here = cpu_target(1)
    db = tmp_path / "db"
    db.mkdir()
    (db / META_FILE).write_text(json.dumps({**target_identity(here), "tvm_version": "0.26.0"}))
    with pytest.raises(BadInputError, match="0.26.0"):
        validate_database(db, here, create=False)


def test_corrupt_or_unlabelled_database_is_refused(tmp_path):
    here = cpu_target(1)
    db = _db_for(tmp_path, here)
    (db / "database_workload.json").write_text('["abc", {"x": 1}]\n["def", {"y"')
    with pytest.raises(BadInputError, match="database_workload.json line 2"):
        validate_database(db, here, create=False)
    proc = _compile("--tuning-db", str(db), "--out", str(tmp_path / "a"))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "corrupt tuning database")
    assert not (tmp_path / "a" / "model.so").exists()  # never half-applied
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "database_tuning_record.json").write_text("")
    with pytest.raises(BadInputError, match="unknown"):
        validate_database(bare, here, create=False)


def test_default_database_is_per_target_and_version():
    a, b = default_db_dir(cpu_target(1, "znver4")), default_db_dir(cpu_target(2, "znver4"))
    assert a != b and "znver4" in a.name and "0.27" in a.name


def test_tuning_config_validation():
    with pytest.raises(BadInputError, match="--tune-trials"):
        TuningConfig()
    with pytest.raises(BadInputError, match="valid: evolutionary"):
        TuningConfig(trials=1, strategy="annealing")
    with pytest.raises(BadInputError, match="valid: xgb"):
        TuningConfig(trials=1, cost_model="svm")
    with pytest.raises(BadInputError, match="generations must be 0 or more, got -1"):
        TuningConfig(trials=1, generations=-1)


def test_search_strategy_takes_the_configured_population_and_generations(tiny_export, tmp_path):
    """MetaSchedule's EvolutionarySearch gets the population and generations; below 100 its random samples per
    round (init_min_unmeasured) are half the population, MetaSchedule's 50 otherwise."""
    import onnx
    import tvm
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from dlcbench.compilers.tvm.adapter import import_onnx
    from dlcbench.compilers.tvm.tuning import prepare_module, tune_contexts

    export = tiny_export("mlp", batch=1, fold=True)
    mod, _ = import_onnx(onnx.load(str(export.onnx_path)), {k: list(v.shape) for k, v in export.inputs().items()}, True)
    target_dict = cpu_target(1)
    target = tvm.target.Target(target_dict)
    tasks = extract_tasks(prepare_module(mod, target), target)
    found = {}
    for name, config in (("default", TuningConfig(trials=1)), ("small", TuningConfig(trials=1, population=32,
                                                                                      generations=0))):
        strategy = tune_contexts(tasks, tmp_path / name, config, 1, target_dict)[0].search_strategy
        found[name] = (strategy.population_size, strategy.genetic_num_iters, strategy.init_min_unmeasured)
    assert found == {"default": (128, 1, 50), "small": (32, 0, 16)}


def test_tuning_flags_only_for_tvm():
    proc = run_script("scripts/compile.py", "--backend", "onnxruntime", "--model", "mlp", "--tune-trials", "3")
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "tvm only")


@pytest.mark.slow
def test_tune_script_prints_the_per_task_table(tmp_path):
    proc = run_script("scripts/tune.py", "--model", "mlp", "--preset", "tiny", "--threads", "1", "--trials", "4",
                      "--strategy", "replay-trace", "--cost-model", "random", "--tuning-db", str(tmp_path / "db"),
                      "--option", "mcpu=x86-64", "--out", str(tmp_path / "out"), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 new trials" in proc.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["target_detail"]["mcpu"] == "x86-64"  # --option reached the target tuned for
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("fused_matmul")]
    assert rows and rows[0][4] == "4"  # the heaviest task got the batch: calls, share, had, new
    assert float(rows[0][6]) > 0  # its tuning seconds
    assert any(line.startswith("time      ") and "build" in line for line in proc.stdout.splitlines())
    assert (tmp_path / "out" / "tuning_curve.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model, precision", [("mobilenetv2", "fp32"), ("cnn", "int8")])
def test_tuned_convolutions_run_channels_last_and_pass_the_check(tmp_path, model, precision):
    """Tuning converts 2-D convolutions to NHWC (weights transposed once, at compile time): still checked.
    A quantized model keeps NCHW (ConvertLayout would transpose activations around every quantize op)."""
    out = tmp_path / "a"
    run = run_script("scripts/compile.py", "--backend", "tvm", "--model", model, *FAST, *CHEAP, "--precision", precision,
                     "--tune-trials", "8", "--tuning-db", str(tmp_path / "db"), "--out", str(out), timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "check     PASS" in run.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["conv_layout"] == ("NCHW" if precision == "int8" else "NHWC")
    if precision == "fp32":  # the weights were transposed at compile time: params.npz holds them OHWI
        import numpy as np
        import onnx

        from dlcbench.models.export import ExportConfig, export_model

        exported = export_model(ExportConfig(model=model, preset="tiny", batch=1, fold=True))
        graph = onnx.load(str(exported.onnx_path)).graph
        conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
        oihw = [tuple(i.dims) for i in graph.initializer if i.name in conv_weights]
        with np.load(out / "params.npz") as params:
            shapes = sorted(params[k].shape for k in params.files if params[k].ndim == 4)
        ohwi = [(o, h, w, i) for o, i, h, w in oihw]
        assert oihw and all(shape in shapes for shape in ohwi)
        assert not any(shape in shapes for shape in oihw if shape not in ohwi)  # none left as imported
    # An NCHW compile with that database still compiles and checks (the NHWC records simply do not apply).
    nchw = run_script("scripts/compile.py", "--backend", "tvm", "--model", model, *FAST, "--precision", precision,
                      "--tuning-db", str(tmp_path / "db"), "--option", "conv_layout=NCHW", "--out", str(tmp_path / "b"),
                      timeout=1200)
    assert nchw.returncode == 0, nchw.stderr[-3000:]
    assert "conv_layout" not in json.loads((tmp_path / "b" / "manifest.json").read_text())["extra"]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [2, 1])
def test_candidates_are_timed_on_the_targets_threads(tiny_export, tmp_path, monkeypatch, threads):
    """MetaSchedule's measuring workers size their TVM pool from TVM_NUM_THREADS when they start; unset, x86
    gives them half the hardware threads, so a 2-thread target on 2 vCPUs was tuned on one thread. Every
    worker process alive while tuning is read from /proc (what it was started with); the variable is put back."""
    import os

    import onnx
    import psutil
    import tvm

    from dlcbench.compilers.tvm.adapter import import_onnx
    from dlcbench.compilers.tvm.tuning import prepare_module, tune_module

    monkeypatch.setenv("TVM_NUM_THREADS", "7")  # what the caller had: put back afterwards
    export = tiny_export("mlp", batch=1, fold=True)
    mod, _ = import_onnx(onnx.load(str(export.onnx_path)), {k: list(v.shape) for k, v in export.inputs().items()}, True)
    target_dict = cpu_target(threads)
    seen: list[str | None] = []
    # workers of an earlier tuning in this process may still be ending (slowly, on a loaded machine): not ours
    earlier = {child.pid for child in psutil.Process().children(recursive=True)}

    def progress(_line: str) -> None:
        for child in psutil.Process().children(recursive=True):
            if child.pid in earlier:
                continue
            try:
                if "popen_worker" in " ".join(child.cmdline()):
                    seen.append(child.environ().get("TVM_NUM_THREADS"))
            except psutil.Error:
                pass

    config = TuningConfig(trials=16, db=tmp_path / "db", strategy="replay-trace", cost_model="random")
    _, report = tune_module(prepare_module(mod, tvm.target.Target(target_dict)), target_dict, config, progress=progress)
    assert report.new_trials >= 16
    assert seen and set(seen) == {str(threads)}, seen
    assert os.environ["TVM_NUM_THREADS"] == "7"
