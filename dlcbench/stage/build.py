"""Stages: jobs built here, checked and timed on another machine (a GPU machine) by dlcbench's own code.

A stage is one directory that travels to a target machine which has Python and numpy but no dlcbench, no TVM
and no network (the GPU machine), or that runs here (``--target cpu``). It holds the models x backends x
precisions x batches matrix:

``run.py``
    A bootstrap: puts ``py/`` first on ``sys.path`` and calls :func:`dlcbench.stage.runner.main`. Every job runs
    through :func:`dlcbench.measure.job.run_job` in a worker of :mod:`dlcbench.orchestrate.launcher`: the same
    check, timing and isolation as a CPU job, from the stage's copy of dlcbench.
``stage.json``
    The index: every file (stored path, size, SHA-256, compression), every job (its :class:`JobConfig` fields,
    its model directory, its artifact when built here), the jobs left out and why, the carried packages, the
    versions, the total size and the limit.
``py/dlcbench/``
    This dlcbench's source, unmodified and uncompressed (importable before anything is unpacked).
``site/``
    What the target lacks, unpacked onto its ``sys.path``: ``tvm_ffi`` for the target Python (when a job runs
    TVM) and the packages given by :attr:`StageConfig.carry` (by default, for a CUDA stage, those its backends
    need that the GPU image lacks: onnx2torch, Keras and its dependencies).
``lib/``
    TVM's runtime libraries (``libtvm_runtime.so``; for CUDA ``libtvm_runtime_cuda.so`` and the CUDA runtime it
    links), loaded by :mod:`dlcbench.compilers.tvm.runtime_only`.
``models/<export>/``
    Each export once: ``meta.json``, sample inputs, references, check batches, and the model file the backends
    that compile on the target need (``model.onnx``, ``model.keras``).
``jobs/<id>/artifact/``
    The artifacts of backends that cross-compile (:attr:`dlcbench.compilers.base.Adapter.cross_compiles`: TVM);
    every other backend compiles on the target, from its model directory, and its compile time is measured there.
``blobs/``
    The arrays of every big ``.npz`` (weights, samples) stored once by content; the runner rebuilds the files.

Files of 16 KiB or more are stored xz-compressed when that saves at least 3 %. The size that counts is the bytes
of the stage directory (what travels); :func:`build_stage` refuses to exceed ``limit_mb`` (default 60 MB, 1 MB =
10**6 bytes), in one line, or with ``skip_oversize`` leaves out a model (all its jobs) with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from dlcbench import __version__, jsonio
from dlcbench.config import option_value, positive_int, split_list
from dlcbench.errors import BadInputError, DlcbenchError, one_line
from dlcbench.outputs import OutputKind, Owned, StagedOutput, check_replaceable
from dlcbench.stage.files import (MB, Stager, default_wheel_cache, dlcbench_files, package_files, python_dependencies,
                                  runtime_libraries, tvm_ffi_files, dist_info, tvm_ffi_version)

STAGE_FORMAT = "dlcbench-stage/1"
DEFAULT_MODELS = ("mlp", "cnn", "bert", "gpt", "mobilenetv2", "resnet50")
DEFAULT_BACKENDS = ("tvm", "torch", "inductor", "jax")
DEFAULT_BATCHES = (1, 8)
DEFAULT_LIMIT_MB = 60.0
TARGETS = ("cuda", "cpu")
#: What the GPU machine's image lacks, per backend (it has numpy, onnx, onnxruntime, PyTorch, Triton and JAX).
GPU_IMAGE_LACKS = {
    "torch": ("onnx2torch",),
    "inductor": ("onnx2torch",),
    "jax": ("keras", "namex", "absl-py", "rich", "markdown-it-py", "mdurl", "pygments", "optree", "h5py"),
}
_PY_RE = re.compile(r"3\.(\d{1,2})")
_OPTION_RE = re.compile(r"([A-Za-z0-9_.-]+):([A-Za-z_][A-Za-z0-9_]*)=(.*)")
BOOTSTRAP = '''#!/usr/bin/env python3
"""Runs this dlcbench stage here: every job checked and timed, results to JSON (python3 run.py --help)."""
import os
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # the stage stays as it was built, in this process and every one it starts
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent / "py"))  # the stage's dlcbench, never an installed one
try:
    import numpy  # noqa: F401
except ImportError:
    print("error: run.py needs numpy", file=sys.stderr)
    sys.exit(3)
from dlcbench.stage.runner import cli  # noqa: E402

cli()
'''


def _this_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass
class StageConfig:
    """What to put in a stage.

    Attributes:
        out_dir: The stage directory (replaced if it holds an earlier stage; must otherwise be empty or absent).
        target: ``cuda`` (a GPU machine) or ``cpu`` (a CPU machine, this one included).
        arch: CUDA architecture of TVM's device code (``sm_90`` for H100/H200).
        models: Zoo names, each optionally ``name:preset``.
        preset: Preset of the models given without one.
        backends: Registered backends; each must support the target.
        precisions: Precisions; a backend that lacks one leaves that job out (``skipped_jobs`` says so).
        batches: Batch sizes.
        backend_options: ``BACKEND:KEY=VALUE`` strings (``inductor:mode=max-autotune``, ``torch:tf32=true``).
        python: ``3.N`` of the target's Python (default: 3.12 for ``cuda``, this interpreter's for ``cpu``).
        threads: Threads of every job (compile threads here; CPU threads there).
        carry: Distributions to carry into ``site/``; None: for ``cuda`` what :data:`GPU_IMAGE_LACKS` lists for the
            backends, for ``cpu`` nothing.
        limit_mb: Maximum stage size in MB (10**6 bytes).
        skip_oversize: Leave out a model that would pass the limit (with the reason) instead of failing.
        keep_going: Leave out a model that fails to export or compile (with the reason) instead of failing.
        mcpu: LLVM CPU of TVM's ``cpu`` code (default: this host's).
        seed: Seed of the weights and sample inputs.
        compress: Store files xz-compressed where it pays.
        build_dir: Where cross-compiled artifacts go (default: a temporary directory, removed afterwards).
        tvm_ffi_wheel: An ``apache-tvm-ffi`` wheel to take ``tvm_ffi`` from (default: installed copy or pip download).
        wheel_cache: Where downloaded wheels are cached.
        tuning_trials: Candidates per task of a deferred MetaSchedule round for each fp32 TVM job
            (:mod:`dlcbench.compilers.tvm.deferred`): sampled and built here (warm-started from ``tuning_db``),
            measured there by ``run.py``, committed back here by ``dlcbench import-results --stage``. 0: none.
        tuning_db: The MetaSchedule database of the rounds (default: the target's under the cache).
        tuning_max_tasks: Only the heaviest tasks of each model get candidates (None: all).
    """

    out_dir: Path
    target: str = "cuda"
    arch: str = "sm_90"
    models: list[str] | str = field(default_factory=lambda: list(DEFAULT_MODELS))
    preset: str = "default"
    backends: list[str] | str = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    precisions: list[str] | str = field(default_factory=lambda: ["fp32"])
    batches: list[int] | str = field(default_factory=lambda: list(DEFAULT_BATCHES))
    backend_options: list[str] = field(default_factory=list)
    python: str | None = None
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    carry: list[str] | str | None = None
    limit_mb: float = DEFAULT_LIMIT_MB
    skip_oversize: bool = False
    keep_going: bool = False
    mcpu: str | None = None
    seed: int = 0
    compress: bool = True
    build_dir: Path | None = None
    tvm_ffi_wheel: Path | None = None
    wheel_cache: Path = field(default_factory=default_wheel_cache)
    tuning_trials: int = 0
    tuning_db: Path | None = None
    tuning_max_tasks: int | None = None

    def __post_init__(self):
        from dlcbench.compilers.base import PRECISIONS
        from dlcbench.compilers.registry import get_adapter
        from dlcbench.compilers.tvm.adapter import CUDA_ARCHS
        from dlcbench.models.zoo import PRESETS, get_model

        self.out_dir = Path(self.out_dir)
        if self.target not in TARGETS:
            raise BadInputError(f"unknown target {self.target!r}; valid: {', '.join(TARGETS)}")
        if self.target == "cuda" and self.arch not in CUDA_ARCHS:
            raise BadInputError(f"unknown CUDA arch {self.arch!r}; valid: {', '.join(CUDA_ARCHS)}")
        self.models = split_list(self.models)
        if not self.models:
            raise BadInputError("no models given")
        if self.preset not in PRESETS:
            raise BadInputError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        seen = set()
        for spec in self.models:
            name, _, preset = spec.partition(":")
            get_model(name)  # BadInputError with the valid names
            if preset and preset not in PRESETS:
                raise BadInputError(f"unknown preset {preset!r} in {spec!r}; valid: {', '.join(PRESETS)}")
            key = (name, preset or self.preset)
            if key in seen:
                raise BadInputError(f"model {name}:{key[1]} given twice")
            seen.add(key)
        self.backends = list(dict.fromkeys(split_list(self.backends)))
        if not self.backends:
            raise BadInputError("no backends given")
        for name in self.backends:
            adapter = get_adapter(name)  # BadInputError naming the registered backends
            if self.target not in adapter.targets:
                raise BadInputError(f"backend {name} has no {self.target} target; its targets: {', '.join(adapter.targets)}")
        self.precisions = list(dict.fromkeys(split_list(self.precisions)))
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if not self.precisions or bad:
            raise BadInputError(f"unknown precision {bad[0] if bad else '(none)'!r}; valid: {', '.join(PRECISIONS)}")
        try:
            self.batches = sorted({int(b) for b in split_list(self.batches)})
        except ValueError:
            raise BadInputError(f"batches must be integers, got {self.batches}") from None
        if not self.batches or any(b <= 0 for b in self.batches):
            raise BadInputError(f"batches must be positive integers, got {self.batches}")
        self.backend_options = list(self.backend_options or [])
        self.options_by_backend()  # validate
        self.python = str(self.python or ("3.12" if self.target == "cuda" else _this_python()))
        m = _PY_RE.fullmatch(self.python)
        if not m or not 8 <= int(m.group(1)) <= 14:
            raise BadInputError(f"python must look like '3.12', got {self.python!r}")
        if isinstance(self.carry, str):
            self.carry = [] if self.carry.strip().lower() == "none" else split_list(self.carry)
        if not isinstance(self.limit_mb, (int, float)) or not self.limit_mb > 0:
            raise BadInputError(f"limit_mb must be positive, got {self.limit_mb}")
        positive_int("threads", self.threads)
        if self.tvm_ffi_wheel is not None:
            self.tvm_ffi_wheel = Path(self.tvm_ffi_wheel)
            if not self.tvm_ffi_wheel.is_file():
                raise BadInputError(f"no wheel at {self.tvm_ffi_wheel}")
        self.wheel_cache = Path(self.wheel_cache)
        if self.build_dir is not None:
            self.build_dir = Path(self.build_dir)
        if not isinstance(self.tuning_trials, int) or self.tuning_trials < 0:
            raise BadInputError(f"tuning_trials must be a non-negative integer, got {self.tuning_trials!r}")
        if self.tuning_trials and "tvm" not in self.backends:
            raise BadInputError("a tuning round needs the tvm backend among the backends")
        if self.tuning_trials and "fp32" not in self.precisions:
            raise BadInputError("a tuning round tunes the fp32 TVM jobs: add fp32 to the precisions")
        if self.tuning_max_tasks is not None:
            positive_int("tuning_max_tasks", self.tuning_max_tasks)
        if self.tuning_db is not None:
            self.tuning_db = Path(self.tuning_db)
        check_replaceable(self.out_dir, STAGE)

    @property
    def limit_bytes(self) -> int:
        return int(self.limit_mb * MB)

    def model_specs(self) -> list[tuple[str, str]]:
        """``(name, preset)`` pairs in the order given."""
        return [(spec.partition(":")[0], spec.partition(":")[2] or self.preset) for spec in self.models]

    def options_by_backend(self) -> dict[str, dict[str, Any]]:
        """:attr:`backend_options` as ``backend -> {key: value}``, values read as ``--option`` reads them (JSON where
        they parse, else strings) and coerced by each adapter's options."""
        out: dict[str, dict[str, Any]] = {}
        for text in self.backend_options:
            m = _OPTION_RE.fullmatch(text.strip())
            if not m:
                raise BadInputError(f"backend option {text!r} must look like BACKEND:KEY=VALUE")
            if m.group(1) not in self.backends:
                raise BadInputError(f"backend option {text!r} names {m.group(1)}, which is not among the backends "
                                    f"({', '.join(self.backends)})")
            out.setdefault(m.group(1), {})[m.group(2)] = option_value(m.group(3))
        return out

    def carried(self) -> list[str]:
        """The distributions to carry (see :attr:`carry`)."""
        if self.carry is not None:
            return list(dict.fromkeys(self.carry))
        if self.target != "cuda":
            return []
        return list(dict.fromkeys(d for b in self.backends for d in GPU_IMAGE_LACKS.get(b, ())))


@dataclass
class StageReport:
    """What :func:`build_stage` made."""

    out_dir: Path
    stage_id: str
    size_bytes: int
    limit_bytes: int
    runtime_bytes: int
    jobs: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    model_bytes: dict[str, int]

    def summary(self) -> str:
        """Human-readable lines: size per part, total against the limit, jobs, what was left out."""
        lines = [f"runtime   {self.runtime_bytes / MB:7.2f} MB (dlcbench, carried packages, TVM runtime if any)"]
        for model, size in self.model_bytes.items():
            count = sum(1 for j in self.jobs if f"{j['model']}:{j['preset']}" == model)
            lines.append(f"{model:<22}{size / MB:7.2f} MB ({count} job(s))")
        for s in self.skipped:
            lines.append(f"left out  {s['what']}: {s['reason']}")
        built = sum(1 for j in self.jobs if j["artifact"])
        lines.append(f"total     {self.size_bytes / MB:7.2f} MB of {self.limit_bytes / MB:.2f} MB allowed; {len(self.jobs)} "
                     f"job(s), {built} built here, {len(self.jobs) - built} compiled there; stage {self.stage_id} in "
                     f"{self.out_dir}")
        return "\n".join(lines)


def _stage_files(directory: Path) -> Owned | None:
    """What dlcbench wrote in a stage directory: ``stage.json``, ``run.py`` and the files the index lists."""
    try:
        index = read_stage_index(directory)
        return Owned.of_files(["stage.json", "run.py", *(str(e["stored"]) for e in index["files"] if e.get("stored"))])
    except (BadInputError, KeyError, TypeError):
        return None


#: A stage directory (``dlcbench stage -o``); its ``stage.json`` lists every file, so it carries no marker.
STAGE = OutputKind("stage", "a dlcbench stage", recognise=_stage_files, marker=False)


def read_stage_index(directory: Path) -> dict[str, Any]:
    """The ``stage.json`` of a stage directory.

    Raises:
        BadInputError: not a stage, or a format this dlcbench does not know.
    """
    path = Path(directory) / "stage.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BadInputError(f"{directory} is not a dlcbench stage: {one_line(err, 200)}") from None
    if not isinstance(index, dict) or index.get("format") != STAGE_FORMAT:
        raise BadInputError(f"{directory}: unknown stage format {index.get('format') if isinstance(index, dict) else None!r}")
    return index


def stage_size(directory: Path) -> int:
    """Bytes of every file under ``directory`` (what travels)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def _safe_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


#: The JobConfig fields a stage's job record keeps (the rest are set where it runs).
JOB_FIELDS = ("backend", "model", "preset", "params", "target", "precision", "batch", "threads", "backend_options",
              "tolerances", "seed", "opset")


def _stage_export(stager: Stager, model) -> str:
    """Copies what the jobs need of an export into ``models/<entry>/``; returns that directory."""
    base = f"models/{model.directory.name}"
    stager.add_file(f"{base}/meta.json", model.directory / "meta.json")
    return base


def _stage_source(stager: Stager, model, base: str, source: str) -> None:
    from dlcbench.models.export import export_files_for

    for rel in export_files_for(model.meta, source):
        if (model.directory / rel).is_file():  # whole, never split: the job checks them against the export's SHA-256
            stager.add(f"{base}/{rel}", (model.directory / rel).read_bytes())


def _stage_artifact(stager: Stager, artifact: Path, base: str) -> None:
    """Copies a compiled artifact directory (its ``result.json`` left out) into ``base``."""
    for path in sorted(p for p in artifact.rglob("*") if p.is_file()):
        rel = path.relative_to(artifact).as_posix()
        if rel != "result.json":
            stager.add_file(f"{base}/{rel}", path, executable=path.suffix == ".so")


def tuning_target(config: StageConfig) -> dict[str, Any]:
    """The target a stage's tuning round samples and builds for: the TVM job's own (``cpu_target``), or CUDA's
    ``arch`` with the attributes MetaSchedule's GPU rules read."""
    from dlcbench.compilers.tvm.adapter import cpu_target
    from dlcbench.compilers.tvm.cuda import cuda_tuning_target

    return cuda_tuning_target(config.arch) if config.target == "cuda" else cpu_target(config.threads, config.mcpu)


def _stage_round(stager: Stager, config: StageConfig, model, job, build_root: Path, say) -> dict[str, Any]:
    """Samples and builds a deferred tuning round of ``job``'s model into ``tuning/<job>/``; returns the job
    record's fields that name it."""
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.compilers.tvm.deferred import export_round
    from dlcbench.compilers.tvm.tuning import default_db_dir

    target = tuning_target(config)
    database = config.tuning_db or default_db_dir(target)
    round_dir = build_root / "rounds" / Path(job.out_dir).name
    if round_dir.is_dir() and (round_dir / "round.json").is_file():
        shutil.rmtree(round_dir)  # an earlier build's round in a kept --build-dir (export_round wants it empty)
    say(f"sampling a tuning round of {config.tuning_trials} candidate(s) per task for {Path(job.out_dir).name}")
    # The workloads must be those the tuned build extracts: fast math is a cpu-only rewrite of the TVM adapter.
    options = get_adapter("tvm").make_options(target=config.target, precision="fp32", threads=config.threads,
                                              batch=job.batch, backend_options=job.backend_options)
    doc = export_round(model, target, database, config.tuning_trials, round_dir, max_tasks=config.tuning_max_tasks,
                       seed=config.seed, fast_math=config.target == "cpu" and options.fast_math,
                       conv_layout=options.conv_layout, strategy=options.tune_strategy,
                       cost_model=options.tune_cost_model, population=options.tune_population,
                       generations=options.tune_generations, progress=say)
    base = f"tuning/{Path(job.out_dir).name}"
    for path in sorted(p for p in round_dir.rglob("*") if p.is_file()):
        stager.add_file(f"{base}/{path.relative_to(round_dir).as_posix()}", path, executable=path.suffix == ".so")
    candidates = sum(len(t.get("candidates") or []) for t in doc["tasks"])
    return {"tuning_round": base, "tuning_db": str(database), "tuning_round_id": doc["round_id"],
            "tuning_candidates": candidates}


def _write_index(staging: Path, index: dict[str, Any]) -> int:
    """Writes ``stage.json`` with its ``size_bytes`` equal to the whole directory's bytes; returns them."""
    (staging / "stage.json").unlink(missing_ok=True)
    others = stage_size(staging)
    text = ""
    for _ in range(5):  # the size's digits change the index's own size
        index["size_bytes"] = others + len(text.encode())
        text = jsonio.dumps(index, indent=1)
        if index["size_bytes"] == others + len(text.encode()):
            break
    (staging / "stage.json").write_text(text)
    return others + len(text.encode())


def build_stage(config: StageConfig, progress: Callable[[str], None] | None = None) -> StageReport:
    """Exports every model, cross-compiles what cross-compiles, and writes the stage directory (module docstring).

    Raises:
        BadInputError: the stage would exceed ``limit_mb`` (without ``skip_oversize``), bad paths, nothing to run.
        BackendUnavailableError: a cross-compiling backend, nvcc, the CUDA runtime or a carried package is missing.
        CompileError and the other :class:`DlcbenchError` s of a failing export or compile (without ``keep_going``).
    """
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.measure.check import TOLERANCES
    from dlcbench.measure.job import JobConfig, export_for, run_job
    from dlcbench.results.env import git_revision

    say = progress or (lambda message: None)
    limit = config.limit_bytes
    adapters = {name: get_adapter(name) for name in config.backends}
    for name, adapter in adapters.items():
        if adapter.cross_compiles:
            adapter.require_available()  # built here
    options = config.options_by_backend()
    refused = _refused_options(config, adapters, options)
    staged = StagedOutput(config.out_dir, STAGE)
    staging = staged.directory
    build_tmp = None if config.build_dir else tempfile.TemporaryDirectory(prefix="dlcbench-stage-build-")
    build_root = Path(config.build_dir or build_tmp.name)
    try:
        stager = Stager(staging, config.compress)
        # ---- runtime: dlcbench, carried packages, TVM's runtime when a job needs it
        for rel, data in dlcbench_files().items():
            stager.add(f"py/{rel}", data, compress=False)  # run.py imports them before it unpacks anything
        carried = []
        for dist in config.carried():
            files, record = package_files(dist, config.python, config.wheel_cache, say)
            for rel, data in sorted(files.items()):
                stager.add(f"site/{rel}", data, executable=rel.endswith(".so"))
            carried.append(record)
            say(f"carrying {record['name']} {record['version']} ({record['bytes'] / MB:.2f} MB, {record['source']})")
        tvm_info: dict[str, Any] = {}
        if any(a.cross_compiles and a.name == "tvm" for a in adapters.values()):
            ffi_files, ffi_source = tvm_ffi_files(config.python, config.tvm_ffi_wheel, config.wheel_cache, say)
            version = tvm_ffi_version()
            say(f"tvm_ffi from {ffi_source}")
            py_files = {k: v for k, v in ffi_files.items() if not k.startswith("LICENSES/")}
            py_files.update(dist_info(version, py_files))
            dependencies = python_dependencies()
            py_files.update({k: v for k, v in dependencies.items() if not k.startswith("LICENSES/")})
            licenses = {**{k.replace("LICENSES/", "licenses/tvm_ffi/"): v for k, v in ffi_files.items()
                           if k.startswith("LICENSES/")},
                        **{k.replace("LICENSES/", "licenses/"): v for k, v in dependencies.items()
                           if k.startswith("LICENSES/")}}
            for rel, data in sorted(py_files.items()):
                stager.add(f"site/{rel}", data, executable=rel.endswith(".so"))
            for rel, data in sorted(licenses.items()):
                stager.add(rel, data)
            libs = runtime_libraries(config.target)
            for name, path in libs.items():
                stager.add_file(f"lib/{name}", path, executable=True)
            tvm_info = {"tvm_version": _safe_version("apache-tvm"), "tvm_ffi_version": version, "tvm_ffi_source": ffi_source,
                        "libraries": {name: str(path) for name, path in libs.items()}}
        runtime_bytes = stager.size() + len(BOOTSTRAP)
        if runtime_bytes > limit:
            raise BadInputError(f"the runtime alone takes {runtime_bytes / MB:.2f} MB, over the {limit / MB:.2f} MB "
                                "stage limit; raise --limit-mb or carry less")
        # ---- models: every job of one model together (all batches, backends, precisions)
        jobs: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        model_bytes: dict[str, int] = {}

        def skip(what: str, category: str, reason: str) -> None:
            skipped.append({"what": what, "category": category, "reason": one_line(reason, 300)})
            say(f"leaving out {what}: {one_line(reason, 200)}")

        for name, preset in config.model_specs():
            label = f"{name}:{preset}"
            checkpoint, before, skipped_before = stager.checkpoint(), stager.size(), len(skipped)
            new_jobs = []
            try:
                for batch in config.batches:
                    for backend, adapter in adapters.items():
                        for precision in config.precisions:
                            job_id = f"{name}-{preset}-b{batch}-{backend}-{precision}"
                            if precision not in adapter.precisions_for(config.target):
                                skip(job_id, "unsupported", f"{backend} has no {precision} on {config.target}; its "
                                     f"precisions there: {', '.join(adapter.precisions_for(config.target))}")
                                continue
                            if (backend, precision) in refused:
                                skip(job_id, "bad_input", refused[(backend, precision)])
                                continue
                            backend_options = dict(options.get(backend, {}))
                            option_names = {f.name for f in dataclasses.fields(adapter.Options)}
                            if config.target == "cuda" and "arch" in option_names:
                                backend_options.setdefault("arch", config.arch)
                            if config.target == "cpu" and config.mcpu and "mcpu" in option_names:
                                backend_options.setdefault("mcpu", config.mcpu)
                            job = JobConfig(backend=backend, model=name, preset=preset, target=config.target,
                                            precision=precision, batch=batch, threads=config.threads,
                                            backend_options=backend_options, seed=config.seed,
                                            out_dir=build_root / job_id, compile_only=True)
                            model = export_for(adapter, job)
                            model_dir = _stage_export(stager, model)
                            record = {"id": job_id, **{k: getattr(job, k) for k in JOB_FIELDS},
                                      "task": model.meta.get("task"), "model_dir": model_dir, "artifact": None,
                                      "source": adapter.source}
                            if adapter.cross_compiles:
                                say(f"compiling {job_id} here")
                                result = run_job(job)
                                record["artifact"] = f"jobs/{job_id}/artifact"
                                _stage_artifact(stager, job.out_dir, record["artifact"])
                                record["manifest"] = result.manifest
                                record["compile_seconds"] = result.compile_seconds
                                _stage_source(stager, model, model_dir, "none")
                                if config.tuning_trials and backend == "tvm" and precision == "fp32":
                                    record.update(_stage_round(stager, config, model, job, build_root, say))
                            else:
                                _stage_source(stager, model, model_dir, adapter.source)
                            new_jobs.append(record)
                            if stager.size() + len(BOOTSTRAP) > limit:
                                raise _Oversize(stager.size() - before)
            except _Oversize as over:
                stager.rollback(checkpoint)
                del skipped[skipped_before:]  # the model is left out whole
                reason = (f"would make the stage over its {limit / MB:.2f} MB limit (its jobs take at least "
                          f"{over.added / MB:.2f} MB, {max(limit - before - len(BOOTSTRAP), 0) / MB:.2f} MB were left)")
                if not config.skip_oversize:
                    raise BadInputError(f"stage over its limit: {label}: {reason}; use --skip-oversize, a smaller preset "
                                        f"({name}:tiny) or a higher --limit-mb") from None
                skip(label, "oversize", reason)
                continue
            except DlcbenchError as err:
                stager.rollback(checkpoint)
                del skipped[skipped_before:]
                if not config.keep_going:
                    raise
                skip(label, err.category, str(err))
                continue
            jobs.extend(new_jobs)
            model_bytes[label] = stager.size() - before
            say(f"added {label}: {model_bytes[label] / MB:.2f} MB; stage now {(stager.size() + len(BOOTSTRAP)) / MB:.2f} MB")
        if not jobs:
            raise BadInputError("nothing to run in the stage: " + "; ".join(f"{s['what']}: {s['reason']}" for s in skipped))
        (staging / "run.py").write_text(BOOTSTRAP)
        (staging / "run.py").chmod(0o755)
        files = sorted(stager.entries.values(), key=lambda e: (e.get("npz") is not None, e["path"]))
        stage_id = hashlib.sha256(json.dumps([[e["path"], e["sha256"], e.get("npz")] for e in files]).encode()
                                  + json.dumps(jobs, sort_keys=True, default=str).encode()).hexdigest()[:16]
        index = {
            "format": STAGE_FORMAT, "stage_id": stage_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "target": config.target, "arch": config.arch if config.target == "cuda" else (config.mcpu or "host"),
            "python": config.python, "threads": config.threads, "dlcbench_version": __version__,
            "git_revision": git_revision(), "built_on": {"python": _this_python(), "packages": {
                p: _safe_version(p) for p in ("apache-tvm", "torch", "onnx2torch", "jax", "keras", "onnxruntime", "onnx")}},
            **tvm_info, "carried": carried, "backends": config.backends, "precisions": config.precisions,
            "batches": config.batches, "tuning_trials": config.tuning_trials, "limit_bytes": limit, "size_bytes": 0,
            "tolerances": {p: [t.abs, t.rel, t.cosine] for p, t in TOLERANCES.items() if t.elementwise},
            "skipped": skipped, "jobs": jobs, "files": files,
        }
        size = _write_index(staging, index)
        if size > limit:  # the index itself pushed it over (only with a limit cut very fine)
            raise BadInputError(f"stage is {size / MB:.2f} MB with its index, over the {limit / MB:.2f} MB limit")
        staged.publish()
        return StageReport(staged.final, stage_id, size, limit, runtime_bytes, jobs, skipped, model_bytes)
    finally:
        staged.discard()
        if build_tmp is not None:
            build_tmp.cleanup()


def _refused_options(config: StageConfig, adapters, options) -> dict[tuple[str, str], str]:
    """``(backend, precision) -> why`` for the jobs whose options their adapter refuses (``tf32`` with fp16...),
    checked before anything is built.

    Raises:
        BadInputError: a backend's options are refused at every precision (an unknown option, a bad value).
    """
    refused = {}
    for name, adapter in adapters.items():
        precisions = [p for p in config.precisions if p in adapter.precisions_for(config.target)]
        errors = {}
        for precision in precisions:
            try:
                adapter.make_options(target=config.target, precision=precision, threads=config.threads,
                                     batch=config.batches[0], backend_options=dict(options.get(name, {})))
            except BadInputError as err:
                errors[precision] = str(err)
        if precisions and len(errors) == len(precisions):
            raise BadInputError(f"backend {name}: {errors[precisions[0]]}")
        refused.update({(name, p): why for p, why in errors.items()})
    return refused


class _Oversize(Exception):
    def __init__(self, added: int):
        self.added = added
