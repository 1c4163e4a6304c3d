"""An out-of-tree dlcbench backend: ``onnxref``, the ONNX reference implementation."""

__version__ = "0.1.0"
