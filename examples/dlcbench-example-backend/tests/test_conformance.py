"""dlcbench's conformance suite for this package's backend: ``python -m pytest tests``."""

import os

os.environ.setdefault("DLCBENCH_CONFORMANCE_BACKENDS", "onnxref")

from dlcbench.compilers.testing import *  # noqa: E402,F401,F403
