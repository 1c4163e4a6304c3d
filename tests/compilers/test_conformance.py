"""One conformance suite over every registered adapter: compile tiny zoo models, match the reference, reload."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compilers.base import Manifest
from compilers.registry import availability, backend_names, get_adapter
from runner.check import check_outputs
from runner.pipeline import JobConfig, export_for
from tests.conftest import TINY_MODELS, run_script

CPU_BACKENDS = backend_names()


def _adapter_or_skip(name: str):
    status = availability(name)
    if not status:
        pytest.skip(f"{name} unavailable here: {status.reason}")
    adapter = get_adapter(name)
    if "cpu" not in adapter.targets:
        pytest.skip(f"{name} has no cpu target (targets: {', '.join(adapter.targets)})")
    return adapter


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compiles (backend, model) once per module; returns ``(adapter, model, artifact_dir)``."""
    cache: dict = {}

    def get(backend: str, model_name: str):
        if (backend, model_name) not in cache:
            adapter = _adapter_or_skip(backend)
            job = JobConfig(backend=backend, model=model_name, preset="tiny", batch=2, threads=1)
            model = export_for(adapter, job)
            out = tmp_path_factory.mktemp(f"{backend}-{model_name}")
            adapter.compile(model, adapter.make_options(threads=1, batch=2), out)
            cache[(backend, model_name)] = (adapter, model, out)
        return cache[(backend, model_name)]

    return get


@pytest.mark.parametrize("model_name", TINY_MODELS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adapter_matches_reference(compiled, backend, model_name):
    adapter, model, out = compiled(backend, model_name)
    manifest = Manifest.read(out)
    assert manifest.backend == backend and manifest.batch == 2 and manifest.compile_seconds > 0
    assert manifest.backend_version == adapter.version()
    assert [o["name"] for o in manifest.outputs] == model.output_names
    assert all((out / rel).exists() for rel in manifest.files.values())
    with adapter.load(out, threads=1) as session:
        outputs = session.run(model.inputs())
    report = check_outputs(outputs, model.reference(), "fp32", classifier=model.meta["task"] == "classifier")
    assert report.passed, report.failure_message()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_artifact_reloads_in_fresh_process_with_same_outputs(compiled, backend, tmp_path):
    adapter, model, out = compiled(backend, "cnn")
    np.savez(tmp_path / "inputs.npz", **model.inputs())
    code = (
        "import sys, numpy as np; from compilers.registry import get_adapter;"
        "from compilers.base import Manifest; m = Manifest.read(sys.argv[1]);"
        "x = dict(np.load(sys.argv[2]));"
        "s = get_adapter(m.backend).load(sys.argv[1], threads=1); np.savez(sys.argv[3], **s.run(x)); s.close()"
    )
    proc = run_script("-c", code, str(out), str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with adapter.load(out, threads=1) as session:
        here = session.run(model.inputs())
    there = dict(np.load(tmp_path / "outputs.npz"))
    for name, value in here.items():
        np.testing.assert_allclose(there[name], value, rtol=1e-6, atol=1e-7)


def test_manifest_is_self_describing(compiled):
    _, model, out = compiled("tvm", "mlp")
    data = json.loads((out / "manifest.json").read_text())
    for key in ("backend", "backend_version", "target", "target_detail", "precision", "inputs", "outputs",
                "options", "compile_seconds", "source_sha256"):
        assert key in data, key
    assert data["target_detail"]["kind"] == "llvm" and data["target_detail"]["mcpu"]
    assert data["target_detail"]["num-cores"] == 1
    assert data["inputs"] == [{"name": "input", "shape": [2, 784], "dtype": "float32"}]
    assert data["files"]["params"] == "params.npz"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unsupported_precision_and_target_are_rejected(backend):
    from dlcbench.errors import BadInputError

    adapter = get_adapter(backend)
    missing = [p for p in ("fp32", "fp16", "bf16", "int8") if p not in adapter.precisions]
    if missing:
        with pytest.raises(BadInputError, match="valid: " + ", ".join(adapter.precisions)):
            adapter.make_options(target=adapter.targets[0], precision=missing[0])
    with pytest.raises(BadInputError, match="valid:"):
        adapter.make_options(target="tpu")


def test_importing_compilers_imports_no_backend_library():
    code = (
        "import sys, compilers; from compilers.registry import describe_backends, get_adapter_class;"
        "[get_adapter_class(n) for n in ('tvm', 'onnxruntime', 'tensorflow', 'xla')];"
        "print([m for m in ('tensorflow', 'tvm', 'tensorrt', 'onnxruntime') if m in sys.modules])"
    )
    proc = run_script("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
