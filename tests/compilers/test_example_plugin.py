"""The out-of-tree example backend: installed into a temporary directory, found through its entry point."""

from __future__ import annotations

import json
import shutil

import pytest

from dlcbench_test_support import ROOT, run_script

EXAMPLE = ROOT / "examples" / "dlcbench-example-backend"
FAST = ["--preset", "tiny", "--batch", "2", "--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0"]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """``pip install --target`` of a copy of the example package (nothing goes into the environment)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    proc = run_script("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site),
                      str(source), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (site / "dlcbench_example_backend" / "adapter.py").is_file()
    return root


def _env(root, *extra: str) -> dict[str, str]:
    return {"PYTHONPATH": ":".join([str(root / "site"), *extra])}


def test_example_plugin_is_listed_only_when_installed(plugin_site):
    proc = run_script("scripts/compile.py", "--list-backends", env=_env(plugin_site))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "onnxref" in lines and "unavailable" not in lines["onnxref"]
    assert "[entry point (dlcbench-example-backend)]" in lines["onnxref"]
    code = "from dlcbench.compilers.registry import backend_names; print(' '.join(backend_names()))"
    assert "onnxref" in run_script("-c", code, env=_env(plugin_site)).stdout.split()
    assert "onnxref" not in run_script("-c", code).stdout.split()  # not installed: not registered


def test_example_plugin_compiles_checks_and_times(plugin_site):
    out = plugin_site / "artifact"
    proc = run_script("scripts/compile.py", "--backend", "onnxref", "--model", "cnn", *FAST, "--out", str(out),
                      "--option", "check_shapes=true", env=_env(plugin_site))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "check     PASS" in proc.stdout and "onnxref" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "onnxref" and manifest["options"]["check_shapes"] is True
    bad = run_script("scripts/compile.py", "--backend", "onnxref", "--model", "cnn", *FAST,
                     "--option", "check_shapes=maybe", env=_env(plugin_site))
    assert bad.returncode == 2 and "valid: true, false" in bad.stderr


def test_conformance_suite_runs_for_the_plugin_and_the_template_in_one_pytest(plugin_site):
    """What a third party runs: its package's tests (``from dlcbench.compilers.testing import *``), and --pyargs."""
    tests = plugin_site / "src" / "tests"
    proc = run_script("-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider", env=_env(plugin_site), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "10 passed" in proc.stdout, proc.stdout[-2000:]
    template = run_script(
        "-m", "pytest", "--pyargs", "dlcbench.compilers.testing", "-q", "-p", "no:cacheprovider", "-k", "mybackend",
        env={**_env(plugin_site, str(ROOT / "examples")),
             "DLCBENCH_BACKENDS": "mybackend=adapter_template:MyBackendAdapter"},
        timeout=900,
    )
    assert template.returncode == 0, template.stdout[-3000:] + template.stderr[-2000:]
    assert "10 passed" in template.stdout, template.stdout[-2000:]
