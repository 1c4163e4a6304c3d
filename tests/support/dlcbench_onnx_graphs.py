"""Tiny ONNX graphs for the output-check tests, built with ``onnx.helper``: one float input ``x`` of ``[N, 4]``.

Each graph is named by what its outputs do: NaN from the Log of a negative constant, ±Inf from a division by
zero, NaN where the input is negative (Sqrt), an output that ignores its input, and one that depends on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Graph name -> (nodes, constants, output names); every output is ``[N, 4]`` float32.
_GRAPHS = {
    # y = x + log(-1): NaN everywhere (constant folding turns log(-1) into a NaN initializer)
    "log_negative": ([("Log", ["minus_one"], ["nan"]), ("Add", ["x", "nan"], ["y"])], {"minus_one": -1.0}, ["y"]),
    # y = x / 0: +Inf where x > 0, -Inf where x < 0
    "div_zero": ([("Div", ["x", "zero"], ["y"])], {"zero": 0.0}, ["y"]),
    # y = sqrt(x): NaN where x < 0, finite elsewhere
    "sqrt": ([("Sqrt", ["x"], ["y"])], {}, ["y"]),
    # y = 2x + 1: finite, different for every input
    "scaled": ([("Mul", ["x", "two"], ["x2"]), ("Add", ["x2", "one"], ["y"])], {"two": 2.0, "one": 1.0}, ["y"]),
    # const = 0x + 3 ignores its input; scaled = 2x depends on it
    "const_and_scaled": ([("Mul", ["x", "zero"], ["x0"]), ("Add", ["x0", "three"], ["const"]),
                          ("Mul", ["x", "two"], ["scaled"])], {"zero": 0.0, "three": 3.0, "two": 2.0},
                         ["const", "scaled"]),
}


def onnx_graph(path: Path, name: str) -> Path:
    """Writes the graph ``name`` (a key of the table above) to ``path``; returns ``path``."""
    nodes, constants, outputs = _GRAPHS[name]
    graph = helper.make_graph(
        [helper.make_node(op, ins, outs) for op, ins, outs in nodes], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 4]) for out in outputs],
        [numpy_helper.from_array(np.array(value, np.float32), key) for key, value in constants.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return Path(path)
