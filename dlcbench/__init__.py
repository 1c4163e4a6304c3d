"""dlcbench: compare deep-learning compilers on your model and your hardware.

Importing this package imports no TensorFlow, TVM or TensorRT.
"""

__version__ = "0.1.0"
