"""int8 post-training quantization shared by the adapters that take an ONNX QDQ model.

:func:`quantize_qdq` is ONNX Runtime's static quantization (QDQ format: ``QuantizeLinear``/``DequantizeLinear``
pairs around each quantized op; int8 weights per channel, uint8 activations), calibrated on the export's
calibration batches (a dataset model's training rows; otherwise its sample and check inputs). ONNX Runtime runs
the QDQ model with int8 kernels; TVM 0.27 imports it as dequantize -> float op -> quantize, i.e. it emulates int8
in float (no int8 arithmetic), which its manifest says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import CompileError, one_line

#: Calibration batches used at most.
MAX_CALIBRATION_BATCHES = 64


def rebatch(batches: list[dict[str, np.ndarray]], batch: int | None) -> list[dict[str, np.ndarray]]:
    """The rows of ``batches`` regrouped into batches of ``batch`` rows (a static model takes no other size);
    ``batch`` None keeps them as they are."""
    if not batches or batch is None:
        return batches
    names = list(batches[0])
    rows = {n: np.concatenate([b[n] for b in batches]) for n in names}
    count = min(MAX_CALIBRATION_BATCHES, len(rows[names[0]]) // batch) if names else 0
    if count == 0:  # fewer rows than one batch: repeat them
        return [{n: np.resize(v, (batch, *v.shape[1:])) for n, v in rows.items()}]
    return [{n: np.ascontiguousarray(v[i * batch:(i + 1) * batch]) for n, v in rows.items()} for i in range(count)]


def quantize_qdq(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Writes the int8 QDQ model of ``src`` to ``dst``, calibrated (min/max) on ``calibration``.

    Returns what the manifest records: format, types, calibration rows and method.

    Raises:
        CompileError: ONNX Runtime's quantizer failed.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(calibration)

        def get_next(self):
            return next(self._items, None)

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process goes to the root logger, on every call
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as err:
        raise CompileError(f"int8 quantization (onnxruntime.quantization) failed: {one_line(err, 300)}") from None
    finally:
        root.setLevel(level)
    rows = sum(len(next(iter(b.values()))) for b in calibration) if calibration else 0
    return {"format": "QDQ", "weights": "int8 per channel", "activations": "uint8", "calibration": "minmax",
            "calibration_rows": rows, "tool": "onnxruntime.quantization.quantize_static"}
