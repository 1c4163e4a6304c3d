"""Bundles: TVM artifacts compiled here, run and timed on a machine that has no TVM (a GPU machine), results back.

A bundle is one directory that travels to the GPU machine (which has Python, numpy and an NVIDIA driver,
but no TVM, no dlcbench and no network); ``--target cpu`` builds one for a CPU machine the same way:

``run.py``
    The standalone runner (a copy of ``dlcbench/stage/bundle_runner.py``: stdlib, numpy, the bundled
    ``tvm_ffi`` and the bundled dlcbench modules only). It unpacks the bundle, loads each artifact, checks it
    against the reference with :mod:`dlcbench.measure.check`, times it with :mod:`dlcbench.measure.timing`
    (host clock) and TVM's own timer (CUDA events), each artifact in a worker process of
    :mod:`dlcbench.orchestrate.launcher`, and writes a results JSON file.
``bundle.json``
    The index: every file (stored path, size, SHA-256, compression), every artifact (model, preset,
    batch, arch, input/output specs, weights), the tolerances, the versions, the total size and the limit,
    and the models that were skipped and why.
``py/``
    ``tvm_ffi`` for the target Python (from its wheel, or copied from this interpreter when the versions
    match), without headers, sources, CMake files and stubs, plus a minimal ``dist-info`` so that
    ``tvm_ffi`` finds its own ``libtvm_ffi.so`` there rather than in any installed copy; and
    ``py/dlcbench/``: this dlcbench's modules that ``run.py`` imports (:data:`RUNNER_MODULES`), unmodified
    and stored uncompressed, so that ``run.py`` imports them before it unpacks anything.
``lib/``
    ``libtvm_runtime.so`` and, for CUDA, ``libtvm_runtime_cuda.so`` and the CUDA runtime library it needs
    (``libcudart.so.13``, found in the CUDA toolkit or the ``nvidia-cuda-runtime`` wheel); the driver
    (``libcuda.so.1``) is the GPU machine's.
``models/<model>-<preset>-b<batch>/``
    ``model.so`` (host code plus, for CUDA, a fatbin with SASS for the arch), ``inputs.npz``,
    ``reference.npz``, ``manifest.json``.
``weights/<sha256>.npy``
    Every weight array once, content-addressed: batch variants of a model share them, so weights are
    kept apart from code and stored once.

Files of 16 KiB or more are stored xz-compressed (``*.xz``) when that saves at least 3 %; the runner
decompresses them into a work directory first. The size that counts is the bytes of the bundle directory
(what travels); it is stated in ``bundle.json`` and on the console, and :func:`build_bundle` refuses to
exceed ``limit_mb`` (default 60 MB, 1 MB = 10**6 bytes): the runtime alone, or a model with all its batch
variants, that would pass the limit is an error, or with ``skip_oversize`` a skipped model with the reason.

The results JSON the runner writes is read back by :func:`load_results`, stored by :func:`import_results`
into the results database (one row per artifact, with the GPU machine's environment record) and rendered
as a Markdown table by :func:`render_table`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from dlcbench import __version__, jsonio
from dlcbench.config import cache_dir, positive_int, split_list
from dlcbench.errors import BackendUnavailableError, BadInputError, DlcbenchError, one_line
from dlcbench.outputs import OutputKind, Owned, StagedOutput, check_replaceable

#: The bundle index format, and what run.py writes: result records with a CPU job's keys (``check``, ``timing``,
#: ``native_timing``...). Defined by the runner, the module that ships.
from dlcbench.stage.bundle_runner import BUNDLE_FORMAT, FORMAT as RESULTS_FORMAT, read_index  # noqa: E402
#: The first runner's format (records with ``host`` and ``native`` timings), still read.
RESULTS_FORMAT_V1 = "dlcbench-gpu-results/1"
DEFAULT_MODELS = ("mlp", "cnn", "bert", "gpt", "mobilenetv2", "resnet50")
DEFAULT_BATCHES = (1, 8)
DEFAULT_LIMIT_MB = 60.0
MB = 1_000_000
RUNNER_TEMPLATE = Path(__file__).with_name("bundle_runner.py")
#: dlcbench's modules that run.py imports, shipped unmodified under ``py/``: the package ``__init__`` files and
#: their module-level imports (standard library and numpy otherwise; tests/stage checks that).
RUNNER_MODULES = ("dlcbench/__init__.py", "dlcbench/compat.py", "dlcbench/cpus.py", "dlcbench/errors.py",
                  "dlcbench/files.py", "dlcbench/jsonio.py", "dlcbench/processes.py",
                  "dlcbench/measure/__init__.py", "dlcbench/measure/check.py", "dlcbench/measure/timing.py",
                  "dlcbench/orchestrate/__init__.py", "dlcbench/orchestrate/launcher.py",
                  "dlcbench/results/__init__.py", "dlcbench/results/env.py")
TARGETS = ("cuda", "cpu")
#: Files at least this big are stored xz-compressed when that saves at least 3 %.
COMPRESS_MIN_BYTES = 16 * 1024
_ARCH_RE = re.compile(r"sm_\d{2,3}[af]?")
_PY_RE = re.compile(r"3\.(\d{1,2})")
# Libraries the GPU machine provides itself (driver and C/C++ runtime).
_SYSTEM_LIBS = re.compile(r"(libcuda\.so\.1|libc\.so\..*|libm\.so\..*|libdl\.so\..*|libpthread\.so\..*|librt\.so\..*"
                          r"|libstdc\+\+\.so\..*|libgcc_s\.so\..*|ld-linux.*)")


def default_wheel_cache() -> Path:
    """Where downloaded wheels are kept: ``$DLCBENCH_CACHE/wheels`` (default ``~/.cache/dlcbench/wheels``)."""
    return cache_dir() / "wheels"


@dataclass
class BundleConfig:
    """What to put in a bundle.

    Attributes:
        out_dir: The bundle directory (replaced if it holds an earlier bundle; must otherwise be empty or absent).
        models: Zoo names, each optionally ``name:preset`` (e.g. ``resnet50:tiny``).
        preset: Preset of the models given without one.
        batches: Batch sizes; each model is compiled once per batch.
        arch: CUDA architecture of the device code (``sm_90`` for H100/H200).
        target: ``cuda``, or ``cpu`` for a bundle that runs (and is tested) on a CPU machine.
        python: ``3.N`` of the Python that will run the bundle (selects the ``tvm_ffi`` build).
        limit_mb: Maximum bundle size in MB (10**6 bytes).
        skip_oversize: Leave out a model that would pass the limit (with the reason) instead of failing.
        keep_going: Leave out a model that fails to export or compile (with the reason) instead of failing.
        threads: Threads for compiling (and, for ``cpu``, the runtime's thread count).
        mcpu: LLVM CPU for the ``cpu`` target (default: this host's).
        seed: Seed of the weights and sample inputs.
        compress: Store files xz-compressed where it pays.
        build_dir: Where compiled artifacts go (default: a temporary directory, removed afterwards).
        tvm_ffi_wheel: An ``apache-tvm-ffi`` wheel to take ``tvm_ffi`` from (default: installed copy or pip download).
        wheel_cache: Where downloaded wheels are cached.
    """

    out_dir: Path
    models: list[str] | str = field(default_factory=lambda: list(DEFAULT_MODELS))
    preset: str = "default"
    batches: list[int] | str = field(default_factory=lambda: list(DEFAULT_BATCHES))
    arch: str = "sm_90"
    target: str = "cuda"
    python: str = "3.12"
    limit_mb: float = DEFAULT_LIMIT_MB
    skip_oversize: bool = False
    keep_going: bool = False
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    mcpu: str | None = None
    seed: int = 0
    compress: bool = True
    build_dir: Path | None = None
    tvm_ffi_wheel: Path | None = None
    wheel_cache: Path = field(default_factory=default_wheel_cache)

    def __post_init__(self):
        from dlcbench.compilers.tvm.adapter import CUDA_ARCHS
        from dlcbench.models.zoo import PRESETS, get_model

        self.out_dir = Path(self.out_dir)
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
        try:
            self.batches = sorted({int(b) for b in split_list(self.batches)})
        except ValueError:
            raise BadInputError(f"batches must be integers, got {self.batches}") from None
        if not self.batches or any(b <= 0 for b in self.batches):
            raise BadInputError(f"batches must be positive integers, got {self.batches}")
        if self.target not in TARGETS:
            raise BadInputError(f"unknown target {self.target!r}; valid: {', '.join(TARGETS)}")
        if self.target == "cuda" and self.arch not in CUDA_ARCHS:
            raise BadInputError(f"unknown CUDA arch {self.arch!r}; valid: {', '.join(CUDA_ARCHS)}")
        m = _PY_RE.fullmatch(str(self.python))
        if not m or not 8 <= int(m.group(1)) <= 14:
            raise BadInputError(f"python must look like '3.12', got {self.python!r}")
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
        check_replaceable(self.out_dir, BUNDLE)

    @property
    def limit_bytes(self) -> int:
        return int(self.limit_mb * MB)

    def model_specs(self) -> list[tuple[str, str]]:
        """``(name, preset)`` pairs in the order given."""
        out = []
        for spec in self.models:
            name, _, preset = spec.partition(":")
            out.append((name, preset or self.preset))
        return out


@dataclass
class BundleReport:
    """What :func:`build_bundle` made."""

    out_dir: Path
    size_bytes: int
    limit_bytes: int
    runtime_bytes: int
    items: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    model_bytes: dict[str, int]
    bundle_id: str

    def summary(self) -> str:
        """Human-readable lines: size per part, total against the limit, skipped models."""
        lines = [f"runtime   {self.runtime_bytes / MB:7.2f} MB (tvm_ffi, libtvm_runtime, CUDA runtime, run.py and its "
                 "dlcbench modules)"]
        for model, size in self.model_bytes.items():
            batches = ",".join(str(i["batch"]) for i in self.items if f"{i['model']}:{i['preset']}" == model)
            lines.append(f"{model:<22}{size / MB:7.2f} MB (batch {batches})")
        for s in self.skipped:
            lines.append(f"skipped   {s['model']}: {s['reason']}")
        lines.append(f"total     {self.size_bytes / MB:7.2f} MB of {self.limit_bytes / MB:.2f} MB allowed; "
                     f"{len(self.items)} artifact(s); bundle {self.bundle_id} in {self.out_dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- staging


class _Stager:
    """Files being written into the staging directory, with their stored sizes; rollback per model."""

    def __init__(self, root: Path, compress: bool):
        self.root, self.compress = root, compress
        self.entries: dict[str, dict[str, Any]] = {}

    def size(self) -> int:
        return sum(e["stored_bytes"] for e in self.entries.values())

    def add(self, rel: str, data: bytes, executable: bool = False, compress: bool = True) -> int:
        """Stores ``data`` as ``rel`` (compressed when it pays and ``compress``); returns the stored bytes added
        (0 if present)."""
        if rel in self.entries:
            return 0
        entry: dict[str, Any] = {"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                 "stored": rel, "compression": None, "executable": executable}
        payload = data
        if self.compress and compress and len(data) >= COMPRESS_MIN_BYTES:
            packed = lzma.compress(data, preset=6)
            if len(packed) <= 0.97 * len(data):
                payload, entry["stored"], entry["compression"] = packed, rel + ".xz", "xz"
        target = self.root / entry["stored"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)
        entry["stored_bytes"] = len(payload)
        self.entries[rel] = entry
        return len(payload)

    def add_file(self, rel: str, src: Path, executable: bool = False) -> int:
        return self.add(rel, Path(src).read_bytes(), executable)

    def checkpoint(self) -> set[str]:
        return set(self.entries)

    def rollback(self, checkpoint: set[str]) -> None:
        for rel in set(self.entries) - checkpoint:
            (self.root / self.entries.pop(rel)["stored"]).unlink(missing_ok=True)


# --------------------------------------------------------------------------- runtime files


def _elf_needed(path: Path) -> list[str]:
    """``DT_NEEDED`` entries of a 64-bit little-endian ELF shared library."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BadInputError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for _n, sh_type, _f, _a, offset, size, link, _i, _al, _es in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        str_off = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                needed.append(data[str_off + val : data.index(b"\0", str_off + val)].decode())
    return needed


def tvm_lib_dir() -> Path:
    """``tvm/lib`` of the installed TVM, found without importing TVM."""
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("apache-tvm is not installed: a bundle needs its runtime libraries")
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    if not (lib / "libtvm_runtime.so").is_file():
        raise BackendUnavailableError(f"no libtvm_runtime.so in {lib}")
    return lib


def _library_dirs() -> list[Path]:
    """Where a CUDA runtime library may be: the CUDA toolkit, the nvidia-* wheels, the linker cache."""
    from dlcbench.compilers.tvm.cuda import cuda_roots

    dirs: list[Path] = []
    for root in cuda_roots():
        dirs += [root / "lib64", root / "lib", *sorted((root / "targets").glob("*/lib"))]
    for site in {Path(p) for p in sys.path if p.endswith("site-packages")}:
        dirs += sorted(site.glob("nvidia/*/lib")) + sorted(site.glob("nvidia/cu*/lib"))
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20).stdout
        dirs += [Path(line.split("=>")[-1].strip()).parent for line in out.splitlines() if "=>" in line]
    except (OSError, subprocess.TimeoutExpired):
        pass
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_library(name: str, first: Iterable[Path] = ()) -> Path | None:
    """The first ``name`` in ``first`` then :func:`_library_dirs`, symlinks resolved."""
    for d in [*first, *_library_dirs()]:
        candidate = d / name
        if candidate.is_file():
            return candidate.resolve()
    return None


def runtime_libraries(target: str) -> dict[str, Path]:
    """Bundle name -> path of every native library the runtime needs besides ``tvm_ffi``'s own."""
    lib_dir = tvm_lib_dir()
    libs = {"libtvm_runtime.so": lib_dir / "libtvm_runtime.so"}
    if target == "cuda":
        cuda = lib_dir / "libtvm_runtime_cuda.so"
        if not cuda.is_file():
            raise BackendUnavailableError(f"this TVM build has no CUDA runtime ({cuda} is missing)")
        libs["libtvm_runtime_cuda.so"] = cuda
    for name, path in list(libs.items()):
        for needed in _elf_needed(path):
            if needed in libs or needed == "libtvm_ffi.so" or _SYSTEM_LIBS.fullmatch(needed):
                continue
            found = find_library(needed, [lib_dir])
            if found is None:
                raise BackendUnavailableError(
                    f"{needed}, needed by {name}, was not found (CUDA toolkit lib dirs, nvidia-* wheels, ldconfig); "
                    "install the CUDA toolkit or the matching nvidia-cuda-runtime wheel")
            libs[needed] = found
    return libs


def _tvm_ffi_version() -> str:
    try:
        return metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        raise BackendUnavailableError("apache-tvm-ffi is not installed") from None


_FFI_SKIP_DIRS = {"include", "src", "3rdparty", "share", "cmake", "cython", "stub", "__pycache__"}
_FFI_SKIP_SUFFIXES = (".pyi", ".pxi", ".pxd", ".h", ".hpp", ".cc", ".c", ".a", ".txt", ".cmake", ".pyc")


def _keep_ffi_file(rel: str) -> bool:
    """Whether ``tvm_ffi/...`` file ``rel`` is needed at run time (no headers, sources, CMake, stubs)."""
    parts = rel.split("/")
    if parts[0] != "tvm_ffi" or any(p in _FFI_SKIP_DIRS for p in parts[1:-1]):
        return False
    name = parts[-1]
    return not (name.endswith(_FFI_SKIP_SUFFIXES) or name.startswith(".") or name == "CMakeLists.txt")


def _license_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1].upper()
    return ".dist-info/" in rel and (name.startswith(("LICENSE", "NOTICE")) or "/licenses/" in rel.lower())


def tvm_ffi_files(python: str, wheel: Path | None, cache: Path, say: Callable[[str], None]) -> tuple[dict[str, bytes], str]:
    """``tvm_ffi`` runtime files for Python ``python`` (relative path -> bytes) and where they came from."""
    version = _tvm_ffi_version()
    files: dict[str, bytes] = {}
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if wheel is None and python == here:
        spec = importlib.util.find_spec("tvm_ffi")
        pkg = Path(list(spec.submodule_search_locations)[0])
        for path in sorted(pkg.rglob("*")):
            rel = "tvm_ffi/" + path.relative_to(pkg).as_posix()
            if path.is_file() and _keep_ffi_file(rel):
                files[rel] = path.read_bytes()
        dist = metadata.distribution("apache-tvm-ffi")
        for f in dist.files or []:
            if _license_file(str(f)) and Path(dist.locate_file(f)).is_file():
                files["LICENSES/" + str(f).split(".dist-info/", 1)[1]] = Path(dist.locate_file(f)).read_bytes()
        return files, f"installed apache-tvm-ffi {version} ({pkg})"
    if wheel is None:
        wheel = _download_wheel(version, python, cache, say)
    tag = "cp" + python.replace(".", "")
    if f"-{tag}-" not in wheel.name and "-py3-" not in wheel.name:
        raise BadInputError(f"{wheel.name} is not a wheel for Python {python} ({tag})")
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if _keep_ffi_file(info.filename):
                    files[info.filename] = zf.read(info)
                elif _license_file(info.filename):
                    files["LICENSES/" + info.filename.split(".dist-info/", 1)[1]] = zf.read(info)
    except zipfile.BadZipFile:
        raise BadInputError(f"{wheel} is not a valid wheel") from None
    if not any(r.startswith("tvm_ffi/core.") for r in files):
        raise BadInputError(f"{wheel.name} holds no tvm_ffi core extension")
    return files, f"wheel {wheel.name}"


def python_dependencies() -> dict[str, bytes]:
    """Pure-Python modules ``tvm_ffi`` imports (``typing_extensions``), from this interpreter, with licenses."""
    spec = importlib.util.find_spec("typing_extensions")
    if spec is None or not spec.origin:
        raise BackendUnavailableError("typing_extensions (needed by tvm_ffi) is not installed")
    files = {"typing_extensions.py": Path(spec.origin).read_bytes()}
    try:
        dist = metadata.distribution("typing_extensions")
        for f in dist.files or []:
            if _license_file(str(f)) and Path(dist.locate_file(f)).is_file():
                files["LICENSES/typing_extensions/" + str(f).rsplit("/", 1)[-1]] = Path(dist.locate_file(f)).read_bytes()
    except metadata.PackageNotFoundError:
        pass
    return files


def _download_wheel(version: str, python: str, cache: Path, say: Callable[[str], None]) -> Path:
    tag = "cp" + python.replace(".", "")
    pattern = f"apache_tvm_ffi-{version}-{tag}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    say(f"downloading apache-tvm-ffi {version} for Python {python}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", f"apache-tvm-ffi=={version}", "-d", str(cache), "-q"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BackendUnavailableError(f"pip download of apache-tvm-ffi failed: {one_line(err, 200)}") from None
    found = sorted(cache.glob(pattern))
    if proc.returncode != 0 or not found:
        raise BackendUnavailableError(
            f"cannot get apache-tvm-ffi {version} for Python {python}: {one_line(proc.stderr or proc.stdout, 300)}; "
            "pass a wheel with --tvm-ffi-wheel")
    return found[-1]


def runner_modules() -> dict[str, bytes]:
    """``dlcbench/...`` path -> contents of each of :data:`RUNNER_MODULES`, from this dlcbench, unmodified."""
    root = Path(__file__).resolve().parents[2]  # the directory holding this dlcbench package
    return {rel: (root / rel).read_bytes() for rel in RUNNER_MODULES}


def _dist_info(version: str, files: Iterable[str]) -> dict[str, bytes]:
    """A minimal ``dist-info`` so ``tvm_ffi.libinfo`` finds the bundled ``libtvm_ffi.so`` first."""
    base = f"apache_tvm_ffi-{version}.dist-info"
    record = "".join(f"{f},,\n" for f in sorted(files)) + f"{base}/METADATA,,\n{base}/RECORD,,\n"
    return {f"{base}/METADATA": f"Metadata-Version: 2.1\nName: apache-tvm-ffi\nVersion: {version}\n".encode(),
            f"{base}/RECORD": record.encode()}


# --------------------------------------------------------------------------- models


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, order="C"), allow_pickle=False)  # ascontiguousarray would make 0-d arrays 1-d
    return buf.getvalue()


def _stage_item(stager: _Stager, item_id: str, artifact: Path, manifest: dict, result: Any) -> dict[str, Any]:
    """Copies one compiled artifact into the staging tree; returns its index record."""
    base = f"models/{item_id}"
    stager.add_file(f"{base}/model.so", artifact / manifest["files"]["library"], executable=True)
    for name in ("inputs.npz", "reference.npz", "manifest.json"):
        stager.add_file(f"{base}/{name}", artifact / name)
    weights = []
    if "params" in manifest["files"]:
        with np.load(artifact / manifest["files"]["params"]) as data:
            for i in range(len(data.files)):
                blob = _npy_bytes(data[f"arr_{i}"])
                rel = f"weights/{hashlib.sha256(blob).hexdigest()[:24]}.npy"
                stager.add(rel, blob)
                weights.append(rel)
    detail = manifest.get("target_detail") or {}
    summary = result.model.get("summary") or {}
    return {
        "library": f"{base}/model.so", "params": weights, "inputs": f"{base}/inputs.npz",
        "reference": f"{base}/reference.npz", "manifest_path": f"{base}/manifest.json",
        "input_specs": manifest["inputs"], "output_specs": manifest["outputs"],
        "arch": detail.get("arch") or detail.get("mcpu") or "", "target": manifest["target"],
        "precision": manifest["precision"], "backend": manifest["backend"], "backend_version": manifest["backend_version"],
        "compile_seconds": manifest["compile_seconds"], "artifact_bytes": result.artifact_bytes,
        "parameters": summary.get("parameters"), "flops": summary.get("flops"),
        "device_code_archs": (manifest.get("extra") or {}).get("device_code_archs"),
        "manifest": {k: manifest.get(k) for k in ("backend", "backend_version", "target", "precision", "batch",
                                                   "options", "compile_seconds", "source_model", "source_sha256",
                                                   "target_detail", "extra", "dlcbench_version", "created")},
    }


def _export_meta(config: BundleConfig, name: str, preset: str) -> dict[str, Any]:
    """The (cached) export's metadata of a model (its summary, its task), before compiling."""
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.measure.job import JobConfig, export_for

    job = JobConfig(backend="tvm", model=name, preset=preset, batch=config.batches[0], seed=config.seed,
                    target=config.target, out_dir=Path("unused"))
    return export_for(get_adapter("tvm"), job).meta


def build_bundle(config: BundleConfig, progress: Callable[[str], None] | None = None) -> BundleReport:
    """Compiles every (model, batch) and writes the bundle directory; see the module docstring.

    Raises:
        BadInputError: the bundle would exceed ``limit_mb`` (without ``skip_oversize``), or bad paths.
        BackendUnavailableError: TVM, nvcc, the CUDA runtime library or the tvm_ffi wheel is missing.
        CompileError and the other :class:`DlcbenchError` s of a failing compile (without ``keep_going``).
    """
    import tempfile

    from dlcbench.measure.check import TOLERANCES
    from dlcbench.results.env import git_revision
    from dlcbench.measure.job import JobConfig, run_job

    say = progress or (lambda message: None)
    limit = config.limit_bytes
    staged = StagedOutput(config.out_dir, BUNDLE)
    out_dir, staging = staged.final, staged.directory
    build_tmp = None if config.build_dir else tempfile.TemporaryDirectory(prefix="dlcbench-bundle-build-")
    build_root = Path(config.build_dir or build_tmp.name)
    try:
        stager = _Stager(staging, config.compress)
        # ---- runtime: tvm_ffi for the target Python, libtvm_runtime (+ CUDA), the runner
        ffi_files, ffi_source = tvm_ffi_files(config.python, config.tvm_ffi_wheel, config.wheel_cache, say)
        version = _tvm_ffi_version()
        say(f"tvm_ffi from {ffi_source}")
        licenses = {k.replace("LICENSES/", "licenses/tvm_ffi/"): v for k, v in ffi_files.items() if k.startswith("LICENSES/")}
        py_files = {k: v for k, v in ffi_files.items() if not k.startswith("LICENSES/")}
        py_files.update(_dist_info(version, py_files))
        for rel, data in python_dependencies().items():
            if rel.startswith("LICENSES/"):
                licenses[rel.replace("LICENSES/", "licenses/")] = data
            else:
                py_files[rel] = data
        for rel, data in sorted(py_files.items()):
            stager.add(f"py/{rel}", data, executable=rel.endswith(".so"))
        for rel, data in runner_modules().items():
            stager.add(f"py/{rel}", data, compress=False)  # run.py imports them before it unpacks
        for rel, data in sorted(licenses.items()):
            stager.add(rel, data)
        libs = runtime_libraries(config.target)
        for name, path in libs.items():
            stager.add_file(f"lib/{name}", path, executable=True)
        runner_text = RUNNER_TEMPLATE.read_bytes()
        runtime_bytes = stager.size() + len(runner_text)
        if runtime_bytes > limit:
            raise BadInputError(f"the runtime alone takes {runtime_bytes / MB:.2f} MB, over the "
                                f"{limit / MB:.2f} MB bundle limit; raise the limit")
        # ---- models, all batches of one model together
        items: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        model_bytes: dict[str, int] = {}

        def skip(label: str, category: str, reason: str) -> None:
            skipped.append({"model": label, "category": category, "reason": one_line(reason, 300)})
            say(f"skipping {label}: {one_line(reason, 200)}")

        def oversize(label: str, name: str, reason: str) -> None:
            if not config.skip_oversize:
                raise BadInputError(f"bundle over its limit: {label}: {reason}; use --skip-oversize, a smaller "
                                    f"preset ({name}:tiny) or a higher --limit-mb")
            skip(label, "oversize", reason)

        for name, preset in config.model_specs():
            label = f"{name}:{preset}"
            room = limit - stager.size() - len(runner_text)
            try:
                meta = _export_meta(config, name, preset)
            except DlcbenchError as err:
                if not config.keep_going:
                    raise
                skip(label, err.category, str(err))
                continue
            params = (meta.get("summary") or {}).get("parameters")
            estimate = 4 * int(params) if params else None  # raw fp32 weight bytes
            # xz stores random fp32 weights at >= ~80 %: skip without compiling when even that cannot fit.
            if estimate is not None and 0.8 * estimate > room:
                reason = (f"its {estimate / MB:.1f} MB of fp32 weights cannot fit in the {max(room, 0) / MB:.1f} MB "
                          f"left under the {limit / MB:.0f} MB limit")
                oversize(label, name, reason)
                continue
            checkpoint, before = stager.checkpoint(), stager.size()
            new_items = []
            try:
                for batch in config.batches:
                    item_id = f"{name}-{preset}-b{batch}"
                    say(f"compiling {item_id} for {config.target} {config.arch if config.target == 'cuda' else ''}".rstrip())
                    options = {"arch": config.arch} if config.target == "cuda" else (
                        {"mcpu": config.mcpu} if config.mcpu else {})
                    job = JobConfig(backend="tvm", model=name, preset=preset, target=config.target, batch=batch,
                                    threads=config.threads, out_dir=build_root / item_id, backend_options=options,
                                    compile_only=True, seed=config.seed)
                    result = run_job(job)
                    # TvmAdapter already refuses a CUDA library without device code for the arch.
                    record = _stage_item(stager, item_id, job.out_dir, result.manifest, result)
                    # task: run.py checks a classifier's top-1/top-5 agreement too, as a CPU job does
                    new_items.append({"id": item_id, "model": name, "preset": preset, "batch": batch,
                                      "task": meta.get("task"), **record})
            except DlcbenchError as err:
                stager.rollback(checkpoint)
                if not config.keep_going:
                    raise
                skip(label, err.category, str(err))
                continue
            added = stager.size() - before
            if stager.size() + len(runner_text) > limit:
                stager.rollback(checkpoint)
                reason = (f"would make the bundle {(before + added + len(runner_text)) / MB:.2f} MB, over the "
                          f"{limit / MB:.2f} MB limit (it takes {added / MB:.2f} MB)")
                oversize(label, name, reason)
                continue
            items.extend(new_items)
            model_bytes[label] = added
            say(f"added {label}: {added / MB:.2f} MB; bundle now {(stager.size() + len(runner_text)) / MB:.2f} MB")
        if not items:
            raise BadInputError("no model fits in the bundle: " + "; ".join(f"{s['model']}: {s['reason']}" for s in skipped))
        # ---- the runner and the index
        (staging / "run.py").write_bytes(runner_text)
        (staging / "run.py").chmod(0o755)
        files = sorted(stager.entries.values(), key=lambda e: e["path"])
        bundle_id = hashlib.sha256("".join(e["sha256"] for e in files).encode() + runner_text).hexdigest()[:16]
        tvm_version = _safe_version("apache-tvm")
        index = {
            "format": BUNDLE_FORMAT, "bundle_id": bundle_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "target": config.target, "arch": config.arch if config.target == "cuda" else (items[0]["arch"] or "cpu"),
            "python": config.python, "threads": config.threads, "dlcbench_version": __version__,
            "tvm_version": tvm_version, "tvm_ffi_version": version, "tvm_ffi_source": ffi_source,
            "git_revision": git_revision(), "limit_bytes": limit, "size_bytes": 0,
            "tolerances": {p: [t.abs, t.rel, t.cosine] for p, t in TOLERANCES.items() if t.elementwise},
            "skipped": skipped, "items": items, "files": files,
            "libraries": {name: str(path) for name, path in libs.items()},
        }
        size = _write_index(staging, index)
        if size > limit:  # the index itself pushed it over (only with a limit cut very fine)
            raise BadInputError(f"bundle is {size / MB:.2f} MB with its index, over the {limit / MB:.2f} MB limit")
        staged.publish()
        return BundleReport(out_dir, size, limit, runtime_bytes, items, skipped, model_bytes, bundle_id)
    finally:
        staged.discard()
        if build_tmp is not None:
            build_tmp.cleanup()


def _write_index(staging: Path, index: dict[str, Any]) -> int:
    """Writes ``bundle.json`` with its ``size_bytes`` equal to the whole directory's bytes; returns them."""
    others = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and p.name != "bundle.json")
    text = ""
    for _ in range(5):  # the size's digits change the index's own size
        index["size_bytes"] = others + len(text.encode())
        text = jsonio.dumps(index, indent=1)
        if index["size_bytes"] == others + len(text.encode()):
            break
    (staging / "bundle.json").write_text(text)
    return others + len(text.encode())


def _safe_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bundle_size(directory: Path) -> int:
    """Bytes of every file under ``directory`` (what travels)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def _bundle_files(directory: Path) -> Owned | None:
    """What dlcbench wrote in a bundle directory: ``bundle.json``, ``run.py`` and the files the index lists."""
    try:
        index = read_bundle_index(directory)
        return Owned.of_files(["bundle.json", "run.py", *(str(e["stored"]) for e in index["files"])])
    except (BadInputError, KeyError, TypeError):
        return None


#: A bundle directory (``dlcbench bundle -o``); its ``bundle.json`` lists every file, so it carries no marker.
BUNDLE = OutputKind("bundle", "a dlcbench GPU bundle", recognise=_bundle_files, marker=False)


def read_bundle_index(directory: Path) -> dict[str, Any]:
    """The ``bundle.json`` of a bundle directory (the runner's own reader).

    Raises:
        BadInputError: not a bundle, or a format this dlcbench does not know.
    """
    return read_index(Path(directory))


# --------------------------------------------------------------------------- results


def load_results(path: Path) -> dict[str, Any]:
    """Reads and validates a results JSON file written by a bundle's ``run.py``.

    A file of the first runner (:data:`RESULTS_FORMAT_V1`) is read too: its records' ``host`` and ``native``
    timings become ``timing`` and ``native_timing``, as :data:`RESULTS_FORMAT` has them.

    Raises:
        BadInputError: missing, not JSON, not a results file, or a self-check report.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise BadInputError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path} is not JSON: {one_line(err, 120)}") from None
    if not isinstance(data, dict) or data.get("format") not in (RESULTS_FORMAT, RESULTS_FORMAT_V1):
        raise BadInputError(f"{path} is not a dlcbench GPU results file (format {data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("mode") != "run":
        raise BadInputError(f"{path} is a {data.get('mode')} report, not run results")
    for key in ("environment", "results", "bundle"):
        if key not in data:
            raise BadInputError(f"{path} has no {key!r}")
    for i, r in enumerate(data["results"]):
        missing = [k for k in ("model", "batch", "status") if k not in r]
        if missing:
            raise BadInputError(f"{path}: result {i} lacks {', '.join(missing)}")
        if data["format"] == RESULTS_FORMAT_V1:
            r["timing"], r["native_timing"] = r.pop("host", None) or {}, r.pop("native", None)
        if isinstance(r.get("timing"), dict) and r["timing"]:
            r["timing"].setdefault("region", "resident")  # the runner has always timed the resident region
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_experiment(data: dict[str, Any]) -> str:
    """``gpu-<gpu name>`` (e.g. ``gpu-nvidia-h200``), or ``gpu-<target>`` without a GPU record."""
    gpus = data["environment"].get("gpus") or []
    name = gpus[0].get("name") if gpus else None
    return "gpu-" + (_slug(name) if name else _slug(data["bundle"].get("target") or "unknown"))


def result_job_key(record: dict[str, Any]) -> str:
    ident = {k: record.get(k) for k in ("model", "preset", "batch", "backend", "target", "precision", "arch")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def result_row(record: dict[str, Any], bundle: dict[str, Any]) -> dict[str, Any]:
    """A results-store row from one runner record (as :func:`load_results` returns it).

    A record has a CPU job's keys (``timing``, ``native_timing``, ``compile_seconds``, ``manifest``...) but for
    ``model``, the model's name; with the model's summary there instead, dlcbench's trackers read it as they
    read a job's ``result.json``.
    """
    from dlcbench.measure.trackers import collect_metrics

    manifest = record.get("manifest") or {}
    as_result = {**record, "model": {"summary": {"flops": record.get("flops"), "parameters": record.get("parameters")}}}
    return {
        "model": record["model"], "backend": record.get("backend") or "tvm", "target": record.get("target") or "cuda",
        "precision": record.get("precision") or "fp32", "batch": int(record["batch"]),
        "threads": int((manifest.get("options") or {}).get("threads") or 1),
        "status": record["status"], "category": record.get("category"), "message": record.get("message") or None,
        "check_metrics": record.get("check"), "manifest": manifest,
        "config": {"model": record["model"], "preset": record.get("preset"), "batch": record["batch"],
                   "arch": record.get("arch"), "gpu_arch": record.get("gpu_arch"), "load_seconds": record.get("load_seconds"),
                   "bundle_id": bundle.get("bundle_id"), "source": "gpu bundle"},
        "metrics": [m.to_dict() for m in collect_metrics(as_result)],
    }


def import_results(path: Path, db: Path, experiment: str | None = None) -> dict[str, Any]:
    """Stores a results file's rows (with its environment record) in the results database.

    A re-import replaces the rows of the same (model, preset, batch, target, arch).
    Returns ``{"experiment", "rows", "ok", "failed", "environment_id"}``.
    """
    from dlcbench.results.store import ResultsStore

    data = load_results(path)
    name = experiment or default_experiment(data)
    environment = {**data["environment"], "bundle": data["bundle"], "results_file": Path(path).name}
    rows = {result_job_key(record): result_row(record, data["bundle"]) for record in data["results"]}
    with ResultsStore(db) as store:  # all rows or none
        env_id = store.add_results(name, {"source": "gpu bundle", "bundle": data["bundle"],
                                          "timing": data.get("timing_config"), "results_file": str(path)},
                                   environment, rows)
    ok = sum(r["status"] == "ok" for r in data["results"])
    return {"experiment": name, "rows": len(data["results"]), "ok": ok, "failed": len(data["results"]) - ok,
            "environment_id": env_id}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _max_abs(check: dict[str, Any]) -> float | None:
    """The largest absolute error over a check's outputs (``CheckReport.to_dict()``), None if none was measured."""
    values = [(o.get("metrics") or {}).get("max_abs") for o in check.get("outputs") or []]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def render_table(data: dict[str, Any]) -> str:
    """Markdown: GPU, driver, CUDA, then per model and batch the latencies and the check verdict."""
    env, bundle = data["environment"], data.get("bundle") or {}
    gpus = env.get("gpus") or []
    gpu = gpus[0] if gpus else {}
    cuda = env.get("cuda") or {}
    runtime = cuda.get("runtime_version")
    runtime_text = f"{runtime // 1000}.{runtime % 1000 // 10}" if isinstance(runtime, int) else "?"
    cuda_target = bundle.get("target", "cuda") == "cuda"
    where = (gpu.get("name") or "no GPU") if cuda_target else env.get("cpu", {}).get("model", "?")
    lines = [f"# TVM {bundle.get('target', 'cuda').upper()} artifacts on {where}", ""]
    if cuda_target:
        lines.append(
            f"- GPU: {gpu.get('name', '?')}, driver {gpu.get('driver', '?')}, memory {gpu.get('memory', '?')}, "
            f"compute capability {gpu.get('compute_cap') or cuda.get('compute_version') or '?'}; CUDA runtime {runtime_text}")
    lines += [
        f"- Host: {env.get('cpu', {}).get('model', '?')}, {env.get('cores', '?')} cores; Python {env.get('python', '?')}; "
        f"numpy {env.get('packages', {}).get('numpy', '?')}",
        f"- Bundle {bundle.get('bundle_id', '?')}: TVM {bundle.get('tvm_version', '?')} runtime, tvm_ffi "
        f"{bundle.get('tvm_ffi_version', '?')}, {'device code' if cuda_target else 'CPU'} {bundle.get('arch', '?')}, "
        f"built at git {bundle.get('git_revision') or '?'}; run {env.get('collected', '?')}",
        f"- host: wall clock per inference including launches{' and a device synchronisation' if cuda_target else ''}; "
        f"native: TVM time_evaluator{' (CUDA events)' if cuda_target else ''}; check: outputs against the Keras "
        "reference with dlcbench's fp32 tolerances (abs 1e-4 + rel 1e-3, cosine >= 0.999)", "",
        "| model | preset | batch | check | max abs err | host median ms | host p90 ms | host p99 ms | "
        "native median ms | items/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data["results"], key=lambda r: (r["model"], r.get("preset") or "", r["batch"])):
        host = (r.get("timing") or {}).get("stats") or {}
        native = (r.get("native_timing") or {}).get("stats") or {}
        worst = _max_abs(r.get("check") or {})
        if r["status"] == "ok":
            verdict = "PASS"
        elif r.get("category") == "accuracy_fail":
            verdict = "FAIL"
        else:
            verdict = f"{(r.get('category') or 'failed').upper()}"
        max_abs = "" if worst is None else f"{worst:.2g}"
        lines.append(f"| {r['model']} | {r.get('preset') or ''} | {r['batch']} | {verdict} | {max_abs} | "
                     f"{_fmt(host.get('median_ms'))} | {_fmt(host.get('p90_ms'))} | {_fmt(host.get('p99_ms'))} | "
                     f"{_fmt(native.get('median_ms'))} | {_fmt(host.get('throughput_per_s'), 1)} |")
    failures = [r for r in data["results"] if r["status"] != "ok"]
    skipped = bundle.get("skipped") or []
    if failures or skipped:
        lines.append("")
    for r in failures:
        lines.append(f"- {r['model']} batch {r['batch']}: **{r.get('category')}**: {one_line(r.get('message', ''), 300)}")
    for s in skipped:
        lines.append(f"- not in the bundle: {s['model']}: {s['reason']}")
    return "\n".join(lines) + "\n"


def results_from_store(db: Path, experiment: str) -> dict[str, Any]:
    """Rebuilds a results dict (as :func:`render_table` takes) from an imported experiment."""
    from dlcbench.results.store import ResultsStore

    with ResultsStore(db, readonly=True) as store:
        rows = [r for r in store.results(experiment) if (r.get("config") or {}).get("source") == "gpu bundle"]
        if not rows:
            raise BadInputError(f"experiment {experiment!r} has no GPU bundle rows")
        if any(r["target"] == "cuda" for r in rows):  # the table is about the GPU rows when there are some
            rows = [r for r in rows if r["target"] == "cuda"]
        env_ids = [r["environment_id"] for r in rows if r["environment_id"]]
        environment = store.environment(max(set(env_ids), key=env_ids.count)) if env_ids else {}
    def stats(metric: dict[str, Any] | None) -> dict[str, Any] | None:
        return {"median_ms": metric["value"], **metric["detail"]} if metric else None

    results = []
    for r in rows:
        config = r.get("config") or {}
        host, native = stats(r["metrics"].get("latency")), stats(r["metrics"].get("latency_native"))
        results.append({"model": r["model"], "preset": config.get("preset"), "batch": r["batch"], "status": r["status"],
                        "category": r["category"], "message": r["message"], "check": r.get("check_metrics") or {},
                        "timing": {"stats": host} if host else {},
                        "native_timing": {"stats": native, "timer": native.get("timer")} if native else None})
    return {"format": RESULTS_FORMAT, "mode": "run", "environment": environment,
            "bundle": environment.get("bundle") or {}, "results": results}


__all__ = ["BundleConfig", "BundleReport", "build_bundle", "load_results", "import_results", "render_table",
           "results_from_store", "read_bundle_index", "bundle_size", "runtime_libraries", "tvm_ffi_files",
           "DEFAULT_MODELS", "DEFAULT_BATCHES", "DEFAULT_LIMIT_MB"]
