"""The model zoo and its ONNX export. Importing this package imports no TensorFlow or TVM."""

from dlcbench.models.zoo import InputSpec, ModelSpec, get_model, model_names, sample_inputs

__all__ = ["InputSpec", "ModelSpec", "get_model", "model_names", "sample_inputs"]
