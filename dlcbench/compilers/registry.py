"""A lazy, read-only registry of compiler adapters.

Built-in adapters are named ``"module:Class"`` strings, imported only when
used. Third-party packages add adapters through the ``dlcbench.backends``
entry-point group (value ``"package.module:Class"``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import metadata
from types import MappingProxyType

from dlcbench.errors import BackendUnavailableError, BadInputError, DlcbenchError, one_line

from dlcbench.compilers.base import Adapter, Availability, probe_availability

ENTRY_POINT_GROUP = "dlcbench.backends"
#: Extra adapters for one process tree, ``name=module:Class`` separated by commas (tests, experiments).
ENV_VAR = "DLCBENCH_BACKENDS"


@dataclass(frozen=True)
class BackendEntry:
    """One registry line: where the adapter class lives and how to install its library."""

    name: str
    #: Where the adapter class is: ``"package.module:Class"``.
    location: str
    install_hint: str
    origin: str = "builtin"
    #: Import names of the backend's library, for adapter classes that do not declare ``requires``.
    requires: tuple[str, ...] = ()


_BUILTIN = {
    "tvm": BackendEntry("tvm", "dlcbench.compilers.tvm.adapter:TvmAdapter", "pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1", requires=("tvm",)),
    "onnxruntime": BackendEntry("onnxruntime", "dlcbench.compilers.ort_adapter:OnnxRuntimeAdapter", "pip install onnxruntime", requires=("onnxruntime",)),
    "tensorflow": BackendEntry("tensorflow", "dlcbench.compilers.tf_adapter:TensorFlowAdapter", "pip install tensorflow", requires=("tensorflow",)),
    "xla": BackendEntry("xla", "dlcbench.compilers.tf_adapter:XlaAdapter", "pip install tensorflow", requires=("tensorflow",)),
    "trt": BackendEntry("trt", "dlcbench.compilers.trt_adapter:TensorRTAdapter", "pip install 'tensorrt>=10,<11' cuda-python (needs an NVIDIA GPU)", requires=("tensorrt",)),
    "tftrt": BackendEntry("tftrt", "dlcbench.compilers.tftrt_adapter:TfTrtAdapter", "pip install 'tensorflow[and-cuda]==2.17.*' with TensorRT 8.6 (TF-TRT was removed in TensorFlow 2.18)", requires=("tensorflow",)),
    "openvino": BackendEntry("openvino", "dlcbench.compilers.openvino_adapter:OpenVinoAdapter", "pip install -e '.[openvino]' (openvino==2026.4.1)"),
    "torch": BackendEntry("torch", "dlcbench.compilers.torch_adapter:TorchAdapter", "pip install -e '.[torch]' (torch==2.13.0, onnx2torch==1.5.15)"),
    "inductor": BackendEntry("inductor", "dlcbench.compilers.torch_adapter:InductorAdapter", "pip install -e '.[torch]' (torch==2.13.0, onnx2torch==1.5.15; needs a C++ compiler)"),
    "jax": BackendEntry("jax", "dlcbench.compilers.jax_adapter:JaxAdapter", "pip install -e '.[jax]' (jax==0.10.2, jaxlib==0.10.2)", requires=("jax", "keras")),
}


def _discovered() -> dict[str, BackendEntry]:
    found: dict[str, BackendEntry] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _BUILTIN:
            dist = getattr(ep, "dist", None)
            origin = f"entry point ({dist.name})" if dist else "entry point"
            found[ep.name] = BackendEntry(ep.name, ep.value, f"pip install {dist.name}" if dist else "", origin)
    for item in filter(None, os.environ.get(ENV_VAR, "").split(",")):
        name, sep, location = item.partition("=")
        if not sep or ":" not in location:
            raise BadInputError(f"{ENV_VAR} entries must look like name=module:Class, got {item!r}")
        found[name.strip()] = BackendEntry(name.strip(), location.strip(), "", f"${ENV_VAR}")
    return found


def entries() -> MappingProxyType:
    """All known backends, built-in first, as a read-only mapping ``name -> BackendEntry``."""
    return MappingProxyType({**_BUILTIN, **_discovered()})


def builtin_names() -> list[str]:
    """Names of the backends dlcbench itself registers (what ``--help`` lists; plugins are found at run time)."""
    return list(_BUILTIN)


def backend_names() -> list[str]:
    """Names of every registered backend."""
    return list(entries())


def get_adapter_class(name: str) -> type[Adapter]:
    """Imports and returns the adapter class registered as ``name``.

    Raises:
        BadInputError: ``name`` is unknown (the message lists valid names), or its registration names a
            module or class that does not exist or is not an Adapter.
        BackendUnavailableError: the adapter's module exists but raised while being imported (a broken
            plugin, a missing dependency); ``reason`` says why.
    """
    all_entries = entries()
    if name not in all_entries:
        raise BadInputError(f"unknown backend {name!r}; valid: {', '.join(all_entries)}")
    entry = all_entries[name]
    module_name, _, class_name = entry.location.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        missing = isinstance(err, ModuleNotFoundError) and err.name and f"{module_name}.".startswith(f"{err.name}.")
        if missing:
            raise BadInputError(f"backend {name} is registered as {entry.location} but cannot be imported: {one_line(err, 200)}") from None
        raise _unavailable(name, f"importing {module_name} raised {_describe(err)}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise BadInputError(f"backend {name} is registered as {entry.location} but {module_name} has no {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise BadInputError(f"backend {name} ({entry.location}) is not a dlcbench.compilers.base.Adapter subclass")
    if not getattr(cls, "install_hint", ""):
        cls.install_hint = entry.install_hint
    if not cls.__dict__.get("requires") and entry.requires:
        cls.requires = entry.requires
    return cls


def get_adapter(name: str) -> Adapter:
    """Returns an instance of the adapter registered as ``name``.

    Raises:
        BadInputError: see :func:`get_adapter_class`.
        BackendUnavailableError: the adapter's module or constructor raised (a broken plugin).
    """
    cls = get_adapter_class(name)
    try:
        return cls()
    except DlcbenchError:
        raise
    except Exception as err:
        raise _unavailable(name, f"{cls.__name__}() raised {_describe(err)}") from None


def availability(name: str) -> Availability:
    """Whether backend ``name`` can run here; never raises for a registered name.

    A plugin whose module, constructor or ``available()`` raises is unavailable, the exception being the reason.
    """
    all_entries = entries()
    hint = all_entries[name].install_hint if name in all_entries else ""
    try:
        cls = get_adapter_class(name)
    except DlcbenchError as err:
        return Availability(False, getattr(err, "reason", str(err)), hint)
    status = probe_availability(cls)
    if status:
        try:
            get_adapter(name)
        except DlcbenchError as err:
            status = Availability(False, getattr(err, "reason", str(err)))
    if not status.ok and not status.install_hint:
        status = Availability(False, status.reason, hint)
    return status


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {one_line(err, 200)}"


def _unavailable(name: str, reason: str) -> BackendUnavailableError:
    err = BackendUnavailableError(f"backend {name} is not available: {reason}")
    err.reason = reason  # what --list-backends shows
    return err


def describe_backends() -> list[tuple[str, Availability, str]]:
    """Returns ``(name, availability, origin)`` for every registered backend."""
    return [(name, availability(name), entry.origin) for name, entry in entries().items()]
