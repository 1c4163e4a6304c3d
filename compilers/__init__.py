"""Compiler adapters behind one interface. Importing this package imports no backend library."""

from compilers.base import Adapter, Availability, CompileOptions, Manifest, Session
from compilers.registry import backend_names, describe_backends, get_adapter, get_adapter_class

__all__ = [
    "Adapter", "Availability", "CompileOptions", "Manifest", "Session",
    "backend_names", "describe_backends", "get_adapter", "get_adapter_class",
]
