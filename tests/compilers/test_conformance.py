"""The reusable adapter conformance suite (``dlcbench.compilers.testing``) over every registered adapter, plus in-tree specifics.

``from dlcbench.compilers.testing import *`` brings in the suite's tests and fixture: the interface contract, tiny zoo
models compiled and matched against the reference, artifact reload in a fresh process, unsupported precision
and target errors, and ``available()`` with the backend's library hidden. Third-party packages run the same
suite with ``python -m pytest --pyargs dlcbench.compilers.testing -k NAME``.
"""

from __future__ import annotations

import json

from dlcbench.compilers.testing import *  # noqa: F401,F403  (the suite: collected here for every registered backend)
from dlcbench.compilers.testing import conformance_compiled  # noqa: F401  (fixture used below)
from dlcbench_test_support import run_script


def test_manifest_is_self_describing(conformance_compiled):  # noqa: F811
    _, model, out = conformance_compiled("tvm", "mlp")
    data = json.loads((out / "manifest.json").read_text())
    for key in ("backend", "backend_version", "target", "target_detail", "precision", "inputs", "outputs",
                "options", "compile_seconds", "source_sha256"):
        assert key in data, key
    assert data["target_detail"]["kind"] == "llvm" and data["target_detail"]["mcpu"]
    assert data["target_detail"]["num-cores"] == 1
    assert data["inputs"] == [{"name": "input", "shape": [2, 784], "dtype": "float32"}]
    assert data["files"]["params"] == "params.npz"


def test_importing_compilers_imports_no_backend_library():
    code = (
        "import sys, dlcbench.compilers; from dlcbench.compilers.registry import describe_backends, get_adapter_class;"
        "[get_adapter_class(n) for n in ('tvm', 'onnxruntime', 'tensorflow', 'xla', 'openvino', 'torch', 'inductor',"
        " 'jax')];"
        "print([m for m in ('tensorflow', 'tvm', 'tensorrt', 'onnxruntime', 'openvino', 'torch', 'onnx2torch', 'jax',"
        " 'keras') if m in sys.modules])"
    )
    proc = run_script("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_every_in_tree_session_has_a_resident_region():
    """In-tree backends time the resident region: every Session class of their modules declares and implements it."""
    import importlib
    import inspect

    from dlcbench.compilers.base import Session
    from dlcbench.compilers.registry import get_adapter_class

    found = {}
    in_tree = ("tvm", "onnxruntime", "tensorflow", "xla", "trt", "tftrt", "openvino", "torch", "inductor", "jax")
    for module_name in {get_adapter_class(name).__module__ for name in in_tree}:
        module = importlib.import_module(module_name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Session) and cls is not Session and cls.__module__ == module_name:
                found[name] = cls
    assert {"OnnxRuntimeSession", "TensorFlowSession", "OpenVinoSession", "TorchSession", "TvmSession",
            "TensorRTSession", "TfTrtSession", "JaxSession"} <= set(found)
    for name, cls in found.items():
        assert cls.resident_region, f"{name} has no resident region"
        assert cls.prepare is not Session.prepare and cls.run_prepared is not Session.run_prepared, name


def test_the_suite_catches_a_resident_region_that_runs_end_to_end():
    """``falseresident`` declares a resident region whose run_prepared() is run() (every adapter's fallback before
    regions existed); the suite fails it, and skips ``e2eonly``, which declares it has none."""
    from dlcbench_region_adapters import REGISTRATION

    proc = run_script("-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "dlcbench.compilers.testing",
                      "-k", "test_resident_region_leaves_the_outputs_in_the_backend", "-rs", timeout=600,
                      env={"DLCBENCH_BACKENDS": REGISTRATION, "DLCBENCH_CONFORMANCE_BACKENDS": "falseresident,e2eonly"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 failed, 1 skipped" in proc.stdout, proc.stdout[-3000:]
    assert "run_prepared() calls OnnxRuntimeSession.run, the end-to-end region" in proc.stdout
    assert "EndToEndOnlySession has no resident region (resident_region = False)" in proc.stdout
