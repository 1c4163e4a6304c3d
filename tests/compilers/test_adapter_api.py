"""The adapter interface's compatibility promises to out-of-tree adapters written for dlcbench 0.1."""

from __future__ import annotations

import numpy as np
import pytest

from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter


class OldStyleAdapter(OnnxRuntimeAdapter):
    """An adapter written for 0.1: ``_load`` still takes ``threads``."""

    name = "oldstyle"
    seen_threads: list[int] = []

    def _load(self, artifact_dir, manifest, threads):
        self.seen_threads.append(threads)
        return OnnxRuntimeAdapter._load(self, artifact_dir, manifest)


def test_a_0_1_adapter_loads_with_a_deprecation_warning_and_the_manifests_threads(tmp_path, tiny_export):
    model = tiny_export("mlp", batch=1)
    adapter = OldStyleAdapter()
    manifest = adapter.compile(model, adapter.make_options(threads=2, batch=1), tmp_path / "a")
    assert manifest.threads == 2
    with pytest.warns(DeprecationWarning, match="drop 'threads'"):
        session = adapter.load(tmp_path / "a")
    with session:
        outputs = session.run(model.inputs())
    assert adapter.seen_threads == [2]
    reference = model.reference()
    assert all(np.allclose(outputs[k], reference[k], atol=1e-4) for k in reference)
