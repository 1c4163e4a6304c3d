"""OpenVINO (CPU): ONNX -> OpenVINO model -> compiled model exported to disk.

Compile reads the ONNX file with OpenVINO's ONNX frontend, fixes the input
shapes, saves the IR (``model.xml``/``model.bin``) and compiles it for the CPU
plugin with the precision hint and thread count; the compiled model is
exported as ``model.blob`` and imported again by :meth:`OpenVinoAdapter.load`,
so a reload skips compilation. OpenVINO silently falls back to another
inference precision when the CPU lacks the one asked for (``fp16`` becomes
``bf16`` on CPUs without AVX512-FP16/AMX-FP16); the adapter refuses instead of
reporting numbers for a precision it did not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench.errors import (
    BackendRuntimeError,
    BackendUnavailableError,
    BadInputError,
    CompileError,
    UnsupportedOpError,
    one_line,
)

from dlcbench.compilers.base import Adapter, CompileOptions, Manifest, Session, package_version

HINTS = ("LATENCY", "THROUGHPUT")
#: dlcbench precision -> OpenVINO ``INFERENCE_PRECISION_HINT``.
#: int8 models keep f32 for what NNCF left in float (its quantized ops run as int8 through FakeQuantize).
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
DEVICE = "CPU"


@dataclass
class OpenVinoOptions(CompileOptions):
    """OpenVINO options.

    Attributes:
        performance_hint: ``LATENCY`` (one request at a time) or ``THROUGHPUT``.
        num_streams: CPU streams (parallel inference requests); 1 for latency measurements.
    """

    performance_hint: str = "LATENCY"
    num_streams: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.performance_hint not in HINTS:
            raise BadInputError(f"unknown performance_hint {self.performance_hint!r}; valid: {', '.join(HINTS)}")
        if not isinstance(self.num_streams, int) or self.num_streams <= 0:
            raise BadInputError(f"num_streams must be a positive integer, got {self.num_streams}")


def _config(options: dict[str, Any], threads: int) -> dict[str, Any]:
    return {
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[options.get("precision", "fp32")],
        "INFERENCE_NUM_THREADS": int(threads),
        "NUM_STREAMS": int(options.get("num_streams", 1)),
        "PERFORMANCE_HINT": options.get("performance_hint", "LATENCY"),
    }


def _quantize_nncf(ov_model, model, feeds: list[str], batch: int):
    """NNCF's post-training int8 quantization of ``ov_model``, calibrated on the export's calibration batches."""
    import logging

    from dlcbench.compilers.quantize import rebatch
    from dlcbench.quiet import import_quietly

    try:
        nncf = import_quietly("nncf")
    except ImportError:
        raise BackendUnavailableError("openvino int8 needs NNCF: pip install nncf") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)
    batches = rebatch(model.calibration_batches(), batch)
    items = [tuple(b[name] for name in feeds) for b in batches]
    rows = sum(len(b[feeds[0]]) for b in batches) if feeds else 0
    try:
        quantized = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=max(1, len(items)))
    except Exception as err:
        raise CompileError(f"NNCF quantization failed: {one_line(err, 300)}") from None
    return quantized, {"tool": f"nncf {nncf.__version__} quantize (post-training, min-max/statistics)",
                       "calibration_rows": rows}


_UNSUPPORTED = (
    re.compile(r"No conversion rule found for operations?:?\s*([^\n]+)"),
    re.compile(r"Conversion is failed for:?\s*([^\n]+)"),
)


def unsupported_ops_in(message: str) -> list[str] | None:
    """The operators an OpenVINO frontend error names as not converted (``Celu-28`` -> ``Celu``), or None."""
    ops: list[str] = []
    for pattern in _UNSUPPORTED:
        for match in pattern.finditer(message):
            for item in match.group(1).split(","):
                op = re.sub(r"-\d+$", "", item.strip()).split(".")[-1]
                if op and op not in ops:
                    ops.append(op)
    return ops or None


def read_onnx(core, path: Path):
    """Reads an ONNX file with OpenVINO's ONNX frontend; unsupported operators become :class:`UnsupportedOpError`."""
    try:
        return core.read_model(str(path))
    except Exception as err:
        text = str(err)
        ops = unsupported_ops_in(text)
        if ops:
            reasons = re.findall(r"(?:While validating ONNX node[^\n]*\n)?([^\n]*(?:failed|must|not)[^\n]*)\n\nSummary", text)
            detail = one_line(reasons[-1], 200) if reasons else "no conversion rule, or the frontend rejected the node"
            raise UnsupportedOpError("openvino", ops, detail) from None
        raise


class OpenVinoSession(Session):
    """An OpenVINO infer request over the imported compiled model.

    The resident region runs the request on input tensors bound once; the outputs stay in the request's tensors.
    """

    resident_region = True

    def __init__(self, manifest: Manifest, compiled):
        super().__init__(manifest)
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        names = [i["name"] for i in manifest.inputs]
        self._feeds = (manifest.extra or {}).get("input_ports") or input_ports(compiled, names)
        ports = list(compiled.outputs)
        # ONNX output names survive conversion; fall back to position for nameless ports.
        self._ports = []
        for index, name in enumerate(self.output_names):
            match = [p for p in ports if name in p.get_names()]
            self._ports.append(match[0] if match else ports[index])

    def run(self, inputs):
        try:
            feed = {index: np.asarray(inputs[name], order="C") for index, name in enumerate(self._feeds)}
            result = self._request.infer(feed)
        except KeyError as err:
            raise BadInputError(f"missing input {err}; expected {', '.join(self._feeds)}") from None
        except Exception as err:
            raise BackendRuntimeError(f"openvino run failed: {one_line(err, 300)}") from None
        return {name: np.array(result[port]) for name, port in zip(self.output_names, self._ports)}

    def prepare(self, inputs):
        import openvino as ov

        try:
            for index, name in enumerate(self._feeds):
                self._request.set_input_tensor(index, ov.Tensor(np.asarray(inputs[name], order="C")))
        except KeyError as err:
            raise BadInputError(f"missing input {err}; expected {', '.join(self._feeds)}") from None

    def run_prepared(self):
        # share_outputs: the result holds views of the request's output tensors, not numpy copies.
        try:
            self._request.infer(share_outputs=True)
        except Exception as err:
            raise BackendRuntimeError(f"openvino run failed: {one_line(err, 300)}") from None

    def close(self):
        self._request = None
        self._compiled = None


def input_ports(model, names: list[str]) -> list[str]:
    """The ONNX input each OpenVINO input port reads, in port order.

    OpenVINO drops graph inputs nothing reads (an empty optional input) and may
    rename a Parameter that feeds an output directly (Dropout, Identity), so
    ports are matched by name first, then the rest in order.
    """
    ports = list(model.inputs)
    mapping: list[str | None] = [next((n for n in names if n in port.get_names()), None) for port in ports]
    rest = [n for n in names if n not in mapping]
    free = [i for i, m in enumerate(mapping) if m is None]
    if len(free) > len(rest):
        raise CompileError(f"openvino's model has inputs {[sorted(p.get_names()) for p in ports]} "
                           f"that match none of the ONNX inputs {names}")
    for index, name in zip(free, rest):
        mapping[index] = name
    return [m for m in mapping if m is not None]


class OpenVinoAdapter(Adapter):
    """OpenVINO's CPU plugin, from ONNX, with the compiled model exported into the artifact."""

    name = "openvino"
    source = "onnx"
    targets = ("cpu",)
    #: int8: NNCF post-training quantization (``nncf.quantize``) calibrated on the export's calibration batches.
    precisions = ("fp32", "fp16", "bf16", "int8")
    Options = OpenVinoOptions
    requires = ("openvino",)
    install_hint = "pip install -e '.[openvino]' (openvino==2026.4.1)"

    def version(self) -> str:
        return package_version("openvino")

    def _compile(self, model, options: OpenVinoOptions, out_dir: Path) -> dict[str, Any]:
        import openvino as ov

        core = ov.Core()
        ov_model = read_onnx(core, model.onnx_path)
        wanted = self.input_shapes(model, options)
        feeds = input_ports(ov_model, [i["name"] for i in model.meta["inputs"]])
        shapes = {index: wanted[name] for index, name in enumerate(feeds)
                  if ov_model.inputs[index].get_partial_shape() != ov.PartialShape(wanted[name])}
        if shapes:
            try:
                ov_model.reshape({index: ov.PartialShape(shape) for index, shape in shapes.items()})
            except Exception as err:
                raise BadInputError(f"openvino cannot fix the input shapes {wanted}: {one_line(err, 200)}") from None
        extra: dict[str, Any] = {}
        if options.precision == "int8":
            ov_model, extra["int8"] = _quantize_nncf(ov_model, model, feeds, options.batch)
        ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
        config = _config(options.to_dict(), options.threads)
        compiled = core.compile_model(ov_model, DEVICE, config)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        effective = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        if effective != PRECISION_HINTS[options.precision]:
            capabilities = ", ".join(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
            raise BackendUnavailableError(
                f"openvino on this CPU cannot run {options.precision} (it would silently run {effective}); "
                f"CPU capabilities: {capabilities}"
            )
        (out_dir / "model.blob").write_bytes(compiled.export_model().getvalue())
        return {
            "files": {"compiled": "model.blob", "ir": "model.xml", "weights": "model.bin"},
            "target_detail": {
                "device": str(core.get_property(DEVICE, "FULL_DEVICE_NAME")),
                "inference_precision": effective,
                "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
                "streams": int(compiled.get_property("NUM_STREAMS")),
            },
            "extra": {"input_ports": feeds, **extra},
        }

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        import openvino as ov

        core = ov.Core()
        config = _config({**manifest.options, "precision": manifest.precision}, manifest.threads)
        try:
            blob = (artifact_dir / manifest.files["compiled"]).read_bytes()
            compiled = core.import_model(blob, DEVICE, config)
        except Exception as err:
            raise BackendRuntimeError(
                f"openvino could not import {artifact_dir / manifest.files['compiled']} "
                f"(compiled by openvino {manifest.backend_version}): {one_line(err, 300)}"
            ) from None
        return OpenVinoSession(manifest, compiled)


__all__ = ["OpenVinoAdapter", "OpenVinoOptions"]
