"""Cross-compiles Relax modules to CUDA libraries that hold real device code (cubin), no GPU needed.

Why this is needed: TVM 0.27's CUDA codegen (``target.build.cuda``) only compiles the
generated CUDA C++ when the CUDA *runtime* module is registered, i.e. when the global
function ``ffi.Module.create.cuda`` exists. That function lives in
``tvm/lib/libtvm_runtime_cuda.so``, which TVM loads on ``import tvm`` and which links
against the driver library ``libcuda.so.1``. On a machine without an NVIDIA driver that
load fails silently, and the codegen falls back to ``CUDAFallbackModuleNode``
(``src/backend/cuda/codegen/cuda_fallback_module.cc``): the exported library then holds
only CUDA *source* (with an empty format tag), no device code at all.
(``TVM_COMPILE_FORCE_FALLBACK`` forces that fallback on purpose; we clear it.)

What :func:`compile_cuda` does:

1. If ``ffi.Module.create.cuda`` is missing, it makes ``libcuda.so.1`` resolvable and
   loads ``libtvm_runtime_cuda.so`` itself (TVM's own loader, same flags). It uses the real
   driver when one is installed, otherwise a stub: the CUDA toolkit's
   ``lib64/stubs/libcuda.so`` if present and complete, else a ten-line C library exporting
   the driver symbols ``libtvm_runtime_cuda.so`` imports (read from its ELF ``.dynsym``),
   each returning ``CUDA_ERROR_STUB_LIBRARY`` (34). It is built once with ``cc`` into
   ``~/.cache/dlcbench/cuda-stub/<hash>/libcuda.so.1`` (``$DLCBENCH_CUDA_STUB_DIR``
   overrides the directory). The stub is loaded ``RTLD_GLOBAL`` under its SONAME
   ``libcuda.so.1``, so the dynamic linker satisfies the runtime's ``DT_NEEDED`` with it.
   This works *after* ``import tvm``: no ``LD_LIBRARY_PATH``, no process ordering, no
   subprocess. Compilation never calls the driver; the stub only satisfies the linker.
2. It lowers with ``relax.get_pipeline("zero")`` and the DLight default GPU schedules inside
   ``with target:``, then ``tvm.compile`` for ``{"kind": "cuda", "arch": arch}`` with an
   LLVM host, with ``TVM_CUDA_COMPILE_MODE=nvcc`` set during the call: TVM's registered
   ``tvm_callback_cuda_compile`` (``tvm/support/nvcc.py``) then runs
   ``nvcc --fatbin -gencode arch=compute_XX,code=sm_XX`` and the runtime module stores that
   fatbin (one SASS ELF for ``arch``, no PTX, no source). The default NVRTC mode would need
   the ``cuda-bindings`` package; ``compiler="nvrtc"`` selects it (it yields a plain cubin).
   Without PTX a library runs only on GPUs of exactly that SM (an ``sm_80`` library fails
   on an H200 with ``CUDA_ERROR_NO_BINARY_FOR_GPU``); CUDA 13's nvcc rejects ``sm_70``.
3. Relax parameter names are sanitized to C identifiers first: the ONNX importer keeps
   initializer names such as ``mlp_1/dense/BiasAdd/ReadVariableOp:0``, which TVM copies
   verbatim into the CUDA kernels' parameter lists, so ``nvcc`` rejects them. (The
   source-only fallback hides this; NVRTC would fail later, on the GPU host.) Parameters
   keep their positions, so positional VM calls are unaffected.

Side effect: once the stub is loaded, this process can not use a GPU (there is none
anyway); CUDA runtime calls fail with "stub library" errors instead of "no driver".
Requirements: ``nvcc`` (on ``PATH``, in ``$CUDA_HOME/bin`` or ``/usr/local/cuda/bin``) and,
without a driver or toolkit stub, a C compiler (``cc``/``gcc``/``clang``).

:func:`device_code_archs` inspects an exported library without TVM or a GPU: it parses the
embedded fatbin containers (magic ``0xBA55ED50``) and stray CUDA ELF images
(``e_machine`` 190) and returns the SASS architectures, e.g. ``["sm_90"]``; a library
holding only CUDA source or PTX gives ``[]``.

Importing this module does not import TVM.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from dlcbench.errors import BackendUnavailableError, BadInputError, CompileError, one_line

__all__ = ["compile_cuda", "device_code_archs", "ensure_cuda_codegen", "find_nvcc", "sanitize_param_names"]

_ARCH_RE = re.compile(r"sm_(\d{2,3})([af]?)")
_CUDA_ERROR_STUB_LIBRARY = 34
_LOCK = threading.RLock()
_CODEGEN_STATE: str | None = None  # "native" | "driver" | "stub:<path>" once loaded

# C and CUDA C++ keywords (and TVM-reserved spellings) a parameter must not be named.
_RESERVED = frozenset(
    """alignas alignof asm auto bool break case catch char char16_t char32_t class const
    constexpr const_cast continue decltype default delete do double dynamic_cast else enum
    explicit export extern false float for friend goto if inline int long mutable namespace
    new noexcept nullptr operator private protected public register reinterpret_cast return
    short signed sizeof static static_assert static_cast struct switch template this
    thread_local throw true try typedef typeid typename union unsigned using virtual void
    volatile wchar_t while half nv_bfloat16 uint uchar ushort dim3 blockIdx threadIdx
    blockDim gridDim warpSize""".split()
)


# --------------------------------------------------------------------------- toolchain


def find_nvcc() -> str | None:
    """Path of ``nvcc``: ``PATH``, then ``$CUDA_HOME``/``$CUDA_PATH``/``/usr/local/cuda`` ``bin``."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.access(os.path.join(root, "bin", "nvcc"), os.X_OK):
            return os.path.join(root, "bin", "nvcc")
    return None


def cuda_roots() -> list[Path]:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = find_nvcc()
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    out: list[Path] = []
    for r in roots:
        if r and Path(r).is_dir() and Path(r) not in out:
            out.append(Path(r))
    return out


# --------------------------------------------------------------------------- ELF helpers


def _elf_dynsyms(path: Path) -> tuple[set[str], set[str]]:
    """``(defined, undefined)`` dynamic symbol names of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    defined: set[str] = set()
    undefined: set[str] = set()
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != 11:  # SHT_DYNSYM
            continue
        str_off, str_size = sections[link][4], sections[link][5]
        strtab = data[str_off : str_off + str_size]
        for i in range(1, size // (entsize or 24)):
            st_name, _st_info, _st_other, st_shndx = struct.unpack_from("<IBBH", data, offset + i * 24)
            name = strtab[st_name : strtab.index(b"\0", st_name)].decode()
            (undefined if st_shndx == 0 else defined).add(name)
    return defined, undefined


# --------------------------------------------------------------------------- stub libcuda


def _runtime_cuda_lib() -> Path:
    from tvm.base import _LOADED_LIBS

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    lib = runtime_dir / "libtvm_runtime_cuda.so"
    if not lib.is_file():
        raise BackendUnavailableError(f"this TVM build has no CUDA runtime ({lib} is missing)")
    return lib


def _driver_symbols(runtime_lib: Path) -> list[str]:
    """Driver API (``cuXxx``) symbols that ``libtvm_runtime_cuda.so`` imports."""
    _defined, undefined = _elf_dynsyms(runtime_lib)
    return sorted(s for s in undefined if re.fullmatch(r"cu[A-Z]\w*", s))


def _stub_cache_dir() -> Path:
    if os.environ.get("DLCBENCH_CUDA_STUB_DIR"):
        return Path(os.environ["DLCBENCH_CUDA_STUB_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dlcbench" / "cuda-stub"


def _toolkit_stub(symbols: list[str]) -> Path | None:
    """The CUDA toolkit's own ``stubs/libcuda.so``, if it exports every needed symbol."""
    for root in cuda_roots():
        for cand in (
            root / "lib64" / "stubs" / "libcuda.so",
            root / "lib" / "stubs" / "libcuda.so",
            *sorted((root / "targets").glob("*/lib/stubs/libcuda.so")),
        ):
            try:
                if cand.is_file() and set(symbols) <= _elf_dynsyms(cand)[0]:
                    return cand
            except (OSError, ValueError, struct.error, IndexError):
                continue
    return None


def _build_stub(symbols: list[str]) -> Path:
    """Builds (once, cached) a ``libcuda.so.1`` whose functions return CUDA_ERROR_STUB_LIBRARY."""
    source = (
        "/* dlcbench stub libcuda.so.1: satisfies libtvm_runtime_cuda.so's DT_NEEDED for\n"
        "   GPU-less cross-compilation. Every entry point fails with CUDA_ERROR_STUB_LIBRARY. */\n"
        + "".join(f"int {s}() {{ return {_CUDA_ERROR_STUB_LIBRARY}; }}\n" for s in symbols)
    )
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    out = _stub_cache_dir() / key / "libcuda.so.1"
    if out.is_file():
        return out
    cc = next((shutil.which(c) for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if cc is None:
        raise BackendUnavailableError(
            "CUDA cross-compilation without an NVIDIA driver needs a C compiler (cc) to build a stub libcuda.so.1"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "stub.c"
        src.write_text(source)
        tmp_lib = Path(tmp) / "libcuda.so.1"
        proc = subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-w", "-Wl,-soname,libcuda.so.1", "-o", str(tmp_lib), str(src)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise BackendUnavailableError(f"building the stub libcuda.so.1 failed: {one_line(proc.stderr, 300)}")
        os.replace(tmp_lib, out)  # atomic: concurrent builders produce identical files
    return out


def ensure_cuda_codegen() -> str:
    """Makes TVM's real CUDA runtime module available in this process; returns how.

    Returns ``"native"`` (TVM loaded it at import: a driver is installed), ``"driver"``
    (loaded now against an installed ``libcuda.so.1``) or ``"stub:<path>"``. Idempotent.
    """
    global _CODEGEN_STATE
    with _LOCK:
        if _CODEGEN_STATE is not None:
            return _CODEGEN_STATE
        import tvm

        if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
            _CODEGEN_STATE = "native"
            return _CODEGEN_STATE
        from tvm.base import _LOADED_LIBS
        from tvm_ffi.libinfo import load_lib_ctypes

        runtime_lib = _runtime_cuda_lib()
        try:
            ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
            how = "driver"
        except OSError:
            symbols = _driver_symbols(runtime_lib)
            stub = _toolkit_stub(symbols) or _build_stub(symbols)
            ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)  # SONAME libcuda.so.1
            how = f"stub:{stub}"
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm", target_name="tvm_runtime_cuda",
                extra_lib_paths=[runtime_lib.parent], mode="RTLD_LOCAL",
            )
        except (OSError, RuntimeError) as err:
            raise BackendUnavailableError(f"cannot load TVM's CUDA runtime: {one_line(err, 300)}") from None
        if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
            raise BackendUnavailableError("TVM's CUDA runtime loaded but registered no ffi.Module.create.cuda")
        _CODEGEN_STATE = how
        return how


# --------------------------------------------------------------------------- compile


def _c_identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "arg"
    if ident[0].isdigit():
        ident = "p_" + ident
    if ident in _RESERVED or ident.startswith("__"):
        ident = "p_" + ident.lstrip("_")
    return ident


def sanitize_param_names(mod):
    """A copy of ``mod`` whose Relax function parameters are C identifiers (positions kept)."""
    from tvm import relax

    mod = mod.clone()
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        used: set[str] = set()
        params, binds = [], {}
        for p in func.params:
            name = str(p.name)
            new = _c_identifier(name)
            base, i = new, 1
            while new in used:
                new, i = f"{base}_{i}", i + 1
            used.add(new)
            if new == name:
                params.append(p)
            else:
                var = relax.Var(new, p.ty)
                binds[p] = var
                params.append(var)
        if binds:
            body = func.bind_params(binds).body
            mod[gvar] = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
    return mod


@contextlib.contextmanager
def scoped_env(**values: str | None) -> Iterator[None]:
    """Sets (or, with None, unsets) environment variables inside the block; restores them after."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _nvcc_error(err: Exception) -> str:
    """The useful part of a TVM/nvcc failure (TVM prefixes the whole kernel source)."""
    text = str(err)
    if "Compilation error:" in text:
        tail = text.split("Compilation error:", 1)[1]
        errors = [ln.strip() for ln in tail.splitlines() if " error" in ln or ln.startswith("error")]
        return "nvcc: " + one_line("; ".join(errors[:3]) or tail, 300)
    return one_line(text, 300)


def compile_cuda(mod, arch: str, *, compiler: str = "nvcc", sanitize_names: bool = True,
                 code_report: dict[str, Any] | None = None, database=None):
    """Compiles a Relax ``IRModule`` for ``{"kind": "cuda", "arch": arch}`` (host: LLVM).

    Returns the ``tvm.relax.VMExecutable``; its ``export_library(path)`` writes a shared
    library whose CUDA module holds a fatbin (``nvcc``) or cubin (``nvrtc``) for ``arch``,
    e.g. ``"sm_90"``, ``"sm_80"`` or ``"sm_90a"``. Works with or without a GPU/driver.

    ``code_report``, when given, is filled with :func:`tensor_core_use` of the generated CUDA source (captured
    through TVM's ``tvm_callback_cuda_postproc`` hook while compiling), and ``tuned_functions``.

    ``database`` (a MetaSchedule database of :func:`cuda_tuning_target`, filled by deferred rounds measured on a
    GPU: :mod:`dlcbench.compilers.tvm.deferred`): its best records are applied first (the tuning pipeline of
    :func:`dlcbench.compilers.tvm.tuning.prepare_module`, then ``apply_database``), dlight schedules the rest.

    Raises:
        BadInputError: ``arch`` is not ``sm_XX[a|f]``, or ``compiler`` is unknown.
        BackendUnavailableError: no ``nvcc``, or TVM's CUDA runtime can not be loaded.
        CompileError: lowering or device compilation failed.
    """
    if not _ARCH_RE.fullmatch(arch or ""):
        raise BadInputError(f"CUDA arch must look like 'sm_90', got {arch!r}")
    if compiler not in ("nvcc", "nvrtc"):
        raise BadInputError(f"CUDA compiler must be 'nvcc' or 'nvrtc', got {compiler!r}")
    path_env = os.environ.get("PATH", "")
    if compiler == "nvcc":
        nvcc = find_nvcc()
        if nvcc is None:
            raise BackendUnavailableError("nvcc (CUDA toolkit) not found; needed to compile CUDA device code")
        if shutil.which("nvcc") is None:  # TVM runs plain "nvcc"
            path_env = os.path.dirname(nvcc) + os.pathsep + path_env

    ensure_cuda_codegen()
    import tvm
    import tvm.support.nvcc  # noqa: F401  registers tvm_callback_cuda_compile
    from tvm import relax
    from tvm.s_tir import dlight as dl

    if database is not None:
        target = tvm.target.Target(cuda_tuning_target(arch))
    else:
        target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    if sanitize_names:
        mod = sanitize_param_names(mod)
    sources: list[str] = []
    previous = tvm.get_global_func(_POSTPROC, allow_missing=True)

    def capture(code, target=None):
        code = previous(code, target) if previous is not None else code
        sources.append(str(code))
        return code

    with _LOCK, scoped_env(TVM_CUDA_COMPILE_MODE=compiler, TVM_COMPILE_FORCE_FALLBACK=None, PATH=path_env):
        tvm.register_global_func(_POSTPROC, capture, override=True)
        try:
            tuned = 0
            with target:
                if database is not None:
                    from dlcbench.compilers.tvm.tuning import apply_database, prepare_module

                    mod = apply_database(prepare_module(mod, target), target, database)
                    tuned = sum(1 for _, f in mod.functions.items()
                                if f.attrs is not None and "tir.is_scheduled" in f.attrs and f.attrs["tir.is_scheduled"])
                else:
                    mod = relax.get_pipeline("zero")(mod)
                mod = dl.ApplyDefaultSchedule(
                    dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
                )(mod)
                executable = tvm.compile(mod, target=target)
        except Exception as err:  # TVM raises plain RuntimeError/TVMError subclasses
            raise CompileError(f"TVM CUDA compile for {arch} failed: {_nvcc_error(err)}") from None
        finally:
            if previous is not None:
                tvm.register_global_func(_POSTPROC, previous, override=True)
            else:
                import tvm_ffi

                tvm_ffi.remove_global_func(_POSTPROC)
    _check_device_module(executable, arch)
    if code_report is not None:
        code_report.update(tensor_core_use(sources), tuned_functions=tuned)
    return executable


def _check_device_module(executable: Any, arch: str) -> None:
    """Fails loudly if TVM still produced the source-only fallback module."""

    def walk(m):
        yield m
        for sub in m.imports:
            yield from walk(sub)

    for m in walk(executable.mod):
        # CUDAFallbackModuleNode also says kind "cuda" but is only binary-serializable.
        if m.kind == "cuda" and not m.is_runnable():
            raise CompileError(f"TVM produced a source-only CUDA module for {arch}")


_POSTPROC = "tvm_callback_cuda_postproc"


def cuda_tuning_target(arch: str) -> dict[str, Any]:
    """The CUDA target MetaSchedule samples and builds candidates for: ``arch`` with the limits its GPU rules read
    (those of every NVIDIA GPU from sm_70 on, at the default 48 KiB of shared memory per block), LLVM host."""
    if not _ARCH_RE.fullmatch(arch or ""):
        raise BadInputError(f"CUDA arch must look like 'sm_90', got {arch!r}")
    return {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32, "registers_per_block": 65536, "host": {"kind": "llvm"}}
#: What marks tensor-core code in TVM's generated CUDA source: the MMA PTX instructions and the WMMA API.
_TENSOR_CORE_MARKS = ("mma.sync", "wmma::", "ldmatrix", "mma_sync", "wgmma")


def tensor_core_use(sources: list[str]) -> dict[str, Any]:
    """Whether generated CUDA source uses tensor cores (:data:`_TENSOR_CORE_MARKS` in a kernel's body).

    Returns ``{"tensor_cores": bool, "kernels": n, "tensor_core_kernels": n}``; ``tensor_cores`` is None when no
    kernel source was seen (unknown, not "no").
    """
    kernels = [k for s in sources for k in s.split("__global__")[1:]]
    using = [k for k in kernels if any(mark in k for mark in _TENSOR_CORE_MARKS)]
    return {"tensor_cores": bool(using) if kernels else None, "kernels": len(kernels), "tensor_core_kernels": len(using)}


# --------------------------------------------------------------------------- inspection

_FATBIN_MAGIC = b"\x50\xed\x55\xba"  # 0xBA55ED50 little-endian
_EM_CUDA = 190
_FATBIN_KIND_ELF = 2
# Fatbin entry flags (empirical, nvcc 12/13): arch-specific "a" and family "f" variants.
_FLAG_ARCH_SPECIFIC = 0x100000
_FLAG_FAMILY = 0x200000


def _elf_cuda_arch(data: bytes, pos: int) -> str | None:
    """``sm_XX`` of a CUDA ELF image at ``pos``, or None if it is not one."""
    if data[pos : pos + 4] != b"\x7fELF" or len(data) < pos + 64:
        return None
    ei_class, ei_data, abi_version = data[pos + 4], data[pos + 5], data[pos + 8]
    if ei_data != 1 or ei_class not in (1, 2):
        return None
    e_machine, = struct.unpack_from("<H", data, pos + 18)
    if e_machine != _EM_CUDA:
        return None
    e_flags, = struct.unpack_from("<I", data, pos + (48 if ei_class == 2 else 36))
    # CUDA >= 12.8 writes ELF ABI version 8 with the SM in bits 8..15; older ones use bits 0..7.
    sm = (e_flags >> 8) & 0xFF if abi_version >= 8 else e_flags & 0xFF
    return f"sm_{sm}" if sm else None


def _fatbin_entries(data: bytes, pos: int) -> tuple[int, list[str]] | None:
    """``(end, archs)`` for a fatbin container at ``pos``, or None if the header is bogus."""
    if len(data) < pos + 16:
        return None
    _magic, version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
    end = pos + header_size + fat_size
    if version != 1 or header_size < 16 or end > len(data):
        return None
    archs: list[str] = []
    off = pos + header_size
    while off + 48 <= end:
        kind, _ver, entry_header, payload = struct.unpack_from("<HHIQ", data, off)
        if kind == 0 and not data[off:end].strip(b"\0"):
            break  # zero padding after the last entry
        if kind not in (1, 2) or entry_header < 48 or off + entry_header + payload > end:
            return None
        sm, = struct.unpack_from("<I", data, off + 28)
        flags, = struct.unpack_from("<Q", data, off + 40)
        if kind == _FATBIN_KIND_ELF:
            body = off + entry_header
            elf_arch = _elf_cuda_arch(data, body)
            if data[body : body + 4] == b"\x7fELF" and elf_arch is None:
                pass  # uncompressed but not a CUDA ELF: ignore
            else:
                suffix = "a" if flags & _FLAG_ARCH_SPECIFIC else "f" if flags & _FLAG_FAMILY else ""
                archs.append(f"sm_{sm}{suffix}")
        off += entry_header + payload
    return end, archs


def _arch_key(arch: str) -> tuple[int, str]:
    m = _ARCH_RE.fullmatch(arch)
    return (int(m.group(1)), m.group(2)) if m else (0, arch)


def device_code_archs(so_path: str | os.PathLike) -> list[str]:
    """SASS architectures (``sm_XX``) embedded in an exported library, sorted, unique.

    Looks at every fatbin container (ELF entries only; PTX entries are not device code)
    and at stray CUDA ELF images (plain cubins, as NVRTC produces). A library that holds
    only CUDA source or PTX gives ``[]``. Fatbin entries built for ``sm_XXa``/``sm_XXf``
    report that suffix; plain cubins report the base ``sm_XX``. Needs neither TVM nor a GPU.
    """
    data = Path(so_path).read_bytes()
    archs: set[str] = set()
    covered: list[tuple[int, int]] = []
    pos = data.find(_FATBIN_MAGIC)
    while pos >= 0:
        parsed = _fatbin_entries(data, pos)
        if parsed:
            end, found = parsed
            archs.update(found)
            covered.append((pos, end))
            pos = data.find(_FATBIN_MAGIC, end)
        else:
            pos = data.find(_FATBIN_MAGIC, pos + 1)
    pos = data.find(b"\x7fELF", 1)  # offset 0 is the host library itself
    while pos >= 0:
        if not any(start <= pos < end for start, end in covered):
            arch = _elf_cuda_arch(data, pos)
            if arch:
                archs.add(arch)
        pos = data.find(b"\x7fELF", pos + 1)
    return sorted(archs, key=_arch_key)
