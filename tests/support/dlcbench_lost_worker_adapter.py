"""An adapter whose compile kills the process that started its worker (a Ray worker: a lost node, in small).

``$DLCBENCH_LOSE_MARKER`` names a file counting the kills so far; the adapter kills while the count is below
``$DLCBENCH_LOSE_TIMES`` (default 1), then compiles like ONNX Runtime.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dlcbench.compilers.ort_adapter import OnnxRuntimeAdapter


class LoseWorkerAdapter(OnnxRuntimeAdapter):
    name = "lose_worker"

    def _compile(self, model, options, out_dir):
        marker = Path(os.environ["DLCBENCH_LOSE_MARKER"])
        kills = int(marker.read_text()) if marker.exists() else 0
        if kills < int(os.environ.get("DLCBENCH_LOSE_TIMES", "1")):
            marker.write_text(str(kills + 1))
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(60)  # the launcher's death ends us (PR_SET_PDEATHSIG)
        return super()._compile(model, options, out_dir)


LOSE_REGISTRATION = "lose_worker=dlcbench_lost_worker_adapter:LoseWorkerAdapter"
