"""Exports for the output check: NaN/Inf outputs survive the constant-folding check, small batches carry
extra seeded check batches, and those files are part of the cache entry's integrity."""

from __future__ import annotations

import numpy as np
import pytest

from dlcbench.models.export import ExportConfig, export_model, extra_check_batches, run_onnxruntime
from dlcbench_onnx_graphs import onnx_graph


@pytest.mark.parametrize("graph, what", [("log_negative", np.isnan), ("div_zero", np.isinf)])
def test_folded_export_with_a_nan_or_inf_output_passes_the_fold_check(tmp_path, graph, what):
    exported = export_model(ExportConfig(str(onnx_graph(tmp_path / f"{graph}.onnx", graph)), fold=True,
                                         cache_dir=tmp_path / "cache"))
    assert exported.meta["folded"]
    for inputs, reference in exported.check_batches():
        assert what(reference["y"]).all()
        got = run_onnxruntime(exported.onnx_path, inputs)["y"]  # the folded graph gives the same NaN/Inf
        np.testing.assert_array_equal(got, reference["y"])


@pytest.mark.parametrize("batch, extra", [(1, 2), (2, 1), (3, 0)])
def test_small_batches_store_seeded_check_batches_with_their_reference(tmp_path, batch, extra):
    assert extra_check_batches(batch) == extra
    exported = export_model(ExportConfig(str(onnx_graph(tmp_path / "m.onnx", "scaled")), batch=batch,
                                         cache_dir=tmp_path / "cache"))
    batches = exported.check_batches()
    assert len(batches) == 1 + extra and exported.meta["check_batches"] == extra
    np.testing.assert_array_equal(batches[0][0]["x"], exported.inputs()["x"])
    rows = np.concatenate([inputs["x"] for inputs, _ in batches])
    assert rows.shape == (batch * (1 + extra), 4) and len(np.unique(rows, axis=0)) == len(rows)
    for inputs, reference in batches:
        np.testing.assert_allclose(reference["y"], 2 * inputs["x"] + 1, rtol=1e-6)
    again = export_model(ExportConfig(str(tmp_path / "m.onnx"), batch=batch, cache_dir=tmp_path / "cache"))
    assert again.cache_hit
    np.testing.assert_array_equal(rows, np.concatenate([inputs["x"] for inputs, _ in again.check_batches()]))


def test_a_damaged_check_batch_file_is_rebuilt(tmp_path, capsys):
    cfg = ExportConfig(str(onnx_graph(tmp_path / "m.onnx", "scaled")), cache_dir=tmp_path / "cache")
    exported = export_model(cfg)
    (exported.directory / "check_reference.npz").write_bytes(b"")
    rebuilt = export_model(cfg)
    assert not rebuilt.cache_hit and "check_reference.npz has 0 bytes" in capsys.readouterr().err
    assert len(rebuilt.check_batches()) == 3
