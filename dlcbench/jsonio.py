"""Strict JSON for everything dlcbench writes: never a ``NaN`` or ``Infinity`` token.

Python's :mod:`json` writes non-finite floats as ``NaN``/``Infinity``, which strict
parsers (JavaScript, ``jq``, most databases) reject. :func:`dumps` writes them as
``null`` and records what they were under :data:`FLAG` in the outermost object
holding them (in each object of a top-level list), keyed by dotted path::

    {"check": {"max_abs": null}, "nonfinite_fields": {"check.max_abs": "NaN"}}
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np

#: Key of the object that maps dotted paths of non-finite values to ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``.
FLAG = "nonfinite_fields"


def dumps(obj: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` with non-finite floats written as ``null`` and flagged (see the module docstring).

    NumPy scalars are written as numbers. Keyword arguments are :func:`json.dumps`'s; ``default``
    (e.g. ``str``) is applied as usual and its results are cleaned too.
    """
    default: Callable[[Any], Any] | None = kwargs.pop("default", None)
    if default is not None:
        kwargs["default"] = lambda value: _clean(default(value), "", {})
    kwargs.pop("allow_nan", None)
    return json.dumps(_flagged(obj), allow_nan=False, **kwargs)


def _flagged(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return [_flagged(item) for item in obj]
    found: dict[str, str] = {}
    cleaned = _clean(obj, "", found)
    if found and isinstance(cleaned, dict):
        previous = cleaned.get(FLAG)
        cleaned[FLAG] = {**(previous if isinstance(previous, dict) else {}), **found}
    return cleaned


def _clean(value: Any, path: str, found: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: _clean(item, f"{path}.{key}" if path else str(key), found) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item, f"{path}.{i}" if path else str(i), found) for i, item in enumerate(value)]
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isfinite(number):
            return number
        found[path] = "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
        return None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def load_file(path) -> Any:
    """The JSON value in file ``path``.

    Raises:
        dlcbench.errors.BadInputError: the file cannot be read, or is not JSON (one line naming it).
    """
    from pathlib import Path

    from dlcbench.errors import BadInputError, one_line

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise BadInputError(f"cannot read {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path} is not JSON: {one_line(err, 120)}") from None

