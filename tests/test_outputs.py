"""Output directories: compile.py never deletes what dlcbench did not write, and publishes an artifact whole.

The scripts run in subprocesses against real directories; a tree's hash before and after shows that a
refusal touched nothing (not one byte, no new entry next to it or inside it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from dlcbench.compilers.base import ARTIFACT
from dlcbench.errors import BadInputError, ExitCode
from dlcbench.outputs import MARKER, OutputKind, check_file_replaceable, check_replaceable, is_stale, staged_output
from dlcbench_faulty_adapters import REGISTRATION
from dlcbench_test_support import ROOT, assert_one_line_error, signal_when, wait_for

FAST = ["--preset", "tiny", "--batch", "2", "--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0"]
FAULTY = {"DLCBENCH_BACKENDS": REGISTRATION}


def compile_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 300):
    """``python scripts/compile.py ARGS`` run from ``cwd``."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compile.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def tree_hash(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (root's own siblings excluded): files by content and mode, links by target."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            state[rel] = f"dir:{path.stat().st_mode:o}"
        else:
            state[rel] = f"{path.stat().st_mode:o}:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def tiny_onnx(path: Path) -> Path:
    """A valid one-node ONNX model with a dynamic batch."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """A directory with a user's files, a subdirectory and a user's ONNX model."""
    home = tmp_path / "thesis"
    (home / "chapters").mkdir(parents=True)
    (home / "notes.txt").write_text("three years of work\n")
    (home / "chapters" / "intro.tex").write_text("\\section{Intro}\n")
    (home / "manifest.json").write_text('{"mine": true}')  # a name dlcbench uses, but not dlcbench's
    tiny_onnx(home / "mine.onnx")
    return home


@pytest.mark.parametrize("case", ["absolute", "cwd", "model_folder"])
def test_compile_refuses_a_directory_dlcbench_did_not_write(user_dir, tmp_path, case):
    before = tree_hash(tmp_path)
    if case == "absolute":
        proc = compile_cli("--backend", "onnxruntime", "--model", "mlp", *FAST, "--out", str(user_dir))
    elif case == "cwd":
        proc = compile_cli("--backend", "onnxruntime", "--model", "mlp", *FAST, "--out", ".", cwd=user_dir)
    else:
        proc = compile_cli("--backend", "onnxruntime", "--model", str(user_dir / "mine.onnx"), *FAST,
                           "--out", str(user_dir))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "is not a dlcbench artifact", "choose a new or empty directory")
    assert tree_hash(tmp_path) == before  # nothing inside changed, nothing new next to it


@pytest.mark.parametrize("script", ["tune", "stage"])
def test_tune_and_stage_refuse_a_directory_dlcbench_did_not_write(user_dir, tmp_path, script):
    before = tree_hash(tmp_path)
    if script == "tune":  # refused before any tuning starts
        args = ["--model", "mlp", "--preset", "tiny", "--trials", "1", "--tuning-db", str(tmp_path / "db"),
                "--out", str(user_dir)]
        label = "a dlcbench artifact"
    else:
        args = ["-o", str(user_dir), "--target", "cpu", "--models", "mlp", "--preset", "tiny", "--batches", "1",
                "--backends", "tvm"]
        label = "a dlcbench stage"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, f"is not {label}")
    assert tree_hash(tmp_path) == before


def test_earlier_artifact_is_replaced_but_not_once_a_user_file_is_added(tmp_path):
    out = tmp_path / "art"
    first = compile_cli("--backend", "onnxruntime", "--model", "mlp", *FAST, "--out", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "artifact" and "manifest.json" in marker["entries"]
    old_inode, old_result = out.stat().st_ino, (out / "result.json").read_text()

    again = compile_cli("--backend", "onnxruntime", "--model", "mlp", *FAST, "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.stat().st_ino != old_inode and (out / "result.json").read_text() != old_result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging or set-aside copy left

    (out / "my-notes.txt").write_text("keep me")
    before = tree_hash(tmp_path)
    proc = compile_cli("--backend", "onnxruntime", "--model", "mlp", *FAST, "--out", str(out))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "holds a dlcbench artifact but also 1 entry", "my-notes.txt")
    assert tree_hash(tmp_path) == before


def _siblings(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.dlcbench-")]


def test_interrupted_or_killed_compile_leaves_no_artifact_and_no_staging(tmp_path):
    out = tmp_path / "art"
    args = ["--backend", "hang", "--model", "mlp", *FAST, "--out", str(out)]
    for sig, code in ((signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGKILL, -signal.SIGKILL)):
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "compile.py"), *args], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **FAULTY})
        err = signal_when(proc, lambda: _siblings(tmp_path, "art"), sig)  # the hang adapter compiles into its staging
        assert proc.returncode == code, err[-2000:]
        assert not out.exists()
        if sig == signal.SIGINT:
            assert _siblings(tmp_path, "art") == [], "an interrupt removes the staging directory"
    # SIGKILL gives no chance to clean up: the next run writing the same output removes the dead one's staging
    # (once its worker, killed by the launcher's janitor, is gone), and a failing compile removes its own.
    (left,) = _siblings(tmp_path, "art")
    assert wait_for(lambda: is_stale(left.name, ".art.dlcbench-tmp-"), 30)
    failed = compile_cli("--backend", "raise", "--model", "mlp", *FAST, "--out", str(out), env=FAULTY)
    assert_one_line_error(failed, ExitCode.BACKEND_ERROR, "boom from RaiseAdapter")
    assert list(tmp_path.iterdir()) == []


def test_output_inside_the_model_folder_is_refused_even_when_it_is_an_artifact(tmp_path):
    out = tmp_path / "art"
    ok = compile_cli("--backend", "onnxruntime", "--model", str(tiny_onnx(tmp_path / "relu.onnx")), *FAST,
                     "--out", str(out))
    assert ok.returncode == 0, ok.stderr[-2000:]
    before = tree_hash(tmp_path)
    proc = compile_cli("--backend", "onnxruntime", "--model", str(out / "model.onnx"), *FAST, "--out", str(out))
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "holds the model")
    assert tree_hash(tmp_path) == before


# --------------------------------------------------------------------------- the helper itself

KIND = OutputKind("thing", "a dlcbench thing", later=frozenset({"late.txt"}))


def test_check_replaceable_rules(tmp_path):
    assert check_replaceable(tmp_path / "new" / "deeper", KIND) == (tmp_path / "new" / "deeper").resolve()
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", KIND)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="exists and is not a directory"):
        check_replaceable(tmp_path / "file", KIND)
    with pytest.raises(BadInputError, match="cannot write output directory .*is not a directory"):
        check_replaceable(tmp_path / "file" / "sub", KIND)
    with pytest.raises(BadInputError, match="over the root directory"):
        check_replaceable(Path("/"), KIND)
    assert not (tmp_path / "new").exists()


def test_check_file_replaceable_rules(tmp_path):
    ours = re.compile(r"# A table\b")
    assert check_file_replaceable(tmp_path / "new" / "t.md", ours, "a table") == tmp_path / "new" / "t.md"
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "ours.md").write_text("# A table of things\n| a |\n")
    for name in ("empty.md", "ours.md"):
        check_file_replaceable(tmp_path / name, ours, "a table")
    (tmp_path / "theirs.md").write_text("my notes\n")
    with pytest.raises(BadInputError, match="refusing to overwrite .*theirs.md: it is not a table dlcbench wrote"):
        check_file_replaceable(tmp_path / "theirs.md", ours, "a table")
    with pytest.raises(BadInputError, match="it is a directory"):
        check_file_replaceable(tmp_path, ours, "a table")
    with pytest.raises(BadInputError, match="cannot write a table to .*: .*theirs.md is not a directory"):
        check_file_replaceable(tmp_path / "theirs.md" / "deeper" / "t.md", ours, "a table")
    assert not (tmp_path / "new").exists() and (tmp_path / "theirs.md").read_text() == "my notes\n"


def test_staged_output_publishes_whole_and_replaces_only_its_own_kind(tmp_path):
    out = tmp_path / "out"
    with staged_output(out, KIND) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.dlcbench-tmp-")
        assert not out.exists()
        (staging / "sub").mkdir()
        (staging / "sub" / "a.bin").write_bytes(b"1")
    assert json.loads((out / MARKER).read_text()) == {"kind": "thing", "entries": ["sub/", "sub/a.bin"]}
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not private like mkdtemp's
    (out / "late.txt").write_text("added after publishing")
    with staged_output(out, KIND) as staging:
        (staging / "b.bin").write_bytes(b"2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.bin"]
    # A failure inside leaves the published directory as it was and no staging.
    with pytest.raises(RuntimeError):
        with staged_output(out, KIND) as staging:
            (staging / "c.bin").write_bytes(b"3")
            raise RuntimeError("compile failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "b.bin").is_file()
    with pytest.raises(BadInputError, match="holds a dlcbench thing, not a dlcbench artifact"):
        check_replaceable(out, ARTIFACT)


def test_symbolic_links_inside_an_artifact_are_not_followed(tmp_path, user_dir):
    before = tree_hash(user_dir)
    out = tmp_path / "out"
    with staged_output(out, KIND) as staging:
        (staging / "link").symlink_to(user_dir, target_is_directory=True)
    with staged_output(out, KIND) as staging:
        pass
    assert not (out / "link").exists() and tree_hash(user_dir) == before


def test_an_artifact_from_before_the_marker_is_recognised_by_its_manifest(tmp_path):
    out = tmp_path / "old"
    (out / "saved_model" / "variables").mkdir(parents=True)
    (out / "saved_model" / "variables" / "v.data").write_bytes(b"w")
    (out / "result.json").write_text("{}")
    manifest = {"backend": "tensorflow", "dlcbench_version": "0.1.0", "source_sha256": "0" * 64,
                "files": {"saved_model": "saved_model"}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    check_replaceable(out, ARTIFACT)
    (out / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(BadInputError, match=r"but also 1 entry dlcbench did not write \(thesis.pdf\)"):
        check_replaceable(out, ARTIFACT)


def test_an_earlier_stage_is_recognised_by_its_index(tmp_path):
    from dlcbench.stage.build import STAGE, STAGE_FORMAT

    out = tmp_path / "stage"
    (out / "site" / "tvm_ffi").mkdir(parents=True)
    (out / "site" / "tvm_ffi" / "core.so.xz").write_bytes(b"\xfd7zXZ")
    (out / "run.py").write_text("print()")
    index = {"format": STAGE_FORMAT, "files": [{"path": "site/tvm_ffi/core.so", "stored": "site/tvm_ffi/core.so.xz"},
                                               {"path": "models/x/inputs.npz", "stored": None, "npz": []}]}
    (out / "stage.json").write_text(json.dumps(index))
    check_replaceable(out, STAGE)
    (out / "site" / "results.json").write_text("{}")  # results of a run, kept next to the code by hand
    with pytest.raises(BadInputError, match=r"holds a dlcbench stage but also 1 entry .*site/results.json"):
        check_replaceable(out, STAGE)
