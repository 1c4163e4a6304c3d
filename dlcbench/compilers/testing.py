"""The adapter conformance suite, reusable by any package that registers a dlcbench backend.

Run it against every registered backend (built-in, entry points, ``$DLCBENCH_BACKENDS``)::

    python -m pytest --pyargs dlcbench.compilers.testing                 # all of them
    python -m pytest --pyargs dlcbench.compilers.testing -k mybackend    # one (test ids carry the name)
    DLCBENCH_CONFORMANCE_BACKENDS=mybackend python -m pytest --pyargs dlcbench.compilers.testing

or from a test file of your own: ``from dlcbench.compilers.testing import *`` (pytest collects the imported tests).
What it checks, per backend:

* the interface contract: class attributes, options dataclass, ``requires``, ``available()``, ``version()``;
* each tiny zoo model (``mlp``, ``cnn``, ``bert``, ``gpt``; ``$DLCBENCH_CONFORMANCE_MODELS``) compiles, its
  manifest describes the artifact, and its outputs match the framework reference within fp32 tolerances;
* an artifact reloads in a fresh Python process and gives the same outputs;
* an unsupported precision or target is refused with a one-line error naming the valid choices;
* the timed regions: a session that declares ``resident_region = True`` implements ``prepare``/``run_prepared``,
  ``run_prepared()`` returns None, does not go through ``run()`` and allocates no numpy outputs (``tracemalloc``,
  on an ``mlp`` with a large output), and ``end_to_end`` (``run``) is not faster than ``resident`` beyond noise; a session without a resident
  region (``resident_region = False``: its results say ``end_to_end``) is skipped there, with that reason;
* with its library hidden (the modules in ``requires``), ``available()`` says why and how to install it,
  and importing the adapter's module imports none of those modules.

Tests of a backend that is not available here are skipped, except the last two.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlcbench.compilers.base import PRECISIONS, SOURCES, TARGETS, Availability, CompileOptions, Manifest
from dlcbench.compilers.registry import availability, backend_names, get_adapter, get_adapter_class

BACKENDS_ENV = "DLCBENCH_CONFORMANCE_BACKENDS"
MODELS_ENV = "DLCBENCH_CONFORMANCE_MODELS"
TINY_MODELS = ("mlp", "cnn", "bert", "gpt")


def conformance_backends() -> list[str]:
    """Backends under test: ``$DLCBENCH_CONFORMANCE_BACKENDS`` (comma-separated) or every registered one."""
    chosen = [b.strip() for b in os.environ.get(BACKENDS_ENV, "").split(",") if b.strip()]
    return chosen or backend_names()


def conformance_models() -> list[str]:
    chosen = [m.strip() for m in os.environ.get(MODELS_ENV, "").split(",") if m.strip()]
    return chosen or list(TINY_MODELS)


BACKENDS = conformance_backends()
MODELS = conformance_models()


def _subprocess_env() -> dict[str, str]:
    """The environment for child Pythons: this process's import path, so they find the same adapters."""
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _python(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=_subprocess_env())


def adapter_or_skip(name: str):
    """The adapter registered as ``name``, or a skip when it cannot run on this machine's CPU."""
    status = availability(name)
    if not status:
        pytest.skip(f"{name} unavailable here: {status.reason}")
    adapter = get_adapter(name)
    if "cpu" not in adapter.targets:
        pytest.skip(f"{name} has no cpu target (targets: {', '.join(adapter.targets)})")
    return adapter


@pytest.fixture(scope="module")
def conformance_compiled(tmp_path_factory):
    """Compiles (backend, tiny zoo model) once per module; returns ``(adapter, model, artifact_dir)``."""
    from dlcbench.measure.job import JobConfig, export_for

    cache: dict = {}

    def get(backend: str, model_name: str, params: dict | None = None):
        key = (backend, model_name, json.dumps(params or {}, sort_keys=True))
        if key not in cache:
            adapter = adapter_or_skip(backend)
            job = JobConfig(backend=backend, model=model_name, preset="tiny", params=dict(params or {}), batch=2,
                            threads=1)
            model = export_for(adapter, job)
            out = tmp_path_factory.mktemp(f"{backend}-{model_name}")
            adapter.compile(model, adapter.make_options(threads=1, batch=2), out)
            cache[key] = (adapter, model, out)
        return cache[key]

    return get


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("backend", BACKENDS)
def test_interface_contract(backend):
    from dlcbench.errors import BadInputError

    cls = get_adapter_class(backend)
    assert cls.name == backend, f"{cls.__name__}.name is {cls.name!r} but it is registered as {backend!r}"
    assert cls.source in SOURCES, f"source must be one of {SOURCES}, got {cls.source!r}"
    assert cls.targets and set(cls.targets) <= set(TARGETS), cls.targets
    assert cls.precisions and set(cls.precisions) <= set(PRECISIONS), cls.precisions
    assert dataclasses.is_dataclass(cls.Options) and issubclass(cls.Options, CompileOptions), cls.Options
    assert isinstance(cls.requires, tuple) and cls.requires and all(isinstance(m, str) for m in cls.requires), (
        "declare `requires`: the top-level modules of the backend's library (imported only inside methods)")
    status = cls.available()
    assert isinstance(status, Availability)
    if not status:
        assert status.reason, "available() must say why the backend cannot run"
    adapter = cls()
    options = adapter.make_options(target=cls.targets[0], precision=cls.precisions[0], threads=1, batch=2)
    assert isinstance(options, cls.Options)
    json.dumps(options.to_dict())  # the manifest stores the options as JSON
    with pytest.raises(BadInputError, match="valid:"):
        adapter.make_options(no_such_option=1)
    if status:
        version = adapter.version()
        assert isinstance(version, str) and version.strip() and version != "unknown", version


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adapter_matches_reference(conformance_compiled, backend, model_name):
    from dlcbench.measure.check import check_outputs

    adapter, model, out = conformance_compiled(backend, model_name)
    manifest = Manifest.read(out)
    assert manifest.backend == backend and manifest.batch == 2 and manifest.compile_seconds > 0
    assert manifest.backend_version == adapter.version()
    assert [o["name"] for o in manifest.outputs] == model.output_names
    assert all((out / rel).exists() for rel in manifest.files.values())
    with adapter.load(out) as session:
        outputs = session.run(model.inputs())
    report = check_outputs(outputs, model.reference(), "fp32", classifier=model.meta["task"] == "classifier")
    assert report.passed, report.failure_message()


@pytest.mark.parametrize("backend", BACKENDS)
def test_artifact_reloads_in_fresh_process_with_same_outputs(conformance_compiled, backend, tmp_path):
    adapter, model, out = conformance_compiled(backend, "cnn")
    np.savez(tmp_path / "inputs.npz", **model.inputs())
    code = (
        "import sys, numpy as np; from dlcbench.compilers.registry import get_adapter;"
        "from dlcbench.compilers.base import Manifest; m = Manifest.read(sys.argv[1]);"
        "x = dict(np.load(sys.argv[2]));"
        "s = get_adapter(m.backend).load(sys.argv[1]); np.savez(sys.argv[3], **s.run(x)); s.close()"
    )
    proc = _python("-c", code, str(out), str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with adapter.load(out) as session:
        here = session.run(model.inputs())
    there = dict(np.load(tmp_path / "outputs.npz"))
    for name, value in here.items():
        np.testing.assert_allclose(there[name], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_precision_and_target_are_rejected(backend):
    from dlcbench.errors import BadInputError

    adapter = get_adapter(backend)
    missing = [p for p in PRECISIONS if p not in adapter.precisions]
    if missing:
        with pytest.raises(BadInputError, match="valid: " + ", ".join(adapter.precisions)):
            adapter.make_options(target=adapter.targets[0], precision=missing[0])
        # Options built without the adapter (CompileOptions accepts every precision) are refused at compile time.
        with pytest.raises(BadInputError, match=f"{backend} cannot compile precision {missing[0]}"):
            adapter.validate(CompileOptions(target=adapter.targets[0], precision=missing[0]))
    with pytest.raises(BadInputError, match="valid:"):
        adapter.make_options(target="tpu")
    missing_targets = [t for t in TARGETS if t not in adapter.targets]
    if missing_targets:
        with pytest.raises(BadInputError, match="valid: " + ", ".join(adapter.targets)):
            adapter.make_options(target=missing_targets[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_precision_is_a_one_line_cli_error(backend):
    """What a user sees: ``compile.py --precision X`` exits 2 with one ``error:`` line, before any export."""
    adapter = adapter_or_skip(backend)
    missing = [p for p in PRECISIONS if p not in adapter.precisions]
    if not missing:
        pytest.skip(f"{backend} supports every precision")
    proc = _python("-m", "dlcbench", "compile", "--backend", backend, "--model", "mlp", "--preset", "tiny", "--precision", missing[0])
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "valid: " + ", ".join(adapter.precisions) in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- the timed regions

#: An ``mlp`` whose output (batch 2 x ``classes`` float32) dwarfs anything else one call allocates.
LARGE_OUTPUT = {"hidden": 8, "classes": 131072}
#: Timed runs of each region in the comparison, interleaved so that drift lands on both alike.
REGION_RUNS = 300
#: ``end_to_end`` may look this much faster than ``resident`` (median over median) before the test fails:
#: the noise of two shared cores, not a real difference (end to end does everything resident does, and more).
REGION_NOISE = 0.8


def _run_code_objects(session) -> set:
    """The code of every ``run`` the session could reach (its class's, its bases', one set on the instance)."""
    candidates = [k.__dict__.get("run") for k in type(session).__mro__] + [vars(session).get("run")]
    return {f.__code__ for f in candidates if hasattr(f, "__code__")}


def _python_calls(fn, codes: set) -> list[str]:
    """Calls ``fn()``; returns the names of the functions with code in ``codes`` entered meanwhile (sys.setprofile)."""
    entered: list[str] = []

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code in codes:
            entered.append(frame.f_code.co_qualname)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(previous)
    return entered


def _resident_session_or_skip(adapter, artifact):
    session = adapter.load(artifact)
    if "resident" not in session.regions:
        session.close()
        pytest.skip(f"{type(session).__name__} has no resident region (resident_region = False): "
                    "its results say end_to_end")
    return session


@pytest.mark.parametrize("backend", BACKENDS)
def test_resident_region_leaves_the_outputs_in_the_backend(conformance_compiled, backend):
    """``run_prepared()`` returns None, never enters ``run()`` (``sys.setprofile``) and allocates no numpy outputs
    (``tracemalloc``: numpy's allocations are traced; a library that wraps its own buffers in arrays is not, which
    is why ``run()`` is watched too)."""
    import tracemalloc

    from dlcbench.compilers.base import Session

    adapter, model, out = conformance_compiled(backend, "mlp", LARGE_OUTPUT)
    inputs = model.inputs()
    with _resident_session_or_skip(adapter, out) as session:
        cls = type(session)
        assert cls.prepare is not Session.prepare and cls.run_prepared is not Session.run_prepared, (
            f"{cls.__name__} declares resident_region = True: it must override prepare() and run_prepared()")
        output_bytes = sum(np.asarray(v).nbytes for v in session.run(inputs).values())
        session.prepare(inputs)
        for _ in range(3):  # first calls may allocate for good (JIT compiles, arenas): not the region's cost
            assert session.run_prepared() is None, "run_prepared() must return None: the outputs stay in the backend"
        entered = _python_calls(session.run_prepared, _run_code_objects(session))
        assert not entered, (f"run_prepared() calls {entered[0]}, the end-to-end region (numpy in, numpy out): "
                             "the resident region must run on the staged inputs and leave the outputs in the backend")
        tracemalloc.start()
        try:
            session.run_prepared()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        tracemalloc.start()
        try:
            session.run(inputs)
            _, peak_end_to_end = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < output_bytes / 4, (
        f"one run_prepared() allocated {peak} bytes of Python/numpy memory for {output_bytes} bytes of outputs "
        f"(run(): {peak_end_to_end}): the resident region must leave the outputs in the backend")


@pytest.mark.parametrize("backend", BACKENDS)
def test_end_to_end_is_not_faster_than_resident(conformance_compiled, backend):
    """Medians of interleaved ``run_prepared()`` and ``run()`` calls: end to end does more, so it is not faster."""
    import time

    adapter, model, out = conformance_compiled(backend, "mlp", LARGE_OUTPUT)
    inputs = model.inputs()
    resident, end_to_end = [], []
    with _resident_session_or_skip(adapter, out) as session:
        session.prepare(inputs)
        for _ in range(10):
            session.run_prepared()
            session.run(inputs)
        for _ in range(REGION_RUNS):
            t0 = time.perf_counter()
            session.run_prepared()
            t1 = time.perf_counter()
            session.run(inputs)
            t2 = time.perf_counter()
            resident.append(t1 - t0)
            end_to_end.append(t2 - t1)
    ratio = float(np.median(end_to_end) / np.median(resident))
    assert ratio > REGION_NOISE, (
        f"end_to_end median {np.median(end_to_end) * 1e3:.4f} ms is {1 / ratio:.2f}x faster than resident "
        f"{np.median(resident) * 1e3:.4f} ms: run_prepared() does work that run() does not")


_HIDE_LIBRARY = r"""
import importlib.abc, importlib.metadata as md, json, sys
name, blocked = sys.argv[1], set(sys.argv[2].split(","))
def norm(dist): return dist.lower().replace("_", "-")
dists = {norm(d) for m in blocked for d in md.packages_distributions().get(m, [])}
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by the conformance suite)", name=fullname)
        return None
sys.meta_path.insert(0, Hide())
real_distribution = md.distribution
def distribution(dist):
    if norm(dist) in dists:
        raise md.PackageNotFoundError(dist)
    return real_distribution(dist)
md.distribution = distribution
md.version = lambda dist: distribution(dist).version
from dlcbench.compilers.registry import availability, get_adapter
status = availability(name)
error = None
try:
    get_adapter(name).require_available()
except Exception as err:
    error = f"{type(err).__name__}: {err}"
print(json.dumps({"ok": status.ok, "reason": status.reason, "hint": status.install_hint, "error": error}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_available_explains_a_missing_library(backend):
    requires = get_adapter_class(backend).requires
    assert requires, f"{backend} declares no `requires`"
    proc = _python("-c", _HIDE_LIBRARY, backend, ",".join(requires), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["ok"], f"{backend} says it is available with {', '.join(requires)} hidden"
    assert result["reason"].strip(), "available() gave no reason"
    assert result["hint"].strip(), "no install hint (set install_hint or the registry entry's)"
    assert result["error"] and result["error"].startswith("BackendUnavailableError") and "install:" in result["error"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_importing_the_adapter_imports_no_backend_library(backend):
    requires = get_adapter_class(backend).requires
    code = ("import sys; from dlcbench.compilers.registry import get_adapter_class; cls = get_adapter_class(sys.argv[1]);"
            "cls.Options(); print(','.join(m for m in cls.requires if m in sys.modules))")
    proc = _python("-c", code, backend, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"importing {backend}'s adapter imported {proc.stdout.strip()} (of {requires})"


__all__ = [
    "conformance_compiled", "adapter_or_skip", "conformance_backends", "conformance_models",
    "test_interface_contract", "test_adapter_matches_reference",
    "test_artifact_reloads_in_fresh_process_with_same_outputs", "test_unsupported_precision_and_target_are_rejected",
    "test_unsupported_precision_is_a_one_line_cli_error", "test_available_explains_a_missing_library",
    "test_importing_the_adapter_imports_no_backend_library", "test_resident_region_leaves_the_outputs_in_the_backend",
    "test_end_to_end_is_not_faster_than_resident",
]
