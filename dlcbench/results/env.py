"""The environment record stored with every result: machine, software, git revision, measured peak.

Imports only the standard library and :mod:`dlcbench.jsonio` (stages ship it to machines without dlcbench).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from dlcbench import jsonio

PACKAGES = ("numpy", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi",
            "tensorrt", "openvino", "torch", "onnx2torch", "jax", "jaxlib", "xgboost-cpu")
_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "sve")


def cpu_info() -> dict:
    """This CPU's model name, the SIMD flags that matter for results and, on x86, its family and model numbers.

    A virtual machine's model name can be as vague as ``AMD EPYC`` for CPUs generations apart (one with AVX-512,
    one without): the numbers and flags tell them apart.
    """
    info = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            info["model"] = value.strip()
        elif key in ("cpu family", "model") and value.strip().isdigit():
            info["family" if key == "cpu family" else "model_number"] = int(value)
        elif key in ("flags", "Features"):
            present = set(value.split())
            info["flags"] = [f for f in _FLAGS if f in present]
            break
    return info


def memory_gb() -> float | None:
    """Total memory in GiB (Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpus() -> list[dict]:
    """NVIDIA GPUs as ``nvidia-smi`` reports them (name, driver, memory, compute capability, max clocks, power state)."""
    if not shutil.which("nvidia-smi"):
        return []
    fields = ("name", "driver_version", "memory.total", "compute_cap", "clocks.max.sm", "clocks.max.mem", "pstate")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    keys = ("name", "driver", "memory", "compute_cap", "max_sm_clock", "max_mem_clock", "pstate")
    return [dict(zip(keys, (p.strip() for p in line.split(",")))) for line in out.splitlines() if line.strip()]


def git_revision() -> str | None:
    """The project's git revision (with ``-dirty``), or None outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter for results."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


_PEAK_CODE = """
import sys, time, numpy as np
n = int(sys.argv[1]); a = np.random.default_rng(0).random((n, n), dtype=np.float32); b = a.copy()
a @ b; best = float('inf')
for _ in range(5):
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
print(2 * n ** 3 / best / 1e9)
"""


def measure_peak_gflops(threads: int, n: int = 1024, tries: int = 3) -> float | None:
    """Measured fp32 matmul GFLOP/s with ``threads`` BLAS threads (the roofline's compute roof).

    The best of ``tries`` fresh processes (each the best of five products): a roof is what the machine can reach,
    and one process can land on a busy moment. On a CPU with AVX-512 the AVX-512 kernels are tried too: OpenBLAS
    picks its AVX2 (Haswell) kernels on CPUs it does not know, such as AMD's Zen 5, whose AVX-512 peak is twice
    as high, and which ONNX Runtime and TVM both use (``OPENBLAS_CORETYPE`` in the environment, which can force
    Haswell, is overridden for that variant).
    """
    base = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    variants = [base]
    if "avx512f" in cpu_info()["flags"]:  # whatever OPENBLAS_CORETYPE says: the roof is the hardware's
        variants.append({**base, "OPENBLAS_CORETYPE": "SkylakeX"})
    best = None
    for env in [v for v in variants for _ in range(tries)]:
        try:
            out = subprocess.run([sys.executable, "-c", _PEAK_CODE, str(n)], capture_output=True, text=True, env=env,
                                 timeout=120)
            value = float(out.stdout.strip())
        except (OSError, ValueError, subprocess.TimeoutExpired):
            continue
        best = value if best is None else max(best, value)
    return None if best is None else round(best, 1)


_DRIFT_CODE = """
import json, sys, time, numpy as np
seconds, window, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
a = np.random.default_rng(0).random((n, n), dtype=np.float32); b = a.copy(); a @ b
rates, end = [], time.perf_counter() + seconds
while time.perf_counter() < end:
    runs, start = [], time.perf_counter()
    while time.perf_counter() - start < window:
        t = time.perf_counter(); a @ b; runs.append(time.perf_counter() - t)
    rates.append(2 * n ** 3 / sorted(runs)[len(runs) // 2] / 1e9)
print(json.dumps(rates))
"""


def measure_speed_drift(seconds: float = 40.0, window_s: float = 0.25, n: int = 256) -> dict:
    """How much this machine's speed wanders: one thread's fp32 matmul GFLOP/s (the median product of each
    ``window_s`` window) over ``seconds``, in a fresh process.

    On a quiet machine the windows agree within a few percent; on a shared VM they can swing by 2x within seconds,
    and then runs timed at different moments are not comparable (nor independent: see
    :func:`dlcbench.measure.timing.compare_rounds`).

    Returns:
        ``windows`` (GFLOP/s per window, in order), ``min``, ``median``, ``max``, ``swing`` (max / min),
        ``lag1_autocorrelation`` (near 1: the speed moves slowly, so neighbouring windows share it) and the settings.

    Raises:
        RuntimeError: the measuring process failed or ran past ``seconds`` + 60 s.
    """
    env = {**os.environ, **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    try:
        out = subprocess.run([sys.executable, "-c", _DRIFT_CODE, str(seconds), str(window_s), str(n)],
                             capture_output=True, text=True, env=env, timeout=seconds + 60)
        rates = [float(v) for v in json.loads(out.stdout.strip().splitlines()[-1])]
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"the drift measurement failed: {str(err)[:200]}") from None
    ordered = sorted(rates)
    mean = sum(rates) / len(rates)
    var = sum((r - mean) ** 2 for r in rates)
    lag1 = (sum((x - mean) * (y - mean) for x, y in zip(rates, rates[1:])) / var) if var > 0 else 0.0
    return {"windows": [round(r, 2) for r in rates], "min": round(ordered[0], 2),
            "median": round(ordered[len(ordered) // 2], 2), "max": round(ordered[-1], 2),
            "swing": round(ordered[-1] / ordered[0], 3), "lag1_autocorrelation": round(lag1, 3),
            "seconds": seconds, "window_s": window_s, "n": n}


_BANDWIDTH_CODE = """
import time, numpy as np
a = np.ones(64 * 2**20 // 4, np.float32); b = np.empty_like(a); np.copyto(b, a); best = float('inf')
for _ in range(5):
    t = time.perf_counter(); np.copyto(b, a); best = min(best, time.perf_counter() - t)
print(2 * a.nbytes / best / 1e9)
"""


def measure_bandwidth_gbs() -> float | None:
    """Measured memory bandwidth (GB/s, read + write of a 64 MiB copy): the roofline's memory roof."""
    try:
        out = subprocess.run([sys.executable, "-c", _BANDWIDTH_CODE], capture_output=True, text=True, timeout=120)
        return round(float(out.stdout.strip()), 1)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def environment(threads: int | None = None, peak: bool = True) -> dict:
    """Collects the environment record; ``peak`` also runs the matmul micro-benchmark."""
    record = {
        "hostname": platform.node(),
        "cpu": cpu_info(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "gpus": gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_revision": git_revision(),
        "collected": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if peak:
        record["peak_gflops"] = measure_peak_gflops(threads or os.cpu_count() or 1)
        record["peak_threads"] = threads or os.cpu_count()
        record["peak_bandwidth_gbs"] = measure_bandwidth_gbs()
    return record


if __name__ == "__main__":
    print(jsonio.dumps(environment(), indent=2))
