"""The ``jax`` backend beyond the conformance suite (which runs it too, as a registered backend): the real job
path on zoo models, reduced precision, Keras's process-wide backend (imported with TensorFlow first, or not yet),
the cuda target on a machine without a GPU, and its one-line errors."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from dlcbench.errors import BackendUnavailableError, BadInputError, ExitCode
from dlcbench.measure.timing import TimingConfig
from dlcbench_onnx_graphs import onnx_graph
from dlcbench_test_support import ROOT, assert_one_line_error, run_script

FAST = ["--preset", "tiny", "--batch", "2", "--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0"]
SHORT = TimingConfig(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0, max_seconds=2, ci_target=0)


@pytest.fixture(scope="module")
def jax_job(tmp_path_factory):
    """Runs (model, precision, target) through ``run_job`` once per module; returns ``(result, out_dir)``."""
    from dlcbench.compilers.registry import availability
    from dlcbench.measure.job import JobConfig, run_job

    status = availability("jax")
    if not status:
        pytest.skip(f"jax unavailable here: {status.reason}")
    done: dict = {}

    def get(model: str, precision: str = "fp32", target: str = "cpu"):
        key = (model, precision, target)
        if key not in done:
            out = tmp_path_factory.mktemp(f"jax-{model}-{precision}-{target}") / "artifact"
            config = JobConfig(backend="jax", model=model, preset="tiny", precision=precision, target=target,
                               batch=2, threads=1, out_dir=out, timing=SHORT, compile_only=target != "cpu")
            done[key] = (run_job(config), out)
        return done[key]

    return get


def _export(model: str):
    from dlcbench.models.export import ExportConfig, export_model

    return export_model(ExportConfig(model, preset="tiny", batch=2))


# --------------------------------------------------------------------------- registration, availability


def test_registered_with_its_install_hint_and_pinned_in_the_extras():
    from dlcbench.compilers.registry import entries, get_adapter_class

    entry = entries()["jax"]
    assert entry.install_hint.startswith("pip install -e '.[jax]'")
    cls = get_adapter_class("jax")
    assert cls.source == "keras" and cls.targets == ("cpu", "cuda") and cls.requires == ("jax", "keras")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["jax"] == ["jax==0.10.2", "jaxlib==0.10.2"]
    assert {"jax==0.10.2", "jaxlib==0.10.2"} <= set(extras["dev"])


def test_availability_imports_neither_keras_nor_tensorflow():
    """``available()`` imports JAX only: Keras would be imported on the TensorFlow backend (and import TensorFlow)."""
    code = ("import sys, dlcbench; from dlcbench.compilers.registry import availability; s = availability('jax');"
            "print(s.ok, [m for m in ('keras', 'tensorflow') if m in sys.modules])")
    proc = run_script("-c", code, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[0] == "True []", proc.stdout


# --------------------------------------------------------------------------- bad input


def test_an_onnx_model_is_refused(tmp_path):
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.models.export import ExportConfig, export_model

    adapter = get_adapter("jax")
    model = export_model(ExportConfig(str(onnx_graph(tmp_path / "scaled.onnx", "scaled")), batch=2))
    assert model.keras_path is None
    with pytest.raises(BadInputError, match=r"^backend jax needs a Keras model \(\.keras\), not an \.onnx file$"):
        adapter.compile(model, adapter.make_options(threads=1, batch=2), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_savedmodel_directory_or_a_corrupt_keras_file_is_refused(tmp_path):
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.models.export import ExportedModel

    adapter = get_adapter("jax")
    options = adapter.make_options(threads=1, batch=2)
    meta = {"name": "custom", "inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": [None, 4], "dtype": "float32"}]}
    (tmp_path / "saved_model").mkdir()
    saved_model = ExportedModel(tmp_path, dict(meta, keras="saved_model"))
    with pytest.raises(BadInputError, match="is a SavedModel directory, which Keras cannot load on the JAX backend"):
        adapter.compile(saved_model, options, tmp_path / "a")
    (tmp_path / "broken.keras").write_bytes(b"not a zip archive")
    broken = ExportedModel(tmp_path, dict(meta, keras="broken.keras"))
    expected = "^" + re.escape(f"{tmp_path / 'broken.keras'} is not a Keras 3 .keras archive: ")
    with pytest.raises(BadInputError, match=expected) as caught:
        adapter.compile(broken, options, tmp_path / "b")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_onnx_model_is_a_one_line_cli_error(tmp_path):
    onnx_file = onnx_graph(tmp_path / "s.onnx", "scaled")
    proc = run_script("scripts/compile.py", "--backend", "jax", "--model", str(onnx_file), *FAST,
                      "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "backend jax needs a Keras or TensorFlow model, not an .onnx file")


# --------------------------------------------------------------------------- the job path


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_zoo_model_compiles_checks_and_times_through_the_job_path(jax_job, model):
    from dlcbench.compilers.base import Manifest
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.measure.check import check_outputs

    result, out = jax_job(model)
    assert result.passed, result.failure_message
    assert result.timing["region"] == "resident" and result.timing["stats"]["count"] >= 3
    manifest = Manifest.read(out)
    assert manifest.files == {"model": "model.keras"} and (out / "model.keras").is_file()
    extra = manifest.extra
    assert extra["jax"] == extra["jaxlib"] == "0.10.2" and extra["keras"].startswith("3.")
    assert extra["platform"] == "cpu" and manifest.target_detail["platform"] == "cpu"
    assert extra["xla_compile_seconds"] > 0 and extra["lower_seconds"] > 0 and extra["weight_dtype"] == "float32"
    assert manifest.compile_seconds >= extra["xla_compile_seconds"]
    # A reload compiles ahead again (timed on the session) and runs another batch than the artifact's.
    export = _export(model)
    inputs, reference = export.inputs(), export.reference()
    with get_adapter("jax").load(out) as session:
        assert session.compile_seconds > 0 and session.load_seconds > 0
        one_row = session.run({k: v[:1] for k, v in inputs.items()})
        session.prepare({k: v[:1] for k, v in inputs.items()})
        assert session.run_prepared() is None
        again = session.run(inputs)
    assert all(v.dtype == np.float32 for v in again.values())
    assert check_outputs(again, reference, "fp32").passed
    assert check_outputs(one_row, {k: v[:1] for k, v in reference.items()}, "fp32").passed


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_in_that_precision_and_passes_its_check(jax_job, precision):
    """Weights and compute in bf16/fp16 (the outputs differ from fp32's beyond fp32 rounding), float32 outputs."""
    from dlcbench.compilers.base import Manifest
    from dlcbench.compilers.registry import get_adapter

    result, out = jax_job("cnn", precision)
    assert result.passed, result.failure_message
    manifest = Manifest.read(out)
    assert manifest.precision == precision
    assert manifest.extra["weight_dtype"] == manifest.extra["dtype_policy"] == {"bf16": "bfloat16",
                                                                                "fp16": "float16"}[precision]
    _, fp32_out = jax_job("cnn", "fp32")
    inputs = _export("cnn").inputs()
    adapter = get_adapter("jax")
    with adapter.load(out) as low, adapter.load(fp32_out) as full:
        got, exact = low.run(inputs), full.run(inputs)
    for name, value in got.items():
        assert value.dtype == np.float32
        assert np.abs(value - exact[name]).max() > 1e-5, f"{precision} output {name} is fp32's: not reduced precision"


@pytest.mark.slow
def test_fp16_attention_on_cpu_is_a_one_line_unsupported_error(tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "jax", "--model", "bert", *FAST, "--precision", "fp16",
                      "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, ExitCode.UNSUPPORTED_OP, "jax does not support", "dot_general", "--precision bf16")


@pytest.mark.slow
def test_cuda_without_a_gpu_compiles_only_and_loading_says_why(jax_job):
    from dlcbench.compilers.base import Manifest
    from dlcbench.compilers.jax_adapter import gpu_devices, import_jax
    from dlcbench.compilers.registry import get_adapter

    if gpu_devices(import_jax()):
        pytest.skip("jax has a GPU here")
    result, out = jax_job("mlp", "fp32", "cuda")
    manifest = Manifest.read(out)
    assert manifest.target == "cuda" and (out / "model.keras").is_file() and (out / "reference.npz").is_file()
    assert manifest.extra["xla_compile_seconds"] is None and "jax sees no GPU here" in manifest.extra["note"]
    with pytest.raises(BackendUnavailableError, match=r"jax sees no GPU here \(devices: cpu;") as caught:
        get_adapter("jax").load(out)
    assert "\n" not in str(caught.value) and "jax[cuda12]" in str(caught.value)


# --------------------------------------------------------------------------- Keras's process-wide backend

#: Compiles and loads the mlp in a process where Keras was imported with TensorFlow first (argv[2] == "tf") or
#: not at all, then checks that the process's Keras, its environment and its children are as they were.
_BACKEND_SWITCH = r"""
import json, os, subprocess, sys
import numpy as np
out, first = sys.argv[1], sys.argv[2]
report = {}
if first == "tf":
    from dlcbench.quiet import import_quietly
    keras_tf = import_quietly("keras")
    import dlcbench.models.layers as layers_tf
    report["before"] = keras_tf.config.backend()
before_cpus = os.sched_getaffinity(0)
from dlcbench.compilers.jax_adapter import xla_cpu_threads
from dlcbench.compilers.registry import get_adapter
from dlcbench.measure.check import check_outputs
from dlcbench.models.export import ExportConfig, export_model
model = export_model(ExportConfig("mlp", preset="tiny", batch=2))
adapter = get_adapter("jax")
for attempt in ("first", "second"):
    manifest = adapter.compile(model, adapter.make_options(threads=1, batch=2), f"{out}-{attempt}")
    with adapter.load(f"{out}-{attempt}") as session:
        report[f"passed_{attempt}"] = check_outputs(session.run(model.inputs()), model.reference()).passed
    report[f"import_seconds_{attempt}"] = manifest.extra["keras_import_seconds"]
report["xla_cpu_threads"] = xla_cpu_threads()
report["affinity_restored"] = os.sched_getaffinity(0) == before_cpus
report["env"] = os.environ.get("KERAS_BACKEND")
report["child_env"] = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('KERAS_BACKEND'))"],
                                     capture_output=True, text=True).stdout.strip()
report["keras_in_modules"] = "keras" in sys.modules
import keras
report["after"] = keras.config.backend()
import dlcbench.models.layers as layers_after
report["layers_bound_to_process_keras"] = layers_after.keras is keras
if first == "none":  # an export after the block (a cache miss) imports Keras with TensorFlow and converts
    again = export_model(ExportConfig("mlp", preset="tiny", params={"hidden": 12}, batch=2, force=True))
    report["export_after"] = again.meta["reference_source"]
if first == "tf":
    report["same_keras"] = keras is keras_tf and layers_after is layers_tf
    tf_model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    report["tf_tensor"] = type(tf_model(np.ones((1, 3), np.float32))).__module__.split(".")[0]
print(json.dumps(report))
"""


def _switch(first: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = run_script("-c", _BACKEND_SWITCH, str(tmp_path / "artifact"), first, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_keras_imported_with_tensorflow_first_then_jax_then_tensorflow_again(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    report = _switch("tf", tmp_path)
    assert report["before"] == "tensorflow"
    assert report["passed_first"] and report["passed_second"]
    assert report["import_seconds_second"] < 0.1  # the JAX-backed Keras is kept, not imported again
    assert report["after"] == "tensorflow" and report["same_keras"] and report["layers_bound_to_process_keras"]
    assert report["tf_tensor"] == "tensorflow"  # TensorFlow Keras still runs (an export would too)
    assert report["env"] is None and report["child_env"] == "None"
    assert report["xla_cpu_threads"] == 1 and report["affinity_restored"]


@pytest.mark.slow
def test_keras_not_imported_yet_leaves_no_keras_and_no_environment_behind(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    report = _switch("none", tmp_path)
    assert report["passed_first"] and report["passed_second"]
    assert not report["keras_in_modules"], "the JAX-backed Keras stayed in sys.modules after the block"
    assert report["env"] is None and report["child_env"] == "None"
    assert report["after"] == "tensorflow" and report["layers_bound_to_process_keras"]
    assert report["export_after"] == "keras"


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_compile_script_runs_jax_quietly_and_lists_it(tmp_path):
    proc = run_script("scripts/compile.py", "--backend", "jax", "--model", "mlp", *FAST, "--out", str(tmp_path / "a"))
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert "check     PASS" in proc.stdout and "backend   jax 0.10.2 (cpu, fp32, batch 2)" in proc.stdout
    noise = [line for line in proc.stderr.splitlines()
             if line.strip() and not line.startswith(("... ", "artifact  "))]
    assert noise == [], proc.stderr
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["passed"] and result["manifest"]["backend"] == "jax"
    listing = run_script("scripts/compile.py", "--list-backends", timeout=300)
    assert listing.returncode == 0, listing.stderr[-2000:]
    line = next(line for line in listing.stdout.splitlines() if line.split()[:1] == ["jax"])
    assert "available" in line and "unavailable" not in line, line
