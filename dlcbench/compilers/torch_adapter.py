"""PyTorch from ONNX with onnx2torch: run eagerly (``torch``) or through ``torch.compile`` (``inductor``).

Compile converts the ONNX graph into a ``torch.fx.GraphModule`` with
onnx2torch and saves it (``model.pt``, a pickle: load only artifacts you
built). The ``inductor`` backend also lowers constant shape arguments
(Reshape, Slice, Squeeze, Unsqueeze) to Python values so TorchDynamo can trace
them, compiles the module with TorchInductor on the sample inputs and keeps
Inductor's on-disk cache inside the artifact (``inductor-cache/``), so a reload
in a fresh process reuses the generated C++ kernels.

PyPI's torchvision wheels are CUDA builds, which fail to import next to the CPU
build of torch (``operator torchvision::nms does not exist``). onnx2torch needs
torchvision only for NonMaxSuppression and RoiAlign, so when torchvision cannot
be imported a stub stands in and models using those two operators are
reported as unsupported.

Both backends run on ``cpu`` or ``cuda``. On CUDA the module is moved to the
GPU at load, the resident region stages the inputs on the GPU once, leaves the
outputs there and ends with ``torch.cuda.synchronize()``; the end-to-end region
is numpy in, numpy out. Reduced precision is ``torch.autocast`` with the
precision's dtype rather than a module cast (``.half()``): autocast keeps the
ops that need fp32 (softmax, norms, reductions) in fp32, leaves integer inputs
alone and copes with onnx2torch modules that make fp32 tensors at run time;
fp16/bf16 outputs come back as float32 numpy. fp32 on CUDA runs with TF32 off
(cuBLAS and cuDNN) unless the ``tf32`` option turns it on, so the fp32 check
means fp32. The ``torch`` artifact (the converted module) can be built without
a GPU (``--compile-only``); ``inductor`` compiles, and fills its cache, on the
GPU machine itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from dlcbench.errors import (BackendRuntimeError, BackendUnavailableError, BadInputError, CompileError,
                             UnsupportedOpError, one_line)

from dlcbench.compilers.base import Adapter, Availability, CompileOptions, Manifest, Session, check_imports, package_version

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Precisions by target of the ``torch`` backend. CPU bf16 is autocast on CPUs with native bf16 only
#: (:data:`BF16_CPU_FLAGS`, checked at compile); CUDA fp16/bf16 are ``torch.autocast("cuda", dtype)``.
TORCH_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")}
#: Precisions by target of the ``inductor`` backend (CPU: fp32 only, as before CUDA support).
INDUCTOR_PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}
#: The autocast dtype of each reduced precision (fp32 enters no autocast context).
AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
#: The native timer of a CUDA session (the name TensorRTSession's CUDA-event timer uses too).
CUDA_EVENTS_TIMER = "cuda-events"
#: Operators onnx2torch implements with torchvision.
TORCHVISION_OPS = ("NonMaxSuppression", "RoiAlign")
INSTALL_HINT = "pip install -e '.[torch]' (torch==2.13.0, onnx2torch==1.5.15)"


def _torchvision_stub() -> None:
    def missing(*args, **kwargs):
        raise NotImplementedError("torchvision is not importable here (PyPI's wheels need the CUDA build of torch)")

    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]
    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = missing
    stub.ops, stub.__dlcbench_stub__ = ops, True
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops


def import_onnx2torch():
    """Imports onnx2torch, with a torchvision stub when the real torchvision cannot be imported."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        _torchvision_stub()
    import onnx2torch

    return onnx2torch


def torchvision_stubbed() -> bool:
    return bool(getattr(sys.modules.get("torchvision"), "__dlcbench_stub__", False))


def convert_onnx(onnx_path: Path, backend: str = "torch"):
    """Converts an ONNX file to a ``torch.fx.GraphModule``; operators onnx2torch lacks raise UnsupportedOpError."""
    import onnx

    onnx2torch = import_onnx2torch()
    model = onnx.load(str(onnx_path))
    if torchvision_stubbed():
        needs = sorted({n.op_type for n in model.graph.node if n.op_type in TORCHVISION_OPS})
        if needs:
            raise UnsupportedOpError(backend, needs, "onnx2torch needs a working torchvision for these")
    try:
        return onnx2torch.convert(model).eval()
    except NotImplementedError as err:
        # "Converter is not implemented (OperationDescription(..., operation_type='Celu', version=28))", or a
        # converter refusing some attribute or input ("Dynamic value of min/max is not implemented").
        text = str(err)
        if "operation_type='" in text:
            ops = [text.split("operation_type='")[1].split("'")[0]]
        else:
            ops = sorted({n.op_type for n in model.graph.node}) if len(model.graph.node) <= 3 else ["unknown"]
        raise UnsupportedOpError(backend, ops, f"onnx2torch: {one_line(text, 200)}") from None


def _attribute(module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _reshape_static(x, shape):
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _slice_static(x, slices):
    return x[tuple(slice(*s) if s is not None else slice(None) for s in slices)]


def lower_constant_shapes(gm) -> int:
    """Rewrites onnx2torch modules whose shape-like arguments are constants into Python-valued calls.

    onnx2torch keeps Reshape shapes, Slice bounds and Squeeze/Unsqueeze axes as
    tensors and turns them into Python values at run time, which TorchDynamo
    cannot trace (``torch.Size(FakeTensor)``, ``Tensor.item()`` graph breaks).
    When the argument is a constant (an initializer) its value is known now.

    Returns:
        How many nodes were rewritten.
    """
    import torch
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.slice import OnnxSlice
    from onnx2torch.node_converters.squeeze import OnnxSqueezeDynamicAxes, OnnxSqueezeStaticAxes
    from onnx2torch.node_converters.unsqueeze import OnnxUnsqueezeDynamicAxes, OnnxUnsqueezeStaticAxes

    def constant(arg):
        if getattr(arg, "op", None) != "get_attr":
            return None
        value = _attribute(gm, arg.target)
        if not isinstance(value, torch.Tensor) or value.dtype not in (torch.int64, torch.int32) or value.dim() != 1:
            return None
        return [int(v) for v in value.tolist()]

    graph, changed = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        args = list(node.args)
        consts = [constant(a) for a in args[1:]]
        if node.kwargs or not args[1:] or any(c is None for c in consts):
            continue
        replacement = None
        if isinstance(module, OnnxReshape):
            replacement = (_reshape_static, (args[0], tuple(consts[0])))
        elif isinstance(module, OnnxSlice) and len(consts) >= 2:
            starts, ends = consts[0], consts[1]
            axes = consts[2] if len(consts) > 2 else list(range(len(starts)))
            steps = consts[3] if len(consts) > 3 else [1] * len(starts)
            if any(s <= 0 for s in steps) or any(a < 0 for a in axes):
                continue
            slices = [None] * (max(axes) + 1)
            for start, end, axis, step in zip(starts, ends, axes, steps):
                slices[axis] = (start, end, step)
            replacement = (_slice_static, (args[0], tuple(slices)))
        elif isinstance(module, (OnnxSqueezeDynamicAxes, OnnxUnsqueezeDynamicAxes)) and len(consts) == 1 and consts[0]:
            static = OnnxSqueezeStaticAxes if isinstance(module, OnnxSqueezeDynamicAxes) else OnnxUnsqueezeStaticAxes
            gm.add_submodule(node.target, static(consts[0]))
            node.args = (args[0],)
            changed += 1
            continue
        if replacement is None:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(replacement[0], replacement[1])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        changed += 1
    if changed:
        graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return changed


def _precisions_text(table: Mapping[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{target}: {', '.join(precisions)}" for target, precisions in table.items())


def check_target_precision(table: Mapping[str, tuple[str, ...]], target: str, precision: str) -> None:
    """Refuses a precision the backend has on some target but not on ``target`` (one line naming the valid ones).

    An unknown target, or a precision the backend has on no target, is left to :meth:`Adapter.validate`,
    whose messages name the backend's targets and precisions.
    """
    allowed = table.get(target)
    if allowed is None or not any(precision in ps for ps in table.values()):
        return
    if precision not in allowed:
        raise BadInputError(f"precision {precision} is not available on target {target}; valid on {target}: "
                            f"{', '.join(allowed)} (by target: {_precisions_text(table)})")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise BadInputError(f"{name} must be true or false, got {value!r}; valid: true, false")


@dataclass
class TorchOptions(CompileOptions):
    """Options of the ``torch`` backend (and the base of :class:`InductorOptions`).

    Attributes:
        tf32: Let fp32 matmuls and convolutions use TF32 on the GPU (``allow_tf32`` for cuBLAS and cuDNN,
            ``set_float32_matmul_precision("high")``). Off by default, so fp32 is checked as fp32; only with
            target ``cuda`` and precision ``fp32``.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark``: cuDNN times its convolution algorithms for each new
            shape (on the first calls, inside warm-up) and keeps the fastest. Target ``cuda`` only.
    """

    tf32: bool = False
    cudnn_benchmark: bool = False
    #: Precisions by target (see :func:`check_target_precision`).
    target_precisions: ClassVar[Mapping[str, tuple[str, ...]]] = TORCH_PRECISIONS

    def __post_init__(self):
        super().__post_init__()
        _check_bool("tf32", self.tf32)
        _check_bool("cudnn_benchmark", self.cudnn_benchmark)
        check_target_precision(self.target_precisions, self.target, self.precision)
        if self.tf32 and (self.target != "cuda" or self.precision != "fp32"):
            raise BadInputError(f"tf32=true needs target cuda and precision fp32 (TF32 is the GPU's reduced-precision "
                                f"fp32 math), got target {self.target}, precision {self.precision}; valid: tf32=false "
                                "elsewhere")
        if self.cudnn_benchmark and self.target != "cuda":
            raise BadInputError(f"cudnn_benchmark=true needs target cuda, got {self.target}; valid: "
                                "cudnn_benchmark=false elsewhere")


@dataclass
class InductorOptions(TorchOptions):
    """``torch.compile`` options (plus :class:`TorchOptions`' ``tf32`` and ``cudnn_benchmark``).

    Attributes:
        mode: ``default``, ``reduce-overhead``, ``max-autotune`` or ``max-autotune-no-cudagraphs``
            (``reduce-overhead`` and ``max-autotune`` use CUDA graphs on the GPU; ``max-autotune`` also
            benchmarks Triton GEMM/convolution templates at compile time, which takes minutes).
        fullgraph: Fail instead of falling back to eager code at graph breaks.
        compile_threads: Parallel compile workers of TorchInductor (1 = compile in-process).
    """

    mode: str = "default"
    fullgraph: bool = False
    compile_threads: int = 1
    target_precisions: ClassVar[Mapping[str, tuple[str, ...]]] = INDUCTOR_PRECISIONS

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in MODES:
            raise BadInputError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if not isinstance(self.fullgraph, bool):
            raise BadInputError(f"fullgraph must be true or false, got {self.fullgraph!r}")
        if not isinstance(self.compile_threads, int) or self.compile_threads <= 0:
            raise BadInputError(f"compile_threads must be a positive integer, got {self.compile_threads}")


def _set_threads(threads: int) -> None:
    import warnings

    import torch

    # onnx2torch's Slice indexes with a list, which torch deprecates on every call.
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")

    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set, or parallel work already ran in this process


def _as_tensor(value: np.ndarray, device: str = "cpu"):
    """A numpy array as a tensor: on the CPU it shares the array's memory; on ``cuda`` it is copied to the GPU."""
    import torch

    tensor = torch.from_numpy(np.asarray(value, order="C"))
    return tensor if device == "cpu" else tensor.to(device)


def _numpy(tensor, dtype: str | None = None):
    """A tensor as host numpy; bf16 (which numpy lacks) and autocast's fp16 as float32.

    ``dtype`` is the model's declared output dtype: a model whose output really is float16 keeps it.
    """
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16 or (tensor.dtype == torch.float16 and dtype != "float16"):
        tensor = tensor.float()
    return tensor.numpy()


#: CPU flags of native bf16 arithmetic (without them PyTorch emulates bf16, slower than fp32).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags() -> list[str]:
    """The :data:`BF16_CPU_FLAGS` this CPU has (Linux ``/proc/cpuinfo``; none elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in BF16_CPU_FLAGS if f in flags]


def autocast_context(device: str, precision: str):
    """``torch.autocast(device, dtype)`` for fp16/bf16; a null context for fp32 (whose call then pays nothing)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device, dtype=getattr(torch, dtype))


def cuda_unavailable_reason() -> str:
    """Why torch cannot use a GPU in this process; ``""`` when it can."""
    import torch

    if torch.cuda.is_available():
        return ""
    build = (f"built with CUDA {torch.version.cuda} but it sees no GPU" if torch.version.cuda
             else "a CPU-only build")
    return f"torch.cuda.is_available() is False (torch {torch.__version__}, {build})"


def _fp32_precision_holders(torch) -> dict[str, Any]:
    """PyTorch 2.9's per-backend ``fp32_precision`` flags by name (none on older releases).

    Inductor reads these (``cuda.matmul`` for its GEMM kernels, ``cudnn`` for its convolution templates).
    """
    try:
        torch.backends.cuda.matmul.fp32_precision  # noqa: B018  (AttributeError before 2.9)
        holders = {"matmul": torch.backends.cuda.matmul, "cudnn": torch.backends.cudnn,
                   "cudnn_conv": torch.backends.cudnn.conv, "cudnn_rnn": torch.backends.cudnn.rnn}
    except AttributeError:
        return {}
    return holders


def configure_cuda_math(tf32: bool, cudnn_benchmark: bool) -> dict[str, Any]:
    """Sets this process's CUDA math flags; returns them as read back (:func:`cuda_math_settings`).

    TF32 off (the default) is ``set_float32_matmul_precision("highest")`` and ``allow_tf32 = False`` for cuBLAS
    and cuDNN (whose own default is on), so fp32 convolutions and matmuls are IEEE fp32. Where PyTorch has the
    per-backend ``fp32_precision`` flags (2.9+) they are set to agree (``ieee`` or ``tf32``), so that no earlier
    setting of either API survives and the legacy getters see one consistent state (PyTorch refuses to read a mixed
    one). These are global flags: they need no GPU to set, and Inductor reads them when it generates kernels, so
    they are set before compiling.
    """
    import torch

    tf32 = bool(tf32)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    for holder in _fp32_precision_holders(torch).values():
        holder.fp32_precision = "tf32" if tf32 else "ieee"
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    return cuda_math_settings()


def cuda_math_settings() -> dict[str, Any]:
    """The CUDA math flags as they are now in this process (``fp32_precision``: None before PyTorch 2.9)."""
    import torch

    holders = _fp32_precision_holders(torch)
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "fp32_precision": {name: h.fp32_precision for name, h in holders.items()} or None}


def run_settings(target: str, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What a session of these options sets: device, autocast dtype and, on ``cuda``, the math flags."""
    settings: dict[str, Any] = {"device": target, "autocast": AUTOCAST_DTYPES.get(precision)}
    if target == "cuda":
        tf32 = bool(options.get("tf32", False))
        settings.update(tf32_matmul=tf32, tf32_cudnn=tf32, float32_matmul_precision="high" if tf32 else "highest",
                        cudnn_benchmark=bool(options.get("cudnn_benchmark", False)))
    return settings


def gpu_detail() -> dict[str, Any]:
    """The current GPU and the CUDA stack torch runs it with."""
    import torch

    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}",
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def _open_device(backend: str, target: str, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Makes ``target`` ready in this process; returns what was set (a session's ``settings``).

    Raises:
        BackendUnavailableError: target ``cuda`` without a usable GPU, or bf16 on a GPU without it.
    """
    settings = run_settings(target, precision, options)
    if target != "cuda":
        return settings
    import torch

    reason = cuda_unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"{backend} target cuda needs a CUDA GPU on this machine: {reason}")
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise BackendUnavailableError(f"{backend} bf16 needs a GPU with native bf16 (compute capability 8.0 or "
                                      f"newer); {torch.cuda.get_device_name()} has none")
    settings.update(configure_cuda_math(bool(options.get("tf32", False)), bool(options.get("cudnn_benchmark", False))))
    settings.update(gpu_detail())
    return settings


class TorchSession(Session):
    """Runs the converted module eagerly, or its ``torch.compile`` wrapper, on the CPU or the GPU.

    The resident region calls the module under ``torch.inference_mode()`` on tensors made once (on the GPU for
    ``cuda``) and leaves the output tensors unconverted where they are; on ``cuda`` it ends with
    ``torch.cuda.synchronize()`` so that the host clock covers the GPU's work. On ``cuda`` the native timer is CUDA
    events around ``number`` calls on the current stream (:data:`CUDA_EVENTS_TIMER`); on the CPU there is none.

    Attributes:
        settings: What the session set: device, autocast dtype, and on ``cuda`` the math flags read back from torch
            (TF32, float32 matmul precision, cudnn.benchmark) and the GPU.
    """

    resident_region = True

    def __init__(self, manifest: Manifest, module, backend: str, device: str = "cpu",
                 settings: Mapping[str, Any] | None = None):
        super().__init__(manifest)
        self._module = module
        self._backend = backend
        self._device = device
        self._cuda = device == "cuda"
        self.settings = dict(settings or run_settings(device, manifest.precision, manifest.options))
        if self._cuda:
            import torch

            self.native_timer_name = CUDA_EVENTS_TIMER
            self._synchronize = torch.cuda.synchronize
        self._input_names = [i["name"] for i in manifest.inputs]
        self._output_dtypes = [o.get("dtype") for o in manifest.outputs]
        self._staged: list | None = None

    def _call(self, args):
        import torch

        # fp32 enters no autocast context at all: its few microseconds per call would be timed.
        with torch.inference_mode(), autocast_context(self._device, self.manifest.precision):
            result = self._module(*args)
        values = list(result) if isinstance(result, (list, tuple)) else [result]
        return values

    def _check_inputs(self, inputs) -> None:
        missing = [n for n in self._input_names if n not in inputs]
        if missing:
            raise BadInputError(f"missing input(s) {', '.join(missing)}; expected {', '.join(self._input_names)}")

    def run(self, inputs):
        self._check_inputs(inputs)
        try:
            values = self._call([_as_tensor(inputs[n], self._device) for n in self._input_names])
            return {name: _numpy(v, dtype) for name, v, dtype in zip(self.output_names, values, self._output_dtypes)}
        except Exception as err:
            raise BackendRuntimeError(f"{self._backend} run failed: {type(err).__name__}: {one_line(err, 300)}") from None

    def prepare(self, inputs):
        self._check_inputs(inputs)
        self._staged = [_as_tensor(inputs[n], self._device) for n in self._input_names]
        if self._cuda:
            self._synchronize()  # the copies are done before the first timed call

    def run_prepared(self):
        self._call(self._staged)
        if self._cuda:
            self._synchronize()

    def native_time(self, inputs: dict[str, np.ndarray], repeat: int, number: int = 1) -> list[float] | None:
        """On ``cuda``: GPU seconds per call of ``number`` back-to-back calls on the staged inputs, between two CUDA
        events recorded on the current stream, for each of ``repeat`` runs. None on the CPU (no native timer)."""
        if not self._cuda:
            return None
        import torch

        self.prepare(inputs)
        number = max(int(number), 1)
        stream = torch.cuda.current_stream()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(repeat):
            start.record(stream)
            for _ in range(number):
                self._call(self._staged)
            stop.record(stream)
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / 1000.0 / number)  # elapsed_time is in milliseconds
        return samples

    def close(self):
        held = self._module is not None or self._staged is not None
        self._module = None
        self._staged = None
        if self._cuda and held:
            import torch

            torch.cuda.empty_cache()


class TorchAdapter(Adapter):
    """PyTorch eager mode on the onnx2torch conversion of the ONNX model (CPU or CUDA)."""

    name = "torch"
    source = "onnx"
    targets = ("cpu", "cuda")
    #: By target (:data:`TORCH_PRECISIONS`): cpu fp32, bf16 (``torch.autocast("cpu", dtype=torch.bfloat16)``, on
    #: CPUs with native bf16 only: :data:`BF16_CPU_FLAGS`; elsewhere refused rather than emulated); cuda fp32 (TF32
    #: off unless ``tf32``), fp16 and bf16 (``torch.autocast("cuda", dtype)``).
    precisions = ("fp32", "fp16", "bf16")
    Options = TorchOptions
    requires = ("torch", "onnx2torch")
    install_hint = INSTALL_HINT

    @classmethod
    def available(cls) -> Availability:
        status = check_imports("torch", hint=cls.install_hint)
        if not status:
            return status
        try:
            import_onnx2torch()
        except Exception as err:
            return Availability(False, f"cannot import onnx2torch ({type(err).__name__}: {one_line(err, 160)})",
                                cls.install_hint)
        return Availability(True)

    def version(self) -> str:
        return f"{package_version('torch')} (onnx2torch {package_version('onnx2torch')})"

    def validate(self, options: CompileOptions) -> None:
        """The targets and precisions of :meth:`Adapter.validate`, then the precisions of the options' target."""
        super().validate(options)
        check_target_precision(self.Options.target_precisions, options.target, options.precision)

    def _convert(self, model, options) -> tuple[Any, dict[str, Any]]:
        return convert_onnx(model.onnx_path, self.name), {}

    def _compile(self, model, options, out_dir: Path) -> dict[str, Any]:
        """Converts and saves the module. Device-independent: a ``cuda`` artifact can be built without a GPU (the
        module moves to the GPU at load, where the device is checked)."""
        import torch

        _set_threads(options.threads)
        if options.target == "cpu" and options.precision == "bf16" and not cpu_bf16_flags():
            raise BackendUnavailableError(f"{self.name} bf16 needs a CPU with native bf16 ({' or '.join(BF16_CPU_FLAGS)}); "
                                          "this one has neither and would emulate it")
        module, extra = self._convert(model, options)
        torch.save(module, out_dir / "model.pt")
        detail = {"device": options.target, "torch": package_version("torch")}
        if options.target == "cuda":
            detail["torch_cuda"] = torch.version.cuda  # the CUDA the compiling torch was built with (None: CPU-only)
        extra["settings"] = run_settings(options.target, options.precision, options.to_dict())
        return {"files": {"module": "model.pt"}, "target_detail": detail, "extra": extra}

    def _load_module(self, artifact_dir: Path, manifest: Manifest):
        """The saved module, in eval mode, on the manifest's target device."""
        import torch

        import_onnx2torch()  # the pickle refers to onnx2torch's module classes
        try:
            module = torch.load(artifact_dir / manifest.files["module"], weights_only=False, map_location="cpu").eval()
        except Exception as err:
            raise BackendRuntimeError(f"{self.name} could not load {artifact_dir}: {one_line(err, 300)}") from None
        if manifest.target == "cuda":
            try:
                module = module.to("cuda")
            except Exception as err:
                raise BackendRuntimeError(f"{self.name} could not move the module to the GPU: "
                                          f"{type(err).__name__}: {one_line(err, 300)}") from None
        return module

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        _set_threads(manifest.threads)
        settings = _open_device(self.name, manifest.target, manifest.precision, manifest.options)
        return TorchSession(manifest, self._load_module(artifact_dir, manifest), self.name, manifest.target, settings)


@contextmanager
def _inductor_cache(directory: Path):
    """Points Inductor's on-disk cache at ``directory`` for the block, Triton's too (Inductor puts it in
    ``directory/triton/<device>`` when ``$TRITON_CACHE_DIR`` is unset, and then sets that variable itself)."""
    saved = {key: os.environ.get(key) for key in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    os.environ.pop("TRITON_CACHE_DIR", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _compiled(module, options: dict[str, Any]):
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = int(options.get("compile_threads", 1))
    return torch.compile(module, backend="inductor", mode=options.get("mode", "default"),
                         fullgraph=bool(options.get("fullgraph", False)), dynamic=False)


def _sample_inputs(model, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The model's sample inputs when their shapes match the artifact's, else zeros of the right shape."""
    try:
        sample = model.inputs()
        if all(list(sample[n].shape) == list(s) for n, s in shapes.items()):
            return sample
    except Exception:
        pass
    dtypes = {i["name"]: i.get("dtype", "float32") for i in model.meta["inputs"]}
    return {n: np.zeros(s, dtype=dtypes[n]) for n, s in shapes.items()}


def require_cuda_compile(backend: str) -> None:
    """Refuses an Inductor compile for ``cuda`` on a machine without a usable GPU and Triton (one line).

    Raises:
        BackendUnavailableError: no GPU here, or Triton cannot be imported.
    """
    reason = cuda_unavailable_reason()
    if reason:
        raise BackendUnavailableError(
            f"{backend} compiles for target cuda on the GPU machine itself (Inductor generates and tunes Triton "
            f"kernels for the GPU it runs on; there is no compile-only build): {reason}")
    try:
        import triton  # noqa: F401
    except Exception as err:
        raise BackendUnavailableError(f"{backend} target cuda needs Triton, which cannot be imported "
                                      f"({type(err).__name__}: {one_line(err, 160)}) (install: the triton release "
                                      "that matches torch)") from None


class InductorAdapter(TorchAdapter):
    """``torch.compile`` (TorchInductor: C++/OpenMP kernels on the CPU, Triton kernels on CUDA) on the onnx2torch
    conversion."""

    name = "inductor"
    source = "onnx-folded"
    #: By target (:data:`INDUCTOR_PRECISIONS`): cpu fp32; cuda fp32 (TF32 off unless ``tf32``), fp16, bf16 (autocast).
    precisions = ("fp32", "fp16", "bf16")
    Options = InductorOptions

    @classmethod
    def available(cls) -> Availability:
        status = super().available()
        if status and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")):
            return Availability(False, "TorchInductor needs a C++ compiler (g++ or $CXX) to build its CPU kernels",
                                "apt-get install g++")
        return status

    def _convert(self, model, options) -> tuple[Any, dict[str, Any]]:
        module = convert_onnx(model.onnx_path, self.name)
        return module, {"constant_shape_nodes_lowered": lower_constant_shapes(module)}

    def _compile(self, model, options: InductorOptions, out_dir: Path) -> dict[str, Any]:
        """Converts the module, then compiles it with TorchInductor on the sample inputs (on the GPU for ``cuda``, in
        the autocast context of the precision, with the session's CUDA math flags), filling ``inductor-cache/``."""
        import torch
        from torch._dynamo.utils import counters

        device = options.target
        if device == "cuda":
            require_cuda_compile(self.name)
        fields = super()._compile(model, options, out_dir)
        settings = _open_device(self.name, device, options.precision, options.to_dict())
        module = torch.load(out_dir / "model.pt", weights_only=False, map_location="cpu").eval()
        sample = _sample_inputs(model, self.input_shapes(model, options))
        names = [i["name"] for i in model.meta["inputs"]]
        torch._dynamo.reset()
        counters.clear()
        with _inductor_cache(out_dir / "inductor-cache"):
            try:
                module = module.to(device)
                args = [_as_tensor(sample[n], device) for n in names]
                with torch.inference_mode(), autocast_context(device, options.precision):
                    _compiled(module, options.to_dict())(*args)
                if device == "cuda":
                    torch.cuda.synchronize()
            except Exception as err:
                raise CompileError(f"torch.compile failed: {type(err).__name__}: {one_line(err, 400)}") from None
        breaks = sum(counters["graph_break"].values())
        fields["files"]["inductor_cache"] = "inductor-cache"
        fields["target_detail"].update(mode=options.mode, fullgraph=options.fullgraph)
        if device == "cuda":
            fields["target_detail"].update(gpu_detail(), triton=package_version("triton"))
        fields["extra"].update(graph_breaks=breaks, graphs=int(counters["stats"].get("unique_graphs", 0)),
                               settings=settings,
                               note="TorchInductor's cache ships in inductor-cache/; a reload compiles from it")
        return fields

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        _set_threads(manifest.threads)
        settings = _open_device(self.name, manifest.target, manifest.precision, manifest.options)
        module = self._load_module(artifact_dir, manifest)
        cache = artifact_dir / manifest.files.get("inductor_cache", "inductor-cache")
        if cache.is_dir():
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)  # compilation happens at the first call
            if manifest.target == "cuda":
                os.environ.pop("TRITON_CACHE_DIR", None)  # Triton's kernels are in the artifact's cache too
        return TorchSession(manifest, _compiled(module, manifest.options), self.name, manifest.target, settings)


__all__ = ["TorchAdapter", "InductorAdapter", "TorchOptions", "InductorOptions", "convert_onnx",
           "lower_constant_shapes", "configure_cuda_math", "cuda_math_settings", "cuda_unavailable_reason",
           "autocast_context"]
