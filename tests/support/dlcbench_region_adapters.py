"""ONNX Runtime adapters with other timed regions, registered for tests through ``$DLCBENCH_BACKENDS``."""

from __future__ import annotations

from dlcbench.compilers.base import Session
from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter, OnnxRuntimeSession


class EndToEndOnlySession(OnnxRuntimeSession):
    """ONNX Runtime without its resident region, as an out-of-tree adapter that declares it has none."""

    resident_region = False
    prepare = Session.prepare
    run_prepared = Session.run_prepared


class EndToEndOnlyAdapter(OnnxRuntimeAdapter):
    """Results say ``region: end_to_end`` whatever region is asked for."""

    name = "e2eonly"

    def _load(self, artifact_dir, manifest):
        session = super()._load(artifact_dir, manifest)
        session.__class__ = EndToEndOnlySession
        return session


class FalseResidentSession(OnnxRuntimeSession):
    """Claims a resident region but runs end to end in it (the fallback every adapter had before regions)."""

    def prepare(self, inputs):
        self._prepared = inputs

    def run_prepared(self):
        self.run(self._prepared)


class FalseResidentAdapter(OnnxRuntimeAdapter):
    """What the conformance suite must catch: ``run_prepared`` copying the outputs to numpy."""

    name = "falseresident"

    def _load(self, artifact_dir, manifest):
        session = super()._load(artifact_dir, manifest)
        session.__class__ = FalseResidentSession
        return session


REGISTRATION = ",".join(
    f"{cls.name}=dlcbench_region_adapters:{cls.__name__}" for cls in (EndToEndOnlyAdapter, FalseResidentAdapter)
)
