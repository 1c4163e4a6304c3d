"""An accuracy experiment end to end: two precisions in one matrix, accuracy against latency in the report."""

from __future__ import annotations

import subprocess
import sys

from dlcbench.results.report import pareto_front
from dlcbench.results.store import ResultsStore
from dlcbench_test_support import ROOT


def test_pareto_front_keeps_what_nothing_beats():
    points = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.94), (0.5, 0.80), (2.0, 0.90)]
    assert pareto_front(points) == [0, 1, 3]


def test_precisions_in_one_experiment_and_accuracy_against_latency(tmp_path):
    db, out = tmp_path / "r.sqlite", tmp_path / "report"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare.py"), "--name", "acc", "--models", "digits-mlp",
         "--preset", "tiny", "--backends", "onnxruntime,openvino,tensorflow", "--precision", "fp32,int8",
         "--accuracy", "--batch", "8", "--db", str(db), "--min-seconds", "0.1", "--out", str(tmp_path / "art")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    with ResultsStore(db, readonly=True) as store:
        rows = store.results("acc")
    # tensorflow has no int8: it joins the fp32 jobs only.
    assert sorted((r["backend"], r["precision"]) for r in rows) == [
        ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"),
        ("tensorflow", "fp32")]
    assert all(r["metrics"]["accuracy_top1"]["value"] > 0.9 for r in rows)
    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), "acc", "--db", str(db), "--out",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "## Accuracy against latency" in text and "onnxruntime[int8]" in text and "openvino[int8]" in text
    assert (out / "accuracy.png").stat().st_size > 1000
