"""TF-TRT: TensorRT engines inside a TensorFlow SavedModel (``TrtGraphConverterV2``).

TF-TRT needs a TensorFlow built with TensorRT. TensorFlow 2.17 was the last
release with it: 2.18 disabled TensorRT in its builds, although the Python
module ``tensorflow.python.compiler.tensorrt`` is still shipped. TensorFlow is
not imported until the backend is used.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import BackendRuntimeError, BadInputError, CompileError, one_line

from dlcbench.compilers.base import Adapter, Availability, CompileOptions, Manifest, Session
from dlcbench.compilers.tf_adapter import export_saved_model, import_tensorflow
from dlcbench.compilers.trt_adapter import fit_batch

SAVED_MODEL_DIR = "saved_model"
SIGNATURE = "serving_default"
LAST_TFTRT_RELEASE = (2, 17)


@dataclass
class TfTrtOptions(CompileOptions):
    """TF-TRT converter options (the ``TrtGraphConverterV2`` arguments of the same names).

    Attributes:
        max_workspace_size_bytes: GPU scratch memory each TensorRT engine may use.
        maximum_cached_engines: Engines kept per TensorRT op (one per input shape seen).
        minimum_segment_size: Fewest TensorFlow nodes worth a TensorRT engine; -1 keeps the main graph in TensorFlow.
        use_dynamic_shape: Build engines with optimisation profiles instead of implicit batch.
        allow_build_at_runtime: Build engines for unseen shapes at run time instead of falling back to TensorFlow.
    """

    target: str = "cuda"
    max_workspace_size_bytes: int = 1 << 30
    maximum_cached_engines: int = 1
    minimum_segment_size: int = 3
    use_dynamic_shape: bool = False
    allow_build_at_runtime: bool = True

    def __post_init__(self):
        super().__post_init__()
        for name, low in (("max_workspace_size_bytes", 1), ("maximum_cached_engines", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BadInputError(f"{name} must be an integer >= {low}, got {value!r}")
        size = self.minimum_segment_size
        if isinstance(size, bool) or not isinstance(size, int) or (size <= 0 and size != -1):
            raise BadInputError(f"minimum_segment_size must be a positive integer or -1, got {size!r}")
        for name in ("use_dynamic_shape", "allow_build_at_runtime"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"{name} must be true or false, got {getattr(self, name)!r}")


def _version_tuple(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _name_map(wanted: list[str], available: list[str], what: str) -> dict[str, str]:
    """Maps ``wanted`` names to signature keys: by name, else by position (Keras names outputs ``output_N``)."""
    if set(wanted) <= set(available):
        return {name: name for name in wanted}
    if len(wanted) != len(available):
        raise CompileError(f"the SavedModel signature has {what} {available}, expected {wanted}")

    def index(key: str) -> int | None:
        match = re.search(r"(\d+)$", key)
        return int(match.group(1)) if match else None

    keys = sorted(available, key=index) if all(index(k) is not None for k in available) else list(available)
    return dict(zip(wanted, keys))


def _count_trt_ops(function) -> int:
    graph = function.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sum(node.op == "TRTEngineOp" for node in nodes)


class TfTrtSession(Session):
    """Runs the converted SavedModel's serving signature on the GPU (resident: inputs copied to the GPU once)."""

    resident_region = True

    def __init__(self, manifest: Manifest, loaded, function, input_map: dict[str, str], output_map: dict[str, str]):
        super().__init__(manifest)
        self._loaded = loaded  # the signature needs its SavedModel object alive
        self._function = function
        self._input_map = input_map
        self._output_map = output_map
        self._tf = import_tensorflow()
        self._dtypes = {key: spec.dtype for key, spec in function.structured_input_signature[1].items()}

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        tf = self._tf
        missing = [n for n in self._input_map if n not in inputs]
        if missing:
            raise BackendRuntimeError(f"missing input(s): {', '.join(missing)}")
        with tf.device("/GPU:0"):
            return {
                key: tf.identity(tf.constant(inputs[name], dtype=self._dtypes[key]))
                for name, key in self._input_map.items()
            }

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._function(**self._feed(inputs))
        except BackendRuntimeError:
            raise
        except Exception as err:
            raise BackendRuntimeError(f"tftrt run failed: {one_line(err, 300)}") from None
        return {name: np.asarray(result[key]) for name, key in self._output_map.items()}

    def prepare(self, inputs: dict[str, np.ndarray]) -> None:
        """Copies the inputs to the GPU once, so the timed calls exclude host transfers."""
        self._prepared = self._feed(inputs)

    def run_prepared(self) -> None:
        result = self._function(**self._prepared)
        sync = getattr(getattr(self._tf.test, "experimental", None), "sync_devices", None)
        if sync is not None:
            sync()
        else:
            for value in result.values():
                value.numpy()

    def close(self) -> None:
        self._function = self._loaded = self._prepared = None


class TfTrtAdapter(Adapter):
    """The Keras model converted by TF-TRT: TensorRT engines for the supported subgraphs, TensorFlow for the rest."""

    name = "tftrt"
    source = "keras"
    targets = ("cuda",)
    precisions = ("fp32", "fp16", "int8")
    Options = TfTrtOptions

    @classmethod
    def available(cls) -> Availability:
        try:
            tf = import_tensorflow()
        except ImportError:
            return Availability(False, "tensorflow is not installed")
        version = tf.__version__
        try:
            from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils
            from tensorflow.python.compiler.tensorrt import trt_convert  # noqa: F401

            enabled = bool(_pywrap_py_utils.is_tensorrt_enabled())
        except ImportError:
            enabled = False
        enabled = enabled and bool(tf.sysconfig.get_build_info().get("is_tensorrt_build", False))
        if not enabled:
            if _version_tuple(version) > LAST_TFTRT_RELEASE:
                return Availability(
                    False,
                    "TF-TRT was removed in TensorFlow 2.18 (2.17 was the last release built with TensorRT); "
                    f"this machine has TensorFlow {version}, built without TensorRT",
                    cls.install_hint,
                )
            return Availability(
                False, f"this machine's TensorFlow {version} was built without TensorRT", cls.install_hint
            )
        if tuple(_pywrap_py_utils.get_loaded_tensorrt_version()) == (0, 0, 0):
            linked = ".".join(map(str, _pywrap_py_utils.get_linked_tensorrt_version()))
            return Availability(
                False, f"TensorFlow {version} was built with TensorRT {linked} but cannot load libnvinfer"
            )
        if not tf.config.list_physical_devices("GPU"):
            return Availability(False, f"TensorFlow {version} sees no CUDA GPU")
        return Availability(True)

    def version(self) -> str:
        tf = import_tensorflow()
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils

        loaded = ".".join(map(str, _pywrap_py_utils.get_loaded_tensorrt_version()))
        return f"{tf.__version__}+trt{loaded}"

    def _compile(self, model, options: TfTrtOptions, out_dir: Path) -> dict[str, Any]:
        tf = import_tensorflow()
        from tensorflow.python.compiler.tensorrt import trt_convert as trt

        with tempfile.TemporaryDirectory(prefix="tftrt-source-") as tmp:
            source = model.keras_path if model.keras_path and model.keras_path.is_dir() else Path(tmp) / "saved_model"
            if source != model.keras_path:
                export_saved_model(model, source)
            signature = tf.saved_model.load(str(source)).signatures[SIGNATURE]
            input_specs = signature.structured_input_signature[1]
            input_map = _name_map([i["name"] for i in model.meta["inputs"]], list(input_specs), "inputs")
            output_map = _name_map(
                [o["name"] for o in model.meta["outputs"]], list(signature.structured_outputs), "outputs"
            )
            samples = fit_batch(model.inputs(), options.batch)
            feed = {
                key: tf.constant(samples[name], dtype=input_specs[key].dtype) for name, key in input_map.items()
            }

            def input_fn():
                yield feed

            converter = trt.TrtGraphConverterV2(
                input_saved_model_dir=str(source),
                input_saved_model_signature_key=SIGNATURE,
                precision_mode=options.precision.upper(),
                max_workspace_size_bytes=options.max_workspace_size_bytes,
                minimum_segment_size=options.minimum_segment_size,
                maximum_cached_engines=options.maximum_cached_engines,
                use_dynamic_shape=options.use_dynamic_shape,
                allow_build_at_runtime=options.allow_build_at_runtime,
            )
            converter.convert(calibration_input_fn=input_fn if options.precision == "int8" else None)
            converter.build(input_fn=input_fn)
            converter.save(str(out_dir / SAVED_MODEL_DIR))

        converted = tf.saved_model.load(str(out_dir / SAVED_MODEL_DIR)).signatures[SIGNATURE]
        gpu = tf.config.list_physical_devices("GPU")[0]
        return {
            "files": {"saved_model": SAVED_MODEL_DIR},
            "target_detail": {"device": gpu.name, **tf.config.experimental.get_device_details(gpu)},
            "extra": {
                "input_map": input_map,
                "output_map": output_map,
                "trt_engine_ops": _count_trt_ops(converted),
                "note": "TF runs the subgraphs TensorRT cannot take; trt_engine_ops counts the TensorRT segments",
            },
        }

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        tf = import_tensorflow(manifest.threads)
        try:
            loaded = tf.saved_model.load(str(artifact_dir / manifest.files.get("saved_model", SAVED_MODEL_DIR)))
            function = loaded.signatures[SIGNATURE]
        except Exception as err:
            raise BackendRuntimeError(
                f"cannot load the TF-TRT SavedModel in {artifact_dir}: {one_line(err, 300)}"
            ) from None
        return TfTrtSession(manifest, loaded, function, manifest.extra["input_map"], manifest.extra["output_map"])
