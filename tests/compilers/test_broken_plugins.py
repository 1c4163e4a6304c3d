"""Registered adapters that break (constructor, ``available()``, module import): unavailable, with the reason."""

from __future__ import annotations

import pytest

from dlcbench.errors import ExitCode
from dlcbench_broken_plugins import REGISTRATION
from dlcbench_test_support import assert_one_line_error, run_script

ENV = {"DLCBENCH_BACKENDS": REGISTRATION}
REASONS = {
    "initraises": "InitRaisesAdapter() raised RuntimeError: no device handle from InitRaisesAdapter",
    "proberaises": "ProbeRaisesAdapter.available() raised OSError: driver query failed in ProbeRaisesAdapter",
    "importraises": "importing dlcbench_plugin_import_raises raised ImportError: libmissing.so.1",
}


@pytest.fixture(scope="module")
def listing() -> dict[str, str]:
    proc = run_script("scripts/compile.py", "--list-backends", env=ENV, timeout=300)
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert proc.stderr == ""
    return {line.split()[0]: line for line in proc.stdout.splitlines()}


@pytest.mark.parametrize("backend", sorted(REASONS))
def test_broken_plugin_is_unavailable_with_the_same_reason_everywhere(backend, listing, tmp_path):
    assert f"unavailable: {REASONS[backend]}" in listing[backend], listing[backend]
    assert "[$DLCBENCH_BACKENDS]" in listing[backend]
    proc = run_script("scripts/compile.py", "--backend", backend, "--model", "mlp", "--preset", "tiny",
                      "--out", str(tmp_path / "a"), env=ENV, timeout=300)
    assert_one_line_error(proc, ExitCode.UNAVAILABLE, f"backend {backend} is not available: {REASONS[backend]}")
    assert "exporting" not in proc.stderr  # refused before any work
    assert not (tmp_path / "a").exists()


def test_listing_still_shows_the_other_backends(listing):
    assert "unavailable" not in listing["onnxruntime"] and "unavailable" not in listing["runraises"]
    assert "trt" in listing and "tvm" in listing
    # A registration naming a module that does not exist is a bad registration, listed with its reason.
    assert "unavailable" in listing["nosuchmodule"] and "dlcbench_no_such_module" in listing["nosuchmodule"]


def test_registration_of_a_missing_module_is_bad_input():
    proc = run_script("scripts/compile.py", "--backend", "nosuchmodule", "--model", "mlp", env=ENV, timeout=300)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "registered as dlcbench_no_such_module:Adapter", "cannot be imported")


def test_library_calls_raise_the_same_errors(monkeypatch):
    """In-process: get_adapter and availability() agree, and availability() never raises."""
    from dlcbench.compilers import registry
    from dlcbench.errors import BackendUnavailableError

    monkeypatch.setenv("DLCBENCH_BACKENDS", REGISTRATION)
    for backend, reason in REASONS.items():
        status = registry.availability(backend)
        assert not status and status.reason.startswith(reason), (backend, status)
    with pytest.raises(BackendUnavailableError, match="InitRaisesAdapter\\(\\) raised RuntimeError"):
        registry.get_adapter("initraises")
    with pytest.raises(BackendUnavailableError, match="available\\(\\) raised OSError"):
        registry.get_adapter("proberaises").require_available()
    assert registry.availability("runraises")
