"""dlcbench: compare deep-learning compilers on your model and your hardware.

Importing this package imports no TensorFlow, TVM or TensorRT.
"""

from dlcbench import compat as _compat

__version__ = "0.2.0"

_compat.install()
