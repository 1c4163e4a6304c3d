"""The export cache heals itself, and exports fail with honest one-line messages.

A damaged entry (a truncated or altered file, a corrupt ``meta.json``) is found on a hit, reported in
one line on stderr and rebuilt; interrupted exports leave no ``.tmp-*`` directory; entries are readable
by others. User ONNX files built with ``onnx.helper`` keep these tests free of TensorFlow where it is
not the point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from dlcbench.errors import ExitCode
from dlcbench.models.export import ExportConfig, entry_damage, export_model
from dlcbench_test_support import ROOT, assert_one_line_error, run_script

FAST = ["--preset", "tiny", "--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0"]


def onnx_model(path: Path, elem: int = TensorProto.FLOAT, batch: int | str = "N") -> Path:
    """A valid one-node (Relu, or Identity for non-float types) ONNX model with inputs ``[batch, 4]``."""
    op = "Relu" if elem == TensorProto.FLOAT else "Identity"
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem, [batch, 4])], [helper.make_tensor_value_info("y", elem, [batch, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model.onnx": (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:40]),
                             "model.onnx has 40 bytes"),
    "empty reference.npz": (lambda d: (d / "reference.npz").write_bytes(b""), "reference.npz has 0 bytes"),
    "corrupt meta.json": (lambda d: (d / "meta.json").write_text('{"name": "relu", "inpu'), "meta.json is unreadable"),
    "altered inputs.npz": (lambda d: _flip_last_byte(d / "inputs.npz"), "inputs.npz does not match its SHA-256"),
    "meta.json removed": (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_entry_is_reported_and_rebuilt(tmp_path, capsys, case):
    damage, reason = DAMAGE[case]
    config = ExportConfig(str(onnx_model(tmp_path / "relu.onnx")), batch=2, cache_dir=tmp_path / "cache")
    first = export_model(config)
    assert not first.cache_hit and entry_damage(first.directory, first.meta["cache_key"])[0] is None
    assert export_model(config).cache_hit
    capsys.readouterr()

    damage(first.directory)
    rebuilt = export_model(config)
    err = capsys.readouterr().err
    assert not rebuilt.cache_hit and rebuilt.directory == first.directory
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("warning: export cache entry ") and "; rebuilding" in lines[0], err
    assert f"is damaged ({reason}" in lines[0], lines[0]
    assert rebuilt.reference()["y"].shape == (2, 4)
    assert export_model(config).cache_hit and capsys.readouterr().err == ""
    assert [p.name for p in (tmp_path / "cache" / "exports").iterdir()] == [first.directory.name]


def test_compile_heals_a_truncated_cached_model_and_force_export_rebuilds(tmp_path):
    cache = tmp_path / "cache"
    env = {"DLCBENCH_CACHE": str(cache)}
    model = str(onnx_model(tmp_path / "relu.onnx"))
    first = run_script("scripts/compile.py", "--backend", "onnxruntime", "--model", model, *FAST,
                       "--out", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    (entry,) = (cache / "exports").iterdir()
    (entry / "model.onnx").write_bytes((entry / "model.onnx").read_bytes()[:60])  # was: "onnxruntime failed" (exit 4)

    healed = run_script("scripts/compile.py", "--backend", "onnxruntime", "--model", model, *FAST,
                        "--out", str(tmp_path / "a"), env=env)
    assert healed.returncode == 0, healed.stderr[-2000:]
    assert f"warning: export cache entry {entry} is damaged (model.onnx has 60 bytes" in healed.stderr
    assert "error:" not in healed.stderr
    assert json.loads((tmp_path / "a" / "result.json").read_text())["model"]["cache_hit"] is False

    again = run_script("scripts/compile.py", "--backend", "onnxruntime", "--model", model, *FAST,
                       "--out", str(tmp_path / "a"), env=env)
    assert again.returncode == 0 and "damaged" not in again.stderr
    assert json.loads((tmp_path / "a" / "result.json").read_text())["model"]["cache_hit"] is True
    forced = run_script("scripts/compile.py", "--backend", "onnxruntime", "--model", model, *FAST,
                        "--force-export", "--out", str(tmp_path / "a"), env=env)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads((tmp_path / "a" / "result.json").read_text())["model"]["cache_hit"] is False
    assert [p.name for p in (cache / "exports").iterdir()] == [entry.name]


def test_entries_are_readable_by_other_users(tmp_path):
    old = os.umask(0o022)
    try:
        exported = export_model(ExportConfig(str(onnx_model(tmp_path / "relu.onnx")), cache_dir=tmp_path / "cache"))
    finally:
        os.umask(old)
    for path in [exported.directory, *exported.directory.iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path.name, oct(mode))
        if path.is_dir():
            assert mode & 0o011 == 0o011, (path.name, oct(mode))


def _tmp_dirs(cache: Path) -> list[Path]:
    exports = cache / "exports"
    return [p for p in exports.iterdir() if p.name.startswith(".tmp-")] if exports.is_dir() else []


def _start_export(cache: Path, seed: int) -> subprocess.Popen:
    """A TensorFlow export of the tiny mlp (a miss: its own seed), run as ``python -m dlcbench.models export``."""
    return subprocess.Popen([sys.executable, "-m", "dlcbench.models", "export", "mlp", "--preset", "tiny",
                             "--seed", str(seed)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "DLCBENCH_CACHE": str(cache)})


def _signal_when_building(proc: subprocess.Popen, cache: Path, sig: int) -> str:
    try:
        deadline = time.monotonic() + 120
        while not _tmp_dirs(cache):
            assert proc.poll() is None and time.monotonic() < deadline, "the export never started"
            time.sleep(0.05)
        proc.send_signal(sig)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_interrupted_exports_leave_no_tmp_directories(tmp_path):
    cache = tmp_path / "cache"
    completed = False
    for seed, (sig, code) in enumerate(((signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED))):
        # Known flake, left open: a signal that lands inside TensorFlow's conversion now and then ends the process
        # with SIGSEGV or is not acted on before the export completes (exit 0). Up to three tries per signal;
        # every try that ends on its own must leave no temporary directory.
        for attempt in range(3):
            proc = _start_export(cache, 1000 + 10 * seed + attempt)
            err = _signal_when_building(proc, cache, sig)
            if proc.returncode < 0:  # crashed: like SIGKILL below, it left its directory to the next export
                for leftover in _tmp_dirs(cache):
                    shutil.rmtree(leftover)
            assert _tmp_dirs(cache) == []
            completed = completed or proc.returncode == 0
            if proc.returncode == code:
                break
        if proc.returncode == -signal.SIGSEGV:  # three crashes in a row: the open bug, reported as such
            pytest.xfail(f"known, open: {sig.name} inside TensorFlow's conversion ended the export with SIGSEGV")
        assert proc.returncode == code, err[-2000:]
        assert "Traceback" not in err
    # SIGKILL: nothing can clean up in the process itself; the next export removes what it left.
    proc = _start_export(cache, 1100)
    _signal_when_building(proc, cache, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and len(_tmp_dirs(cache)) == 1
    export_model(ExportConfig(str(onnx_model(tmp_path / "relu.onnx")), cache_dir=cache))
    assert _tmp_dirs(cache) == []
    assert completed or not any(p.name.startswith("mlp-") for p in (cache / "exports").iterdir())


# --------------------------------------------------------------------------- honest messages


def _not_a_zip(tmp_path: Path) -> str:
    path = tmp_path / "model.keras"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an old HDF5 Keras file renamed to .keras
    assert not zipfile.is_zipfile(path)
    return str(path)


def _dir_named_onnx(tmp_path: Path) -> str:
    (tmp_path / "x.onnx").mkdir()
    return str(tmp_path / "x.onnx")


CASES = {
    "keras file that is not a zip archive": (_not_a_zip, ["is not a Keras model file", "zip archive"]),
    "directory named .onnx": (_dir_named_onnx, ["x.onnx is a directory, not an ONNX file"]),
    "uint16 input": (lambda t: str(onnx_model(t / "u16.onnx", TensorProto.UINT16)),
                     ["input x has element type uint16", "supported: bool, float16, float32"]),
    "batch fixed at 1": (lambda t: str(onnx_model(t / "fixed.onnx", batch=1)),
                         ["the model's batch is fixed at 1", "use --batch 1"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_errors_say_what_is_wrong(tmp_path, case):
    make, fragments = CASES[case]
    model = make(tmp_path)
    proc = run_script("scripts/compile.py", "--backend", "onnxruntime", "--model", model, *FAST, "--batch", "2",
                      "--out", str(tmp_path / "out"), env={"DLCBENCH_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, ExitCode.BAD_INPUT, *fragments)
    assert not (tmp_path / "out").exists() and _tmp_dirs(tmp_path / "cache") == []


def test_a_fixed_batch_model_exports_at_its_own_batch(tmp_path):
    exported = export_model(ExportConfig(str(onnx_model(tmp_path / "fixed.onnx", batch=1)), batch=1,
                                         cache_dir=tmp_path / "cache"))
    assert exported.reference()["y"].shape == (1, 4)
