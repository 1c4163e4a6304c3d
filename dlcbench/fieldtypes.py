"""Checks user-given values against a dataclass's field annotations (an adapter's Options, for one).

Values come from ``--option KEY=VALUE`` (JSON where it parses, else a string) or from
library callers; a wrong type becomes a :class:`dlcbench.errors.BadInputError` naming
the field and what it takes, instead of a ``TypeError`` deep inside a backend.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from pathlib import PurePath
from typing import Any, Mapping

from dlcbench.errors import BadInputError

_INVALID = object()


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of dataclass ``cls``'s fields; empty when they cannot be resolved."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation naming something not importable here: leave the checks to the class
        return {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}


def coerce_fields(cls: type, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Returns ``values`` converted to ``cls``'s field types (ints accepted for floats, strings for paths).

    Args:
        cls: A dataclass.
        values: Field values by name (unknown names are passed through for the caller to refuse).
        what: Names the values in messages, e.g. ``"backend tvm option {name}"``.

    Raises:
        BadInputError: a value does not fit its field's annotation.
    """
    types_ = field_types(cls)
    return {name: coerce_value(types_.get(name, Any), value, what.format(name=name)) for name, value in values.items()}


def coerce_value(hint: Any, value: Any, what: str, valid: str = "") -> Any:
    """Returns ``value`` converted to the annotation ``hint``.

    Raises:
        BadInputError: it does not fit: "``what`` must be <hint in words>, got <value>[; valid: ``valid``]".
    """
    converted = _coerce(hint, value)
    if converted is _INVALID:
        valid = valid or ("true, false" if hint is bool else "")
        raise BadInputError(f"{what} must be {describe(hint)}, got {value!r}" + (f"; valid: {valid}" if valid else ""))
    return converted


def describe(hint: Any) -> str:
    """A type annotation in words: ``an integer``, ``a string or null``..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return "a path"
    return f"a {getattr(origin or hint, '__name__', str(hint))}"


def _coerce(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            converted = _coerce(arg, value)
            if converted is not _INVALID:
                return converted
        return _INVALID
    if origin is typing.Literal:
        return value if value in args else _INVALID
    if hint is type(None) or hint is None:
        return None if value is None else _INVALID
    if hint is bool or isinstance(value, bool):
        return value if hint is bool and isinstance(value, bool) else _INVALID
    if hint is int:
        return int(value) if isinstance(value, numbers.Integral) else _INVALID
    if hint is float:
        return float(value) if isinstance(value, numbers.Real) and math.isfinite(value) else _INVALID
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return hint(value) if isinstance(value, (str, os.PathLike)) else _INVALID
    check = origin or hint
    if isinstance(check, type):
        return value if isinstance(value, check) else _INVALID
    return value  # an annotation this checker does not understand: the dataclass validates it
