"""Static summaries of ONNX graphs: parameter count, op histogram, FLOP/MAC estimate."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """FLOPs (2 per multiply-accumulate) of one node, or None if shapes are unknown."""
    out = shapes.get(node.output[0]) if node.output else None
    if node.op_type in ("Conv", "ConvTranspose"):
        weight = shapes.get(node.input[1])
        if out is None or weight is None:
            return None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        # weight: (Cout, Cin/group, k...) for Conv; each output element needs Cin/group * prod(k) MACs.
        kernel = int(np.prod(weight[1:]))
        if node.op_type == "ConvTranspose":
            kernel = int(np.prod(weight[2:])) * weight[0] // max(group, 1)
        return 2 * int(np.prod(out)) * kernel
    if node.op_type in ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
        a = shapes.get(node.input[0])
        if out is None or a is None:
            return None
        transposed = node.op_type in ("Gemm", "FusedMatMul") and any(x.name == "transA" and x.i for x in node.attribute)
        k = a[-2] if transposed and len(a) >= 2 else a[-1]
        return 2 * int(np.prod(out)) * int(k)
    return 0


def summarize_onnx(model: onnx.ModelProto) -> dict[str, Any]:
    """Summarizes an ONNX model with static input shapes.

    Returns:
        A dict with ``parameters`` (initializer elements), ``op_histogram``,
        ``flops`` and ``macs`` (Conv, Gemm, MatMul counted; other ops are
        treated as free) and ``flops_unknown_nodes`` (nodes whose shapes could
        not be inferred, so the estimate is a lower bound when non-zero).
    """
    graph = model.graph
    params = sum(int(np.prod(init.dims)) for init in graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    params += int(numpy_helper.to_array(attr.t).size)
    histogram = Counter(node.op_type for node in graph.node)
    try:
        shapes = _shapes(model)
    except Exception:  # shape inference can fail on exotic graphs; the estimate then counts nothing
        shapes = {}
    flops, unknown = 0, 0
    for node in graph.node:
        value = _node_flops(node, shapes)
        if value is None:
            unknown += 1
        else:
            flops += value
    return {
        "parameters": params,
        "op_histogram": dict(sorted(histogram.items())),
        "flops": flops,
        "macs": flops // 2,
        "flops_unknown_nodes": unknown,
    }
