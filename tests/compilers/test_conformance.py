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
        "[get_adapter_class(n) for n in ('tvm', 'onnxruntime', 'tensorflow', 'xla', 'openvino', 'torch', 'inductor')];"
        "print([m for m in ('tensorflow', 'tvm', 'tensorrt', 'onnxruntime', 'openvino', 'torch', 'onnx2torch')"
        " if m in sys.modules])"
    )
    proc = run_script("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
