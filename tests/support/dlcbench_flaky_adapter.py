"""An adapter that fails the first time only, like a job hit by a passing problem of the machine.

Register it with ``DLCBENCH_BACKENDS=FLAKY_REGISTRATION`` and point ``$DLCBENCH_FLAKY_MARKER`` at a file
that does not exist yet: the first compile creates the file and fails, every later one works.
"""

from __future__ import annotations

import os
from pathlib import Path

from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter
from dlcbench.errors import CompileError


class FlakyAdapter(OnnxRuntimeAdapter):
    """ONNX Runtime, except that the first compile (no marker file yet) fails."""

    name = "flaky"

    def _compile(self, model, options, out_dir):
        marker = Path(os.environ["DLCBENCH_FLAKY_MARKER"])
        if not marker.exists():
            marker.write_text("failed once\n")
            raise CompileError("flaky: the first attempt fails")
        return super()._compile(model, options, out_dir)


FLAKY_REGISTRATION = "flaky=dlcbench_flaky_adapter:FlakyAdapter"
