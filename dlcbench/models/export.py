"""Keras -> ONNX export with validation, reference outputs and a content-addressed cache.

The entry point is :func:`export_model`. TensorFlow and tf2onnx are imported
only when an export actually has to run, never on a cache hit.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench import jsonio
from dlcbench.config import cache_dir, positive_int
from dlcbench.files import sha256_file
from dlcbench.errors import BadInputError, ExportError, one_line
from dlcbench.quiet import import_quietly
from dlcbench.outputs import forget_on_sigterm, make_temp_dir, remove_on_sigterm, remove_stale, swap_in
from dlcbench.models.inputs import (DeclaredInput, data_batches, describe, graph_inputs, load_input_data,
                                    add_table_ranges, onnx_declared_inputs, onnx_type_name, parse_input_ranges,
                                    parse_input_shapes, resolve_inputs, set_input_shapes, set_output_shapes,
                                    upgrade_legacy)
from dlcbench.models.zoo import InputSpec, get_model, sample_inputs

#: Bumped whenever the exported files change meaning, so old cache entries miss (2: entries carry checksums;
#: 3: extra check batches at small batch sizes; 4: every input dimension fixed, outputs shaped as computed;
#: 5: ONNX Runtime references computed without graph optimizations, data-dependent output dimensions symbolic;
#: 6: a Keras or TensorFlow model's integer inputs take the rows of the table each indexes in the converted graph).
EXPORT_FORMAT = 6
#: ``reference_source`` of a reference ONNX Runtime computed (:func:`run_onnxruntime_batches`).
ORT_REFERENCE = "onnxruntime, graph optimizations off"
#: Input rows the output check sees at least: below this batch size an export also stores extra seeded
#: batches (``check_inputs.npz``/``check_reference.npz``), so a check can tell whether outputs depend on inputs.
MIN_CHECK_ROWS = 3
#: Prefix of the directories an export is built in, inside the cache's ``exports`` directory.
TMP_PREFIX = ".tmp-"
DEFAULT_OPSET = 17
#: The size (graph and external data) of the largest ONNX model dlcbench takes: protobuf's limit on one message.
MAX_ONNX_BYTES = 2 ** 31
MIN_OPSET, MAX_OPSET = 13, 18


def extra_check_batches(batch: int) -> int:
    """How many seeded batches an export at ``batch`` stores beside the sample batch (see :data:`MIN_CHECK_ROWS`)."""
    return -(-MIN_CHECK_ROWS // batch) - 1


def check_seed(seed: int, index: int) -> int:
    """The input seed of extra check batch ``index`` (1, 2...) of an export seeded ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def default_cache_dir() -> Path:
    """Returns the cache root: ``$DLCBENCH_CACHE`` or ``~/.cache/dlcbench`` (:func:`dlcbench.config.cache_dir`)."""
    return cache_dir()


@dataclass
class ExportConfig:
    """What to export.

    Attributes:
        model: A zoo name, or a path to a ``.keras`` file, a SavedModel directory or an ``.onnx`` file.
        preset: Zoo size preset (``tiny`` or ``default``).
        params: Overrides of the preset's parameters.
        batch: Batch size of the sample inputs and reference outputs.
        seed: Seed of the weights and the sample inputs.
        opset: ONNX opset for tf2onnx.
        static: Bake ``batch`` into the graph instead of a dynamic batch dimension.
        fold: The TVM-friendly variant: static shapes plus constant folding (implies ``static``).
        cache_dir: Cache root; defaults to :func:`default_cache_dir`.
        force: Rebuild even if the cache has this export.
        input_shapes: Full shapes (batch first) of inputs with dynamic dimensions, ``{name: [d0, d1, ...]}`` or
            ``--input-shape`` strings ``NAME=D0,D1,...`` (see :func:`dlcbench.models.inputs.resolve_inputs`).
        input_ranges: ``[low, high)`` of integer inputs, ``{name: [low, high]}`` or ``NAME=LOW,HIGH`` strings.
        inputs_file: An ``.npz`` of real inputs (one array per input, rows along the leading dimension): the
            sample batch is its first ``batch`` rows, the next full batches are checked too.
    """

    model: str
    preset: str = "default"
    params: dict[str, Any] = field(default_factory=dict)
    batch: int = 1
    seed: int = 0
    opset: int = DEFAULT_OPSET
    static: bool = False
    fold: bool = False
    cache_dir: Path | None = None
    force: bool = False
    input_shapes: dict[str, list[int]] | list[str] = field(default_factory=dict)
    input_ranges: dict[str, list[int]] | list[str] = field(default_factory=dict)
    inputs_file: str | None = None

    def __post_init__(self):
        positive_int("batch", self.batch)
        self.input_shapes = {k: list(v) for k, v in parse_input_shapes(self.input_shapes).items()}
        self.input_ranges = {k: list(v) for k, v in parse_input_ranges(self.input_ranges).items()}
        if self.inputs_file is not None:
            self.inputs_file = os.path.abspath(os.path.expanduser(str(self.inputs_file)))
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise BadInputError(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {self.opset}")
        if self.fold:
            self.static = True


@dataclass
class ExportedModel:
    """An export on disk: ONNX graph, optional Keras model, sample inputs and reference outputs."""

    directory: Path
    meta: dict[str, Any]
    cache_hit: bool = False

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def onnx_path(self) -> Path:
        return self.directory / "model.onnx"

    @property
    def keras_path(self) -> Path | None:
        """The Keras model (``model.keras`` or a SavedModel directory), if the source had one."""
        rel = self.meta.get("keras")
        return (self.directory / rel) if rel and not os.path.isabs(rel) else (Path(rel) if rel else None)

    @property
    def batch(self) -> int:
        return self.meta["batch"]

    @property
    def input_specs(self) -> list[dict[str, Any]]:
        return self.meta["inputs"]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.meta["outputs"]]

    def inputs(self) -> dict[str, np.ndarray]:
        """Returns the sample inputs the reference was computed on."""
        with np.load(self.directory / "inputs.npz") as data:
            return {k: data[k] for k in data.files}

    def reference(self) -> dict[str, np.ndarray]:
        """Returns the reference outputs (see ``meta['reference_source']``)."""
        with np.load(self.directory / "reference.npz") as data:
            return {k: data[k] for k in data.files}

    def labelled(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(inputs, labels)`` of the held-out split of a model trained on a dataset (``meta['dataset']``), else None."""
        if not self.meta.get("dataset"):
            return None
        with np.load(self.directory / "labelled.npz") as data:
            return data["inputs"], data["labels"]

    def calibration_batches(self, limit: int = 32) -> list[dict[str, np.ndarray]]:
        """Inputs to calibrate int8 quantization on: a dataset model's training rows (``calibration.npz``, one
        batch), else the sample and check batches (random or ``--inputs`` data)."""
        path = self.directory / "calibration.npz"
        if path.is_file():
            with np.load(path) as data:
                return [{k: data[k] for k in data.files}]
        return [inputs for inputs, _ in self.check_batches()][:limit]

    def check_batches(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``(inputs, reference)`` of the sample batch, then of each extra check batch (see :data:`MIN_CHECK_ROWS`)."""
        batches = [(self.inputs(), self.reference())]
        count = int(self.meta.get("check_batches") or 0)
        if count:
            extra_inputs = _unpack(self.directory / "check_inputs.npz", count)
            extra_reference = _unpack(self.directory / "check_reference.npz", count)
            batches += list(zip(extra_inputs, extra_reference))
        return batches


def _pack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays of several batches in one ``.npz``: key ``I:NAME`` for batch ``I`` (from 1)."""
    return {f"{i}:{name}": value for i, batch in enumerate(batches, 1) for name, value in batch.items()}


def _unpack(path: Path, count: int) -> list[dict[str, np.ndarray]]:
    batches: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    with np.load(path) as data:
        for key in data.files:
            index, _, name = key.partition(":")  # names may hold ':' (tf2onnx's 'x:0'), indices do not
            batches[int(index) - 1][name] = data[key]
    return batches


# --------------------------------------------------------------------------- helpers


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("tensorflow", "tf2onnx", "onnx", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of every file under a directory (names included)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        digest.update(str(item.relative_to(path) if path.is_dir() else item.name).encode())
        with open(item, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def names_a_file(model: str) -> bool:
    """Whether a model argument names a file or directory (``path/m.onnx``, ``m.keras``, a SavedModel), not a zoo model."""
    return model.endswith((".onnx", ".keras")) or os.sep in model or "/" in model or bool(Path(model).suffix) \
        or Path(model).is_dir()


def _source_kind(model: str) -> str:
    path = Path(model)
    if model.endswith(".onnx"):
        if path.is_dir():
            raise BadInputError(f"{model} is a directory, not an ONNX file")
        return "onnx"
    if model.endswith(".keras"):
        if path.is_dir():
            raise BadInputError(f"{model} is a directory, not a Keras .keras file")
        if path.is_file() and not zipfile.is_zipfile(path):
            raise BadInputError(f"{model} is not a Keras model file: a .keras file is a zip archive and this one is not")
        return "keras"
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise BadInputError(f"{model} is a directory but not a SavedModel (no saved_model.pb)")
        return "savedmodel"
    if names_a_file(model):
        if not path.exists():
            raise BadInputError(f"model file not found: {model}")
        raise BadInputError(f"unsupported model file {model}: expected .keras, .onnx or a SavedModel directory")
    return "zoo"


def _cache_key(cfg: ExportConfig, kind: str, params: dict[str, Any]) -> str:
    ident: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "batch": cfg.batch,
        "seed": cfg.seed,
        "opset": cfg.opset,
        "static": cfg.static,
        "fold": cfg.fold,
        "versions": _versions(),
    }
    for name in ("input_shapes", "input_ranges"):
        if getattr(cfg, name):
            ident[name] = getattr(cfg, name)
    if cfg.inputs_file:
        if not Path(cfg.inputs_file).is_file():
            raise BadInputError(f"--inputs: file not found: {cfg.inputs_file}")
        ident["inputs_file"] = file_digest(Path(cfg.inputs_file))
    if kind == "zoo":
        ident.update(model=cfg.model, params=params)
    else:
        path = Path(cfg.model)
        if not path.exists():
            raise BadInputError(f"model file not found: {cfg.model}")
        ident.update(model=path.name, digest=file_digest(path))
        if kind == "onnx":  # weights kept beside the graph change the model as much as the graph does
            check_onnx_size(path)
            ident["external_data"] = {name: file_digest(path.parent / name) for name in external_data_files(path)
                                      if (path.parent / name).is_file()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def external_data_files(path: Path) -> list[str]:
    """The files (relative to the model's directory) an ONNX file keeps tensors in, sorted; [] when it keeps
    them all inside, or cannot be read (:func:`load_onnx` says why)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    names: set[str] = set()

    def visit(graph) -> None:
        tensors = list(graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                tensors += [attribute.t, *attribute.tensors] if attribute.HasField("t") else list(attribute.tensors)
                for sub in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                    visit(sub)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                names.update(entry.value for entry in tensor.external_data if entry.key == "location")

    visit(model.graph)
    return sorted(names)


def check_onnx_size(path: Path) -> None:
    """Refuses (:class:`BadInputError`) an ONNX file that, with its external data, reaches :data:`MAX_ONNX_BYTES`."""
    size = path.stat().st_size + sum((path.parent / name).stat().st_size for name in external_data_files(path)
                                     if (path.parent / name).is_file())
    if size >= MAX_ONNX_BYTES:
        raise BadInputError(f"{path} holds {size / 2 ** 30:.1f} GiB with its external data; dlcbench takes ONNX models "
                            f"below 2 GiB (one protobuf message) for now")


def load_onnx(path: Path):
    """Loads and fully checks an ONNX file; a missing or corrupt file is a :class:`BadInputError`."""
    import onnx

    if not Path(path).is_file():
        raise BadInputError(f"model file not found: {path}")
    check_onnx_size(Path(path))
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError and friends
        raise BadInputError(f"{path} is not a valid ONNX file ({one_line(err, 120)})") from None
    if not model.graph.node:
        raise BadInputError(f"{path} is not a valid ONNX file (empty graph)")
    check_onnx(model, str(path), BadInputError, runtime_ops=True)
    _check_outputs_comparable(model, str(path))
    return model


#: ONNX element types of outputs the check compares: NumPy's numbers and bool.
_COMPARABLE = {"float", "float16", "double", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
               "uint64", "bool"}


def _check_outputs_comparable(model, label: str) -> None:
    """Refuses outputs the check cannot compare with a tolerance: sequences, maps, optionals, strings and types
    NumPy lacks (bfloat16, float8), naming each."""
    from onnx import TensorProto

    refused = []
    for value in model.graph.output:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            refused.append(f"{value.name} ({(kind or 'untyped').removesuffix('_type')})")
            continue
        elem = value.type.tensor_type.elem_type
        name = TensorProto.DataType.Name(elem).lower() if elem in TensorProto.DataType.values() else str(elem)
        if name not in _COMPARABLE:
            refused.append(f"{value.name} ({name} tensor)")
    if refused:
        raise BadInputError(f"{label}: dlcbench compares numeric and bool tensor outputs only; not "
                            f"{', '.join(refused)}")


def check_onnx(model, label: str, error=ExportError, runtime_ops: bool = False) -> None:
    """Runs ``onnx.checker.check_model(full_check=True)`` and rejects non-standard ops.

    With ``runtime_ops`` (a user's ONNX file) operators of other domains that ONNX Runtime's CPU provider runs
    (``com.microsoft``'s fused ops) pass: the reference computes them, and each backend takes or refuses them.
    """
    import onnx

    unknown = sorted({(n.domain, n.op_type) for n in model.graph.node if not onnx.defs.has(n.op_type, n.domain)})
    if runtime_ops and unknown:
        kernels = runtime_kernels()
        if kernels is None:  # this ONNX Runtime does not list its kernels: the reference run decides
            unknown = [op for op in unknown if not op[0].startswith("com.microsoft")]
        else:
            unknown = [op for op in unknown if op not in kernels]
    if unknown:
        names = ", ".join(f"{domain}.{op}" if domain not in ("", "ai.onnx") else op for domain, op in unknown)
        also = " nor ONNX Runtime's CPU provider runs" if runtime_ops else ""
        raise error(f"{label}: graph holds operators that are not standard ONNX{also}: {names}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:
        raise error(f"{label}: ONNX checker rejected the model: {one_line(err, 200)}") from None


@functools.lru_cache(maxsize=1)
def runtime_kernels() -> frozenset[tuple[str, str]] | None:
    """``(domain, op type)`` of every kernel ONNX Runtime's CPU provider has (the ONNX domain as ``''``), or None
    when this build does not list them."""
    try:
        from onnxruntime.capi import _pybind_state

        return frozenset((k.domain or "", k.op_name) for k in _pybind_state.get_all_opkernel_def()
                         if k.provider == "CPUExecutionProvider")
    except Exception:
        return None


def fix_erfc(model) -> int:
    """Rewrites TF ``Erfc`` nodes that tf2onnx leaves behind as ``1 - Erf(x)``, in place.

    Keras' exact GELU lowers to ``Erfc``; tf2onnx logs an error and keeps the
    node, producing invalid ONNX. Returns the number of nodes rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    count = 0
    nodes = []
    one_name = "dlcbench_erfc_one"
    for node in graph.node:
        if node.op_type == "Erfc" and node.domain in ("", "ai.onnx"):
            erf_out = f"{node.output[0]}__erf"
            nodes.append(helper.make_node("Erf", [node.input[0]], [erf_out], name=f"{node.name}__erf"))
            nodes.append(helper.make_node("Sub", [one_name, erf_out], list(node.output), name=f"{node.name}__sub"))
            count += 1
        else:
            nodes.append(node)
    if count:
        graph.initializer.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), one_name))
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def fixed_batch(model) -> tuple[int, str] | None:
    """``(batch, input name)`` when every input's leading dimension is the same fixed number, else None."""
    leading = []
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if dims:
            if not dims[0].HasField("dim_value"):
                return None
            leading.append((dims[0].dim_value, value.name))
    return leading[0] if leading and len({n for n, _ in leading}) == 1 else None


def onnx_input_specs(model, batch: int = 1, input_shapes=None) -> list[InputSpec]:
    """Fixed input specs (batch dimension dropped) of an ONNX graph; dynamic dimensions besides the batch must be
    given in ``input_shapes`` (see :func:`dlcbench.models.inputs.resolve_inputs`)."""
    return resolve_inputs(onnx_declared_inputs(model), batch, parse_input_shapes(input_shapes))


def run_onnxruntime(path: Path, inputs: dict[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    """Runs an ONNX file on ONNX Runtime's CPU provider; returns outputs by name."""
    return run_onnxruntime_batches(path, [inputs], threads)[0]


def run_onnxruntime_batches(path: Path, batches: list[dict[str, np.ndarray]], threads: int = 0,
                            label: str | None = None) -> list[dict[str, np.ndarray]]:
    """:func:`run_onnxruntime` on each of several input batches, with one session.

    ONNX Runtime's graph optimizations are off: a reference computes the graph as written, so the check of the
    ``onnxruntime`` backend (optimizations on by default) compares its optimized graph with that, not with itself.
    A failure is an :class:`ExportError` naming ``label`` (the model as the user gave it), else the file.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return [dict(zip(names, session.run(names, inputs))) for inputs in batches]
    except Exception as err:
        raise ExportError(f"ONNX Runtime {ort.__version__} cannot compute the reference of {label or Path(path).name}: "
                          f"{one_line(err, 300)}") from None


def fold_constants(src: Path, dst: Path) -> None:
    """Constant-folds a static-shape ONNX file with ONNX Runtime's basic (standard-op) optimizer."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"constant folding with ONNX Runtime failed: {one_line(err, 300)}") from None


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    """Raises unless ``b`` matches ``a``: close where finite, NaN exactly where NaN, the same Inf where Inf."""
    for name, expected in a.items():
        got = b[name]
        # allclose with equal_nan: NaN equals only NaN, and an Inf only the same-signed Inf
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5, equal_nan=True):
            if got.shape != expected.shape:
                raise ExportError(f"{what} changed output {name} (shape {list(got.shape)}, was {list(expected.shape)})")
            g, e = got.astype(np.float64), np.asarray(expected, np.float64)
            both = np.isfinite(g) & np.isfinite(e)
            changed = int(((np.isnan(g) != np.isnan(e)) | (~both & ~np.isnan(g) & ~np.isnan(e) & (g != e))).sum())
            err = float(np.max(np.abs(np.where(both, g - e, 0.0)), initial=0.0))
            nonfinite = f", {changed} NaN/Inf positions differ" if changed else ""
            raise ExportError(f"{what} changed output {name} (max abs diff {err:.3g}{nonfinite})")


# --------------------------------------------------------------------------- Keras / TF side


def _quiet_tensorflow():
    return import_quietly("tensorflow")


def _keras_inputs(model, label: str) -> list[DeclaredInput]:
    """A Keras model's declared inputs (dynamic dimensions None; an integer input's range from the model's
    ``Embedding`` table when it has exactly one integer input, until the converted graph says better: see
    :func:`dlcbench.models.inputs.add_table_ranges`).

    A model without symbolic inputs (subclassed) is taken at the shape it was built with, as float32; one never
    built is refused in one line.
    """
    try:
        tensors = list(model.inputs or [])
    except (AttributeError, ValueError, RuntimeError):  # an unbuilt Sequential, a subclassed model
        tensors = []
    declared = []
    for tensor in tensors:
        dtype = str(np.dtype(tensor.dtype))
        name = tensor.name.split(":")[0]
        declared.append(DeclaredInput(name, [None, *(None if d is None else int(d) for d in tensor.shape[1:])], dtype))
    if not tensors:
        declared = _built_inputs(model, label)
    integer = [d for d in declared if np.issubdtype(np.dtype(d.dtype), np.integer)]
    tables = [layer.input_dim for layer in _all_layers(model) if type(layer).__name__ == "Embedding"]
    if len(integer) == 1 and tables:
        integer[0].int_range, integer[0].range_source = (0, min(tables)), f"model: Embedding of {min(tables)} rows"
    return declared


def _is_shape(value) -> bool:
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def _built_inputs(model, label: str) -> list[DeclaredInput]:
    """The inputs of a model without symbolic ones, from the shapes Keras recorded when it was built or called."""
    try:
        config = model.get_build_config() or {}
    except Exception:
        config = {}
    shape = config.get("input_shape")
    if shape is None and len(config.get("shapes_dict") or {}) == 1:
        shape = next(iter(config["shapes_dict"].values()))
    if _is_shape(shape) and shape:
        shapes = {"input": shape}
    elif isinstance(shape, (list, tuple)) and shape and all(_is_shape(s) and s for s in shape):
        shapes = {f"input_{i}": s for i, s in enumerate(shape)}
    else:
        raise BadInputError(f"{label}: the Keras model declares no inputs (a Sequential model without an Input "
                            "layer that was never built, or a subclassed model taking several arguments or a dict); "
                            "give it a keras.Input, or build it, before saving")
    return [DeclaredInput(name, [None, *(None if d is None else int(d) for d in dims[1:])], "float32")
            for name, dims in shapes.items()]


def _keras_output_names(model, specs: list[InputSpec]) -> list[str]:
    """Names of a Keras model's outputs: a dict's keys (in Keras' flattening order, sorted), else the model's output
    names, else ``output_I``. A model without symbolic outputs is called once on zeros to see them."""
    try:
        structure = model.output
    except (AttributeError, ValueError, RuntimeError):  # a subclassed model has no symbolic output
        structure = None
    if structure is None:
        feed = [np.zeros((1, *s.shape), s.dtype) for s in specs]
        structure = model(feed if len(feed) > 1 else feed[0], training=False)
    if isinstance(structure, dict):
        return sorted(structure)
    count = len(structure) if isinstance(structure, (list, tuple)) else 1
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == count else [f"output_{i}" for i in range(count)]


def _output_list(outs) -> list:
    """A Keras model call's outputs as a list in :func:`_keras_output_names`' order (a dict's by its sorted keys)."""
    if isinstance(outs, dict):
        return [outs[k] for k in sorted(outs)]
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def _keras_to_onnx(model, specs, output_names, cfg: ExportConfig):
    """Converts a Keras model through a named tf.function; returns the ONNX model proto."""
    tf = _quiet_tensorflow()

    batch = cfg.batch if cfg.static else None
    signature = [tf.TensorSpec(s.with_batch(batch), tf.as_dtype(s.dtype), name=s.name) for s in specs]

    @tf.function(input_signature=signature)
    def serve(*args):
        outs = _output_list(model(list(args) if len(args) > 1 else args[0], training=False))
        return {name: tf.identity(t) for name, t in zip(output_names, outs)}

    return _convert_function(serve, cfg)


def _convert_function(func, cfg: ExportConfig):
    import logging

    tf2onnx = import_quietly("tf2onnx")
    # tf2onnx logs unconverted ops (Erfc) as errors and carries on; fix_erfc and
    # check_onnx handle them, failing loudly on anything still non-standard.
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)

    try:
        model_proto, _ = tf2onnx.convert.from_function(func, input_signature=func.input_signature, opset=cfg.opset)
    except Exception as err:
        raise ExportError(f"tf2onnx failed: {one_line(err, 300)}") from None
    _freeze_captured_tensors(model_proto, func)
    return model_proto


def _freeze_captured_tensors(model_proto, func) -> None:
    """Turns the graph inputs tf2onnx made of tensors the function captured into constants, in place.

    tf2onnx freezes captured *variables*; a layer that keeps state as plain tensors (Keras 3's ``Normalization``
    keeps its adapted mean and variance so) is captured as a tensor, which tf2onnx leaves as a graph input that
    nothing feeds. Raises :class:`ExportError` naming any graph input that is neither declared nor captured.
    """
    from onnx import numpy_helper

    declared = {spec.name for spec in func.input_signature}
    concrete = func.get_concrete_function()
    captured = {internal.name: external for external, internal in concrete.graph.captures
                if external.dtype.name != "resource"}
    kept, frozen, unknown = [], [], []
    for value in model_proto.graph.input:
        base = value.name.split(":")[0]
        if value.name in declared or base in declared:
            kept.append(value)
        elif value.name in captured:
            model_proto.graph.initializer.append(numpy_helper.from_array(np.asarray(captured[value.name]), value.name))
            frozen.append(value.name)
        else:
            unknown.append(value.name)
    if unknown:
        raise ExportError(f"the ONNX export has inputs that are neither the model's nor constants: {', '.join(unknown)}")
    if frozen:
        del model_proto.graph.input[:]
        model_proto.graph.input.extend(kept)


def _savedmodel_function(path: Path, cfg: ExportConfig):
    tf = _quiet_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
        sig = loaded.signatures["serving_default"]
    except Exception as err:
        raise BadInputError(f"cannot load SavedModel {path}: {one_line(err, 200)}") from None
    kwargs = sig.structured_input_signature[1]
    names = sorted(kwargs)
    declared = [DeclaredInput(n, [None, *(None if d is None else int(d) for d in kwargs[n].shape[1:])],
                              kwargs[n].dtype.name) for n in names]
    specs = _resolve(declared, cfg, str(path))
    batch = cfg.batch if cfg.static else None
    signature = [tf.TensorSpec(s.with_batch(batch), kwargs[s.name].dtype, name=s.name) for s in specs]

    @tf.function(input_signature=signature)
    def serve(*args):
        return sig(**dict(zip(names, args)))

    output_names = sorted(sig.structured_outputs)
    return loaded, serve, declared, specs, output_names


# --------------------------------------------------------------------------- main entry


def export_model(cfg: ExportConfig) -> ExportedModel:
    """Exports a zoo model or a user's model file to ONNX, with reference outputs.

    A cached export with the same key (model, params, seed, opset, shape mode,
    variant, batch and the TensorFlow/tf2onnx/onnx versions) is returned without
    importing TensorFlow unless ``cfg.force`` is set. A damaged entry (see
    :func:`entry_damage`) is reported in one line on stderr and rebuilt.

    Raises:
        BadInputError: unknown model, invalid parameter, missing/corrupt file.
        ExportError: the converter failed or produced invalid ONNX.
    """
    kind = _source_kind(cfg.model)
    params: dict[str, Any] = {}
    spec = None
    if kind == "zoo":
        spec = get_model(cfg.model)
        params = spec.resolve_params(cfg.preset, cfg.params)
    elif cfg.params:
        raise BadInputError("model parameters apply only to zoo models, not to a model file")
    key = _cache_key(cfg, kind, params)
    root = Path(cfg.cache_dir or default_cache_dir()) / "exports"
    name = cfg.model if kind == "zoo" else Path(cfg.model).stem
    final = root / f"{name}-{key[:16]}"
    replace = cfg.force
    if not cfg.force and os.path.lexists(final):
        damage, meta = entry_damage(final, key)
        if damage is None:
            return ExportedModel(final, meta, cache_hit=True)
        print(f"warning: export cache entry {final} is damaged ({damage}); rebuilding", file=sys.stderr, flush=True)
        replace = True

    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale(root, TMP_PREFIX)  # left by killed exports
        tmp = make_temp_dir(root, f"{TMP_PREFIX}{name}-")
    except OSError as err:
        raise BadInputError(f"cannot write to cache {root}: {err.strerror}") from None
    remove_on_sigterm(tmp)
    try:
        meta = _export_into(tmp, cfg, kind, spec, params)
        meta.update(name=name, cache_key=key, versions=_versions(), kind=kind, preset=cfg.preset if spec else None)
        meta["entry_files"] = _entry_files(tmp)
        (tmp / "meta.json").write_text(jsonio.dumps(meta, indent=2))
        meta = _publish_entry(tmp, final, key, replace, name) or meta
    finally:  # an exception, Ctrl-C or SIGTERM leaves no partial export behind
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        forget_on_sigterm(tmp)
    return ExportedModel(final, meta, cache_hit=False)


def _entry_files(directory: Path) -> dict[str, dict[str, Any]]:
    """SHA-256, size and modification time of every file of a cache entry but ``meta.json``."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "meta.json"):
        stat = path.stat()
        files[path.relative_to(directory).as_posix()] = {
            "sha256": sha256_file(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return files


def entry_damage(directory: Path, key: str) -> tuple[str | None, dict[str, Any] | None]:
    """Checks an export cache entry; returns ``(None, meta)`` when intact, else ``(why, None)``.

    Every file must have the size recorded when the entry was written; a file whose modification
    time changed since is also hashed and compared with its recorded SHA-256, so a hit costs a few
    ``stat`` calls unless something touched the entry.
    """
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text())
    except FileNotFoundError:
        return "meta.json is missing", None
    except (OSError, ValueError) as err:
        return f"meta.json is unreadable: {one_line(err, 80)}", None
    files = meta.get("entry_files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or meta.get("cache_key") != key or not {"inputs", "outputs", "name"} <= meta.keys():
        return "meta.json is incomplete", None
    missing = [f for f in ("model.onnx", "inputs.npz", "reference.npz") if f not in files]
    if missing:
        return f"meta.json lists no {missing[0]}", None
    for rel, record in files.items():
        path = Path(directory) / rel
        try:
            stat = path.stat()
            if stat.st_size != record["bytes"]:
                return f"{rel} has {stat.st_size} bytes, {record['bytes']} were written", None
            if stat.st_mtime_ns != record["mtime_ns"] and sha256_file(path) != record["sha256"]:
                return f"{rel} does not match its SHA-256", None
        except FileNotFoundError:
            return f"{rel} is missing", None
        except OSError as err:
            return f"{rel} is unreadable: {err.strerror}", None
        except (KeyError, TypeError):
            return "meta.json is incomplete", None
    return None, meta


#: The files of an export every job needs, whatever its backend compiles from.
EXPORT_CORE_FILES = ("inputs.npz", "reference.npz", "check_inputs.npz", "check_reference.npz", "calibration.npz")


def export_files_for(meta: dict[str, Any], source: str) -> list[str]:
    """The files of an export (relative paths, ``meta.json`` apart) a backend compiling from ``source`` needs:
    the samples and references, and ``model.onnx`` or the Keras model (see ``Adapter.source``)."""
    listed = list((meta.get("entry_files") or {}).keys())
    wanted = [f for f in listed if f in EXPORT_CORE_FILES]
    if source in ("onnx", "onnx-folded"):
        wanted.append("model.onnx")
    elif source == "keras":
        rel = meta.get("keras")
        if not rel or os.path.isabs(rel):
            raise BadInputError(f"export {meta.get('name')!r} has no Keras model to stage")
        wanted += [f for f in listed if f == rel or f.startswith(rel.rstrip("/") + "/")]
    return wanted


def open_export(directory: Path) -> ExportedModel:
    """An export copied elsewhere whole or in part (by :func:`export_files_for`), as an :class:`ExportedModel`.

    Only the files present are checked (against the SHA-256 recorded at export): a stage carries the ones its
    backends need.

    Raises:
        BadInputError: no ``meta.json``, or a present file that does not match it.
    """
    directory = Path(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise BadInputError(f"{directory} holds no readable export meta.json: {one_line(err, 120)}") from None
    for rel, record in (meta.get("entry_files") or {}).items():
        path = directory / rel
        if path.is_file() and sha256_file(path) != record.get("sha256"):
            raise BadInputError(f"{path} does not match the SHA-256 recorded at export")
    for rel in ("inputs.npz", "reference.npz"):
        if not (directory / rel).is_file():
            raise BadInputError(f"{directory} lacks {rel}")
    return ExportedModel(directory, meta, cache_hit=True)


def _publish_entry(tmp: Path, final: Path, key: str, replace: bool, name: str) -> dict[str, Any] | None:
    """Renames a finished export to ``final``; returns the meta of an intact entry another process published first."""
    try:
        os.rename(tmp, final)  # atomic: readers see the whole directory or none of it
        return None
    except OSError as err:
        if not os.path.lexists(final):
            raise BadInputError(f"cannot write to cache {final.parent}: {err.strerror}") from None
    if not replace:
        damage, meta = entry_damage(final, key)
        if damage is None:  # another process exported the same model meanwhile
            return meta
    try:
        swap_in(tmp, final, f"{TMP_PREFIX}{name}-old-")
    except OSError as err:
        raise BadInputError(f"cannot write to cache {final.parent}: {err.strerror}") from None
    return None


def _resolve(declared: list[DeclaredInput], cfg: ExportConfig, label: str) -> list[InputSpec]:
    """The export's fixed input specs (:func:`dlcbench.models.inputs.resolve_inputs` with the config's shapes,
    ranges and data)."""
    data = load_input_data(cfg.inputs_file, declared, cfg.batch, label) if cfg.inputs_file else None
    return resolve_inputs(declared, cfg.batch, cfg.input_shapes, cfg.input_ranges, data, label)


def _declared_of(specs: list[InputSpec]) -> list[DeclaredInput]:
    """Resolved specs as fully fixed declarations (to check data against them)."""
    return [DeclaredInput(s.name, [None, *s.shape], s.dtype) for s in specs]


def _zoo_declared(specs: list[InputSpec]) -> list[DeclaredInput]:
    return [DeclaredInput(s.name, [None, *s.shape], s.dtype,
                          int_range=(s.low, s.high) if s.high else None,
                          range_source="model: vocabulary size" if s.high else "") for s in specs]


def _export_into(out: Path, cfg: ExportConfig, kind: str, spec, params) -> dict[str, Any]:
    import onnx

    task = spec.task if spec else "generic"
    keras_rel: str | None = None
    upgraded: list[str] = []
    split = None  # a dataset model's labelled data
    if kind == "onnx":
        model_proto = load_onnx(Path(cfg.model))
        upgraded = upgrade_legacy(model_proto)
        fixed_at = fixed_batch(model_proto)
        if fixed_at and fixed_at[0] != cfg.batch:
            raise BadInputError(f"{cfg.model}: the model's batch is fixed at {fixed_at[0]} (input {fixed_at[1]}), "
                                f"so it cannot run at batch {cfg.batch}; use --batch {fixed_at[0]}")
        specs = _resolve(onnx_declared_inputs(model_proto), cfg, cfg.model)
        set_input_shapes(model_proto, specs, cfg.batch if cfg.static else None)
        reference_source = ORT_REFERENCE
        reference = framework = None
    elif kind == "savedmodel":
        loaded, serve, declared, specs, output_names = _savedmodel_function(Path(cfg.model), cfg)

        def framework(batch):
            return {k: np.asarray(v) for k, v in serve(*[batch[s.name] for s in specs]).items()}

        model_proto = _convert_function(serve, cfg)
        if add_table_ranges(declared, model_proto):
            specs = _resolve(declared, cfg, cfg.model)
        keras_rel = str(Path(cfg.model).resolve())
        reference_source = "tensorflow"
    else:
        _quiet_tensorflow()
        keras = import_quietly("keras")

        import dlcbench.models.layers  # noqa: F401  (registers custom layers for loading)

        if kind == "keras":
            if not Path(cfg.model).is_file():
                raise BadInputError(f"model file not found: {cfg.model}")
            try:
                model = keras.saving.load_model(cfg.model)
            except Exception as err:
                raise BadInputError(f"cannot load Keras model {cfg.model}: {one_line(err, 200)}") from None
            declared = _keras_inputs(model, cfg.model)
            specs = _resolve(declared, cfg, cfg.model)
        else:
            model = spec.build(params, seed=cfg.seed)
            declared = None  # the zoo's specs carry their ranges
            specs = _resolve(_zoo_declared(spec.input_specs(params)), cfg, cfg.model)
            if spec.dataset:
                from dlcbench.models.datasets import load_split

                split = load_split(spec.dataset, specs[0].shape)
                if cfg.batch > len(split.x_test):
                    raise BadInputError(f"{cfg.model} has {len(split.x_test)} held-out rows: its batch can be at most "
                                        f"{len(split.x_test)}, not {cfg.batch}")
        output_names = _keras_output_names(model, specs)

        def framework(batch):
            feed = [batch[s.name] for s in specs]
            outs = _output_list(model(feed if len(feed) > 1 else feed[0], training=False))
            return {n: np.asarray(t) for n, t in zip(output_names, outs)}

        model_proto = _keras_to_onnx(model, specs, output_names, cfg)
        if declared is not None and add_table_ranges(declared, model_proto):
            specs = _resolve(declared, cfg, cfg.model)
        model.save(out / "model.keras")
        keras_rel = "model.keras"
        reference_source = "keras"

    if kind != "onnx":
        fixed = fix_erfc(model_proto)
    else:
        fixed = 0
    check_onnx(model_proto, f"export of {cfg.model}", runtime_ops=kind == "onnx")
    raw = out / "model.onnx"
    onnx.save(model_proto, str(raw))

    if cfg.inputs_file:  # the user's rows, batch by batch
        batches = data_batches(load_input_data(cfg.inputs_file, _declared_of(specs), cfg.batch, cfg.model), cfg.batch)
    elif split is not None:  # held-out images of the dataset the model was trained on
        batches = data_batches({specs[0].name: split.x_test}, cfg.batch)
    else:  # the sample batch, then the extra check batches (seeded apart) that give the check distinct inputs
        batches = [sample_inputs(specs, cfg.batch, cfg.seed)] + [
            sample_inputs(specs, cfg.batch, check_seed(cfg.seed, i)) for i in range(1, extra_check_batches(cfg.batch) + 1)]
    inputs = batches[0]
    label = cfg.model if kind == "onnx" else f"the export of {cfg.model}"
    exported = run_onnxruntime_batches(raw, batches, label=label)
    if framework is None:
        references = exported
    else:
        # The export must reproduce the framework: a converter bug shows here, not in a backend.
        references = [framework(batch) for batch in batches]
        for expected, got in zip(references, exported):
            _assert_same(expected, got, "tf2onnx conversion")
    reference = references[0]
    if cfg.static:  # every dimension fixed: the outputs' too, as computed (the leading one need not be the batch)
        set_output_shapes(model_proto, references)
        onnx.save(model_proto, str(raw))

    folded = False
    if cfg.fold:
        tmp_folded = out / "folded.onnx"
        fold_constants(raw, tmp_folded)
        folded_proto = onnx.load(str(tmp_folded))
        check_onnx(folded_proto, f"folded export of {cfg.model}", runtime_ops=kind == "onnx")
        for expected, got in zip(exported, run_onnxruntime_batches(tmp_folded, batches)):
            _assert_same(expected, got, "constant folding")
        os.replace(tmp_folded, raw)
        model_proto = folded_proto
        folded = True

    dataset = None
    if split is not None:
        from dlcbench.models.datasets import CALIBRATION_ROWS, top1

        np.savez(out / "labelled.npz", inputs=split.x_test, labels=split.y_test)
        np.savez(out / "calibration.npz", **{specs[0].name: split.x_train[:CALIBRATION_ROWS]})
        scores = np.concatenate([np.asarray(model(split.x_test[i:i + 256], training=False))
                                 for i in range(0, len(split.x_test), 256)])
        dataset = {"name": spec.dataset, "description": split.description, "test_rows": int(len(split.y_test)),
                   "calibration_rows": int(min(CALIBRATION_ROWS, len(split.x_train))),
                   "reference_top1": top1(scores, split.y_test)}
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "reference.npz", **reference)
    if len(batches) > 1:
        np.savez(out / "check_inputs.npz", **_pack(batches[1:]))
        np.savez(out / "check_reference.npz", **_pack(references[1:]))
    from dlcbench.models.summary import summarize_onnx

    static_copy = onnx.ModelProto()
    static_copy.CopyFrom(model_proto)
    set_input_shapes(static_copy, specs, cfg.batch)
    set_output_shapes(static_copy, references)
    return {
        "source": cfg.model if kind == "zoo" else str(Path(cfg.model).resolve()),
        "params": params,
        "seed": cfg.seed,
        "batch": cfg.batch,
        "opset": cfg.opset,
        "static": cfg.static,
        "folded": folded,
        "task": task,
        "keras": keras_rel,
        "erfc_rewritten": fixed,
        "reference_source": reference_source,
        "check_batches": len(batches) - 1,
        "inputs": describe(specs, cfg.batch if cfg.static else None),
        "upgraded": upgraded,
        "dataset": dataset,
        "input_data": ({"file": cfg.inputs_file, "sha256": file_digest(Path(cfg.inputs_file)),
                        "batches": len(batches)} if cfg.inputs_file else None),
        "outputs": [
            {"name": n, "shape": list(v.shape), "dtype": str(v.dtype)} for n, v in reference.items()
        ],
        "summary": summarize_onnx(static_copy),
    }


def wrap_onnx(onnx_model, directory: Path, name: str, inputs: dict[str, np.ndarray] | None = None,
              reference: dict[str, np.ndarray] | None = None, fixed_shapes: bool = True,
              reference_source: str = "given") -> ExportedModel:
    """Wraps an ONNX model (path or ``ModelProto``) that needs no export as an :class:`ExportedModel`.

    For ONNX files that come with their own inputs and expected outputs (the
    ONNX operator tests, a user's test vectors): writes ``model.onnx`` and
    ``meta.json`` into ``directory`` (plus ``inputs.npz``/``reference.npz`` when
    given) without running anything. Shapes are taken from the graph; with
    ``fixed_shapes`` adapters build for exactly those shapes instead of setting
    the leading dimension to the batch size (see ``Adapter.input_shapes``).
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))

    def spec(value) -> dict[str, Any]:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise BadInputError(f"{name}: {value.name} is not a tensor ({value.type.WhichOneof('value')})")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        try:
            dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
        except Exception:
            dtype = f"onnx:{tensor.elem_type}"
        return {"name": value.name, "shape": dims, "dtype": dtype}

    input_specs = [spec(v) for v in graph_inputs(model)]
    if inputs:
        input_specs = [dict(s, shape=list(np.shape(inputs[s["name"]]))) if s["name"] in inputs else s
                       for s in input_specs]
    output_specs = [spec(v) for v in model.graph.output]
    if reference:
        output_specs = [dict(s, shape=list(np.shape(reference[s["name"]]))) if s["name"] in reference else s
                        for s in output_specs]
    first = input_specs[0]["shape"] if input_specs else []
    meta = {
        "name": name, "source": str(onnx_model) if isinstance(onnx_model, (str, Path)) else name, "kind": "onnx",
        "batch": first[0] if first and first[0] else 1, "opset": max((o.version for o in model.opset_import
                                                                     if o.domain in ("", "ai.onnx")), default=None),
        "static": True, "folded": False, "task": "generic", "keras": None, "reference_source": reference_source,
        "fixed_shapes": bool(fixed_shapes), "inputs": input_specs, "outputs": output_specs, "summary": {},
        "onnx_sha256": sha256_file(directory / "model.onnx"),
    }
    (directory / "meta.json").write_text(jsonio.dumps(meta, indent=2))
    for file, arrays in (("inputs.npz", inputs), ("reference.npz", reference)):
        if arrays is not None:
            try:
                np.savez(directory / file, **arrays)
            except Exception:  # dtypes numpy cannot store (strings of objects, some ml_dtypes): keep them in memory
                (directory / file).unlink(missing_ok=True)
    return ExportedModel(directory, meta)


__all__ = ["ExportConfig", "ExportedModel", "export_model", "wrap_onnx", "default_cache_dir", "load_onnx", "fix_erfc", "asdict"]
