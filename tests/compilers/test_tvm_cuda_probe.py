"""TVM CUDA cross-compilation (no GPU needed) embeds real SASS for the requested arch, not CUDA source.

The TVM compiles run in one subprocess so the stub ``libcuda.so.1`` that
``dlcbench.compilers.tvm.cuda`` may load never enters the pytest process.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from dlcbench.compilers.tvm.cuda import device_code_archs, find_nvcc
from dlcbench_test_support import run_script

NVCC = find_nvcc()
pytestmark = pytest.mark.skipif(
    NVCC is None, reason="nvcc (CUDA toolkit) not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin"
)

ARCHS = ["sm_90", "sm_80"]

# A tiny ONNX MLP whose initializer names are not C identifiers, like tf2onnx's.
_BUILD = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from dlcbench.errors import BackendUnavailableError
    from dlcbench.compilers.tvm import cuda as tvm_cuda

    out = sys.argv[1]
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 32)).astype("float32"), "mlp/dense/kernel:0"),
        numpy_helper.from_array(rng.standard_normal((32,)).astype("float32"), "mlp/dense/bias:0"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "mlp/dense/kernel:0", "mlp/dense/bias:0"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Softmax", ["r"], ["probs"], axis=-1)],
        "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    def relax_mod():
        mod = from_onnx(model, keep_params_in_input=True)
        return relax.frontend.detach_params(mod)[0]

    result = {}
    try:
        result["codegen"] = tvm_cuda.ensure_cuda_codegen()
    except BackendUnavailableError as err:
        print(json.dumps({"skip": str(err)}))
        sys.exit(0)
    # What TVM keeps when it takes the source-only fallback (forced here, so also on GPU hosts).
    os.environ["TVM_COMPILE_FORCE_FALLBACK"] = "1"
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    with target:
        mod = relax.get_pipeline("zero")(tvm_cuda.sanitize_param_names(relax_mod()))
        tvm.compile(mod, target=target).export_library(os.path.join(out, "source_only.so"))
    del os.environ["TVM_COMPILE_FORCE_FALLBACK"]
    for arch in sys.argv[2:]:
        tvm_cuda.compile_cuda(relax_mod(), arch).export_library(os.path.join(out, arch + ".so"))
    print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    if importlib.util.find_spec("tvm") is None:
        pytest.skip("apache-tvm is not installed")
    out = tmp_path_factory.mktemp("tvm-cuda")
    proc = run_script("-c", _BUILD, str(out), *ARCHS, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(f"TVM's CUDA codegen can not be enabled here: {result['skip']}")
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_compile_cuda_embeds_sass_for_the_requested_arch(built, arch):
    lib = built / f"{arch}.so"
    assert device_code_archs(lib) == [arch]
    assert b"__global__" not in lib.read_bytes(), "the library still carries CUDA source"


def test_source_only_fallback_library_has_no_device_code(built):
    lib = built / "source_only.so"
    assert device_code_archs(lib) == []
    assert b"__global__" in lib.read_bytes()


def test_importing_tvm_cuda_does_not_import_tvm():
    proc = run_script("-c", "import sys, dlcbench.compilers.tvm.cuda; assert 'tvm' not in sys.modules, 'tvm imported'")
    assert proc.returncode == 0, proc.stderr


def _nvcc(tmp_path: Path, fmt: str, *gencode: str) -> bytes:
    src = tmp_path / "k.cu"
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] += 1.0f; }\n')
    out = tmp_path / f"k.{fmt}"
    cmd = [NVCC, f"--{fmt}", *(a for g in gencode for a in ("-gencode", g)), "-o", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out.read_bytes()


def test_device_code_archs_reads_fatbins_and_cubins_but_not_ptx(tmp_path):
    junk = b"\x7fELF host library header" + bytes(100)  # stands in for the host .so around the blob
    cases = {
        "multi": (_nvcc(tmp_path, "fatbin", "arch=compute_80,code=sm_80", "arch=compute_90,code=[sm_90,compute_90]"),
                  ["sm_80", "sm_90"]),
        "ptx_only": (_nvcc(tmp_path, "fatbin", "arch=compute_90,code=compute_90"), []),
        "cubin": (_nvcc(tmp_path, "cubin", "arch=compute_90,code=sm_90"), ["sm_90"]),
    }
    for name, (blob, expected) in cases.items():
        path = tmp_path / f"{name}.so"
        path.write_bytes(junk + blob + bytes(7))
        assert device_code_archs(path) == expected, name
