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
from typing import Any

import numpy as np

from dlcbench.errors import (BackendRuntimeError, BackendUnavailableError, BadInputError, CompileError,
                             UnsupportedOpError, one_line)

from dlcbench.compilers.base import Adapter, Availability, CompileOptions, Manifest, Session, check_imports, package_version

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
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


@dataclass
class InductorOptions(CompileOptions):
    """``torch.compile`` options.

    Attributes:
        mode: ``default``, ``reduce-overhead``, ``max-autotune`` or ``max-autotune-no-cudagraphs``.
        fullgraph: Fail instead of falling back to eager code at graph breaks.
        compile_threads: Parallel compile workers of TorchInductor (1 = compile in-process).
    """

    mode: str = "default"
    fullgraph: bool = False
    compile_threads: int = 1

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


def _as_tensor(value: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(value, order="C"))


def _numpy(tensor):
    """A tensor as numpy; bf16 (which numpy lacks) as float32."""
    import torch

    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


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


class TorchSession(Session):
    """Runs the converted module eagerly, or its ``torch.compile`` wrapper.

    The resident region calls the module under ``torch.inference_mode()`` on tensors made once and leaves the
    output tensors unconverted.
    """

    resident_region = True

    def __init__(self, manifest: Manifest, module, backend: str):
        super().__init__(manifest)
        self._module = module
        self._backend = backend
        self._input_names = [i["name"] for i in manifest.inputs]
        self._staged: list | None = None

    def _call(self, args):
        import torch

        # fp32 enters no autocast context at all: its few microseconds per call would be timed.
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.manifest.precision == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            result = self._module(*args)
        values = list(result) if isinstance(result, (list, tuple)) else [result]
        return values

    def run(self, inputs):
        missing = [n for n in self._input_names if n not in inputs]
        if missing:
            raise BadInputError(f"missing input(s) {', '.join(missing)}; expected {', '.join(self._input_names)}")
        try:
            values = self._call([_as_tensor(inputs[n]) for n in self._input_names])
            return {name: _numpy(v) for name, v in zip(self.output_names, values)}
        except Exception as err:
            raise BackendRuntimeError(f"{self._backend} run failed: {type(err).__name__}: {one_line(err, 300)}") from None

    def prepare(self, inputs):
        missing = [n for n in self._input_names if n not in inputs]
        if missing:
            raise BadInputError(f"missing input(s) {', '.join(missing)}; expected {', '.join(self._input_names)}")
        self._staged = [_as_tensor(inputs[n]) for n in self._input_names]

    def run_prepared(self):
        self._call(self._staged)

    def close(self):
        self._module = None
        self._staged = None


class TorchAdapter(Adapter):
    """PyTorch eager mode on the onnx2torch conversion of the ONNX model (CPU)."""

    name = "torch"
    source = "onnx"
    targets = ("cpu",)
    #: bf16: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the call, on CPUs with native bf16 only
    #: (:data:`BF16_CPU_FLAGS`; elsewhere it is refused rather than emulated).
    precisions = ("fp32", "bf16")
    Options = CompileOptions
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

    def _convert(self, model, options) -> tuple[Any, dict[str, Any]]:
        return convert_onnx(model.onnx_path, self.name), {}

    def _compile(self, model, options, out_dir: Path) -> dict[str, Any]:
        import torch

        _set_threads(options.threads)
        if options.precision == "bf16" and not cpu_bf16_flags():
            raise BackendUnavailableError(f"{self.name} bf16 needs a CPU with native bf16 ({' or '.join(BF16_CPU_FLAGS)}); "
                                          "this one has neither and would emulate it")
        module, extra = self._convert(model, options)
        torch.save(module, out_dir / "model.pt")
        return {"files": {"module": "model.pt"}, "target_detail": {"device": "cpu", "torch": package_version("torch")},
                "extra": extra}

    def _load_module(self, artifact_dir: Path, manifest: Manifest):
        import torch

        import_onnx2torch()  # the pickle refers to onnx2torch's module classes
        try:
            return torch.load(artifact_dir / manifest.files["module"], weights_only=False).eval()
        except Exception as err:
            raise BackendRuntimeError(f"{self.name} could not load {artifact_dir}: {one_line(err, 300)}") from None

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        _set_threads(manifest.threads)
        return TorchSession(manifest, self._load_module(artifact_dir, manifest), self.name)


@contextmanager
def _inductor_cache(directory: Path):
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


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


class InductorAdapter(TorchAdapter):
    """``torch.compile`` (TorchInductor, C++/OpenMP kernels) on the onnx2torch conversion (CPU)."""

    name = "inductor"
    source = "onnx-folded"
    precisions = ("fp32",)
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
        import torch
        from torch._dynamo.utils import counters

        fields = super()._compile(model, options, out_dir)
        module = torch.load(out_dir / "model.pt", weights_only=False).eval()
        sample = _sample_inputs(model, self.input_shapes(model, options))
        names = [i["name"] for i in model.meta["inputs"]]
        torch._dynamo.reset()
        counters.clear()
        with _inductor_cache(out_dir / "inductor-cache"):
            try:
                with torch.inference_mode():
                    _compiled(module, options.to_dict())(*[_as_tensor(sample[n]) for n in names])
            except Exception as err:
                raise CompileError(f"torch.compile failed: {type(err).__name__}: {one_line(err, 400)}") from None
        breaks = sum(counters["graph_break"].values())
        fields["files"]["inductor_cache"] = "inductor-cache"
        fields["target_detail"].update(mode=options.mode, fullgraph=options.fullgraph)
        fields["extra"].update(graph_breaks=breaks, graphs=int(counters["stats"].get("unique_graphs", 0)),
                               note="TorchInductor's cache ships in inductor-cache/; a reload compiles from it")
        return fields

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        _set_threads(manifest.threads)
        module = self._load_module(artifact_dir, manifest)
        cache = artifact_dir / manifest.files.get("inductor_cache", "inductor-cache")
        if cache.is_dir():
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)  # compilation happens at the first call
        return TorchSession(manifest, _compiled(module, manifest.options), self.name)


__all__ = ["TorchAdapter", "InductorAdapter", "InductorOptions", "convert_onnx", "lower_constant_shapes"]
