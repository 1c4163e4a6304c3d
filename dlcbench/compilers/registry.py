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

from dlcbench.errors import BadInputError, one_line

from dlcbench.compilers.base import Adapter, Availability

ENTRY_POINT_GROUP = "dlcbench.backends"
#: Extra adapters for one process tree, ``name=module:Class`` separated by commas (tests, experiments).
ENV_VAR = "DLCBENCH_BACKENDS"


@dataclass(frozen=True)
class BackendEntry:
    """One registry line: where the adapter class lives and how to install its library."""

    name: str
    target: str
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
}

BUILTIN = MappingProxyType(_BUILTIN)


def _discovered() -> dict[str, BackendEntry]:
    found: dict[str, BackendEntry] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _BUILTIN:
            dist = getattr(ep, "dist", None)
            origin = f"entry point ({dist.name})" if dist else "entry point"
            found[ep.name] = BackendEntry(ep.name, ep.value, f"pip install {dist.name}" if dist else "", origin)
    for item in filter(None, os.environ.get(ENV_VAR, "").split(",")):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise BadInputError(f"{ENV_VAR} entries must look like name=module:Class, got {item!r}")
        found[name.strip()] = BackendEntry(name.strip(), target.strip(), "", f"${ENV_VAR}")
    return found


def entries() -> MappingProxyType:
    """All known backends, built-in first, as a read-only mapping ``name -> BackendEntry``."""
    return MappingProxyType({**_BUILTIN, **_discovered()})


def backend_names() -> list[str]:
    """Names of every registered backend."""
    return list(entries())


def get_adapter_class(name: str) -> type[Adapter]:
    """Imports and returns the adapter class registered as ``name``.

    Raises:
        BadInputError: ``name`` is unknown (the message lists valid names) or its module is broken.
    """
    all_entries = entries()
    if name not in all_entries:
        raise BadInputError(f"unknown backend {name!r}; valid: {', '.join(all_entries)}")
    entry = all_entries[name]
    module_name, _, class_name = entry.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise BadInputError(f"backend {name} is registered as {entry.target} but cannot be imported: {one_line(err, 200)}") from None
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise BadInputError(f"backend {name} ({entry.target}) is not a dlcbench.compilers.base.Adapter subclass")
    if not getattr(cls, "install_hint", ""):
        cls.install_hint = entry.install_hint
    if not cls.__dict__.get("requires") and entry.requires:
        cls.requires = entry.requires
    return cls


def get_adapter(name: str) -> Adapter:
    """Returns an instance of the adapter registered as ``name``."""
    return get_adapter_class(name)()


def availability(name: str) -> Availability:
    """Whether backend ``name`` can run here; never raises for a registered name."""
    try:
        cls = get_adapter_class(name)
        status = cls.available()
    except BadInputError as err:
        return Availability(False, str(err), entries()[name].install_hint if name in entries() else "")
    except Exception as err:  # an adapter's probe must not take the listing down
        status = Availability(False, f"availability check failed: {one_line(err, 200)}")
    if not status.ok and not status.install_hint:
        status = Availability(False, status.reason, entries()[name].install_hint)
    return status


def describe_backends() -> list[tuple[str, Availability, str]]:
    """Returns ``(name, availability, origin)`` for every registered backend."""
    return [(name, availability(name), entry.origin) for name, entry in entries().items()]
