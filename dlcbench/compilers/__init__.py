"""Compiler adapters behind one interface. Importing this package imports no backend library."""

from dlcbench.compilers.base import Adapter, Availability, CompileOptions, Manifest, Session
from dlcbench.compilers.registry import backend_names, describe_backends, get_adapter, get_adapter_class

__all__ = [
    "Adapter", "Availability", "CompileOptions", "Manifest", "Session",
    "backend_names", "describe_backends", "get_adapter", "get_adapter_class",
]
