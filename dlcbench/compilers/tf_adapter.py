"""TensorFlow baselines: the Keras model run natively, and through XLA (``jit_compile=True``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import BackendRuntimeError, BadInputError, one_line
from dlcbench.quiet import import_quietly

from dlcbench.compilers.base import Adapter, Availability, CompileOptions, Manifest, Session


@dataclass
class TensorFlowOptions(CompileOptions):
    """TensorFlow options.

    Attributes:
        inter_op_threads: Threads across independent ops (intra-op threads are ``threads``).
    """

    inter_op_threads: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.inter_op_threads <= 0:
            raise BadInputError(f"inter_op_threads must be positive, got {self.inter_op_threads}")


def import_tensorflow(intra: int | None = None, inter: int | None = None):
    """Imports TensorFlow quietly (:func:`dlcbench.quiet.import_quietly`); sets its thread pools if still possible."""
    tf = import_quietly("tensorflow")
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process; the runner isolates jobs so this is rare
    return tf


def export_saved_model(model, out: Path) -> None:
    """Writes the source model as a SavedModel at ``out`` (from ``model.keras`` or a SavedModel)."""
    source = model.keras_path
    if source is None:
        raise BadInputError(f"{model.name} has no Keras/TensorFlow model (an .onnx file was given)")
    if source.is_dir():
        shutil.copytree(source, out)
        return
    keras = import_quietly("keras")

    import dlcbench.models.layers  # noqa: F401  (registers the zoo's custom layers)

    keras.saving.load_model(source).export(str(out), format="tf_saved_model", verbose=False)


class TensorFlowSession(Session):
    """Runs the SavedModel's serving signature, optionally through XLA.

    The resident region calls the signature on tensors made once on the target's device and leaves the
    outputs as tensors; on a GPU it waits for the device instead of converting them to numpy.
    """

    resident_region = True

    def __init__(self, manifest: Manifest, function, input_names: list[str], dtypes: dict | None = None):
        super().__init__(manifest)
        self._function = function
        self._input_names = input_names
        self._dtypes = dtypes or {}
        self._staged: dict | None = None
        self._sync = None

    def run(self, inputs):
        try:
            result = self._function(**{k: inputs[k] for k in self._input_names})
        except Exception as err:
            raise BackendRuntimeError(f"tensorflow run failed: {one_line(err, 300)}") from None
        values = [result[k] for k in sorted(result)]
        return {name: np.asarray(v) for name, v in zip(self.output_names, values)}

    def prepare(self, inputs):
        tf = import_tensorflow()
        missing = [k for k in self._input_names if k not in inputs]
        if missing:
            raise BadInputError(f"missing input(s) {', '.join(missing)}; expected {', '.join(self._input_names)}")
        with tf.device("/GPU:0" if self.manifest.target == "cuda" else "/CPU:0"):
            # tf.identity places the tensor on the device (tf.constant alone stays in host memory).
            self._staged = {k: tf.identity(tf.constant(inputs[k], dtype=self._dtypes.get(k))) for k in self._input_names}
        self._sync = getattr(getattr(tf.test, "experimental", None), "sync_devices", None)

    def run_prepared(self):
        try:
            result = self._function(**self._staged)
            if self.manifest.target == "cuda":
                # GPU kernels run asynchronously; wait for them without copying the outputs to the host.
                if self._sync is not None:
                    self._sync()
                else:
                    for value in result.values():
                        value.numpy()
        except Exception as err:
            raise BackendRuntimeError(f"tensorflow run failed: {one_line(err, 300)}") from None

    def close(self):
        self._function = self._staged = None


class TensorFlowAdapter(Adapter):
    """The Keras model as a TensorFlow SavedModel, run with ``tf.function``."""

    name = "tensorflow"
    source = "keras"
    targets = ("cpu", "cuda")
    precisions = ("fp32",)
    Options = TensorFlowOptions
    jit_compile = False

    @classmethod
    def available(cls) -> Availability:
        try:
            metadata.version("tensorflow")
        except metadata.PackageNotFoundError:
            return Availability(False, "tensorflow is not installed", "pip install tensorflow")
        return Availability(True)

    def version(self) -> str:
        return metadata.version("tensorflow")

    def _compile(self, model, options: TensorFlowOptions, out_dir: Path) -> dict[str, Any]:
        tf = import_tensorflow(options.threads, options.inter_op_threads)
        if options.target == "cuda" and not tf.config.list_physical_devices("GPU"):
            from dlcbench.errors import BackendUnavailableError

            raise BackendUnavailableError("tensorflow sees no GPU on this machine")
        export_saved_model(model, out_dir / "saved_model")
        return {
            "files": {"saved_model": "saved_model"},
            "target_detail": {"jit_compile": self.jit_compile},
            "extra": {"note": "XLA compiles on the first call (inside warm-up)"} if self.jit_compile else {},
        }

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        tf = import_tensorflow(manifest.threads, manifest.options.get("inter_op_threads", 1))
        try:
            loaded = tf.saved_model.load(str(artifact_dir / manifest.files["saved_model"]))
            signature = loaded.signatures["serving_default"]
        except Exception as err:
            raise BackendRuntimeError(f"cannot load SavedModel in {artifact_dir}: {one_line(err, 300)}") from None
        specs = signature.structured_input_signature[1]
        names = sorted(specs)
        function = tf.function(signature, jit_compile=True) if self.jit_compile else signature
        session = TensorFlowSession(manifest, function, names, {k: spec.dtype for k, spec in specs.items()})
        session._keepalive = loaded  # the signature needs its SavedModel object alive
        return session


class XlaAdapter(TensorFlowAdapter):
    """The same SavedModel run through ``tf.function(jit_compile=True)`` (XLA)."""

    name = "xla"
    jit_compile = True
