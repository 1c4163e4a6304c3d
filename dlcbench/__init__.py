"""dlcbench: compare deep-learning compilers on your model and your hardware.

Importing this package imports no TensorFlow, TVM or TensorRT.
"""

from dlcbench import compat as _compat
from dlcbench import cpus as _cpus  # noqa: F401  (records this process's CPUs before any backend pins them)

__version__ = "0.2.0"

_compat.install()
