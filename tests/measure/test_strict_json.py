"""Strict JSON: what dlcbench writes never holds NaN/Infinity tokens; non-finite values are null and flagged."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlcbench import jsonio
from dlcbench.errors import ExitCode
from dlcbench_test_support import run_script

FAST = ["--batch", "2", "--threads", "1", "--warmup", "1", "--min-iters", "2", "--min-seconds", "0"]


def strict_loads(text: str):
    """``json.loads`` that refuses the NaN/Infinity/-Infinity tokens Python's json would accept."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def flags(value, found=None) -> dict[str, str]:
    """Every ``nonfinite_fields`` entry anywhere in a decoded document."""
    found = {} if found is None else found
    if isinstance(value, dict):
        found.update(value.get(jsonio.FLAG) or {})
        for item in value.values():
            flags(item, found)
    elif isinstance(value, list):
        for item in value:
            flags(item, found)
    return found


def test_dumps_writes_null_and_flags_the_paths():
    data = {"a": 1.5, "b": {"c": float("nan"), "d": [1, float("inf"), np.float32("-inf")]}, "e": np.float64(2.0),
            "f": np.int64(3), "g": np.bool_(True)}
    decoded = strict_loads(jsonio.dumps(data, indent=2))
    assert decoded == {"a": 1.5, "b": {"c": None, "d": [1, None, None]}, "e": 2.0, "f": 3, "g": True,
                       jsonio.FLAG: {"b.c": "NaN", "b.d.1": "Infinity", "b.d.2": "-Infinity"}}
    assert data["b"]["c"] != data["b"]["c"]  # the caller's object is not modified


def test_dumps_flags_each_row_of_a_list_and_leaves_finite_documents_unchanged():
    rows = [{"x": float("nan")}, {"x": 1.0}]
    assert strict_loads(jsonio.dumps(rows)) == [{"x": None, jsonio.FLAG: {"x": "NaN"}}, {"x": 1.0}]
    finite = {"k": [1.0, 2, "s", None, {"z": 0.1}], "n": 3}
    assert jsonio.dumps(finite, indent=2, sort_keys=True) == json.dumps(finite, indent=2, sort_keys=True)
    # default= results are cleaned too; an object json cannot write without default= still raises
    assert strict_loads(jsonio.dumps({"o": object()}, default=lambda o: math.inf)) == {"o": None}
    with pytest.raises(TypeError):
        jsonio.dumps({"o": object()})


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """An ONNX model whose outputs are NaN (input + log(-1)) and -inf (input + log(0)) on every element."""
    consts = [numpy_helper.from_array(np.array([v], np.float32), n) for n, v in (("minus_one", -1.0), ("zero", 0.0))]
    nodes = [helper.make_node("Log", ["minus_one"], ["log_neg"]), helper.make_node("Add", ["input", "log_neg"], ["nan_out"]),
             helper.make_node("Log", ["zero"], ["log_zero"]), helper.make_node("Add", ["input", "log_zero"], ["inf_out"])]
    graph = helper.make_graph(
        nodes, "nonfinite", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("nan_out", "inf_out")],
        initializer=consts,
    )
    path = tmp_path_factory.mktemp("nonfinite") / "nonfinite.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_result_json_and_json_output_are_strict(nan_model, tmp_path):
    out = tmp_path / "a"
    proc = run_script("scripts/compile.py", "--backend", "onnxruntime", "--model", str(nan_model), *FAST,
                      "--json", "--out", str(out), timeout=300)
    # NaN where the reference has NaN matches, but a reference that is not finite is no pass: invalid_reference
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stderr[-3000:]
    assert "RuntimeWarning" not in proc.stderr
    for text in (proc.stdout, (out / "result.json").read_text(), (out / "manifest.json").read_text()):
        strict_loads(text)
    result = strict_loads((out / "result.json").read_text())
    found = flags(result)
    nan_out, inf_out = (o["name"] for o in result["check"]["outputs"])
    assert (nan_out, inf_out) == ("nan_out", "inf_out")
    assert found["check.outputs.0.worst.0.got"] == "NaN" and found["check.outputs.1.worst.0.expected"] == "-Infinity"
    assert result["check"]["outputs"][0]["worst"][0]["got"] is None
    assert flags(strict_loads(proc.stdout)) == found


def test_report_export_json_is_strict(nan_model, tmp_path):
    db = tmp_path / "results.sqlite"
    proc = run_script("scripts/compare.py", "--name", "nonfinite", "--models", str(nan_model), "--backends",
                      "onnxruntime", "--batch", "2", "--min-seconds", "0", "--min-iters", "2", "--db", str(db),
                      "--out", str(tmp_path / "jobs"), timeout=300)
    assert proc.returncode == ExitCode.JOBS_FAILED, proc.stderr[-3000:]  # the reference is not finite
    export = run_script("scripts/report.py", "nonfinite", "--db", str(db), "--export", "json")
    assert export.returncode == ExitCode.OK, export.stderr[-3000:]
    rows = strict_loads(export.stdout)
    assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["category"] == "invalid_reference"
    assert set(flags(rows).values()) == {"NaN", "-Infinity"}
