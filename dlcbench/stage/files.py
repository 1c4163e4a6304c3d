"""Files a stage carries: the staging tree (compressed, content-checked, weights stored once), TVM's runtime
(``tvm_ffi`` for the target Python and the runtime libraries), Python packages the target lacks, and
dlcbench's own source.

Used by :mod:`dlcbench.stage.build`; the runner (:mod:`dlcbench.stage.runner`) unpacks what is written here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import lzma
import re
import struct
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from dlcbench.config import cache_dir
from dlcbench.errors import BackendUnavailableError, BadInputError, one_line

MB = 1_000_000
#: Files at least this big are stored xz-compressed when that saves at least 3 %.
COMPRESS_MIN_BYTES = 16 * 1024
#: ``.npz`` files at least this big are stored as one content-addressed ``.npy`` per array (``blobs/``), so
#: weights and samples shared by several jobs travel once; the runner rebuilds the ``.npz``.
SPLIT_NPZ_MIN_BYTES = 256 * 1024
# Libraries the target machine provides itself (driver and C/C++ runtime).
_SYSTEM_LIBS = re.compile(r"(libcuda\.so\.1|libc\.so\..*|libm\.so\..*|libdl\.so\..*|libpthread\.so\..*|librt\.so\..*"
                          r"|libstdc\+\+\.so\..*|libgcc_s\.so\..*|ld-linux.*)")


def default_wheel_cache() -> Path:
    """Where downloaded wheels are kept: ``$DLCBENCH_CACHE/wheels`` (default ``~/.cache/dlcbench/wheels``)."""
    return cache_dir() / "wheels"


# --------------------------------------------------------------------------- staging


class Stager:
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
        """Stores file ``src`` as ``rel``; a big ``.npz`` is split into content-addressed arrays (see
        :data:`SPLIT_NPZ_MIN_BYTES`)."""
        src = Path(src)
        if rel.endswith(".npz") and src.stat().st_size >= SPLIT_NPZ_MIN_BYTES:
            return self.add_npz(rel, src)
        return self.add(rel, src.read_bytes(), executable)

    def add_npz(self, rel: str, src: Path) -> int:
        """Stores each array of ``src`` once under ``blobs/`` and ``rel`` as the list of them."""
        if rel in self.entries:
            return 0
        added, arrays = 0, []
        with np.load(src, allow_pickle=False) as data:
            for key in data.files:
                blob = npy_bytes(data[key])
                blob_rel = f"blobs/{hashlib.sha256(blob).hexdigest()[:32]}.npy"
                added += self.add(blob_rel, blob)
                arrays.append([key, blob_rel])
        self.entries[rel] = {"path": rel, "npz": arrays, "stored": None, "stored_bytes": 0,
                             "bytes": src.stat().st_size, "sha256": None, "executable": False}
        return added

    def checkpoint(self) -> set[str]:
        return set(self.entries)

    def rollback(self, checkpoint: set[str]) -> None:
        for rel in set(self.entries) - checkpoint:
            stored = self.entries.pop(rel)["stored"]
            if stored:
                (self.root / stored).unlink(missing_ok=True)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in ``.npy`` format."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, order="C"), allow_pickle=False)  # ascontiguousarray would make 0-d arrays 1-d
    return buf.getvalue()


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
        raise BackendUnavailableError("apache-tvm is not installed: a stage of TVM jobs needs its runtime libraries")
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


def tvm_ffi_version() -> str:
    """The installed apache-tvm-ffi version (what a stage carries for the target Python)."""
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
    version = tvm_ffi_version()
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
    return download_wheel("apache-tvm-ffi", version, python, cache, say)


def download_wheel(distribution: str, version: str, python: str, cache: Path, say: Callable[[str], None]) -> Path:
    """A wheel of ``distribution==version`` for CPython ``python`` on x86-64 Linux, from the cache or pip download.

    Raises:
        BackendUnavailableError: pip cannot get it (no network, no such build).
    """
    tag = "cp" + python.replace(".", "")
    stem = re.sub(r"[-_.]+", "_", distribution).lower()
    def found() -> list[Path]:
        return sorted(p for p in cache.glob(f"*-{version}-*.whl")
                      if re.sub(r"[-_.]+", "_", p.name.split("-")[0]).lower() == stem
                      and (f"-{tag}-" in p.name or "-py3-" in p.name or "-abi3-" in p.name))
    if found():
        return found()[-1]
    cache.mkdir(parents=True, exist_ok=True)
    say(f"downloading {distribution} {version} for Python {python}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", f"{distribution}=={version}", "-d", str(cache), "-q"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BackendUnavailableError(f"pip download of {distribution} failed: {one_line(err, 200)}") from None
    if proc.returncode != 0 or not found():
        raise BackendUnavailableError(
            f"cannot get {distribution} {version} for Python {python}: {one_line(proc.stderr or proc.stdout, 300)}")
    return found()[-1]


def dist_info(version: str, files: Iterable[str]) -> dict[str, bytes]:
    """A minimal ``dist-info`` so ``tvm_ffi.libinfo`` finds the stage's ``libtvm_ffi.so`` first."""
    base = f"apache_tvm_ffi-{version}.dist-info"
    record = "".join(f"{f},,\n" for f in sorted(files)) + f"{base}/METADATA,,\n{base}/RECORD,,\n"
    return {f"{base}/METADATA": f"Metadata-Version: 2.1\nName: apache-tvm-ffi\nVersion: {version}\n".encode(),
            f"{base}/RECORD": record.encode()}




# --------------------------------------------------------------------------- Python packages


_SKIP_PARTS = {"__pycache__"}


def _installed_files(dist: metadata.Distribution) -> dict[str, bytes]:
    """An installed distribution's files under its site directory (no scripts, no bytecode), by relative path."""
    files = {}
    for f in dist.files or []:
        rel = str(f)
        if rel.startswith("..") or rel.endswith(".pyc") or _SKIP_PARTS & set(Path(rel).parts) or rel.endswith("INSTALLER"):
            continue
        path = Path(dist.locate_file(f))
        if path.is_file():
            files[rel] = path.read_bytes()
    return files


def _wheel_files(wheel: Path) -> dict[str, bytes]:
    """A wheel's files that install into site-packages (``*.data`` directories left out)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return {i.filename: zf.read(i) for i in zf.infolist()
                    if not i.is_dir() and ".data/" not in i.filename and not i.filename.endswith(".pyc")}
    except zipfile.BadZipFile:
        raise BadInputError(f"{wheel} is not a valid wheel") from None


def package_files(distribution: str, python: str, cache: Path, say: Callable[[str], None]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files of installed ``distribution`` for CPython ``python``: copied from this interpreter when the package is
    pure Python or the versions match, else from a wheel of the same version for ``python`` (pip download).

    Returns ``(relative path -> bytes, record)``; the record says the version, where the files came from, and
    whether they hold compiled code.

    Raises:
        BadInputError: the distribution is not installed here.
        BackendUnavailableError: a compiled package for another Python that pip cannot download.
    """
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise BadInputError(f"cannot carry {distribution}: it is not installed here") from None
    version = dist.version
    files = _installed_files(dist)
    binary = any(rel.endswith((".so", ".pyd")) or ".so." in rel for rel in files)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    record = {"name": dist.metadata["Name"], "version": version, "binary": binary}
    if binary and python != here:
        wheel = download_wheel(distribution, version, python, cache, say)
        files = _wheel_files(wheel)
        record["source"] = f"wheel {wheel.name}"
    else:
        record["source"] = f"installed ({Path(dist.locate_file('')).resolve()})"
    record["bytes"] = sum(len(v) for v in files.values())
    return files, record


def dlcbench_files() -> dict[str, bytes]:
    """``dlcbench/...`` path -> contents of every module of this dlcbench, unmodified (what the runner imports)."""
    import dlcbench

    package = Path(dlcbench.__file__).resolve().parent
    return {"dlcbench/" + p.relative_to(package).as_posix(): p.read_bytes()
            for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts}
