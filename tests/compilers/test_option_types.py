"""Backend options are checked against the Options dataclass's annotations, for every adapter, in make_options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dlcbench.compilers.base import COMMON_FLAGS, CompileOptions
from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter
from dlcbench.compilers.registry import get_adapter
from dlcbench.errors import BadInputError


@dataclass
class _PluginOptions(CompileOptions):
    """Fields of every annotated kind a plugin might use, with no checks of its own."""

    ratio: float = 0.5
    cache: str | None = None
    folder: Path = Path(".")
    levels: list = None
    anything: "object" = None


class _PluginAdapter(OnnxRuntimeAdapter):
    name = "typed-plugin"
    Options = _PluginOptions


@pytest.mark.parametrize(
    "backend, options, message",
    [
        ("onnxruntime", {"inter_op_threads": "abc"}, "backend onnxruntime option inter_op_threads must be an integer, got 'abc'"),
        ("onnxruntime", {"inter_op_threads": 2.5}, "must be an integer, got 2.5"),
        ("onnxruntime", {"opt_level": 3}, "option opt_level must be a string, got 3"),
        ("tvm", {"tune_minutes": "soon"}, "option tune_minutes must be a finite number, got 'soon'"),
        ("tvm", {"tune_minutes": float("nan")}, "must be a finite number, got nan"),
        ("tvm", {"tuning_db": 7}, "option tuning_db must be a string or null, got 7"),
        ("tvm", {"fast_math": "yes"}, "option fast_math must be true or false, got 'yes'; valid: true, false"),
        ("tensorflow", {"inter_op_threads": [1]}, "must be an integer, got [1]"),
    ],
)
def test_wrong_option_types_are_bad_input(backend, options, message):
    with pytest.raises(BadInputError) as info:
        get_adapter(backend).make_options(backend_options=options)
    assert message in str(info.value)


@pytest.mark.parametrize("field, flag", sorted(COMMON_FLAGS.items()))
def test_common_fields_are_refused_as_backend_options_naming_the_flag(field, flag):
    with pytest.raises(BadInputError, match=f"{field} is not a backend option: use {flag}"):
        get_adapter("onnxruntime").make_options(backend_options={field: "x"})


def test_unknown_option_lists_the_backend_options():
    with pytest.raises(BadInputError, match="unknown option.*bogus; valid: inter_op_threads, opt_level"):
        get_adapter("onnxruntime").make_options(backend_options={"bogus": 1})


def test_plugin_annotations_are_checked_and_converted():
    adapter = _PluginAdapter()
    options = adapter.make_options(threads=1, backend_options={"ratio": 2, "cache": None, "folder": "/tmp/x",
                                                               "levels": [1, 2], "anything": {"k": 1}})
    assert options.ratio == 2.0 and isinstance(options.ratio, float)
    assert options.folder == Path("/tmp/x") and options.levels == [1, 2] and options.anything == {"k": 1}
    for bad, message in [({"cache": 1}, "a string or null"), ({"folder": 3}, "a path"), ({"levels": "1,2"}, "a list")]:
        with pytest.raises(BadInputError, match=message):
            adapter.make_options(backend_options=bad)


def test_library_callers_still_pass_common_fields_as_keywords():
    options = get_adapter("onnxruntime").make_options(target="cpu", precision="fp32", threads=1, batch=4,
                                                      backend_options={"inter_op_threads": 2})
    assert (options.batch, options.threads, options.inter_op_threads) == (4, 1, 2)
