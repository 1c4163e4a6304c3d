"""``onnxref``: the ONNX reference implementation (``onnx.reference``) as a dlcbench backend.

Started from dlcbench's ``examples/adapter_template.py``. "Compiling" checks that
every operator has a reference kernel and keeps the ONNX file; running
evaluates the graph node by node in NumPy.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.compilers.base import Adapter, CompileOptions, Manifest, Session, package_version
from dlcbench.errors import BackendRuntimeError, BadInputError, UnsupportedOpError, one_line


@dataclass
class OnnxReferenceOptions(CompileOptions):
    """Options of the reference evaluator.

    Attributes:
        check_shapes: Check every intermediate result against the graph's shape annotations.
    """

    check_shapes: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.check_shapes, bool):
            raise BadInputError(f"check_shapes must be true or false, got {self.check_shapes!r}; valid: true, false")


class OnnxReferenceSession(Session):
    """A ``ReferenceEvaluator`` over the artifact's ONNX file."""

    # The evaluator computes in numpy: there is no backend memory to leave inputs and outputs in, so no
    # resident region. Declared, dlcbench times run() and results say "region: end_to_end".
    resident_region = False

    def __init__(self, manifest: Manifest, evaluator):
        super().__init__(manifest)
        self._evaluator = evaluator

    def run(self, inputs):
        try:
            values = self._evaluator.run(None, {k: np.asarray(v) for k, v in inputs.items()})
        except Exception as err:
            raise BackendRuntimeError(f"onnxref run failed: {type(err).__name__}: {one_line(err, 300)}") from None
        return {name: np.asarray(v) for name, v in zip(self.output_names, values)}

    def close(self):
        self._evaluator = None


def _unsupported(err: Exception) -> UnsupportedOpError | None:
    text = str(err)
    if "No registered schema for operator" in text or "Unable to find class" in text:
        op = text.split("operator '")[1].split("'")[0] if "operator '" in text else "unknown"
        return UnsupportedOpError("onnxref", op, one_line(text, 200))
    return None


class OnnxReferenceAdapter(Adapter):
    """The ONNX reference implementation (``onnx.reference``, pure NumPy): slow, but what the spec says."""

    name = "onnxref"
    source = "onnx"
    targets = ("cpu",)
    precisions = ("fp32",)
    Options = OnnxReferenceOptions
    requires = ("onnx",)
    install_hint = "pip install dlcbench-example-backend (needs onnx>=1.15)"

    def version(self) -> str:
        return f"onnx {package_version('onnx')}"

    def _compile(self, model, options: OnnxReferenceOptions, out_dir: Path) -> dict[str, Any]:
        from onnx.reference import ReferenceEvaluator

        shutil.copyfile(model.onnx_path, out_dir / "model.onnx")
        try:
            ReferenceEvaluator(str(out_dir / "model.onnx"), check_shape_annotations=options.check_shapes)
        except Exception as err:
            unsupported = _unsupported(err)
            if unsupported:
                raise unsupported from None
            raise
        return {"files": {"model": "model.onnx"}, "target_detail": {"device": "cpu", "kernels": "numpy"}}

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        from onnx.reference import ReferenceEvaluator

        try:
            evaluator = ReferenceEvaluator(str(artifact_dir / manifest.files["model"]),
                                           check_shape_annotations=bool(manifest.options.get("check_shapes", False)))
        except Exception as err:
            raise BackendRuntimeError(f"onnxref could not load {artifact_dir}: {one_line(err, 300)}") from None
        return OnnxReferenceSession(manifest, evaluator)
