"""Third-party start-up noise (TensorFlow's absl/cudart/CPU-feature lines) stays off stderr unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dlcbench.errors import ExitCode
from dlcbench_test_support import ROOT, WORKDIR_ENV

FAST = ["--preset", "tiny", "--batch", "2", "--threads", "1", "--warmup", "1", "--min-iters", "2", "--min-seconds", "0"]


def _run(*args: str, cache=None, **extra_env: str) -> subprocess.CompletedProcess:
    """``python ARGS`` without the log-level variables the test session sets: dlcbench must quiet TF itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "DLCBENCH_VERBOSE", "DLCBENCH_DEBUG", "GRPC_VERBOSITY")}
    if cache is not None:
        env["DLCBENCH_CACHE"] = str(cache)
    env.update(extra_env)
    if args and args[0].endswith(".py"):
        args = (str(ROOT / args[0]), *args[1:])
    return subprocess.run([sys.executable, *args], cwd=os.environ[WORKDIR_ENV], capture_output=True, text=True,
                          timeout=600, env=env)


def _noise(stderr: str) -> list[str]:
    """Lines that are neither dlcbench's progress (``... ``), its artifact line nor its one error line."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("... ", "artifact  ", "error: "))]


NOISY = ("import logging; from dlcbench.quiet import import_quietly; m = import_quietly('dlcbench_noisy_import'); "
         "logging.getLogger('tensorflow').warning('NOISE from a logger later'); "
         "import os; os.write(2, b'stderr works again\\n'); print(m.VALUE)")


def test_import_quietly_drops_import_noise_and_restores_stderr():
    proc = _run("-c", NOISY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
    assert proc.stderr == "stderr works again\n"


@pytest.mark.parametrize("variable", ["DLCBENCH_VERBOSE", "DLCBENCH_DEBUG"])
def test_verbose_or_debug_shows_the_noise(variable):
    proc = _run("-c", NOISY, **{variable: "1"})
    assert proc.returncode == 0, proc.stderr
    for line in ("NOISE from C at import", "NOISE from Python at import", "NOISE from a logger at import",
                 "NOISE from a logger later", "stderr works again"):
        assert line in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """An empty export cache: the runs below must export, i.e. import TensorFlow, Keras and tf2onnx."""
    return tmp_path_factory.mktemp("quiet-cache")


def test_tensorflow_backend_error_is_one_line(fresh_cache, tmp_path):
    proc = _run("scripts/compile.py", "--backend", "tensorflow", "--model", "mlp", *FAST,
                "--tolerance", "logits:abs=1", "--out", str(tmp_path / "a"), cache=fresh_cache)
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if not line.startswith("... ")] == [
        "error: tolerance for unknown output(s) 'logits'; valid outputs: probs (or no OUTPUT: prefix for all)"]
    assert "... exporting mlp" in proc.stderr  # TensorFlow was imported: the export ran


def test_successful_runs_print_only_dlcbench_lines(fresh_cache, tmp_path):
    ort = _run("scripts/compile.py", "--backend", "onnxruntime", "--model", "cnn", *FAST,
               "--out", str(tmp_path / "ort"), cache=fresh_cache)
    assert ort.returncode == ExitCode.OK, ort.stderr[-3000:]
    assert _noise(ort.stderr) == [] and "error:" not in ort.stderr, ort.stderr
    assert ort.stderr.splitlines()[-1] == f"artifact  {tmp_path / 'ort'} (result.json inside)"
    # The TensorFlow backend imports TensorFlow in its own compile and load (the export is cached by now).
    tf = _run("scripts/compile.py", "--backend", "tensorflow", "--model", "mlp", *FAST,
              "--out", str(tmp_path / "tf"), cache=fresh_cache)
    assert tf.returncode == ExitCode.OK, tf.stderr[-3000:]
    assert _noise(tf.stderr) == [] and "error:" not in tf.stderr, tf.stderr
    assert "check     PASS" in ort.stdout and "check     PASS" in tf.stdout
