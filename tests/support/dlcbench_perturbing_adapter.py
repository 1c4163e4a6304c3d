"""ONNX Runtime adapters that compute one node wrong on purpose, registered for the bisect tests through
``$DLCBENCH_BACKENDS``: the first ``Relu``'s output is multiplied by 1.01 (a Mul node inserted after it)."""

from __future__ import annotations

import numpy as np

from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter
from dlcbench.errors import CompileError

#: The op type whose first node the adapters perturb, and the factor.
PERTURBED_OP = "Relu"
FACTOR = 1.01


def perturb(path) -> str:
    """Rewrites the ONNX file ``path`` in place: the first :data:`PERTURBED_OP` node's output times :data:`FACTOR`.

    Returns the perturbed node's name.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    index, node = next((i, n) for i, n in enumerate(graph.node) if n.op_type == PERTURBED_OP)
    real = node.output[0]
    node.output[0] = f"{real}__unperturbed"
    graph.initializer.append(numpy_helper.from_array(np.array(FACTOR, np.float32), f"{real}__factor"))
    graph.node.insert(index + 1, helper.make_node("Mul", [node.output[0], f"{real}__factor"], [real],
                                                  name=f"{node.name}__perturb"))
    onnx.save(model, str(path))
    return node.name


class PerturbingAdapter(OnnxRuntimeAdapter):
    """ONNX Runtime, but the first Relu's output is 1 % too large."""

    name = "perturbing"

    def _compile(self, model, options, out_dir):
        fields = super()._compile(model, options, out_dir)
        perturb(out_dir / fields["files"]["model"])
        return fields


class PickyPerturbingAdapter(PerturbingAdapter):
    """:class:`PerturbingAdapter` that refuses graphs with more than :attr:`MAX_OUTPUTS` outputs, as a backend
    with a limit on its outputs would: bisect must split the exposed tensors to get through."""

    name = "picky"
    MAX_OUTPUTS = 2

    def _compile(self, model, options, out_dir):
        if len(model.meta["outputs"]) > self.MAX_OUTPUTS:
            raise CompileError(f"picky: {len(model.meta['outputs'])} outputs, at most {self.MAX_OUTPUTS}")
        return super()._compile(model, options, out_dir)


REGISTRATION = ",".join(
    f"{cls.name}=dlcbench_perturbing_adapter:{cls.__name__}" for cls in (PerturbingAdapter, PickyPerturbingAdapter)
)
