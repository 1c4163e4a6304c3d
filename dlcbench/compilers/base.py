"""The adapter interface every backend implements.

An :class:`Adapter` has two roles: :meth:`Adapter.compile` turns a model
(ONNX, or the Keras model for framework baselines) plus an options object into
an artifact directory with a :class:`Manifest`; :meth:`Adapter.load` turns an
artifact directory back into a :class:`Session` that runs named numpy inputs.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import inspect
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from dlcbench import __version__, jsonio
from dlcbench.config import positive_int
from dlcbench.cpus import default_threads
from dlcbench.files import sha256_file
from dlcbench.errors import BackendUnavailableError, BadInputError, CompileError, DlcbenchError, one_line
from dlcbench.fieldtypes import coerce_fields
from dlcbench.outputs import MARKER, OutputKind, Owned, staged_output

MANIFEST_NAME = "manifest.json"
#: Files a job writes next to the adapter's: the sample inputs and reference (``--compile-only``) and its result.
JOB_FILES = ("inputs.npz", "reference.npz", "result.json")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: The options every backend shares, by the command-line flag that sets each (never ``--option``).
COMMON_FLAGS = {"target": "--target", "precision": "--precision", "threads": "--threads", "batch": "--batch"}


@dataclass(frozen=True)
class Availability:
    """Whether an adapter can run here; ``reason`` and ``install_hint`` say why not."""

    ok: bool
    reason: str = ""
    install_hint: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class CompileOptions:
    """Options common to every backend; adapters subclass this with their own fields.

    Attributes:
        target: Device family: ``cpu`` or ``cuda``.
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``.
        threads: CPU threads the backend may use (one count per comparison).
        batch: Batch size the artifact is built and checked for.
    """

    target: str = "cpu"
    precision: str = "fp32"
    threads: int = field(default_factory=default_threads)
    batch: int = 1

    def __post_init__(self):
        positive_int("threads", self.threads)
        positive_int("batch", self.batch)
        if self.precision not in PRECISIONS:
            raise BadInputError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """Returns the options as JSON-friendly values."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class Manifest:
    """The self-describing record written as ``manifest.json`` in every artifact."""

    backend: str
    backend_version: str
    target: str
    precision: str
    batch: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    options: dict[str, Any]
    compile_seconds: float
    source_model: str
    source_sha256: str
    target_detail: Any = None
    files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    dlcbench_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def threads(self) -> int:
        """CPU threads the artifact was built for and runs with (``options["threads"]``)."""
        return int(self.options["threads"])

    def write(self, directory: Path) -> Path:
        """Writes the manifest into ``directory``; returns its path."""
        path = Path(directory) / MANIFEST_NAME
        path.write_text(jsonio.dumps(dataclasses.asdict(self), indent=2, default=str))
        return path

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        """Reads ``directory/manifest.json``.

        Raises:
            BadInputError: the directory is not an artifact or its manifest is corrupt.
        """
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise BadInputError(f"{directory} is not a dlcbench artifact (no {MANIFEST_NAME})")
        try:
            data = json.loads(path.read_text())
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in names})
        except (json.JSONDecodeError, TypeError) as err:
            raise BadInputError(f"corrupt manifest {path}: {one_line(err, 120)}") from None


#: The timed regions (what one timed call of a job covers):
#:
#: * ``resident``: inputs already staged where the backend runs, outputs produced in the backend's own memory
#:   and not copied out, completion awaited: :meth:`Session.prepare` once, then :meth:`Session.run_prepared`
#:   per timed call. What compiler comparisons use.
#: * ``end_to_end``: host numpy in, host numpy out, conversions and copies included: :meth:`Session.run` per
#:   timed call. What an application calling the backend from numpy sees.
REGIONS = ("resident", "end_to_end")


class Session(abc.ABC):
    """A loaded artifact that runs named inputs; a context manager that frees what it holds.

    A session has two timed regions (:data:`REGIONS`): :meth:`run` is ``end_to_end``, and :meth:`prepare` plus
    :meth:`run_prepared` are ``resident``, for a session class that declares ``resident_region = True``.
    """

    #: Name of the backend's own timer, or None when it has none.
    native_timer_name: ClassVar[str | None] = None
    #: Whether :meth:`prepare`/:meth:`run_prepared` implement the ``resident`` region. A class that leaves it
    #: False has none: its jobs time :meth:`run` only and their results say ``region: end_to_end``.
    resident_region: ClassVar[bool] = False

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.manifest.outputs]

    @property
    def regions(self) -> tuple[str, ...]:
        """The timed regions this session implements (``end_to_end`` always, ``resident`` when declared)."""
        return REGIONS if type(self).resident_region else ("end_to_end",)

    @abc.abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one inference; returns host numpy outputs by name (the ``end_to_end`` region)."""

    def prepare(self, inputs: dict[str, np.ndarray]) -> None:
        """Stages ``inputs`` where the backend runs (device copies, bound tensors) for :meth:`run_prepared`.

        Sessions with ``resident_region = True`` override it; this default only keeps ``inputs``.
        """
        self._prepared = inputs

    def run_prepared(self) -> None:
        """The ``resident`` region: runs on the staged inputs, leaves the outputs in the backend, waits for completion.

        Returns None: no numpy outputs are made. Sessions with ``resident_region = True`` override it; this
        default is the ``end_to_end`` :meth:`run` for sessions without a resident region (their results say so).

        Raises:
            NotImplementedError: the class declares ``resident_region = True`` without overriding this.
        """
        if type(self).resident_region:
            raise NotImplementedError(f"{type(self).__name__} declares resident_region = True but does not "
                                      "implement prepare()/run_prepared()")
        self.run(self._prepared)

    def native_time(self, inputs: dict[str, np.ndarray], repeat: int, number: int = 1) -> list[float] | None:
        """Per-run seconds from the backend's own timer, or None when it has none."""
        return None

    def checked_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``inputs`` in the manifest's order, C-contiguous, each of the manifest's shape (for backends that
        compiled for fixed shapes).

        Raises:
            BadInputError: an input is missing or has another shape.
        """
        names = [i["name"] for i in self.manifest.inputs]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise BadInputError(f"missing input(s) {', '.join(missing)}; expected {', '.join(names)}")
        for spec in self.manifest.inputs:
            if list(inputs[spec["name"]].shape) != list(spec["shape"]):
                raise BadInputError(
                    f"input {spec['name']} has shape {list(inputs[spec['name']].shape)}, artifact expects {spec['shape']}")
        # np.asarray(order="C"), not ascontiguousarray: the latter turns 0-d inputs into 1-d ones.
        return [np.asarray(inputs[n], order="C") for n in names]

    def close(self) -> None:
        """Releases the backend's resources. Safe to call twice."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SOURCES = ("onnx", "onnx-folded", "keras")
TARGETS = ("cpu", "cuda")


def check_imports(*modules: str, hint: str = "") -> Availability:
    """Imports ``modules`` in order; says which one failed and why (the usual body of ``available()``)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a broken install raising anything at import time
            return Availability(False, f"cannot import {module} ({type(err).__name__}: {one_line(err, 160)})", hint)
    return Availability(True)


def package_version(*distributions: str) -> str:
    """The installed version of the first of ``distributions`` found (``"unknown"`` if none is)."""
    from importlib import metadata

    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def probe_availability(adapter) -> Availability:
    """``adapter.available()`` (an Adapter class or instance) that never raises.

    A probe that raises (a broken plugin) means the backend cannot run here; the exception is the reason.
    """
    name = adapter.__name__ if isinstance(adapter, type) else type(adapter).__name__
    try:
        status = adapter.available()
    except Exception as err:
        return Availability(False, f"{name}.available() raised {type(err).__name__}: {one_line(err, 200)}")
    if not isinstance(status, Availability):
        return Availability(bool(status), "" if status else f"{name}.available() returned {status!r}")
    return status


class Adapter(abc.ABC):
    """A compiler backend: compile a model into an artifact, load an artifact into a session.

    Subclasses set the class attributes and implement :meth:`version`,
    :meth:`_compile` and :meth:`_load`; :meth:`available` imports ``requires``
    unless overridden. See ``docs/adding-a-backend.md``.
    """

    name: ClassVar[str]
    #: What the adapter compiles: ``onnx``, ``onnx-folded`` (static, constant-folded ONNX) or ``keras``.
    source: ClassVar[str] = "onnx"
    targets: ClassVar[tuple[str, ...]] = ("cpu",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    Options: ClassVar[type[CompileOptions]] = CompileOptions
    install_hint: ClassVar[str] = ""
    #: Top-level modules of the backend's library. Import them only inside methods; the default
    #: :meth:`available` imports them, and the conformance suite hides them to check the reason given.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The adapter builds artifacts here that run on another machine without it (TVM cross-compiles and runs on
    #: its runtime alone). A stage (:mod:`dlcbench.stage.build`) builds such a backend's artifacts here and ships
    #: them; every other backend compiles on the target machine, from the model the stage ships.
    cross_compiles: ClassVar[bool] = False

    @classmethod
    def precisions_for(cls, target: str) -> tuple[str, ...]:
        """The precisions the backend has on ``target``: the options class's ``target_precisions[target]`` where it
        has that table, else :attr:`precisions`."""
        table = getattr(cls.Options, "target_precisions", None)
        return tuple(table.get(target, ())) if table else cls.precisions

    @classmethod
    def available(cls) -> Availability:
        """Says whether the backend can run here, and if not, why and how to install it.

        The default imports every module in ``requires``; override it to check versions or hardware too.
        """
        return check_imports(*cls.requires, hint=cls.install_hint)

    @abc.abstractmethod
    def version(self) -> str:
        """The backend library's version string."""

    @abc.abstractmethod
    def _compile(self, model, options: CompileOptions, out_dir: Path) -> dict[str, Any]:
        """Builds the artifact files into ``out_dir``.

        Returns:
            Manifest fields to set: ``files`` (role -> relative path) and
            optionally ``target_detail`` and ``extra``.
        """

    @abc.abstractmethod
    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        """Opens an artifact written by :meth:`_compile`; its options (threads included) are in ``manifest``."""

    # ----------------------------------------------------------------- template methods

    def input_shapes(self, model, options: CompileOptions) -> dict[str, list[int]]:
        """The static input shapes an artifact of ``model`` is built for, by input name.

        The leading (batch) dimension becomes ``options.batch``, unless the model's
        shapes are fixed (``model.meta["fixed_shapes"]``: an ONNX operator test,
        scalars, inputs with different leading dimensions), when they are kept.
        """
        if model.meta.get("fixed_shapes"):
            return {i["name"]: list(i["shape"]) for i in model.meta["inputs"]}
        return {i["name"]: [options.batch, *i["shape"][1:]] for i in model.meta["inputs"]}

    def make_options(self, backend_options: Mapping[str, Any] | None = None, **values: Any) -> CompileOptions:
        """Builds and validates this adapter's options.

        Args:
            backend_options: Backend-specific fields as a user gave them (``--option KEY=VALUE``); the common
                fields (:data:`COMMON_FLAGS`) have their own flags and are refused here.
            **values: Fields of ``Options``, the common ones included.

        Raises:
            BadInputError: an unknown field, a value that does not fit the field's annotation in ``Options``,
                or a target or precision this backend cannot do.
        """
        for key in backend_options or {}:
            if key in COMMON_FLAGS:
                raise BadInputError(f"{key} is not a backend option: use {COMMON_FLAGS[key]} (not --option {key}=...)")
        values = {**values, **(backend_options or {})}
        known = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(values) - known)
        if unknown:
            own = sorted(known - set(COMMON_FLAGS))
            raise BadInputError(
                f"unknown option(s) for {self.name}: {', '.join(unknown)}; valid: {', '.join(own) or 'none'} "
                f"({', '.join(COMMON_FLAGS)} have their own flags)"
            )
        values = coerce_fields(self.Options, values, f"backend {self.name} option {{name}}")
        try:
            options = self.Options(**values)
        except DlcbenchError:
            raise
        except (TypeError, ValueError) as err:  # an Options class that checks its values without BadInputError
            raise BadInputError(f"invalid options for backend {self.name}: {one_line(err, 200)}") from None
        self.validate(options)
        return options

    def validate(self, options: CompileOptions) -> None:
        """Rejects targets and precisions this backend cannot do."""
        if options.target not in self.targets:
            raise BadInputError(
                f"backend {self.name} has no target {options.target!r}; valid: {', '.join(self.targets)}"
            )
        if options.precision not in self.precisions:
            raise BadInputError(
                f"backend {self.name} cannot compile precision {options.precision}; "
                f"valid: {', '.join(self.precisions)}"
            )

    def require_available(self) -> None:
        """Raises :class:`BackendUnavailableError` with the reason and install hint (see :func:`probe_availability`)."""
        status = probe_availability(self)
        if not status:
            install = status.install_hint or self.install_hint
            hint = f" (install: {install})" if install else ""
            raise BackendUnavailableError(f"backend {self.name} is not available: {status.reason}{hint}")

    def compile(self, model, options: CompileOptions, out_dir: Path) -> Manifest:
        """Compiles ``model`` (an :class:`dlcbench.models.export.ExportedModel`) into the artifact directory ``out_dir``.

        The artifact is built in a hidden sibling directory and renamed to ``out_dir`` when complete. An
        existing ``out_dir`` is replaced only if it is empty or an earlier artifact (see
        :func:`dlcbench.outputs.check_replaceable`); the manifest records everything needed to run the
        artifact later without ``options``.

        Raises:
            BadInputError: ``out_dir`` holds something else, or cannot be written.
        """
        self.validate(options)
        self.require_available()
        with staged_output(Path(out_dir), ARTIFACT) as staging:
            return self.compile_into(model, options, staging)

    def compile_into(self, model, options: CompileOptions, directory: Path) -> Manifest:
        """Compiles ``model`` into ``directory``, an existing empty directory (no staging, no replacing).

        What :meth:`compile` runs inside its staging directory; for callers that stage the artifact
        themselves (a job adds its inputs and reference before publishing).
        """
        self.validate(options)
        self.require_available()
        out_dir = Path(directory)
        start = time.perf_counter()
        try:
            fields = self._compile(model, options, out_dir)
        except DlcbenchError:
            raise
        except Exception as err:
            raise CompileError(f"{self.name} failed to compile {model.name}: {one_line(err, 300)}") from err
        seconds = time.perf_counter() - start
        outputs = [dict(o) for o in model.meta["outputs"]]
        shapes = self.input_shapes(model, options)
        inputs = [dict(i, shape=shapes[i["name"]]) for i in model.meta["inputs"]]
        manifest = Manifest(
            backend=self.name,
            backend_version=self.version(),
            target=options.target,
            precision=options.precision,
            batch=options.batch,
            inputs=inputs,
            outputs=outputs,
            options=options.to_dict(),
            compile_seconds=round(seconds, 4),
            source_model=model.name,
            source_sha256=model.meta.get("onnx_sha256") or sha256_file(model.onnx_path),
            **fields,
        )
        manifest.write(out_dir)
        return manifest

    def load(self, artifact_dir: Path) -> Session:
        """Loads an artifact directory into a :class:`Session` (a context manager).

        The session runs as the artifact was built for (``manifest.options``: threads, precision...): the job's
        configuration reaches a session one way only, through the compile options recorded in the manifest.
        """
        manifest = Manifest.read(Path(artifact_dir))
        if manifest.backend != self.name:
            raise BadInputError(f"{artifact_dir} was built by {manifest.backend}, not {self.name}")
        self.require_available()
        if len(inspect.signature(self._load).parameters) == 3:  # an adapter written for dlcbench 0.1
            warnings.warn(f"{type(self).__name__}._load(artifact_dir, manifest, threads) is deprecated: drop "
                          "'threads' and use manifest.threads", DeprecationWarning, stacklevel=2)
            return self._load(Path(artifact_dir), manifest, manifest.threads)
        return self._load(Path(artifact_dir), manifest)


def artifact_size(directory: Path) -> int:
    """Total bytes of the files in an artifact directory (dlcbench's output marker left out)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file() and p.name != MARKER)


def _artifact_files(directory: Path) -> Owned | None:
    """What dlcbench wrote in an artifact directory, from its manifest (artifacts older than the marker).

    The manifest names the adapter's files and directories; a directory named there is the
    adapter's whole (a cache a backend fills at load time, a SavedModel).
    """
    try:
        data = json.loads((Path(directory) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not {"backend", "dlcbench_version", "source_sha256"} <= data.keys():
        return None
    files = data.get("files") if isinstance(data.get("files"), dict) else {}
    trees = {str(rel).strip("/") for rel in files.values() if isinstance(rel, str) and rel.strip("/")}
    return Owned(frozenset({MANIFEST_NAME, *JOB_FILES}), frozenset(trees))


#: The artifact directory (``compile --out``, ``tune --out``, an experiment's job directories).
ARTIFACT = OutputKind("artifact", "a dlcbench artifact", later=frozenset({"result.json"}), recognise=_artifact_files)
