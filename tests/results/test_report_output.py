"""``report.py --out``: a report directory is recognised and replaced; anything else is refused untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from dlcbench.errors import ExitCode
from dlcbench.outputs import MARKER
from dlcbench_test_support import assert_one_line_error, run_script


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A results database with one timed experiment, ``e``, run by compare.py (onnxruntime, tiny mlp)."""
    path = tmp_path_factory.mktemp("results") / "r.sqlite"
    proc = run_script("scripts/compare.py", "--name", "e", "--models", "mlp", "--preset", "tiny", "--backends",
                      "onnxruntime", "--db", str(path), "--min-seconds", "0", "--min-iters", "3", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


def report(db: Path, out: Path, experiment: str = "e") -> subprocess.CompletedProcess:
    return run_script("scripts/report.py", experiment, "--db", str(db), "--out", str(out), timeout=300)


def tree_hash(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def test_a_report_directory_is_replaced_and_marked(db, tmp_path):
    out = tmp_path / "rep"
    first = report(db, out)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((out / MARKER).read_text())["kind"] == "report"
    assert {"report.md", "latency.png", "roofline.png"} <= {p.name for p in out.iterdir()}
    inode = out.stat().st_ino
    again = report(db, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.stat().st_ino != inode and sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_a_report_written_before_the_marker_is_replaced_too(db, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "report.md").write_text("# dlcbench report: e\n\nold\n")
    (out / "latency.png").write_bytes(b"\x89PNG")
    proc = report(db, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "old" not in (out / "report.md").read_text()


@pytest.mark.parametrize("case", ["user files", "report plus a user file", "a file", "an artifact"])
def test_report_refuses_what_it_did_not_write(db, tmp_path, case):
    out = tmp_path / "target"
    if case == "a file":
        out.write_text("my data")
        fragments = ["exists and is not a directory"]
    else:
        out.mkdir()
        if case == "user files":
            (out / "results.xlsx").write_bytes(b"PK")
            fragments = ["is not a dlcbench report", "results.xlsx"]
        elif case == "report plus a user file":
            (out / "report.md").write_text("# dlcbench report: e\n")
            (out / "my-notes.md").write_text("keep")
            fragments = ["holds a dlcbench report but also 1 entry", "my-notes.md"]
        else:
            (out / MARKER).write_text(json.dumps({"kind": "artifact", "entries": []}))
            fragments = ["holds a dlcbench artifact, not a dlcbench report"]
    before = tree_hash(tmp_path)
    assert_one_line_error(report(db, out), ExitCode.BAD_INPUT, *fragments)
    assert tree_hash(tmp_path) == before


def test_a_failing_report_leaves_nothing(db, tmp_path):
    proc = report(db, tmp_path / "rep", experiment="nope")
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
