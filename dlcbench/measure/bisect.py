"""Divergence bisect: the first ONNX node whose output a backend computes differently from ONNX Runtime.

:func:`bisect` exports the model as the backend compiles it, exposes the node outputs (float tensors) as extra
graph outputs, runs the augmented graph on ONNX Runtime (the reference) and on the backend with the same sample
inputs, and compares every intermediate tensor with the output check's tolerances (:mod:`dlcbench.measure.check`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.config import positive_int
from dlcbench.cpus import default_threads
from dlcbench.errors import (BackendUnavailableError, BadInputError, CompileError, DlcbenchError,
                             UnsupportedOpError, one_line)
from dlcbench.measure.check import (ACCURACY_FAIL, check_outputs, check_override_outputs, parse_tolerance_overrides,
                                    tolerance_for)
from dlcbench.outputs import forget_on_sigterm, remove_on_sigterm

#: ONNX element types compared (``TensorProto`` FLOAT, DOUBLE, FLOAT16, BFLOAT16).
FLOAT_TYPES = frozenset({1, 11, 10, 16})
#: Chain entries :func:`format_report` prints before summing up the rest.
SHOWN_CHAIN = 20


@dataclass
class BisectConfig:
    """What to bisect: a model and a backend configuration, as ``dlcbench compile`` takes them.

    Attributes:
        backend: Registered backend name.
        model: Zoo name or model file path.
        preset, params, batch, seed, opset, force_export, input_shapes, input_ranges, inputs_file: The export,
            as in :class:`dlcbench.measure.job.JobConfig`.
        target, precision, threads, backend_options: The backend's compile options.
        tolerances: ``[TENSOR:]abs=..,rel=..,cosine=..`` overrides of the precision's tolerances (no prefix: every
            tensor compared).
        max_compiles: Most backend compiles spent when a backend cannot compile the graph with every
            intermediate exposed at once and the candidates are split in halves; tensors left unchecked are
            reported.
    """

    backend: str
    model: str
    preset: str = "default"
    params: dict[str, Any] = field(default_factory=dict)
    target: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    threads: int = field(default_factory=default_threads)
    backend_options: dict[str, Any] = field(default_factory=dict)
    tolerances: list[str] = field(default_factory=list)
    seed: int = 0
    opset: int = 17
    force_export: bool = False
    input_shapes: dict[str, list[int]] | list[str] = field(default_factory=dict)
    input_ranges: dict[str, list[int]] | list[str] = field(default_factory=dict)
    inputs_file: str | None = None
    max_compiles: int = 32

    def __post_init__(self):
        from dlcbench.models.inputs import parse_input_ranges, parse_input_shapes

        positive_int("batch", self.batch)
        positive_int("threads", self.threads)
        positive_int("max_compiles", self.max_compiles)
        self.input_shapes = {k: list(v) for k, v in parse_input_shapes(self.input_shapes).items()}
        self.input_ranges = {k: list(v) for k, v in parse_input_ranges(self.input_ranges).items()}
        if self.inputs_file is not None:
            self.inputs_file = os.path.abspath(os.path.expanduser(str(self.inputs_file)))
        tolerance_for(self.precision, "*", parse_tolerance_overrides(self.tolerances))  # validate early


@dataclass
class NodeDivergence:
    """One compared node: its worst output against the reference.

    ``max_abs``/``max_rel`` are the largest over the node's compared outputs; ``reasons`` are the check's.
    """

    index: int
    name: str
    op_type: str
    outputs: list[str]
    max_abs: float
    max_rel: float
    diverges: bool
    reasons: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[Any] | None] = field(default_factory=dict)
    downstream: bool = False


@dataclass
class BisectReport:
    """What :func:`bisect` found.

    ``first`` is the first diverging node in topological order (None: the backend matches every compared
    tensor); ``diverging`` lists every diverging node in that order, ``first`` included, each marked
    ``downstream`` when it depends on ``first``. ``unchecked`` maps tensors that could not be compared to why.
    """

    backend: str
    model: str
    target: str
    precision: str
    tolerance: dict[str, Any]
    nodes: int
    tensors_checked: int
    compiles: int
    first: NodeDivergence | None
    diverging: list[NodeDivergence]
    unchecked: dict[str, str] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.first is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bisect(config: BisectConfig, progress=None) -> BisectReport:
    """Finds the first ONNX node whose output ``config.backend`` computes beyond tolerance from ONNX Runtime.

    Steps: export the model as the backend compiles it (static and constant-folded for ``onnx-folded``
    backends); expose every float node output that ONNX shape inference types as an extra graph output; run
    the augmented graph on ONNX Runtime's CPU provider (the reference) and, compiled by the backend in a
    temporary directory this function removes, on the same sample inputs; compare each tensor with
    :func:`dlcbench.measure.check.check_outputs` at ``config.precision``'s tolerances (or the overrides). A
    backend that cannot compile (or run) the graph with every intermediate exposed compiles the model as it is
    (its error is raised if that fails too), then halves of the candidate list, at most ``config.max_compiles``
    compiles in all; what stays uncompiled is ``unchecked``.
    A tensor whose reference holds NaN/Inf diverges only where the backend differs from it by position.

    Args:
        config: The model, backend and tolerances.
        progress: Called with a short line per step (optional).

    Returns:
        The :class:`BisectReport`; ``first`` is None when every compared tensor is within tolerance.

    Raises:
        BadInputError: an unknown backend or model, a bad option or tolerance.
        BackendUnavailableError: the backend cannot run here.
        UnsupportedOpError: the backend has no converter for one of the model's operators.
        CompileError: the backend compiled none of the augmented graphs (the first error).
    """
    import onnx

    from dlcbench.compilers.registry import get_adapter
    from dlcbench.models.export import ExportConfig, export_model

    say = progress or (lambda message: None)
    adapter = get_adapter(config.backend)
    adapter.require_available()
    if adapter.source == "keras":
        raise BadInputError(f"backend {adapter.name} compiles Keras models, not ONNX graphs: bisect needs one that "
                            "compiles ONNX")
    options = adapter.make_options(target=config.target, precision=config.precision, threads=config.threads,
                                   batch=config.batch, backend_options=config.backend_options)
    overrides = parse_tolerance_overrides(config.tolerances)
    say(f"exporting {config.model}")
    folded = adapter.source == "onnx-folded"
    exported = export_model(ExportConfig(
        model=config.model, preset=config.preset, params=dict(config.params), batch=config.batch, seed=config.seed,
        opset=config.opset, static=folded, fold=folded, force=config.force_export,
        input_shapes=dict(config.input_shapes), input_ranges=dict(config.input_ranges),
        inputs_file=config.inputs_file))
    model = onnx.load(str(exported.onnx_path))
    inputs = exported.inputs()
    nodes = list(model.graph.node)  # the ONNX checker (run by every export) requires topological order
    every_type = _tensor_types(model)
    typed = {name: value for name, value in every_type.items()
             if value.type.tensor_type.elem_type in FLOAT_TYPES}
    outputs = [o.name for o in model.graph.output]
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    candidates, unchecked = [], {}
    for node in nodes:
        if node.op_type == "Constant":
            continue
        for out in node.output:
            if not out or out in outputs:
                continue
            if out in typed:
                candidates.append(out)
            elif out not in every_type:
                unchecked[out] = "shape inference gives it no type"
    check_override_outputs(overrides, [*outputs, *candidates])
    compared = [*outputs, *candidates]

    scratch = tempfile.TemporaryDirectory(prefix="dlcbench-bisect-")
    root = Path(scratch.name)
    remove_on_sigterm(root)
    try:
        say(f"running the augmented graph ({len(candidates)} intermediate tensors) on ONNX Runtime")
        augmented = _with_outputs(model, candidates, typed)
        reference = _reference(augmented, inputs, root)
        runner = _ChunkRunner(adapter, options, model, typed, inputs, reference, root, exported.name,
                              config.max_compiles, say)
        got = runner.run(candidates)
    finally:
        scratch.cleanup()
        forget_on_sigterm(root)
    unchecked.update(runner.failed)
    if not got:
        raise runner.first_error or CompileError(f"{adapter.name} compiled none of the augmented graphs")

    results: dict[int, NodeDivergence] = {}
    checked = 0
    for name in sorted((n for n in compared if n in got and n in reference), key=lambda n: producer.get(n, -1)):
        check = check_outputs({name: got[name]}, {name: reference[name]}, config.precision,
                              {k: v for k, v in overrides.items() if k in ("*", name)}).outputs[0]
        index = producer.get(name)
        if index is None:  # a graph output that is a graph input or an initializer: nothing computed it
            continue
        checked += 1
        node = nodes[index]
        entry = results.setdefault(index, NodeDivergence(index, node.name or node.output[0], node.op_type, [],
                                                         0.0, 0.0, False))
        entry.outputs.append(name)
        entry.max_abs = max(entry.max_abs, float(check.metrics.get("max_abs", float("inf"))))
        entry.max_rel = max(entry.max_rel, float(check.metrics.get("max_rel", float("inf"))))
        if not check.passed and check.category == ACCURACY_FAIL:
            entry.diverges = True
            entry.reasons += [f"{name}: {reason}" for reason in check.reasons]
    for name in compared:
        if name not in got and name not in unchecked:
            unchecked[name] = "the backend did not return it"
    diverging = [results[i] for i in sorted(results) if results[i].diverges]
    first = diverging[0] if diverging else None
    if first is not None:
        shapes = _known_shapes(model, every_type, inputs, reference)
        first.input_shapes = {name: shapes.get(name) for name in nodes[first.index].input if name}
        below = _downstream(nodes, first.index)
        for entry in diverging[1:]:
            entry.downstream = entry.index in below
    tol = tolerance_for(config.precision, "*", overrides)
    return BisectReport(
        backend=adapter.name, model=exported.name, target=options.target, precision=options.precision,
        tolerance=asdict(tol), nodes=len(nodes), tensors_checked=checked,
        compiles=runner.compiles, first=first, diverging=diverging, unchecked=unchecked)


class _ChunkRunner:
    """Compiles and runs the graph with chunks of the candidate tensors exposed, halving a chunk that fails."""

    def __init__(self, adapter, options, model, typed, inputs, reference, root: Path, name: str,
                 max_compiles: int, say):
        self.adapter, self.options, self.model, self.typed = adapter, options, model, typed
        self.inputs, self.reference, self.root, self.name = inputs, reference, root, name
        self.max_compiles, self.say = max_compiles, say
        self.compiles = 0
        self.failed: dict[str, str] = {}
        self.first_error: DlcbenchError | None = None

    def run(self, candidates: list[str]) -> dict[str, np.ndarray]:
        """The backend's values of the graph outputs and of every candidate it compiled, by name."""
        got: dict[str, np.ndarray] = {}
        pending = [list(candidates)]
        while pending:
            chunk = pending.pop(0)
            if self.compiles >= self.max_compiles:
                why = f"not compiled: the budget of {self.max_compiles} compiles was spent"
                self.failed.update({name: why for name in chunk})
                continue
            try:
                got.update(self._run_one(chunk))
            except (BadInputError, BackendUnavailableError, UnsupportedOpError):
                raise  # splitting the outputs cannot help
            except DlcbenchError as err:
                self.first_error = self.first_error or err
                if self.compiles == 1 and chunk and self.max_compiles > 1:
                    # Before splitting: a backend that cannot compile the model as it is fails every half too.
                    self.say(f"{self.adapter.name} failed with {len(chunk)} tensors exposed; trying the model as it is")
                    got.update(self._run_one([]))
                if len(chunk) <= 1:
                    why = f"the backend fails with it exposed: {one_line(err, 200)}"
                    self.failed.update({name: why for name in chunk})
                    continue
                self.say(f"{self.adapter.name} failed with {len(chunk)} tensors exposed; retrying in halves")
                half = len(chunk) // 2
                pending[:0] = [chunk[:half], chunk[half:]]
        return got

    def _run_one(self, chunk: list[str]) -> dict[str, np.ndarray]:
        import shutil

        from dlcbench.models.export import ORT_REFERENCE, wrap_onnx

        self.compiles += 1
        work = self.root / f"chunk-{self.compiles}"
        artifact = work / "artifact"
        try:
            augmented = _with_outputs(self.model, chunk, self.typed)
            names = [o.name for o in augmented.graph.output]
            wrapped = wrap_onnx(augmented, work / "model", f"{self.name}-bisect", inputs=self.inputs,
                                reference={n: self.reference[n] for n in names if n in self.reference},
                                reference_source=ORT_REFERENCE)
            artifact.mkdir(parents=True)
            self.say(f"compiling with {self.adapter.name} ({len(chunk)} intermediate tensors exposed)")
            self.adapter.compile_into(wrapped, self.options, artifact)
            with self.adapter.load(artifact) as session:
                return {name: np.array(value) for name, value in session.run(self.inputs).items()}
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _tensor_types(model) -> dict[str, Any]:
    """``{name: ValueInfoProto}`` of the values of ``model`` that ONNX shape inference gives an element type."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort: a model it rejects still runs
        inferred = model
    found = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            found[value.name] = value
    return found


def _with_outputs(model, names: list[str], typed: dict[str, Any]):
    """A copy of ``model`` whose graph outputs are its own, then ``names`` (typed from ``typed``)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for name in names:
        if name not in have:
            value = copy.graph.output.add()
            value.CopyFrom(typed[name])
            have.add(name)
    return copy


def _reference(model, inputs: dict[str, np.ndarray], root: Path) -> dict[str, np.ndarray]:
    """ONNX Runtime's (CPU provider) outputs of ``model`` on ``inputs``."""
    import onnx

    from dlcbench.models.export import run_onnxruntime

    path = root / "reference.onnx"
    onnx.save(model, str(path))
    try:
        return run_onnxruntime(path, inputs)
    finally:
        path.unlink(missing_ok=True)


def _known_shapes(model, types, inputs, reference) -> dict[str, list[Any] | None]:
    """Shapes by tensor name: run values first, then initializers, then what shape inference says (``types``)."""
    shapes: dict[str, list[Any] | None] = {}
    for value in types.values():
        dims = value.type.tensor_type.shape.dim if value.type.tensor_type.HasField("shape") else None
        shapes[value.name] = None if dims is None else [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    shapes.update({name: list(np.shape(v)) for name, v in {**inputs, **reference}.items()})
    return shapes


def _downstream(nodes, start: int) -> set[int]:
    """Indices of the nodes that depend on node ``start`` (through top-level tensors)."""
    reached = {start}
    produced = {out for out in nodes[start].output if out}
    for index in range(start + 1, len(nodes)):
        if produced.intersection(nodes[index].input):
            reached.add(index)
            produced.update(out for out in nodes[index].output if out)
    return reached - {start}


def format_report(report: BisectReport) -> str:
    """The human report: the first diverging node with its inputs' shapes and errors, then the chain after it."""
    tol = report.tolerance
    bounds = (f"abs={tol['abs']:g} rel={tol['rel']:g} cosine={tol['cosine']:g}" if tol["elementwise"]
              else f"cosine={tol['cosine']:g} (not elementwise)")
    tail = (f"compared {report.tensors_checked} tensors of {report.nodes} nodes, {report.backend} ({report.target}, "
            f"{report.precision}) against ONNX Runtime, tolerance {bounds}, {report.compiles} compile(s)")
    lines = []
    if report.first is None:
        lines.append("no diverging node: the backend matches ONNX Runtime on every intermediate tensor")
    else:
        first = report.first
        lines.append(f"first diverging node: {first.name} ({first.op_type})")
        shapes = ", ".join(f"{name} {_shape_text(shape)}" for name, shape in first.input_shapes.items())
        lines.append(f"  inputs: {shapes or 'none'}")
        lines.append(f"  max abs error {first.max_abs:.3g}, max rel error {first.max_rel:.3g} "
                     f"(outputs {', '.join(first.outputs)})")
        chain = [d for d in report.diverging[1:] if d.downstream]
        others = [d for d in report.diverging[1:] if not d.downstream]
        lines.append(f"  diverging after it, downstream: {len(chain)}" + (":" if chain else ""))
        for entry in chain[:SHOWN_CHAIN]:
            lines.append(f"    {entry.name} ({entry.op_type}) max abs error {entry.max_abs:.3g}")
        if len(chain) > SHOWN_CHAIN:
            lines.append(f"    ... and {len(chain) - SHOWN_CHAIN} more")
        if others:
            lines.append(f"  diverging but not downstream of it: {len(others)} ("
                         + ", ".join(f"{d.name} ({d.op_type})" for d in others[:SHOWN_CHAIN])
                         + (", ..." if len(others) > SHOWN_CHAIN else "") + ")")
    if report.unchecked:
        lines.append(f"  not compared: {len(report.unchecked)} tensor(s), e.g. "
                     + "; ".join(f"{k}: {v}" for k, v in list(report.unchecked.items())[:3]))
    lines.append(tail)
    return "\n".join(lines)


def _shape_text(shape) -> str:
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


__all__ = ["BisectConfig", "BisectReport", "NodeDivergence", "bisect", "format_report"]
