"""ONNX Runtime: the baseline most users would pick."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import BackendRuntimeError, BackendUnavailableError, BadInputError, UnsupportedOpError, one_line

from dlcbench.compilers.base import Adapter, Availability, CompileOptions, Manifest, Session

OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class OnnxRuntimeOptions(CompileOptions):
    """ONNX Runtime options.

    Attributes:
        opt_level: Graph optimisation level (``disable``, ``basic``, ``extended``, ``all``).
        inter_op_threads: Threads across independent nodes (1 = sequential execution).
    """

    opt_level: str = "all"
    inter_op_threads: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.opt_level not in OPT_LEVELS:
            raise BadInputError(f"unknown opt_level {self.opt_level!r}; valid: {', '.join(OPT_LEVELS)}")
        if self.inter_op_threads <= 0:
            raise BadInputError(f"inter_op_threads must be positive, got {self.inter_op_threads}")


def _providers(target: str) -> list[str]:
    import onnxruntime as ort

    if target == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailableError(
            "onnxruntime on this machine has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _session_options(options: dict[str, Any], threads: int):
    import onnxruntime as ort

    level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.get("opt_level", "all")]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = options.get("inter_op_threads", 1)
    so.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL if so.inter_op_num_threads == 1 else ort.ExecutionMode.ORT_PARALLEL
    )
    return so


class OnnxRuntimeSession(Session):
    """An ONNX Runtime inference session over the artifact's ONNX file.

    The resident region runs through I/O binding: the inputs are bound once as OrtValues on the execution
    provider's device and the outputs are bound to that device, so ``run_with_iobinding`` neither converts
    inputs nor copies outputs into numpy.
    """

    resident_region = True

    def __init__(self, manifest: Manifest, session):
        super().__init__(manifest)
        self._session = session
        self._names = [o.name for o in session.get_outputs()]
        self._binding = None
        self._device = "cuda" if manifest.target == "cuda" else "cpu"

    def run(self, inputs):
        try:
            values = self._session.run(self._names, inputs)
        except Exception as err:
            raise BackendRuntimeError(f"onnxruntime run failed: {one_line(err, 300)}") from None
        return dict(zip(self._names, values))

    def prepare(self, inputs):
        import onnxruntime as ort

        try:
            binding = self._session.io_binding()
            for spec in self._session.get_inputs():
                value = ort.OrtValue.ortvalue_from_numpy(np.asarray(inputs[spec.name], order="C"), self._device, 0)
                binding.bind_ortvalue_input(spec.name, value)
            for name in self._names:
                binding.bind_output(name, self._device)
        except KeyError as err:
            raise BadInputError(f"missing input {err}; expected {', '.join(i.name for i in self._session.get_inputs())}") from None
        except Exception as err:
            raise BackendRuntimeError(f"onnxruntime could not bind the inputs: {one_line(err, 300)}") from None
        self._binding = binding

    def run_prepared(self):
        try:
            self._session.run_with_iobinding(self._binding)
        except Exception as err:
            raise BackendRuntimeError(f"onnxruntime run failed: {one_line(err, 300)}") from None

    def close(self):
        self._session = self._binding = None


class OnnxRuntimeAdapter(Adapter):
    """ONNX Runtime with the CPU (or CUDA) execution provider."""

    name = "onnxruntime"
    source = "onnx"
    targets = ("cpu", "cuda")
    #: int8: static post-training quantization to a QDQ model (:mod:`dlcbench.compilers.quantize`), calibrated on
    #: the export's calibration batches, run with ONNX Runtime's int8 kernels.
    precisions = ("fp32", "int8")
    Options = OnnxRuntimeOptions

    @classmethod
    def available(cls) -> Availability:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            return Availability(False, f"cannot import onnxruntime ({err})", "pip install onnxruntime")
        return Availability(True)

    def version(self) -> str:
        return metadata.version("onnxruntime")

    def _compile(self, model, options: OnnxRuntimeOptions, out_dir: Path) -> dict[str, Any]:
        import onnxruntime as ort

        extra = {}
        if options.precision == "int8":
            from dlcbench.compilers.quantize import quantize_qdq, rebatch

            static = model.meta.get("static")
            extra["int8"] = quantize_qdq(model.onnx_path, out_dir / "model.onnx",
                                         rebatch(model.calibration_batches(), model.batch if static else None))
        else:
            shutil.copyfile(model.onnx_path, out_dir / "model.onnx")
        so = _session_options(options.to_dict(), options.threads)
        # Optimising once here surfaces unsupported ops at compile time and keeps the result for inspection.
        so.optimized_model_filepath = str(out_dir / "model.optimized.onnx")
        try:
            ort.InferenceSession(str(out_dir / "model.onnx"), so, providers=_providers(options.target))
        except BackendUnavailableError:
            raise
        except Exception as err:
            text = str(err)
            if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
                op = text.split("for ")[-1].split("(")[0].strip() if "for " in text else "unknown"
                raise UnsupportedOpError(self.name, op, one_line(text, 200)) from None
            raise
        return {
            "files": {"model": "model.onnx", "optimized": "model.optimized.onnx"},
            "target_detail": _providers(options.target),
            "extra": extra,
        }

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        import onnxruntime as ort

        so = _session_options(manifest.options, manifest.threads)
        try:
            session = ort.InferenceSession(
                str(artifact_dir / manifest.files["model"]), so, providers=_providers(manifest.target)
            )
        except BackendUnavailableError:
            raise
        except Exception as err:
            raise BackendRuntimeError(f"onnxruntime could not load {artifact_dir}: {one_line(err, 300)}") from None
        return OnnxRuntimeSession(manifest, session)


__all__ = ["OnnxRuntimeAdapter", "OnnxRuntimeOptions"]
