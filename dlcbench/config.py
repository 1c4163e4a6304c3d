"""Small shared rules for configuration values: where dlcbench keeps its cache, lists, positive counts and durations.

The bottom layer: imports only the standard library and :mod:`dlcbench.errors`, so every other layer may use it.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable

from dlcbench.errors import BadInputError

#: Environment variable naming the cache root (exports, tuning databases, operator tests, wheels).
CACHE_ENV = "DLCBENCH_CACHE"


def cache_dir() -> Path:
    """The cache root: ``$DLCBENCH_CACHE`` or ``~/.cache/dlcbench``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "dlcbench"))


def split_list(value: str | Iterable[Any] | None) -> list[str]:
    """``"a, b,,c"`` or ``["a", "b"]`` -> ``["a", "b", "c"]`` (stripped, empty items dropped)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(i).strip() for i in items if str(i).strip()]


def positive_int(name: str, value: Any) -> int:
    """Returns ``value`` if it is a positive integer (not a bool).

    Raises:
        BadInputError: naming ``name`` and the value given.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadInputError(f"{name} must be a positive integer, got {value!r}")
    return value


def positive_seconds(name: str, value: Any, allow_zero: bool = False) -> float:
    """Returns ``value`` if it is a finite number of seconds (or minutes) above 0 (at least 0 with ``allow_zero``).

    Raises:
        BadInputError: naming ``name`` and the value given (NaN and infinity included).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        bound = "a finite number >= 0" if allow_zero else "a positive finite number"
        raise BadInputError(f"{name} must be {bound}, got {value!r}")
    return value


def option_value(text: str) -> Any:
    """A ``KEY=VALUE`` option's value as the command line gives it: JSON where it parses (``true``, ``8``,
    ``[1, 2]``), else the string itself."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text

