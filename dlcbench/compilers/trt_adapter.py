"""NVIDIA TensorRT 10: the ONNX graph built into a serialized engine for one GPU.

Written against the TensorRT 10 Python API (``tensorrt>=10,<11``) and
cuda-python for memory, streams and events. TensorRT 11 removed the weakly
typed precision flags (``BuilderFlag.FP16``/``INT8``) and the INT8 calibrators
this adapter relies on, so 11+ is reported as unavailable. Neither library is
imported until the backend is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import BackendRuntimeError, BadInputError, CompileError, UnsupportedOpError, one_line

from dlcbench.compilers.base import Adapter, Availability, CompileOptions, Manifest, Session

ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"
CALIBRATION_CACHE_FILE = "calibration.cache"
SUPPORTED_MAJOR = 10


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadInputError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class TensorRTOptions(CompileOptions):
    """TensorRT builder options.

    Attributes:
        workspace_mb: Limit of the builder's workspace memory pool, in MiB.
        min_batch: Smallest batch of the optimisation profile (default 1).
        opt_batch: Batch the kernels are tuned for (default ``batch``, clamped to the profile).
        max_batch: Largest batch of the optimisation profile (default ``batch``, at least ``min_batch``).
        timing_cache: File to load the tactic timing cache from and save it back to, or None.
        int8_calibration_batches: Batches fed to the INT8 calibrator (cycling through the sample inputs).
        builder_optimization_level: 0-5 (TensorRT's default is 3), or None to keep the default.
    """

    target: str = "cuda"
    workspace_mb: int = 1024
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    timing_cache: str | None = None
    int8_calibration_batches: int = 1
    builder_optimization_level: int | None = None

    def __post_init__(self):
        super().__post_init__()
        _positive_int("workspace_mb", self.workspace_mb)
        _positive_int("int8_calibration_batches", self.int8_calibration_batches)
        if self.min_batch is None:
            self.min_batch = 1
        _positive_int("min_batch", self.min_batch)
        if self.max_batch is None:
            self.max_batch = max(self.batch, self.min_batch)
        _positive_int("max_batch", self.max_batch)
        if self.opt_batch is None:
            self.opt_batch = min(max(self.batch, self.min_batch), self.max_batch)
        _positive_int("opt_batch", self.opt_batch)
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise BadInputError(
                f"the profile needs min_batch <= opt_batch <= max_batch, "
                f"got {self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if not self.min_batch <= self.batch <= self.max_batch:
            raise BadInputError(
                f"batch {self.batch} is outside the optimisation profile [{self.min_batch}, {self.max_batch}]"
            )
        if self.timing_cache is not None:
            if not str(self.timing_cache).strip():
                raise BadInputError("timing_cache must be a file path or None, got an empty string")
            self.timing_cache = str(self.timing_cache)
        level = self.builder_optimization_level
        if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5):
            raise BadInputError(f"builder_optimization_level must be an integer in [0, 5], got {level!r}")


# --------------------------------------------------------------------------- library access


def _import_tensorrt():
    import tensorrt

    return tensorrt


def _import_cudart():
    """The CUDA runtime bindings of cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def _cuda(result, error=BackendRuntimeError):
    """Unpacks a cuda-python ``(err, *values)`` tuple, raising ``error`` on a CUDA failure."""
    cudart = _import_cudart()
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise error(f"CUDA call failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def fit_batch(arrays: dict[str, np.ndarray], batch: int, offset: int = 0) -> dict[str, np.ndarray]:
    """Returns the arrays with ``batch`` rows, cycling through their rows from ``offset``."""
    out = {}
    for name, value in arrays.items():
        rows = (offset + np.arange(batch)) % value.shape[0]
        out[name] = np.ascontiguousarray(np.take(value, rows, axis=0))
    return out


def _meta_dim(shape: list, index: int) -> int:
    """A non-batch dimension from the export's metadata; 1 when unknown."""
    value = shape[index] if index < len(shape) else None
    return int(value) if value and value > 0 else 1


def _make_logger(trt):
    """A TensorRT logger that records errors (quoted in this adapter's messages) and prints nothing."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))

    return _Logger()


def _gpu_detail() -> dict[str, Any]:
    cudart = _import_cudart()
    device = _cuda(cudart.cudaGetDevice(), CompileError)
    props = _cuda(cudart.cudaGetDeviceProperties(device), CompileError)
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"device": device, "name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


# --------------------------------------------------------------------------- build helpers


def _parser_failure(parser, model) -> CompileError:
    """Turns the ONNX parser's errors into :class:`UnsupportedOpError` when they name operators."""
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    descs = [one_line(e.desc(), 200) for e in errors]
    ops: list[str] = []
    onnx_nodes = None
    for error in errors:
        code = getattr(error.code(), "name", str(error.code()))
        if not code.startswith("UNSUPPORTED_NODE"):
            continue
        op = error.node_operator() if hasattr(error, "node_operator") else ""
        if not op and error.node() >= 0:
            if onnx_nodes is None:
                import onnx

                onnx_nodes = onnx.load(str(model.onnx_path), load_external_data=False).graph.node
            if error.node() < len(onnx_nodes):
                op = onnx_nodes[error.node()].op_type
        if not op:
            match = re.search(r"op(?:erator)?[: ]+'?(\w+)", error.desc())
            op = match.group(1) if match else ""
        if op and op not in ops:
            ops.append(op)
    if ops:
        return UnsupportedOpError("trt", ops, "; ".join(descs[:3]))
    return CompileError(f"TensorRT could not parse {model.name}: {'; '.join(descs[:3]) or 'no parser errors reported'}")


def _make_calibrator(trt, batches: list[dict[str, np.ndarray]], cache_path: Path):
    """An ``IInt8EntropyCalibrator2`` over ``batches`` (deprecated since TensorRT 10.1, still in 10.x)."""
    cudart = _import_cudart()
    copy_kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device: dict[str, tuple[int, int]] = {}

        def get_batch_size(self):
            return 1  # explicit-batch networks: the batch is part of each input's shape

        def get_batch(self, names):
            batch = next(self._batches, None)
            if batch is None:
                return None
            pointers = []
            for name in names:
                host = batch[name]
                ptr, size = self._device.get(name, (0, 0))
                if size < host.nbytes:
                    if ptr:
                        _cuda(cudart.cudaFree(ptr), CompileError)
                    ptr = int(_cuda(cudart.cudaMalloc(host.nbytes), CompileError))
                    self._device[name] = (ptr, host.nbytes)
                _cuda(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, copy_kind), CompileError)
                pointers.append(ptr)
            return pointers

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

        def free(self):
            for ptr, _ in self._device.values():
                cudart.cudaFree(ptr)
            self._device.clear()

    return _Calibrator()


# --------------------------------------------------------------------------- session


class TensorRTSession(Session):
    """Runs a deserialized engine with ``execute_async_v3`` on its own CUDA stream.

    Device buffers are kept between calls and grown when a batch needs more;
    :meth:`run_prepared` times enqueue plus stream synchronisation, without
    host transfers.
    """

    native_timer_name = "cuda-events"
    resident_region = True

    def __init__(self, manifest: Manifest, engine_bytes: bytes):
        super().__init__(manifest)
        trt = _import_tensorrt()
        self._trt = trt
        self._cudart = _import_cudart()
        self._buffers: dict[str, tuple[int, int]] = {}
        self._host_outputs: dict[str, np.ndarray] = {}
        self._staged: dict[str, np.ndarray] = {}
        self._stream = self._start = self._stop = None
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise BackendRuntimeError(f"TensorRT could not deserialize the engine: {self._log_tail()}")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendRuntimeError(f"TensorRT could not create an execution context: {self._log_tail()}")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._stream = _cuda(self._cudart.cudaStreamCreate())
        self._start = _cuda(self._cudart.cudaEventCreate())
        self._stop = _cuda(self._cudart.cudaEventCreate())

    def _log_tail(self) -> str:
        return one_line("; ".join(self._logger.errors[-3:]) or "see the TensorRT log", 300)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < max(nbytes, 1):
            if ptr:
                _cuda(self._cudart.cudaFree(ptr))
            ptr = int(_cuda(self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def prepare(self, inputs: dict[str, np.ndarray]) -> None:
        """Sets the input shapes, copies the inputs to the GPU and binds every tensor address."""
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise BackendRuntimeError(f"missing input(s): {', '.join(missing)}")
        to_device = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._staged = {}
        for name in self._inputs:
            host = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
            if not self._context.set_input_shape(name, host.shape):
                raise BackendRuntimeError(
                    f"input {name} shape {host.shape} is outside the engine's optimisation profile: {self._log_tail()}"
                )
            ptr = self._device_buffer(name, host.nbytes)
            _cuda(self._cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, to_device, self._stream))
            self._context.set_tensor_address(name, ptr)
            self._staged[name] = host  # kept alive until the copy has run
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendRuntimeError(f"output {name} has a data-dependent shape {shape}, which is not supported")
            host = self._host_outputs.get(name)
            if host is None or host.shape != shape:
                host = self._host_outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            self._context.set_tensor_address(name, self._device_buffer(name, host.nbytes))
        _cuda(self._cudart.cudaStreamSynchronize(self._stream))

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendRuntimeError(f"TensorRT execution failed: {self._log_tail()}")

    def run_prepared(self) -> None:
        self._enqueue()
        _cuda(self._cudart.cudaStreamSynchronize(self._stream))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.prepare(inputs)
        self._enqueue()
        to_host = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self._outputs:
            host = self._host_outputs[name]
            ptr = self._buffers[name][0]
            _cuda(self._cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, to_host, self._stream))
        _cuda(self._cudart.cudaStreamSynchronize(self._stream))
        return {name: self._host_outputs[name].copy() for name in self._outputs}

    def native_time(self, inputs: dict[str, np.ndarray], repeat: int, number: int = 1) -> list[float]:
        """GPU time of ``number`` back-to-back enqueues, measured with CUDA events, per run."""
        self.prepare(inputs)
        cudart = self._cudart
        samples = []
        for _ in range(repeat):
            _cuda(cudart.cudaEventRecord(self._start, self._stream))
            for _ in range(number):
                self._enqueue()
            _cuda(cudart.cudaEventRecord(self._stop, self._stream))
            _cuda(cudart.cudaEventSynchronize(self._stop))
            milliseconds = _cuda(cudart.cudaEventElapsedTime(self._start, self._stop))
            samples.append(milliseconds / 1000.0 / number)
        return samples

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers.clear()
        for event in (self._start, self._stop):
            if event is not None:
                cudart.cudaEventDestroy(event)
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._start = self._stop = self._stream = None
        self._context = self._engine = self._runtime = None
        self._cudart = None


# --------------------------------------------------------------------------- adapter


class TensorRTAdapter(Adapter):
    """Builds the ONNX graph into a TensorRT 10 engine with a dynamic-batch optimisation profile."""

    name = "trt"
    source = "onnx"
    targets = ("cuda",)
    precisions = ("fp32", "fp16", "int8")
    Options = TensorRTOptions

    @classmethod
    def available(cls) -> Availability:
        try:
            trt = _import_tensorrt()
        except ImportError:
            return Availability(
                False,
                "tensorrt is not installed; this backend needs TensorRT 10.x, whose wheels run only on "
                "Linux or Windows machines with an NVIDIA GPU",
                cls.install_hint,
            )
        except Exception as err:  # the wheel is there but libnvinfer fails to load
            return Availability(
                False, f"tensorrt is installed but cannot be imported: {one_line(err, 200)}", cls.install_hint
            )
        version = str(getattr(trt, "__version__", "unknown"))
        major = version.split(".")[0]
        if not major.isdigit() or int(major) != SUPPORTED_MAJOR:
            why = (
                "TensorRT 11 removed the FP16/INT8 builder flags and the INT8 calibrators"
                if major.isdigit() and int(major) > SUPPORTED_MAJOR
                else "older releases lack the TensorRT 10 API (always-explicit batch, named tensors)"
            )
            return Availability(
                False, f"TensorRT {version} is installed but this adapter needs 10.x: {why}", cls.install_hint
            )
        try:
            cudart = _import_cudart()
        except ImportError:
            return Availability(False, "cuda-python is not installed", "pip install 'cuda-python>=12'")
        try:
            count = _cuda(cudart.cudaGetDeviceCount())
        except Exception as err:  # no driver, or the driver is too old for this CUDA runtime
            return Availability(False, f"no usable CUDA GPU: {one_line(err, 200)}")
        if not count:
            return Availability(False, "no CUDA GPU found")
        return Availability(True)

    def version(self) -> str:
        return str(_import_tensorrt().__version__)

    def _profile_shapes(self, network, model, options: TensorRTOptions) -> dict[str, tuple]:
        """Per input, the ``(min, opt, max)`` shapes; empty when every input is static."""
        meta_shapes = {i["name"]: i["shape"] for i in model.meta["inputs"]}
        shapes, dynamic = {}, False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = list(tensor.shape)
            known = meta_shapes.get(tensor.name, [])
            rest = [d if d >= 0 else _meta_dim(known, k + 1) for k, d in enumerate(dims[1:])]
            if dims and dims[0] >= 0:
                if dims[0] != options.batch:
                    raise BadInputError(
                        f"{model.name} was exported with a static batch of {dims[0]}; "
                        f"compile with batch={dims[0]} or use a dynamic-batch export"
                    )
                static = (dims[0], *rest)
                shapes[tensor.name] = (static, static, static)
            else:
                dynamic = True
                shapes[tensor.name] = tuple(
                    (b, *rest) for b in (options.min_batch, options.opt_batch, options.max_batch)
                )
            dynamic = dynamic or any(d < 0 for d in dims[1:])
        return shapes if dynamic else {}

    def _compile(self, model, options: TensorRTOptions, out_dir: Path) -> dict[str, Any]:
        trt = _import_tensorrt()
        logger = _make_logger(trt)
        trt.init_libnvinfer_plugins(logger, "")
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(model.onnx_path)):
            raise _parser_failure(parser, model)

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
        if options.builder_optimization_level is not None:
            config.builder_optimization_level = options.builder_optimization_level

        shapes = self._profile_shapes(network, model, options)
        profile = None
        if shapes:
            profile = builder.create_optimization_profile()
            for name, (low, opt, high) in shapes.items():
                profile.set_shape(name, low, opt, high)
            if config.add_optimization_profile(profile) < 0:
                raise CompileError(f"TensorRT rejected the optimisation profile {shapes}")

        calibrator = None
        if options.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif options.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            calibrator = self._calibrator(trt, network, model, options, out_dir / CALIBRATION_CACHE_FILE)
            config.int8_calibrator = calibrator
            if profile is not None:
                config.set_calibration_profile(profile)  # calibration runs at the profile's opt shapes

        timing_loaded = self._set_timing_cache(config, options)
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.free()
        if serialized is None:
            errors = "; ".join(logger.errors[-3:]) or "no error was logged"
            raise CompileError(f"TensorRT failed to build an engine for {model.name}: {one_line(errors, 300)}")
        (out_dir / ENGINE_FILE).write_bytes(bytes(serialized))

        cache_bytes = bytes(config.get_timing_cache().serialize())
        (out_dir / TIMING_CACHE_FILE).write_bytes(cache_bytes)
        if options.timing_cache:
            try:
                Path(options.timing_cache).parent.mkdir(parents=True, exist_ok=True)
                Path(options.timing_cache).write_bytes(cache_bytes)
            except OSError as err:
                raise BadInputError(f"cannot write timing cache {options.timing_cache}: {err.strerror}") from None

        files = {"engine": ENGINE_FILE, "timing_cache": TIMING_CACHE_FILE}
        if (out_dir / CALIBRATION_CACHE_FILE).is_file():
            files["calibration_cache"] = CALIBRATION_CACHE_FILE
        return {
            "files": files,
            "target_detail": _gpu_detail(),
            "extra": {
                "tensorrt_version": str(trt.__version__),
                "profile": {n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for n, s in shapes.items()},
                "workspace_mb": options.workspace_mb,
                "timing_cache_loaded": timing_loaded,
                "int8_calibration_batches": options.int8_calibration_batches if calibrator is not None else 0,
            },
        }

    @staticmethod
    def _calibrator(trt, network, model, options: TensorRTOptions, cache_path: Path):
        dtypes = {}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dtypes[tensor.name] = np.dtype(trt.nptype(tensor.dtype))
        # A dataset model's training rows, else the sample and check inputs (ExportedModel.calibration_batches).
        calibration = model.calibration_batches()
        samples = {n: np.concatenate([b[n] for b in calibration]) for n in calibration[0]} if calibration else {}
        missing = sorted(set(dtypes) - set(samples))
        if missing:
            raise CompileError(f"no calibration data for input(s) {', '.join(missing)}")
        samples = {n: samples[n].astype(dtypes[n], copy=False) for n in dtypes}
        batches = [
            fit_batch(samples, options.opt_batch, offset=k * options.opt_batch)
            for k in range(options.int8_calibration_batches)
        ]
        return _make_calibrator(trt, batches, cache_path)

    @staticmethod
    def _set_timing_cache(config, options: TensorRTOptions) -> bool:
        """Gives the builder a timing cache, loaded from ``options.timing_cache`` when it exists."""
        blob = b""
        if options.timing_cache and Path(options.timing_cache).is_file():
            blob = Path(options.timing_cache).read_bytes()
        cache = config.create_timing_cache(blob)
        if blob and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        return False

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        path = artifact_dir / manifest.files.get("engine", ENGINE_FILE)
        if not path.is_file():
            raise BadInputError(f"{artifact_dir} has no TensorRT engine ({path.name})")
        return TensorRTSession(manifest, path.read_bytes())
