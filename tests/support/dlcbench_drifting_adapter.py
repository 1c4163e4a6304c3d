"""ONNX Runtime whose calls slow down, crash or hang while a marker file says so: drift injected into one round.

Register it with ``DLCBENCH_BACKENDS=DRIFTING_REGISTRATION`` and point ``$DLCBENCH_DRIFT_MARKER`` at a file.
While the file is missing the backend is plain ONNX Runtime; while it holds ``slow SECONDS`` every call sleeps
that long first; ``crash`` makes the next call abort the process; ``hang`` makes it sleep for ever.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter, OnnxRuntimeSession


def _drift() -> None:
    marker = Path(os.environ["DLCBENCH_DRIFT_MARKER"])
    try:
        what = marker.read_text().split()
    except FileNotFoundError:
        return
    if what[0] == "slow":
        time.sleep(float(what[1]))
    elif what[0] == "crash":
        os.abort()
    elif what[0] == "hang":
        while True:
            time.sleep(1)


class DriftingSession(OnnxRuntimeSession):
    def run(self, inputs):
        _drift()
        return super().run(inputs)

    def run_prepared(self):
        _drift()
        super().run_prepared()


class DriftingAdapter(OnnxRuntimeAdapter):
    """ONNX Runtime under the marker file's drift."""

    name = "drifting"

    def _load(self, artifact_dir, manifest):
        session = super()._load(artifact_dir, manifest)
        session.__class__ = DriftingSession
        return session


DRIFTING_REGISTRATION = "drifting=dlcbench_drifting_adapter:DriftingAdapter"
