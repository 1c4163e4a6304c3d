"""A model's inputs as the user fixes them: shapes of dynamic dimensions, ranges of integer inputs, real data.

A model from the wild often leaves dimensions open (``[batch, 3, height, width]``) and takes integer indices whose
valid range only the model knows. :func:`resolve_inputs` turns what a model declares (:class:`DeclaredInput`) and
what the user gives (``--input-shape``, ``--input-range``, ``--inputs FILE.npz``) into fixed
:class:`~dlcbench.models.zoo.InputSpec` s, refusing in one line whatever is still open.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import BadInputError
from dlcbench.models.zoo import InputSpec

#: The range integer inputs are drawn from when neither the model nor the user says one.
DEFAULT_INT_RANGE = (0, 10)
#: ... for an input named like a mask (``attention_mask``): 0 or 1, as masks hold (other values can overflow the
#: ``(1 - mask) * min`` of an attention and make the reference NaN).
MASK_RANGE = (0, 2)
#: Batches of ``--inputs`` data checked at most (the first is also the timed batch).
MAX_DATA_BATCHES = 16


@dataclass
class DeclaredInput:
    """One input as the model declares it.

    Attributes:
        name: Input name.
        dims: Full shape, batch first; None for a dynamic dimension.
        dtype: NumPy dtype name.
        dim_names: Symbolic names of the dimensions where the model has them (``height``), else ''.
        int_range: ``[low, high)`` of valid values read from the model (an embedding table's rows), or None.
        range_source: Where ``int_range`` comes from.
    """

    name: str
    dims: list[int | None]
    dtype: str
    dim_names: list[str] | None = None
    int_range: tuple[int, int] | None = None
    range_source: str = ""


def parse_named_ints(text: str, flag: str, count: int | None = None) -> tuple[str, tuple[int, ...]]:
    """``NAME=1,3,224,224`` -> ``("NAME", (1, 3, 224, 224))``; one-line :class:`BadInputError` naming ``flag``.

    The name is everything before the last ``=`` (input names may hold ``:`` or ``/``).
    """
    name, sep, values = text.rpartition("=")
    try:
        numbers = tuple(int(v) for v in values.split(","))
    except ValueError:
        numbers = ()
    if not sep or not name or not numbers or (count is not None and len(numbers) != count):
        shape = "NAME=LOW,HIGH" if count == 2 else "NAME=D0,D1,..."
        raise BadInputError(f"{flag} takes {shape} (integers), got {text!r}")
    return name, numbers


def parse_input_shapes(items: list[str] | dict | None) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` values (``NAME=D0,D1,...``, repeatable) as ``{name: shape}``; every dimension >= 1."""
    if isinstance(items, dict):
        items = [f"{k}={','.join(str(int(d)) for d in v)}" for k, v in items.items()]
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, dims = parse_named_ints(item, "--input-shape")
        if any(d < 1 for d in dims):
            raise BadInputError(f"--input-shape {item}: every dimension must be >= 1")
        if name in shapes and shapes[name] != dims:
            raise BadInputError(f"--input-shape gives {name} twice, differently")
        shapes[name] = dims
    return shapes


def parse_input_ranges(items: list[str] | dict | None) -> dict[str, tuple[int, int]]:
    """``--input-range`` values (``NAME=LOW,HIGH``: integers drawn from ``[LOW, HIGH)``) as ``{name: (low, high)}``."""
    if isinstance(items, dict):
        items = [f"{k}={int(v[0])},{int(v[1])}" for k, v in items.items()]
    ranges: dict[str, tuple[int, int]] = {}
    for item in items or []:
        name, (low, high) = parse_named_ints(item, "--input-range", count=2)
        if high <= low:
            raise BadInputError(f"--input-range {item}: HIGH must exceed LOW (values are drawn from [LOW, HIGH))")
        ranges[name] = (low, high)
    return ranges


def _unknown(given, names: list[str], flag: str, label: str) -> None:
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise BadInputError(f"{label}: {flag} names {', '.join(unknown)}, which the model does not take; "
                            f"its inputs: {', '.join(names) or 'none'}")


def load_input_data(path: str | Path, declared: list[DeclaredInput], batch: int, label: str) -> dict[str, np.ndarray]:
    """The arrays of ``--inputs FILE.npz``, checked against the model: the same names, each input's dtype, at least
    ``batch`` rows (the leading dimension), every fixed dimension matched."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"--inputs: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:
        raise BadInputError(f"--inputs: {path} is not a NumPy .npz file ({type(err).__name__})") from None
    names = [d.name for d in declared]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BadInputError(f"--inputs {path.name}: no array for input(s) {', '.join(missing)}; the file holds "
                            f"{', '.join(arrays) or 'nothing'}, the model takes {', '.join(names)}")
    _unknown(arrays, names, f"--inputs {path.name}", label)
    for d in declared:
        value = arrays[d.name]
        if str(value.dtype) != d.dtype:
            raise BadInputError(f"--inputs {path.name}: {d.name} is {value.dtype}, the model takes {d.dtype}")
        if value.ndim != len(d.dims):
            raise BadInputError(f"--inputs {path.name}: {d.name} has {value.ndim} dimensions {list(value.shape)}, "
                                f"the model takes {len(d.dims)} ({_shape_text(d)})")
        if value.ndim == 0 or value.shape[0] < batch:
            raise BadInputError(f"--inputs {path.name}: {d.name} has {value.shape[0] if value.ndim else 0} rows, "
                                f"fewer than the batch {batch}")
        for i, (want, got) in enumerate(zip(d.dims[1:], value.shape[1:]), 1):
            if want is not None and want != got:
                raise BadInputError(f"--inputs {path.name}: dimension {i} of {d.name} is {got}, the model fixes it "
                                    f"at {want} ({_shape_text(d)})")
    rows = {arrays[n].shape[0] for n in names}
    if len(rows) > 1:
        raise BadInputError(f"--inputs {path.name}: the inputs have different numbers of rows ({sorted(rows)})")
    return arrays


def data_batches(data: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """Consecutive full batches of ``--inputs`` rows (at most :data:`MAX_DATA_BATCHES`), the first one first."""
    rows = next(iter(data.values())).shape[0] if data else batch
    count = max(1, min(MAX_DATA_BATCHES, rows // batch))
    return [{k: np.ascontiguousarray(v[i * batch:(i + 1) * batch]) for k, v in data.items()} for i in range(count)]


def _shape_text(d: DeclaredInput) -> str:
    names = d.dim_names or [""] * len(d.dims)
    return "[" + ", ".join(str(v) if v is not None else (n or ("batch" if i == 0 else "?"))
                           for i, (v, n) in enumerate(zip(d.dims, names))) + "]"


def resolve_inputs(declared: list[DeclaredInput], batch: int, shapes: dict[str, tuple[int, ...]] | None = None,
                   ranges: dict[str, tuple[int, int]] | None = None,
                   data: dict[str, np.ndarray] | None = None, label: str = "model") -> list[InputSpec]:
    """Fixed input specs: dynamic dimensions from ``shapes`` (full shapes, batch first) or ``data``, integer ranges
    from ``ranges``, else the model, else :data:`DEFAULT_INT_RANGE`.

    The leading dimension is the batch: a dynamic one takes ``batch``. Raises :class:`BadInputError` (one line)
    for a name the model lacks, a shape that contradicts a fixed dimension or the batch, and, naming every input
    still open, for dynamic non-batch dimensions nobody fixed.
    """
    shapes, ranges = dict(shapes or {}), dict(ranges or {})
    names = [d.name for d in declared]
    _unknown(shapes, names, "--input-shape", label)
    _unknown(ranges, names, "--input-range", label)
    for name, value in (data or {}).items():
        shapes.setdefault(name, (batch, *value.shape[1:]))
    if not declared and batch != 1:
        raise BadInputError(f"{label}: the model takes no input, so it has no batch: run it at batch 1")
    for name, (low, high) in ranges.items():
        dtype = next(d.dtype for d in declared if d.name == name)
        if not np.issubdtype(np.dtype(dtype), np.integer):
            raise BadInputError(f"{label}: --input-range {name}: the input is {dtype}; ranges apply to integer inputs")
        info = np.iinfo(np.dtype(dtype))
        if low < info.min or high - 1 > info.max:
            raise BadInputError(f"{label}: --input-range {name}={low},{high}: the input is {dtype}, which holds "
                                f"{info.min} to {info.max} (values are drawn from [LOW, HIGH))")
    specs, open_dims = [], []
    for d in declared:
        if not d.dims:
            raise BadInputError(f"{label}: input {d.name} is a scalar; dlcbench feeds every input with a leading "
                                "batch dimension")
        if d.dims[0] is not None and d.dims[0] != batch:
            raise BadInputError(f"{label}: the leading dimension of {d.name} is fixed at {d.dims[0]}, not the batch "
                                f"{batch}; dlcbench takes every input's leading dimension as the batch")
        given = shapes.get(d.name)
        if given is not None:
            if len(given) != len(d.dims):
                raise BadInputError(f"{label}: --input-shape {d.name} has {len(given)} dimensions, the model's input "
                                    f"has {len(d.dims)} ({_shape_text(d)})")
            for i, (want, got) in enumerate(zip(d.dims, given)):
                if want is not None and want != got:
                    raise BadInputError(f"{label}: dimension {i} of {d.name} is fixed at {want} by the model "
                                        f"({_shape_text(d)}), --input-shape gives {got}")
            if given and given[0] != batch:
                raise BadInputError(f"{label}: --input-shape {d.name} has batch {given[0]} but the batch is {batch}: "
                                    f"give --batch {given[0]} or a shape starting with {batch}")
            dims = list(given[1:])
        else:
            missing = [i for i, v in enumerate(d.dims) if v is None and i > 0]
            if missing:
                open_dims.append(d)
                continue
            dims = list(d.dims[1:])
        low, high, source = _int_range(d, ranges)
        specs.append(InputSpec(d.name, tuple(dims), d.dtype, high=high, low=low, range_source=source))
    if open_dims:
        example = " ".join(
            f"--input-shape {d.name}=" + ",".join(str(batch) if i == 0 else str(v) if v is not None else
                                                   (d.dim_names[i] if d.dim_names and d.dim_names[i] else "N").upper()
                                                   for i, v in enumerate(d.dims)) for d in open_dims)
        what = "; ".join(f"{d.name} {_shape_text(d)}" for d in open_dims)
        raise BadInputError(f"{label}: dynamic dimensions besides the batch need a size: {what}; give them, e.g. "
                            f"{example}")
    return specs


def _int_range(d: DeclaredInput, ranges: dict[str, tuple[int, int]]) -> tuple[int, int, str]:
    """``(low, high, source)`` of an integer input: the user's, else the model's (within what the dtype holds),
    else a default; ``(0, 0, "")`` for other inputs."""
    if not np.issubdtype(np.dtype(d.dtype), np.integer):
        return 0, 0, ""
    if d.name in ranges:
        return (*ranges[d.name], "--input-range")
    info = np.iinfo(np.dtype(d.dtype))
    if d.int_range:
        low, high = d.int_range
        source = d.range_source or "model"
        if high - 1 > info.max:
            high, source = info.max + 1, f"{source}, cut to what {d.dtype} holds"
        return low, high, source
    if "mask" in d.name.lower():
        return (*MASK_RANGE, "default for a mask, 0 or 1 (--input-range sets another)")
    if d.dtype == "uint8":
        return 0, 256, "default for uint8, every value (--input-range sets another)"
    return (*DEFAULT_INT_RANGE, "default (the model says no range: --input-range sets one)")


# --------------------------------------------------------------------------- ONNX


def onnx_declared_inputs(model) -> list[DeclaredInput]:
    """What an ONNX graph declares of its inputs (initializers listed as inputs excluded), with the valid range of
    an integer input that indexes a constant table (:func:`add_table_ranges`)."""
    declared = []
    for value in graph_inputs(model):
        tensor = value.type.tensor_type
        dtype = _ONNX_TO_NUMPY.get(tensor.elem_type)
        if dtype is None:
            raise BadInputError(
                f"input {value.name} has element type {onnx_type_name(tensor.elem_type)}, which dlcbench cannot "
                f"feed; supported: {', '.join(sorted(set(_ONNX_TO_NUMPY.values())))}")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
        dim_names = [d.dim_param if d.HasField("dim_param") else "" for d in tensor.shape.dim]
        declared.append(DeclaredInput(value.name, dims, dtype, dim_names))
    add_table_ranges(declared, model)
    return declared


_ONNX_TO_NUMPY = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 9: "bool", 3: "int8", 2: "uint8"}


def graph_inputs(model) -> list:
    """The real inputs of an ONNX graph: old models also list initializers as inputs."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def onnx_type_name(elem_type: int) -> str:
    """An ONNX element type code by name: ``4`` is ``uint16``, ``16`` is ``bfloat16``."""
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"unknown ({elem_type})"


#: Ops whose first output holds the values of their first input (cast, or moved around): indices keep their range.
_VALUE_PRESERVING = frozenset({"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand",
                               "Transpose"})


#: Ops whose outputs depend on their input's shape, not its values: no index flows through them.
_SHAPE_ONLY = frozenset({"Shape", "Size", "ConstantOfShape", "EyeLike"})


def _gather_tables(model) -> dict[str, tuple[int, str]]:
    """``{graph input: (rows, how)}`` for inputs that index a ``Gather`` on axis 0 of an initializer, the smallest
    table winning when an input indexes several.

    An input reaches the ``Gather`` either through ops that keep its values (``Cast``, ``Unsqueeze``...: ``how`` is
    ``""``) or, where no input does so, through arithmetic on it alone and constants (``how`` is ``"through
    arithmetic"``: the wrap of negative indices a converter writes as ``Where``/``Less``/``Mul``/``Add``), not
    through its shape (position ids from ``Shape(ids)`` take nothing from ``ids``' values).
    """
    initializers = {init.name: list(init.dims) for init in model.graph.initializer}
    inputs = {value.name for value in graph_inputs(model)}
    alias: dict[str, str] = {}
    sources: dict[str, frozenset[str]] = {name: frozenset([name]) for name in inputs}
    for node in model.graph.node:  # topological order: a chain resolves to its first input
        if node.op_type in _VALUE_PRESERVING and node.input and node.output:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        flows = frozenset() if node.op_type in _SHAPE_ONLY else frozenset().union(
            *(sources.get(name, frozenset()) for name in node.input))
        for out in node.output:
            sources[out] = flows
    direct: dict[str, int] = {}
    derived: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = initializers.get(node.input[0])
        if axis != 0 or not table:
            continue
        index = node.input[1]
        root = alias.get(index, index)
        if root in inputs:
            direct[root] = min(direct.get(root, table[0]), table[0])
        elif len(sources.get(index, ())) == 1:
            (source,) = sources[index]
            derived[source] = min(derived.get(source, table[0]), table[0])
    tables = {name: (rows, "through arithmetic") for name, rows in derived.items()}
    tables.update({name: (rows, "") for name, rows in direct.items()})
    return tables


def _table_source(rows: int, how: str) -> str:
    return f"model: indexes a table of {rows} rows" + (f", {how}" if how else "")


def add_table_ranges(declared: list[DeclaredInput], model) -> bool:
    """Gives each integer input that indexes a constant table of ``model`` (an ONNX graph converted from the
    declaring framework's model) the table's rows as its range, in place; returns whether any input got one."""
    tables = _gather_tables(model)
    found = False
    for d in declared:
        table = tables.get(d.name) or tables.get(f"{d.name}:0")  # tf2onnx may keep TensorFlow's ':0'
        if table and np.issubdtype(np.dtype(d.dtype), np.integer):
            d.int_range, d.range_source = (0, table[0]), _table_source(*table)
            found = True
    return found


def set_input_shapes(model, specs: list[InputSpec], batch: int | None) -> None:
    """Fixes the dimensions of the graph's inputs to ``(batch, *spec.shape)``, in place (``batch`` None: the leading
    dimension is left as it is); output dimensions are left to :func:`set_output_shapes` (an output's leading
    dimension need not be the batch)."""
    by_name = {s.name: s for s in specs}
    for value in graph_inputs(model):
        spec = by_name.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if spec is None or not dims:
            continue
        for dim, size in zip(dims, (batch, *spec.shape)):
            if size is not None:
                dim.Clear()
                dim.dim_value = int(size)


def set_output_shapes(model, outputs: dict[str, np.ndarray] | list[dict[str, np.ndarray]]) -> None:
    """Fixes each graph output's dimensions to the shape it was computed with, in place.

    ``outputs``: one batch's outputs, or several batches' (a dimension that differs between them depends on the
    data, as the rows a ``NonZero`` keeps: it stays symbolic, ``NAME_dynamic_I``).
    """
    batches = [outputs] if isinstance(outputs, dict) else list(outputs)
    for value in model.graph.output:
        if value.name not in batches[0] or not value.type.HasField("tensor_type"):
            continue
        shapes = {np.shape(b[value.name]) for b in batches if value.name in b}
        if len({len(s) for s in shapes}) != 1:
            continue  # even the rank changes: leave what the model says
        shape = value.type.tensor_type.shape
        shape.Clear()
        for i, sizes in enumerate(zip(*shapes)):
            dim = shape.dim.add()
            if len(set(sizes)) == 1:
                dim.dim_value = int(sizes[0])
            else:
                dim.dim_param = f"{value.name}_dynamic_{i}"


def upgrade_legacy(model) -> list[str]:
    """Brings a legacy ONNX model (IR version < 4, initializers listed among the graph inputs) up to what the ONNX
    checker and constant folding need, in place: IR version 4 and initializers that are constants, not inputs.
    Returns what was changed, for the export's ``meta.json`` (empty: nothing to do)."""
    notes = []
    initializers = {init.name for init in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in initializers]
    if model.ir_version < 4:
        notes.append(f"IR version {model.ir_version} -> 4")
        model.ir_version = 4
    if listed:
        kept = [i for i in model.graph.input if i.name not in initializers]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        notes.append(f"{len(listed)} initializer(s) no longer listed as graph inputs")
    return notes


def describe(specs: list[InputSpec], batch: int) -> list[dict[str, Any]]:
    """The ``meta.json`` form of fixed input specs: name, full shape, dtype and, for integers, the range used."""
    out = []
    for s in specs:
        entry: dict[str, Any] = {"name": s.name, "shape": [batch, *s.shape], "dtype": s.dtype}
        if s.range_source:
            entry.update(range=[s.low, s.high], range_source=s.range_source)
        out.append(entry)
    return out
