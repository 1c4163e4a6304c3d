"""Argument parsing shared by the command-line tools."""

from __future__ import annotations

import json

from dlcbench.errors import BadInputError


def parse_params(pairs: list[str] | None, flag: str = "--param") -> dict:
    """Parses ``KEY=VALUE`` pairs (values as JSON where they parse, else strings; ``-`` in keys becomes ``_``)."""
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadInputError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params
