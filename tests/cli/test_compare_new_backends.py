"""scripts/compare.py with the adapters built on the kit (OpenVINO, PyTorch eager, TorchInductor)."""

from __future__ import annotations

from dlcbench.results.store import ResultsStore
from dlcbench_test_support import run_script


def test_compare_runs_openvino_torch_and_inductor(tmp_path):
    db = tmp_path / "r.sqlite"
    proc = run_script("scripts/compare.py", "--name", "kit", "--models", "mlp", "--backends",
                      "openvino,torch,inductor,onnxruntime", "--preset", "tiny", "--batch", "2", "--threads", "1",
                      "--min-seconds", "0", "--min-iters", "3", "--timeout", "300", "--db", str(db), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 ok, 0 failed" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    with ResultsStore(db) as store:
        rows = {r["backend"]: r for r in store.results("kit")}
    for backend in ("openvino", "torch", "inductor"):
        row = rows[backend]
        assert row["status"] == "ok" and row["metrics"]["latency"]["value"] > 0 and row["check_metrics"]["passed"], row["message"]
        assert row["manifest"]["backend"] == backend
    assert rows["openvino"]["manifest"]["target_detail"]["inference_precision"] == "f32"
    assert rows["inductor"]["manifest"]["extra"]["graph_breaks"] == 0
