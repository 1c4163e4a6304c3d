"""The ``torch`` and ``inductor`` backends on ``cpu`` and ``cuda``: options, CUDA math flags, sessions, device errors.

What runs on a CPU runs here (option rules, the flags' bookkeeping, sessions on a hand-made module, the one-line
errors for target ``cuda`` without a GPU); what needs a GPU is skipped with the reason, and runs on a CUDA machine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dlcbench.compilers.base import PRECISIONS, CompileOptions, Manifest
from dlcbench.compilers.registry import get_adapter
from dlcbench.errors import BackendUnavailableError, BadInputError
from dlcbench_test_support import assert_one_line_error, run_script

BACKENDS = ("torch", "inductor")
#: Precisions each backend has on each target.
EXPECTED = {"torch": {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")},
            "inductor": {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}}


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")


def _cuda_or_skip():
    torch = _torch()
    if not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, "
                    f"CUDA build: {torch.version.cuda or 'none'})")
    return torch


def _no_cuda_or_skip():
    torch = _torch()
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the no-GPU errors cannot happen here")
    return torch


@pytest.fixture
def restore_cuda_math():
    """Puts torch's process-wide TF32/cudnn flags back after a test that sets them."""
    torch = _torch()
    from dlcbench.compilers.torch_adapter import _fp32_precision_holders, cuda_math_settings

    before = cuda_math_settings()
    holders = _fp32_precision_holders(torch)
    global_precision = torch.backends.fp32_precision if holders else None
    yield
    torch.set_float32_matmul_precision(before["float32_matmul_precision"])
    torch.backends.cuda.matmul.allow_tf32 = before["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = before["tf32_cudnn"]
    torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
    if holders:
        torch.backends.fp32_precision = global_precision
        for name, holder in holders.items():
            holder.fp32_precision = before["fp32_precision"][name]
    assert cuda_math_settings() == before


# --------------------------------------------------------------------------- options (no torch needed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_and_precisions_by_target(backend):
    adapter = get_adapter(backend)
    assert adapter.targets == ("cpu", "cuda")
    assert adapter.precisions == ("fp32", "fp16", "bf16")
    for target, allowed in EXPECTED[backend].items():
        for precision in PRECISIONS:
            if precision in allowed:
                options = adapter.make_options(target=target, precision=precision, threads=1)
                assert (options.target, options.precision, options.tf32) == (target, precision, False)
                continue
            with pytest.raises(BadInputError) as err:
                adapter.make_options(target=target, precision=precision, threads=1)
            message = str(err.value)
            assert "\n" not in message
            if precision == "int8":  # on no target: the adapter's own message, naming its precisions
                assert message == f"backend {backend} cannot compile precision int8; valid: fp32, fp16, bf16"
            else:
                assert message.startswith(f"precision {precision} is not available on target {target}; "
                                          f"valid on {target}: {', '.join(allowed)} (by target: cpu: ")


@pytest.mark.parametrize("backend", BACKENDS)
def test_options_built_without_the_adapter_are_checked_per_target_at_compile(backend):
    adapter = get_adapter(backend)
    wrong = "fp16"  # on cuda only, for both backends
    with pytest.raises(BadInputError, match=f"precision {wrong} is not available on target cpu; valid on cpu: "):
        adapter.validate(CompileOptions(target="cpu", precision=wrong))
    adapter.validate(CompileOptions(target="cuda", precision=wrong))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tf32_only_with_cuda_fp32_and_cudnn_benchmark_only_with_cuda(backend):
    adapter = get_adapter(backend)
    options = adapter.make_options({"tf32": True, "cudnn_benchmark": True}, target="cuda", precision="fp32")
    assert options.tf32 is True and options.cudnn_benchmark is True
    json.dumps(options.to_dict())
    for target, precision in (("cpu", "fp32"), ("cuda", "fp16"), ("cuda", "bf16")):
        with pytest.raises(BadInputError, match=(f"^tf32=true needs target cuda and precision fp32 .*got target "
                                                 f"{target}, precision {precision}; valid: tf32=false")):
            adapter.make_options({"tf32": True}, target=target, precision=precision)
    with pytest.raises(BadInputError, match="^cudnn_benchmark=true needs target cuda, got cpu; valid:"):
        adapter.make_options({"cudnn_benchmark": True}, target="cpu")
    with pytest.raises(BadInputError, match="tf32 must be true or false, got 'yes'; valid: true, false"):
        adapter.make_options({"tf32": "yes"}, target="cuda")
    with pytest.raises(BadInputError, match="tf32 must be true or false"):
        adapter.Options(target="cuda", tf32="yes")  # the dataclass checks it too, without make_options' coercion


def test_inductor_accepts_every_mode_on_cuda_and_names_them_otherwise():
    from dlcbench.compilers.torch_adapter import MODES

    adapter = get_adapter("inductor")
    for mode in MODES:
        assert adapter.make_options({"mode": mode}, target="cuda", precision="fp16").mode == mode
    assert "max-autotune" in MODES
    with pytest.raises(BadInputError, match="unknown mode 'fast'; valid: default, reduce-overhead, max-autotune, "
                                            "max-autotune-no-cudagraphs"):
        adapter.make_options({"mode": "fast"}, target="cuda")


# --------------------------------------------------------------------------- torch-level helpers (CPU torch is enough)


def test_cuda_math_flags_are_set_and_read_back(restore_cuda_math):
    """The flags are process-wide and need no GPU to set: TF32 off is fp32-exact matmuls and convolutions, also
    after the newer ``fp32_precision`` API (PyTorch 2.9+) turned TF32 on, and both APIs agree afterwards."""
    torch = _torch()
    from dlcbench.compilers.torch_adapter import _fp32_precision_holders, configure_cuda_math, cuda_math_settings

    holders = _fp32_precision_holders(torch)
    torch.backends.cudnn.allow_tf32 = True  # torch's default for cuDNN: configure must turn it off
    if holders:
        torch.backends.fp32_precision = "tf32"  # the new API's global switch, which legacy setters leave alone
    for tf32, cudnn_benchmark in ((False, False), (True, True), (False, False)):
        settings = configure_cuda_math(tf32=tf32, cudnn_benchmark=cudnn_benchmark)
        legacy = {k: settings.pop(k) for k in ("tf32_matmul", "tf32_cudnn", "float32_matmul_precision",
                                                 "cudnn_benchmark")}
        assert legacy == {"tf32_matmul": tf32, "tf32_cudnn": tf32,
                          "float32_matmul_precision": "high" if tf32 else "highest", "cudnn_benchmark": cudnn_benchmark}
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)
        expected = {name: "tf32" if tf32 else "ieee" for name in holders} or None
        assert settings == {"fp32_precision": expected}
        assert cuda_math_settings() == {**legacy, **settings}


def test_run_settings_say_device_autocast_and_cuda_flags():
    from dlcbench.compilers.torch_adapter import run_settings

    assert run_settings("cpu", "fp32", {}) == {"device": "cpu", "autocast": None}
    assert run_settings("cpu", "bf16", {}) == {"device": "cpu", "autocast": "bfloat16"}
    assert run_settings("cuda", "fp16", {}) == {"device": "cuda", "autocast": "float16", "tf32_matmul": False,
                                                "tf32_cudnn": False, "float32_matmul_precision": "highest",
                                                "cudnn_benchmark": False}
    tf32 = run_settings("cuda", "fp32", {"tf32": True, "cudnn_benchmark": True})
    assert tf32["autocast"] is None and tf32["tf32_matmul"] and tf32["float32_matmul_precision"] == "high"
    assert tf32["cudnn_benchmark"] is True


def test_reduced_precision_outputs_come_back_as_float32_numpy():
    torch = _torch()
    from dlcbench.compilers.torch_adapter import _numpy

    half = torch.ones(2, 3, dtype=torch.float16)
    assert _numpy(half).dtype == np.float32 and _numpy(half, "float32").dtype == np.float32
    assert _numpy(half, "float16").dtype == np.float16  # a model whose output is declared float16 keeps it
    assert _numpy(torch.ones(2, dtype=torch.bfloat16), "float32").dtype == np.float32
    assert _numpy(torch.arange(3), "int64").dtype == np.int64


def test_autocast_context_is_null_for_fp32_and_casts_matmuls_otherwise():
    torch = _torch()
    import contextlib

    from dlcbench.compilers.torch_adapter import autocast_context

    assert isinstance(autocast_context("cpu", "fp32"), contextlib.nullcontext)
    assert isinstance(autocast_context("cuda", "fp32"), contextlib.nullcontext)  # made without touching a GPU
    a = torch.ones(4, 4)
    with autocast_context("cpu", "bf16"):  # CPU autocast runs everywhere (emulated without native bf16)
        assert (a @ a).dtype == torch.bfloat16


def _manifest(target: str, precision: str = "fp32") -> Manifest:
    return Manifest(backend="torch", backend_version="test", target=target, precision=precision, batch=2,
                    inputs=[{"name": "x", "shape": [2, 8], "dtype": "float32"}],
                    outputs=[{"name": "y", "shape": [2, 4], "dtype": "float32"}],
                    options={"threads": 1, "target": target, "precision": precision}, compile_seconds=0.0,
                    source_model="linear", source_sha256="0" * 64)


def _linear(torch):
    torch.manual_seed(0)
    return torch.nn.Linear(8, 4).eval()


def test_cpu_session_regions_and_no_native_timer():
    torch = _torch()
    from dlcbench.compilers.torch_adapter import TorchSession

    module = _linear(torch)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    with TorchSession(_manifest("cpu"), module, "torch") as session:
        assert session.native_timer_name is None and session.native_time({"x": x}, repeat=3) is None
        assert session.settings == {"device": "cpu", "autocast": None}
        out = session.run({"x": x})["y"]
        expected = module(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-6)
        session.prepare({"x": x})
        assert session.run_prepared() is None
        with pytest.raises(BadInputError, match="missing input"):
            session.prepare({})
    session.close()  # twice is safe


def test_cpu_bf16_session_returns_float32():
    """The autocast path of a CPU bf16 session (compile refuses bf16 on CPUs without native bf16; the session's
    arithmetic itself runs anywhere)."""
    torch = _torch()
    from dlcbench.compilers.torch_adapter import TorchSession

    x = np.ones((2, 8), dtype=np.float32)
    with TorchSession(_manifest("cpu", "bf16"), _linear(torch), "torch") as session:
        assert session.settings["autocast"] == "bfloat16"
        assert session.run({"x": x})["y"].dtype == np.float32


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_session_stages_inputs_times_with_cuda_events_and_returns_float32(precision, restore_cuda_math):
    torch = _cuda_or_skip()
    from dlcbench.compilers.torch_adapter import CUDA_EVENTS_TIMER, TorchSession, _open_device

    manifest = _manifest("cuda", precision)
    settings = _open_device("torch", "cuda", precision, manifest.options)
    assert settings["tf32_matmul"] is False and settings["tf32_cudnn"] is False and settings["gpu"]
    assert not torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    module = _linear(torch)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    expected = module(torch.from_numpy(x)).detach().numpy()
    with TorchSession(manifest, module.to("cuda"), "torch", "cuda", settings) as session:
        assert session.native_timer_name == CUDA_EVENTS_TIMER
        out = session.run({"x": x})["y"]
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, **({"rtol": 1e-5, "atol": 1e-6} if precision == "fp32"
                                                      else {"rtol": 5e-2, "atol": 5e-2}))
        session.prepare({"x": x})
        assert all(t.is_cuda for t in session._staged)
        assert session.run_prepared() is None
        samples = session.native_time({"x": x}, repeat=5, number=3)
        assert len(samples) == 5 and all(0 < s < 1 for s in samples)


def test_inductor_cache_context_holds_triton_cache_too_and_restores_the_environment(monkeypatch, tmp_path):
    """Inside, Inductor's cache is the artifact's and ``$TRITON_CACHE_DIR`` is unset (Inductor then puts Triton's
    kernels under its own cache, so they ship in the artifact); after, both variables are as they were."""
    import os

    from dlcbench.compilers.torch_adapter import _inductor_cache

    monkeypatch.setenv("TRITON_CACHE_DIR", "/elsewhere/triton")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with _inductor_cache(tmp_path / "cache"):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
        assert "TRITON_CACHE_DIR" not in os.environ
        os.environ["TRITON_CACHE_DIR"] = str(tmp_path / "cache" / "triton" / "0")  # what Inductor sets
    assert os.environ["TRITON_CACHE_DIR"] == "/elsewhere/triton" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_inductor_cuda_compile_without_triton_says_so(monkeypatch):
    import sys

    from dlcbench.compilers import torch_adapter

    monkeypatch.setattr(torch_adapter, "cuda_unavailable_reason", lambda: "")  # as on a GPU machine
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ModuleNotFoundError
    with pytest.raises(BackendUnavailableError, match=r"^inductor target cuda needs Triton, which cannot be imported "
                                                      r"\(ModuleNotFoundError: .*\) \(install: "):
        torch_adapter.require_cuda_compile("inductor")


# --------------------------------------------------------------------------- target cuda without a GPU


@pytest.fixture(scope="module")
def exported():
    """``backend -> ExportedModel``: the tiny mlp in the variant each backend compiles from (batch 2)."""
    from dlcbench.measure.job import JobConfig, export_for

    models = {}

    def get(backend):
        if backend not in models:
            adapter = get_adapter(backend)
            models[backend] = export_for(adapter, JobConfig(backend=backend, model="mlp", preset="tiny", batch=2,
                                                            threads=1))
        return models[backend]

    return get


def _available_or_skip(backend):
    from dlcbench.compilers.registry import availability

    status = availability(backend)
    if not status:
        pytest.skip(f"{backend} unavailable here: {status.reason}")
    return get_adapter(backend)


@pytest.mark.slow
def test_torch_cuda_artifact_builds_without_a_gpu_and_load_says_why(exported, tmp_path):
    """The ``torch`` artifact is the converted module, device-independent: it builds here (``--compile-only``);
    running it needs the GPU, and loading says so in one line."""
    _no_cuda_or_skip()
    adapter = _available_or_skip("torch")
    manifest = adapter.compile(exported("torch"), adapter.make_options(target="cuda", precision="fp16", threads=1,
                                                                      batch=2), tmp_path / "a")
    assert manifest.target == "cuda" and manifest.target_detail["device"] == "cuda"
    assert manifest.extra["settings"] == {"device": "cuda", "autocast": "float16", "tf32_matmul": False,
                                          "tf32_cudnn": False, "float32_matmul_precision": "highest",
                                          "cudnn_benchmark": False}
    with pytest.raises(BackendUnavailableError) as err:
        adapter.load(tmp_path / "a")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("torch target cuda needs a CUDA GPU on this machine: torch.cuda.is_available() is False")


@pytest.mark.slow
def test_inductor_cuda_compile_needs_the_gpu_machine(exported, tmp_path):
    _no_cuda_or_skip()
    adapter = _available_or_skip("inductor")
    with pytest.raises(BackendUnavailableError) as err:
        adapter.compile(exported("inductor"), adapter.make_options({"mode": "max-autotune"}, target="cuda",
                                                                   threads=1, batch=2), tmp_path / "a")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("inductor compiles for target cuda on the GPU machine itself")
    assert "torch.cuda.is_available() is False" in message
    assert not (tmp_path / "a").exists()  # nothing published


@pytest.mark.slow
def test_cli_target_cuda_without_a_gpu_is_one_line(tmp_path):
    """``compile --target cuda`` here: ``torch --compile-only`` writes the artifact; ``inductor`` exits 3, one line."""
    _no_cuda_or_skip()
    for backend in BACKENDS:
        _available_or_skip(backend)
    common = ("compile", "--model", "mlp", "--preset", "tiny", "--batch", "2", "--threads", "1", "--target", "cuda",
              "--compile-only")
    proc = run_script("-m", "dlcbench", *common, "--backend", "torch", "--out", str(tmp_path / "torch"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "torch" / "manifest.json").read_text())["target"] == "cuda"
    proc = run_script("-m", "dlcbench", *common, "--backend", "inductor", "--out", str(tmp_path / "inductor"))
    assert_one_line_error(proc, 3, "inductor compiles for target cuda on the GPU machine itself",
                          "torch.cuda.is_available() is False")


# --------------------------------------------------------------------------- CPU bf16 (native bf16 CPUs only)


@pytest.mark.slow
def test_cpu_bf16_compiles_and_matches_where_the_cpu_has_native_bf16(exported, tmp_path):
    from dlcbench.compilers.torch_adapter import BF16_CPU_FLAGS, cpu_bf16_flags
    from dlcbench.measure.check import check_outputs

    if not cpu_bf16_flags():
        pytest.skip(f"this CPU has none of {', '.join(BF16_CPU_FLAGS)}: torch bf16 is refused rather than emulated")
    adapter = _available_or_skip("torch")
    model = exported("torch")
    manifest = adapter.compile(model, adapter.make_options(precision="bf16", threads=1, batch=2), tmp_path / "a")
    assert manifest.extra["settings"] == {"device": "cpu", "autocast": "bfloat16"}
    with adapter.load(tmp_path / "a") as session:
        outputs = session.run(model.inputs())
    assert all(v.dtype == np.float32 for v in outputs.values())
    report = check_outputs(outputs, model.reference(), "bf16", classifier=model.meta["task"] == "classifier")
    assert report.passed, report.failure_message()


# --------------------------------------------------------------------------- on a CUDA machine


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_artifact_matches_reference_and_times_on_the_gpu(exported, tmp_path, backend, precision,
                                                              restore_cuda_math):
    torch = _cuda_or_skip()
    from dlcbench.compilers.torch_adapter import CUDA_EVENTS_TIMER
    from dlcbench.measure.check import check_outputs

    adapter = _available_or_skip(backend)
    model = exported(backend)
    manifest = adapter.compile(model, adapter.make_options(target="cuda", precision=precision, threads=1, batch=2),
                               tmp_path / "a")
    assert manifest.compile_seconds > 0 and manifest.extra["settings"]["tf32_matmul"] is False
    assert manifest.extra["settings"]["autocast"] == {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}[precision]
    if backend == "inductor":
        assert manifest.target_detail["gpu"] and (tmp_path / "a" / "inductor-cache").is_dir()
    inputs = model.inputs()
    with adapter.load(tmp_path / "a") as session:
        assert session.settings["tf32_matmul"] is False and not torch.backends.cuda.matmul.allow_tf32
        outputs = session.run(inputs)
        session.prepare(inputs)
        assert session.run_prepared() is None
        assert session.native_timer_name == CUDA_EVENTS_TIMER
        samples = session.native_time(inputs, repeat=3, number=2)
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert all(v.dtype == np.float32 for v in outputs.values())
    report = check_outputs(outputs, model.reference(), precision, classifier=model.meta["task"] == "classifier")
    assert report.passed, report.failure_message()


@pytest.mark.slow
def test_cuda_tf32_option_is_recorded_and_set(exported, tmp_path, restore_cuda_math):
    torch = _cuda_or_skip()
    adapter = _available_or_skip("torch")
    manifest = adapter.compile(exported("torch"), adapter.make_options({"tf32": True, "cudnn_benchmark": True},
                                                                       target="cuda", threads=1, batch=2),
                               tmp_path / "a")
    assert manifest.extra["settings"]["tf32_matmul"] is True and manifest.extra["settings"]["cudnn_benchmark"] is True
    with adapter.load(tmp_path / "a") as session:
        assert session.settings["tf32_matmul"] and session.settings["float32_matmul_precision"] == "high"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark


@pytest.mark.slow
def test_inductor_max_autotune_compiles_on_cuda_and_reloads_in_a_fresh_process(exported, tmp_path):
    _cuda_or_skip()
    adapter = _available_or_skip("inductor")
    model = exported("inductor")
    out = tmp_path / "a"
    adapter.compile(model, adapter.make_options({"mode": "max-autotune"}, target="cuda", threads=1, batch=2), out)
    assert any((out / "inductor-cache").rglob("*")), "Inductor's cache is empty"
    assert any((out / "inductor-cache" / "triton").rglob("*")), "Triton's kernels are not in the artifact's cache"
    np.savez(tmp_path / "inputs.npz", **model.inputs())
    code = ("import sys, numpy as np; from dlcbench.compilers.registry import get_adapter;"
            "s = get_adapter('inductor').load(sys.argv[1]); np.savez(sys.argv[3], **s.run(dict(np.load(sys.argv[2]))));"
            "s.close()")
    proc = run_script("-c", code, str(out), str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with adapter.load(out) as session:
        here = session.run(model.inputs())
    there = dict(np.load(tmp_path / "outputs.npz"))
    # A process whose cache missed may autotune another GEMM tiling: fp32 rounding differences, no more.
    for name, value in here.items():
        np.testing.assert_allclose(there[name], value, rtol=1e-4, atol=1e-5)
