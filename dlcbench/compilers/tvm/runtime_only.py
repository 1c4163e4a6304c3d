"""TVM artifacts run with the runtime alone: ``tvm_ffi`` and ``libtvm_runtime.so``, no ``tvm`` package.

A machine that only runs what was compiled elsewhere (a GPU machine with no TVM, a stage built by
:mod:`dlcbench.stage.build`) has ``tvm_ffi`` for its Python and TVM's runtime libraries in a directory:
``libtvm_runtime.so`` and, for CUDA, ``libtvm_runtime_cuda.so`` with the CUDA runtime it links
(``libcudart``). :data:`RUNTIME_ENV` names that directory; when it is set, the ``tvm`` backend loads its
artifacts through :class:`RuntimeOnlySession` (see :meth:`dlcbench.compilers.tvm.adapter.TvmAdapter._load`).

The session does what ``tvm.runtime.vm.VirtualMachine`` does, through the executable's own functions:
``vm_load_executable``, then ``vm_initialization`` with the device and the CPU (which runs shape functions),
weights uploaded once (and prepacked by ``main_transform_params`` when a tuned build has it), ``main``
called with inputs and weights. Its native timer is ``runtime.RPCTimeEvaluator``, what
``Module.time_evaluator`` calls: CUDA events on a GPU.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.compilers.base import Manifest, Session
from dlcbench.cpus import pin_apart_from_pinned_threads
from dlcbench.errors import BackendRuntimeError, BackendUnavailableError, DlcbenchError, one_line

#: The directory holding ``libtvm_runtime.so`` (and the CUDA runtime libraries) to load artifacts with.
RUNTIME_ENV = "DLCBENCH_TVM_RUNTIME"
#: Set to ``1`` to let ``tvm_ffi`` import torch (by default it is kept out, so the only CUDA runtime in the
#: process is the one beside ``libtvm_runtime``).
ALLOW_TORCH_ENV = "DLCBENCH_TVM_ALLOW_TORCH"

# DLPack device types and TVM device attribute ids (tvm/runtime/device.py).
KDL_CPU, KDL_CUDA = 1, 2
ATTR_EXIST, ATTR_COMPUTE_VERSION, ATTR_DEVICE_NAME, ATTR_SM_COUNT = 0, 4, 5, 7
ATTR_API_VERSION, ATTR_DRIVER_VERSION, ATTR_TOTAL_MEMORY = 11, 12, 14
POOLED_ALLOCATOR = 2

_RUNTIMES: dict[str, "Runtime"] = {}


def runtime_dir() -> Path | None:
    """The directory :data:`RUNTIME_ENV` names, or None."""
    value = os.environ.get(RUNTIME_ENV)
    return Path(value) if value else None


def get_runtime(threads: int | None = None) -> "Runtime":
    """The process's :class:`Runtime` over :func:`runtime_dir` (loaded once)."""
    lib_dir = runtime_dir()
    if lib_dir is None:
        raise BackendUnavailableError(f"{RUNTIME_ENV} is not set: no TVM runtime directory to load artifacts with")
    key = str(lib_dir.resolve())
    if key not in _RUNTIMES:
        _RUNTIMES[key] = Runtime(lib_dir, threads)
    return _RUNTIMES[key]


class Runtime:
    """TVM's runtime libraries loaded into this process through ``tvm_ffi``.

    Args:
        lib_dir: Holds ``libtvm_runtime.so`` and, for CUDA, ``libtvm_runtime_cuda.so``.
        threads: The CPU thread pool's size (``TVM_NUM_THREADS``, read when the pool starts); None leaves it.
    """

    def __init__(self, lib_dir: Path, threads: int | None = None):
        self.lib_dir = Path(lib_dir)
        blocked = os.environ.get(ALLOW_TORCH_ENV) != "1" and "torch" not in sys.modules
        if blocked:
            # tvm_ffi imports torch when it can; keep it out so the only CUDA runtime here is the one we load.
            sys.modules["torch"] = None
        try:
            import tvm_ffi
        except ImportError as err:
            raise BackendUnavailableError(f"cannot import tvm_ffi for this Python: {one_line(err, 300)}") from None
        finally:
            if blocked and sys.modules.get("torch", 0) is None:
                del sys.modules["torch"]  # a later torch job in this process may import it
        self.ffi = tvm_ffi
        self.libs: dict[str, ctypes.CDLL] = {}
        if threads:
            os.environ.setdefault("TVM_NUM_THREADS", str(threads))
        self._load("libtvm_runtime.so", ctypes.RTLD_GLOBAL)
        self.cuda_error: str | None = None
        if (self.lib_dir / "libtvm_runtime_cuda.so").is_file():
            try:
                # In runtime-only mode nothing else registers the CUDA device API and module loader.
                self._load("libtvm_runtime_cuda.so", ctypes.RTLD_LOCAL)
            except BackendUnavailableError as err:
                self.cuda_error = str(err)
        else:
            self.cuda_error = f"no libtvm_runtime_cuda.so in {self.lib_dir}"
        get = tvm_ffi.get_global_func
        self._alloc = get("runtime.TVMTensorAllocWithScope")
        self._copy_from = get("runtime.TVMTensorCopyFromBytes")
        self._copy_to = get("runtime.TVMTensorCopyToBytes")
        self._sync = get("runtime.Device_StreamSync")
        self._attr = get("runtime.GetDeviceAttr", allow_missing=True)
        self._time_evaluator = get("runtime.RPCTimeEvaluator")
        self._config_threads = get("runtime.config_threadpool", allow_missing=True)

    def _load(self, name: str, mode: int) -> None:
        try:
            self.libs[name] = ctypes.CDLL(str(self.lib_dir / name), mode=mode)
        except OSError as err:
            raise BackendUnavailableError(f"cannot load {name}: {one_line(err, 300)}") from None

    def set_threads(self, threads: int) -> None:
        """Sizes the CPU thread pool (``runtime.config_threadpool``)."""
        if self._config_threads is not None and threads:
            self._config_threads(0, int(threads))  # 0 = big cores, as many as asked
            if int(threads) > 1:
                pin_apart_from_pinned_threads()  # the caller off its workers' cores (see dlcbench.cpus)

    def device(self, target: str, device_id: int = 0):
        """The ``tvm_ffi`` device of ``target`` (``cpu`` or ``cuda``)."""
        if target != "cuda":
            return self.ffi.device("cpu", 0)
        if self.cuda_error:
            raise BackendUnavailableError(self.cuda_error)
        if not self.attr(KDL_CUDA, device_id, ATTR_EXIST):
            raise BackendUnavailableError(f"no CUDA device {device_id} here")
        return self.ffi.device("cuda", device_id)

    def attr(self, dev_type: int, dev_id: int, attr_id: int):
        """A device attribute (``runtime.GetDeviceAttr``), None when unknown."""
        try:
            return self._attr(dev_type, dev_id, attr_id) if self._attr else None
        except Exception:  # an attribute the device API does not know
            return None

    def cuda_info(self, device_id: int = 0) -> dict[str, Any]:
        """The CUDA device's name, compute version, SMs, runtime and driver versions, memory; or the error."""
        if self.cuda_error:
            return {"error": self.cuda_error}
        attr = lambda i: self.attr(KDL_CUDA, device_id, i)  # noqa: E731
        exists = bool(attr(ATTR_EXIST))
        info: dict[str, Any] = {"device_exists": exists}
        if exists:
            info.update(device_name=attr(ATTR_DEVICE_NAME), compute_version=attr(ATTR_COMPUTE_VERSION),
                        multiprocessors=attr(ATTR_SM_COUNT), runtime_version=attr(ATTR_API_VERSION),
                        driver_version=attr(ATTR_DRIVER_VERSION), total_memory_bytes=attr(ATTR_TOTAL_MEMORY))
        return info

    def to_device(self, array, dev):
        array = np.asarray(array, order="C")  # not ascontiguousarray: it turns 0-d arrays (scalars) into 1-d
        tensor = self._alloc(self.ffi.Shape(array.shape), self.ffi.dtype(str(array.dtype)), dev, None)
        self._copy_from(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)
        return tensor

    def to_numpy(self, tensor) -> np.ndarray:
        out = np.empty(tuple(tensor.shape), dtype=str(tensor.dtype))
        self._copy_to(tensor, out.ctypes.data_as(ctypes.c_void_p), out.nbytes)
        return out

    def sync(self, dev) -> None:
        self._sync(dev, 0)  # 0: the default stream

    def time_function(self, module, name: str, dev, args, repeat: int, number: int = 1,
                      min_repeat_ms: int = 0) -> list[float]:
        """Per-run seconds of ``module[name](*args)`` from ``runtime.RPCTimeEvaluator``."""
        dev_type = KDL_CUDA if dev.dlpack_device_type() == KDL_CUDA else KDL_CPU
        feval = self._time_evaluator(module, name, dev_type, dev.index, number, repeat, min_repeat_ms, 100, 0, 1, 0, "")
        blob = feval(*args)
        return list(struct.unpack("@" + "d" * repeat, bytes(blob)))


class RuntimeOnlySession(Session):
    """A TVM artifact on the runtime alone (see the module docstring); same regions as ``TvmSession``."""

    native_timer_name = "tvm.time_evaluator"
    resident_region = True

    def __init__(self, manifest: Manifest, artifact_dir: Path, runtime: Runtime, device_id: int = 0):
        super().__init__(manifest)
        self.rt = runtime
        if manifest.target == "cuda":
            arch = (manifest.target_detail or {}).get("arch")
            version = runtime.attr(KDL_CUDA, device_id, ATTR_COMPUTE_VERSION) if not runtime.cuda_error else None
            here = "sm_" + str(version).replace(".", "") if version else None
            if arch and here and here != str(arch).rstrip("af"):
                raise BackendUnavailableError(f"artifact holds {arch} device code only, this GPU is {here}")
        else:
            runtime.set_threads(manifest.threads)
        self.device = runtime.device(manifest.target, device_id)
        try:
            lib = runtime.ffi.load_module(str(artifact_dir / manifest.files["library"]))
            self._vm = lib["vm_load_executable"]()
            init = [KDL_CUDA, device_id, POOLED_ALLOCATOR] if manifest.target == "cuda" else []
            self._vm["vm_initialization"](*init, KDL_CPU, 0, POOLED_ALLOCATOR)
            self._main = self._vm["main"]
            params = []
            if "params" in manifest.files:
                with np.load(artifact_dir / manifest.files["params"]) as data:
                    params = [runtime.to_device(data[f"arr_{i}"], self.device) for i in range(len(data.files))]
            if params and self._vm.implements_function("main_transform_params"):
                # Tuned CPU builds prepack weights into the layouts MetaSchedule chose; once, like ORT at load.
                params = list(self._vm["main_transform_params"](params))
            self._params = params
            runtime.sync(self.device)
        except DlcbenchError:
            raise
        except Exception as err:  # tvm_ffi raises RuntimeError subclasses
            raise BackendRuntimeError(f"tvm runtime could not load {artifact_dir}: {one_line(err, 300)}") from None
        self._staged: list | None = None

    def _args(self, inputs):
        return [self.rt.to_device(x, self.device) for x in self.checked_inputs(inputs)]

    def run(self, inputs):
        args = self._args(inputs)
        try:
            out = self._main(*args, *self._params)
            self.rt.sync(self.device)
        except Exception as err:
            raise BackendRuntimeError(f"tvm run failed: {one_line(err, 300)}") from None
        values = [out] if isinstance(out, self.rt.ffi.Tensor) else list(out)
        return {name: self.rt.to_numpy(v) for name, v in zip(self.output_names, values)}

    def prepare(self, inputs):
        self._staged = self._args(inputs) + self._params

    def run_prepared(self):
        self._main(*self._staged)
        self.rt.sync(self.device)

    def native_time(self, inputs, repeat, number=1):
        return self.rt.time_function(self._vm, "main", self.device, self._args(inputs) + self._params, repeat, number)

    def close(self):
        self._staged = None
        self._params = []
