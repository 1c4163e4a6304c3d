"""JAX: the Keras model run by Keras 3 on its JAX backend, under ``jax.jit`` (XLA).

Compile copies the export's ``model.keras`` into the artifact, loads it with Keras on the JAX backend and
compiles it ahead of time (``jax.jit(f).lower(...).compile()``) for the artifact's input shapes, recording the
lowering and XLA compile seconds (on ``cuda`` without a GPU here the artifact is written without that step:
the model file is all it holds). Load does the same again and keeps the compiled executable; the function
is ``model.stateless_call`` with the weights as arguments, placed on the device once (as
``tf.function(jit_compile=True)`` treats a SavedModel's variables), not as constants baked into the program.

Keras picks its backend once, when it is imported, for the whole process, and dlcbench imports it with
TensorFlow for exports. :func:`keras_on_jax` gives a block Keras on the JAX backend without changing what the
rest of the process sees: it swaps a JAX-backed copy of Keras's modules into ``sys.modules`` and swaps the
process's own back afterwards (what ``keras.config.set_backend`` does, made reversible, and without leaving
``KERAS_BACKEND`` set for child processes).

Reduced precision (``bf16``, ``fp16``) rebuilds the model with that Keras dtype policy for every layer:
weights and compute in the precision, as Keras runs a model built with that policy (its BatchNormalization,
for one, normalises in float32); float inputs are given as float32 and cast inside the program; outputs come
back as float32. XLA on CPU has no float16 dot
with float32 accumulation, which attention uses: such models are refused for fp16 on CPU (bf16 works).

XLA sizes its CPU thread pool from the CPUs the initialising thread may use, and no flag changes it:
``threads`` is applied by initialising JAX with the thread limited to that many of dlcbench's CPUs (the
pool's threads stay on them), once per process; ``xla_cpu_threads`` in the manifest and on the session says
what the pool got.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import numpy as np

from dlcbench.errors import (
    BackendRuntimeError,
    BackendUnavailableError,
    BadInputError,
    CompileError,
    UnsupportedOpError,
    one_line,
)

from dlcbench.compilers.base import (
    Adapter, Availability, CompileOptions, Manifest, Session, check_imports, package_version,
)

MODEL_FILE = "model.keras"
#: The weights inside a ``.keras`` archive.
WEIGHTS_MEMBER = "model.weights.h5"
INSTALL_HINT = "pip install -e '.[jax]' (jax==0.10.2, jaxlib==0.10.2)"
#: dlcbench precision -> the Keras dtype policy every layer is rebuilt with.
POLICIES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: The module that registers the zoo's custom layers with whichever Keras imports it.
LAYERS_MODULE = "dlcbench.models.layers"
#: Environment variables Keras sets while it is imported on the JAX backend (restored afterwards).
KERAS_ENV = ("KERAS_BACKEND", "TF_FORCE_GPU_ALLOW_GROWTH")

#: The JAX-backed Keras modules (and the custom-layer module bound to them), kept between blocks.
_JAX_KERAS: dict[str, ModuleType] = {}
_depth = 0
#: Threads in XLA's CPU pool when this module initialised JAX (None: not yet, or JAX was initialised elsewhere).
_xla_cpu_threads: int | None = None


# --------------------------------------------------------------------------- Keras on the JAX backend


def _is_keras_family(name: str) -> bool:
    return name == "keras" or name.startswith("keras.") or name == LAYERS_MODULE


def _take_keras_family() -> dict[str, ModuleType]:
    """Removes Keras's modules (and the custom-layer module bound to them) from ``sys.modules``; returns them."""
    return {name: sys.modules.pop(name) for name in [n for n in list(sys.modules) if _is_keras_family(n)]}


def _bind_layers_attribute(modules: dict[str, ModuleType]) -> None:
    """Points ``dlcbench.models.layers`` (the package attribute an import sets) at ``modules``' copy, or removes it."""
    package = sys.modules.get("dlcbench.models")
    if package is None:
        return
    if LAYERS_MODULE in modules:
        package.layers = modules[LAYERS_MODULE]
    elif "layers" in vars(package):
        del package.layers


def _import_keras_jax() -> ModuleType:
    """Imports Keras afresh on the JAX backend (Keras's modules must be out of ``sys.modules``)."""
    from dlcbench.quiet import import_quietly

    saved = {key: os.environ.get(key) for key in KERAS_ENV}
    os.environ["KERAS_BACKEND"] = "jax"
    try:
        keras = import_quietly("keras")
    finally:  # Keras reads KERAS_BACKEND once, at import: children must not inherit it
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    backend = keras.config.backend()
    if backend != "jax":
        raise BackendUnavailableError(f"keras {keras.__version__} imported with backend {backend!r}, not 'jax'")
    importlib.import_module(LAYERS_MODULE)  # registers the zoo's custom layers with this Keras
    return keras


@contextlib.contextmanager
def keras_on_jax() -> Iterator[ModuleType]:
    """Keras 3 on the JAX backend inside the block, whatever the process imported Keras with; yields ``keras``.

    On entry the process's Keras modules (TensorFlow-backed, or none yet) are taken out of ``sys.modules`` and a
    JAX-backed Keras is put in their place (imported the first time with ``KERAS_BACKEND=jax``, which is restored
    at once; kept for later blocks); :mod:`dlcbench.models.layers` is re-imported with it so the zoo's custom
    layers are registered. On exit the process's own modules are put back, so ``import keras`` after the block
    gives what it gave before and TensorFlow exports keep working. Objects made inside the block keep working
    after it (their code holds its own modules), but code that imports Keras lazily must run inside a block.
    Re-entrant; not thread-safe (``sys.modules`` is process-wide).

    Raises:
        BackendUnavailableError: Keras cannot be imported on the JAX backend.
    """
    global _depth
    if _depth:
        yield sys.modules["keras"]
        return
    current = sys.modules.get("keras")
    if current is not None and getattr(getattr(current, "config", None), "backend", lambda: "")() == "jax":
        importlib.import_module(LAYERS_MODULE)  # the process runs Keras on JAX already (KERAS_BACKEND=jax)
        yield current
        return
    outside = _take_keras_family()
    try:
        if _JAX_KERAS:
            sys.modules.update(_JAX_KERAS)
            keras = _JAX_KERAS["keras"]
        else:
            try:
                keras = _import_keras_jax()
            except BackendUnavailableError:
                raise
            except Exception as err:
                raise BackendUnavailableError(
                    f"cannot import keras on the JAX backend ({type(err).__name__}: {one_line(err, 200)})") from None
        _bind_layers_attribute(sys.modules)
        _depth += 1
        try:
            yield keras
        finally:
            _depth -= 1
    finally:
        inside = _take_keras_family()
        keras_inside = inside.get("keras")
        if keras_inside is not None and getattr(keras_inside.config, "backend", lambda: "")() == "jax":
            _JAX_KERAS.clear()
            _JAX_KERAS.update(inside)  # with any Keras module imported lazily in the block
        sys.modules.update(outside)
        _bind_layers_attribute(outside)


# --------------------------------------------------------------------------- JAX and its devices


def import_jax(threads: int | None = None) -> ModuleType:
    """Imports JAX; the first time, initialises its backends with an XLA CPU pool of ``threads`` threads.

    XLA's CPU pool has one thread per CPU the initialising thread may use; the calling thread is limited to the
    first ``threads`` of :func:`dlcbench.cpus.allowed_cpus` for the initialisation and given its CPUs back after.
    Once JAX is initialised (here or elsewhere) the pool is what it is: see :func:`xla_cpu_threads`.
    """
    global _xla_cpu_threads
    from dlcbench.quiet import import_quietly, verbose

    jax = import_quietly("jax")
    from jax._src import xla_bridge

    if getattr(xla_bridge, "backends_are_initialized", lambda: True)():
        return jax
    if not verbose():
        logging.getLogger("jax").setLevel(logging.ERROR)  # "no GPU/TPU found, falling back to cpu" and the like
    from dlcbench.cpus import allowed_cpus

    allowed = sorted(allowed_cpus() or [])
    getter, setter = getattr(os, "sched_getaffinity", None), getattr(os, "sched_setaffinity", None)
    chosen = allowed[: threads or len(allowed)] if allowed and threads else allowed
    before = getter(0) if getter else None
    pinned = bool(setter and chosen and set(chosen) != before)
    if pinned:
        setter(0, chosen)
    try:
        jax.devices()
    finally:
        if pinned:
            setter(0, before)
    _xla_cpu_threads = len(chosen) if chosen else (os.cpu_count() or None)
    return jax


def xla_cpu_threads() -> int | None:
    """Threads in XLA's CPU pool if this module initialised JAX (:func:`import_jax`), else None (unknown)."""
    return _xla_cpu_threads


def gpu_devices(jax) -> list:
    """JAX's GPU devices here (none with a CPU-only jaxlib)."""
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # "Unknown backend gpu" / "no devices of type gpu"
        return []


def device_for(jax, target: str):
    """The device a ``target`` artifact runs on.

    Raises:
        BackendUnavailableError: ``cuda`` and JAX sees no GPU here (a CPU-only jaxlib, or no GPU).
    """
    if target == "cuda":
        gpus = gpu_devices(jax)
        if not gpus:
            raise BackendUnavailableError(cuda_unavailable_reason(jax))
        return gpus[0]
    return jax.devices("cpu")[0]


def cuda_unavailable_reason(jax) -> str:
    platforms = sorted({d.platform for d in jax.devices()})
    return (f"jax sees no GPU here (devices: {', '.join(platforms)}; jaxlib {package_version('jaxlib')}): a cuda "
            "artifact runs where jax has one (pip install 'jax[cuda12]==0.10.2' on a machine with an NVIDIA GPU)")


# --------------------------------------------------------------------------- the model as a JAX function


#: Initializers only make the values the saved weights replace; Zeros costs no XLA compile (JAX compiles a
#: random initializer per shape, seconds per model).
_ZEROS = {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None}
#: Float dtype policies a saved layer may carry (quantized ones are left as they are).
_FLOAT_POLICIES = {"float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16"}


def _rewrite_config(node, policy: str):
    """A saved Keras config with every float dtype policy set to ``policy`` and every built-in initializer Zeros."""
    if isinstance(node, dict):
        if node.get("module") == "keras.initializers":
            return dict(_ZEROS)
        if node.get("class_name") == "DTypePolicy" and (node.get("config") or {}).get("name") in _FLOAT_POLICIES:
            return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": policy}, "registered_name": None}
        return {key: _rewrite_config(value, policy) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite_config(value, policy) for value in node]
    return node


def load_keras_model(keras, path: Path, precision: str):
    """Loads the ``.keras`` archive at ``path`` on the JAX backend, every layer on ``precision``'s dtype policy.

    What ``keras.saving.load_model(path, compile=False)`` does (the config deserialized in safe mode, then the
    weights loaded, cast to the layers' dtypes), with the float dtype policies rewritten (a real bf16/fp16 model:
    weights and compute in that precision) and the initializers whose values the weights replace made Zeros.

    Raises:
        BadInputError: the file is not a Keras 3 archive, or Keras cannot rebuild the model or load its weights.
    """
    with contextlib.ExitStack() as stack:
        try:
            archive = stack.enter_context(zipfile.ZipFile(path))
            config = json.loads(archive.read("config.json"))
            names = archive.namelist()
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise BadInputError(f"{path} is not a Keras 3 .keras archive: {one_line(err, 200)}") from None
        if not isinstance(config, dict):
            raise BadInputError(f"{path} is not a Keras 3 .keras archive: its config.json is not an object")
        config.pop("compile_config", None)  # compile=False
        weights = str(path)
        if WEIGHTS_MEMBER in names and not any(name.startswith("assets/") for name in names):
            # h5py reading inside the zip seeks back and forth, and zipfile re-reads a member from its start on
            # every backward seek: seconds for a ResNet-50. Read from a plain copy instead.
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="dlcbench-jax-"))
            weights = archive.extract(WEIGHTS_MEMBER, directory)
        try:
            model = keras.saving.deserialize_keras_object(_rewrite_config(config, POLICIES[precision]))
            model.load_weights(weights)
        except Exception as err:
            raise BadInputError(f"keras on the JAX backend cannot load {path}: {one_line(err, 300)}") from None
    return model


def _flatten_outputs(outputs, names: list[str]) -> list:
    if isinstance(outputs, dict):
        return [outputs[name] for name in names] if set(names) <= set(outputs) else list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def forward_function(model, output_names: list[str]):
    """``f(trainable, non_trainable, *inputs) -> outputs`` (a tuple; floating outputs as float32), pure for ``jax.jit``.

    Inputs go to the model positionally, in the export's input order (as the reference was computed).
    """
    import jax.numpy as jnp

    def forward(trainable, non_trainable, *inputs):
        feed = inputs[0] if len(inputs) == 1 else list(inputs)
        outputs, _ = model.stateless_call(trainable, non_trainable, feed, training=False)
        flat = _flatten_outputs(outputs, output_names)
        return tuple(o.astype(jnp.float32) if jnp.issubdtype(o.dtype, jnp.floating) else o for o in flat)

    return forward


def _matmul_precision(jax, target: str, precision: str):
    """fp32 on a GPU runs its dots in full fp32 (XLA would use TF32 on Ampere and later); elsewhere the default."""
    if target == "cuda" and precision == "fp32":
        return jax.default_matmul_precision("highest")
    return contextlib.nullcontext()


def _fp16_cpu_dot(err: Exception) -> bool:
    return "is not supported by dot_general on CPU" in str(err)


class Program:
    """A Keras model on the JAX backend, jitted and compiled ahead for fixed input shapes on one device."""

    def __init__(self, keras_path: Path, manifest_like: dict[str, Any], backend: str, *, place_weights: bool = True):
        """Loads, jits and compiles (inside :func:`keras_on_jax`); times each step.

        Args:
            keras_path: The ``.keras`` file.
            manifest_like: ``target``, ``precision``, ``threads``, ``inputs`` (name, shape, dtype) and ``outputs``
                (name) as in a manifest.
            backend: The adapter's name, for messages.
            place_weights: Put the weights on the device (a session); False lowers on their shapes only.
        """
        self.backend = backend
        self.target, self.precision = manifest_like["target"], manifest_like["precision"]
        jax = import_jax(int(manifest_like["threads"]))
        self.jax = jax
        self.device = device_for(jax, self.target)
        self.input_names = [i["name"] for i in manifest_like["inputs"]]
        self.input_dtypes = [np.dtype(i["dtype"]) for i in manifest_like["inputs"]]
        self.input_shapes = [tuple(int(d) for d in i["shape"]) for i in manifest_like["inputs"]]
        self.output_names = [o["name"] for o in manifest_like["outputs"]]
        self.seconds: dict[str, float] = {}
        self._traced: set = set()
        sharding = jax.sharding.SingleDeviceSharding(self.device)
        start = time.perf_counter()
        with keras_on_jax() as keras:
            t0 = time.perf_counter()
            model = load_keras_model(keras, keras_path, self.precision)
            if len(model.inputs) != len(self.input_names):
                raise BadInputError(f"{keras_path.name} has {len(model.inputs)} inputs but the export has "
                                    f"{len(self.input_names)} ({', '.join(self.input_names)})")
            self.weight_dtype = str(model.trainable_variables[0].dtype) if model.trainable_variables else None
            t1 = time.perf_counter()
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            if place_weights:
                self.weights = jax.device_put((trainable, non_trainable), self.device)
                jax.block_until_ready(self.weights)
                weight_specs = self.weights
            else:
                self.weights = None
                weight_specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                            (trainable, non_trainable))
            t2 = time.perf_counter()
            self.jitted = jax.jit(forward_function(model, self.output_names))
            input_specs = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
                           for shape, dtype in zip(self.input_shapes, self.input_dtypes)]
            try:
                with _matmul_precision(jax, self.target, self.precision):
                    lowered = self.jitted.lower(*weight_specs, *input_specs)
                    t3 = time.perf_counter()
                    self.compiled = lowered.compile()
            except Exception as err:
                if self.precision == "fp16" and self.device.platform == "cpu" and _fp16_cpu_dot(err):
                    raise UnsupportedOpError(
                        backend, "dot_general(float16 x float16 -> float32)",
                        "XLA on CPU has none; Keras attention uses it in fp16: use --precision bf16 or fp32, "
                        "or target cuda") from None
                raise CompileError(f"{backend} failed to compile {keras_path.name} with jax.jit: "
                                   f"{type(err).__name__}: {one_line(err, 300)}") from None
            t4 = time.perf_counter()
        self.seconds = {"keras_import_seconds": round(t0 - start, 4), "keras_load_seconds": round(t1 - t0, 4),
                        "weights_to_device_seconds": round(t2 - t1, 4), "lower_seconds": round(t3 - t2, 4),
                        "xla_compile_seconds": round(t4 - t3, 4)}

    def host_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The inputs in the program's order and dtypes.

        Raises:
            BadInputError: an input is missing.
        """
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise BadInputError(f"missing input(s) {', '.join(missing)}; expected {', '.join(self.input_names)}")
        return [np.asarray(inputs[name], dtype=dtype) for name, dtype in zip(self.input_names, self.input_dtypes)]

    def call(self, args: list) -> tuple:
        """Runs on ``args`` (host or device arrays): the compiled program at its shapes, else ``jax.jit``'s
        program for theirs (traced, inside :func:`keras_on_jax`, the first time)."""
        shapes = tuple(tuple(a.shape) for a in args)
        if list(shapes) == self.input_shapes:
            return self.compiled(*self.weights, *args)
        args = self.jax.device_put(list(args), self.device)
        if shapes in self._traced:
            return self.jitted(*self.weights, *args)
        with keras_on_jax(), _matmul_precision(self.jax, self.target, self.precision):  # tracing runs Keras code
            outputs = self.jitted(*self.weights, *args)
        self._traced.add(shapes)
        return outputs


# --------------------------------------------------------------------------- adapter and session


class JaxSession(Session):
    """Runs the compiled program; outputs come back as float32 numpy (integer outputs keep their dtype).

    The resident region places the inputs on the device once (``jax.device_put``) and waits for the outputs
    with ``block_until_ready()`` without copying them to the host.

    Attributes:
        load_seconds: Loading the Keras model on the JAX backend (and rebuilding it in a reduced precision).
        compile_seconds: Lowering plus XLA compilation at load.
        xla_cpu_threads: Threads in XLA's CPU pool (None when JAX was initialised outside dlcbench).
    """

    resident_region = True

    def __init__(self, manifest: Manifest, program: Program):
        super().__init__(manifest)
        self._program = program
        self._staged: list | None = None
        self._resident = None
        seconds = program.seconds
        self.load_seconds = seconds["keras_load_seconds"]
        self.compile_seconds = round(seconds["lower_seconds"] + seconds["xla_compile_seconds"], 4)
        self.xla_cpu_threads = xla_cpu_threads()

    def run(self, inputs):
        program = self._require()
        args = program.host_inputs(inputs)
        try:
            outputs = program.call(args)
            return {name: np.asarray(value) for name, value in zip(self.output_names, outputs)}
        except Exception as err:
            raise BackendRuntimeError(f"jax run failed: {type(err).__name__}: {one_line(err, 300)}") from None

    def prepare(self, inputs):
        program = self._require()
        jax = program.jax
        staged = jax.device_put(program.host_inputs(inputs), program.device)
        jax.block_until_ready(staged)
        self._staged = staged
        if [tuple(a.shape) for a in staged] == program.input_shapes:
            self._resident = functools.partial(program.compiled, *program.weights, *staged)
        else:  # not the artifact's batch: jax.jit's program for these shapes, traced once here
            jax.block_until_ready(program.call(staged))
            self._resident = functools.partial(program.jitted, *program.weights, *staged)
        self._block = jax.block_until_ready

    def run_prepared(self):
        try:
            self._block(self._resident())
        except Exception as err:
            raise BackendRuntimeError(f"jax run failed: {type(err).__name__}: {one_line(err, 300)}") from None

    def close(self):
        self._program = self._staged = self._resident = None

    def _require(self) -> Program:
        if self._program is None:
            raise BackendRuntimeError("the jax session is closed")
        return self._program


class JaxAdapter(Adapter):
    """The Keras model on Keras 3's JAX backend, compiled by XLA through ``jax.jit``."""

    name = "jax"
    source = "keras"
    targets = ("cpu", "cuda")
    precisions = ("fp32", "bf16", "fp16")
    Options = CompileOptions
    install_hint = INSTALL_HINT
    requires = ("jax", "keras")

    @classmethod
    def available(cls) -> Availability:
        """JAX importable and Keras 3 installed (Keras itself is imported only on use, on the JAX backend)."""
        status = check_imports("jax", hint=cls.install_hint)
        if not status:
            return status
        try:
            found = importlib.util.find_spec("keras") is not None
        except Exception as err:  # a broken install, or a finder that refuses it
            return Availability(False, f"cannot import keras ({type(err).__name__}: {one_line(err, 160)})",
                                cls.install_hint)
        version = package_version("keras")
        if not found or version == "unknown":
            return Availability(False, "keras is not installed", cls.install_hint)
        if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 3:
            return Availability(False, f"keras {version} is not Keras 3 (the JAX backend needs keras>=3)",
                                cls.install_hint)
        return Availability(True)

    def version(self) -> str:
        return package_version("jax")

    def _compile(self, model, options: CompileOptions, out_dir: Path) -> dict[str, Any]:
        source = model.keras_path
        if source is None:
            raise BadInputError(f"backend {self.name} needs a Keras model (.keras), not an .onnx file")
        if source.is_dir():
            raise BadInputError(f"backend {self.name} loads .keras files with Keras 3; {source} is a SavedModel "
                                "directory, which Keras cannot load on the JAX backend")
        jax = import_jax(options.threads)
        shutil.copyfile(source, out_dir / MODEL_FILE)
        shapes = self.input_shapes(model, options)
        spec = {"target": options.target, "precision": options.precision, "threads": options.threads,
                "inputs": [dict(i, shape=shapes[i["name"]]) for i in model.meta["inputs"]],
                "outputs": model.meta["outputs"]}
        extra: dict[str, Any] = {
            "jax": package_version("jax"), "jaxlib": package_version("jaxlib"), "keras": package_version("keras"),
            "dtype_policy": POLICIES[options.precision], "xla_cpu_threads": xla_cpu_threads(),
        }
        if options.target == "cuda" and not gpu_devices(jax):
            # The artifact is the model file: it compiles where it runs (load checks for the GPU there). The
            # model is still loaded here, so that a file Keras cannot load on the JAX backend fails now.
            with keras_on_jax() as keras:
                load_keras_model(keras, source, options.precision)
            extra.update(platform="cuda", xla_compile_seconds=None,
                         note=f"not compiled here ({cuda_unavailable_reason(jax)}); XLA compiles at load")
            detail = {"platform": "cuda", "device": None}
        else:
            program = Program(source, spec, self.name, place_weights=False)
            extra.update(platform=program.device.platform, device=program.device.device_kind, **program.seconds)
            if program.weight_dtype:
                extra["weight_dtype"] = program.weight_dtype
            if options.target == "cuda" and options.precision == "fp32":
                extra["matmul_precision"] = "highest"
            detail = {"platform": program.device.platform, "device": program.device.device_kind}
        return {"files": {"model": MODEL_FILE}, "target_detail": detail, "extra": extra}

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        path = artifact_dir / manifest.files.get("model", MODEL_FILE)
        if not path.is_file():
            raise BadInputError(f"{artifact_dir} has no {path.name}: not a complete jax artifact")
        spec = {"target": manifest.target, "precision": manifest.precision, "threads": manifest.threads,
                "inputs": manifest.inputs, "outputs": manifest.outputs}
        try:
            program = Program(path, spec, self.name)
        except (BadInputError, BackendUnavailableError, UnsupportedOpError):
            raise
        except CompileError as err:
            raise BackendRuntimeError(str(err)) from None
        return JaxSession(manifest, program)
