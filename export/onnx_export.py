"""torch -> ONNX (fp32, dynamo exporter) and static int8 (ONNX Runtime, QDQ).

Choices (measurements in docs/export.md):
- the graph keeps NCHW input with a dynamic batch axis: ONNX Runtime's CPU
  kernels are NCHW-native, and a dynamic batch lets parity run in one call;
- int8 is static QDQ with per-channel weights; activations S8S8 or U8S8 and the
  calibration method (minmax, percentile, entropy) are options whose defaults
  come from the measurements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edge_agent.inputs import InputSpec
from export import ONNX_INT8_TYPES
from export.calibration import ArrayCalibrationReader, batched, take_samples

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxExportError(RuntimeError):
    """The ONNX exporter or quantizer failed; the message is one line."""


@dataclass(frozen=True)
class OnnxQuantOptions:
    """Static int8 quantization knobs.

    - ``activations`` and ``weights``: ``"u8"`` or ``"s8"`` each. U8U8 is the default: on x86 CPUs without VNNI
      (AVX2, AVX-512F) ONNX Runtime's U8S8 kernels add pairs of u8 x s8 products in int16 and saturate (an AVX2
      CPU ran S8S8 kits, which it runs as U8S8, at 0.74-0.86 top-1 agreement with torch); U8U8 does not;
    - ``method``: ``"minmax"``, ``"percentile"`` or ``"entropy"`` calibration of activation ranges;
    - ``percentile``: kept share of |activation| values in percent (percentile method only);
    - ``per_channel``: one weight scale per output channel;
    - ``reduce_range``: 7-bit weights, ONNX Runtime's other remedy for that saturation (0.969 agreement where
      U8U8 passes the 0.97 gate);
    - ``samples``: number of calibration samples taken from the iterable.
    """

    activations: str = "u8"
    weights: str = "u8"
    method: str = "minmax"
    percentile: float = 99.99
    per_channel: bool = True
    reduce_range: bool = False
    samples: int = 256
    batch_size: int = 32


def export_onnx_fp32(model: nn.Module, input_spec: InputSpec, out: str | Path, opset: int = 20) -> Path:
    """Export ``model`` (eval mode) to an fp32 ONNX file with input ``[batch, C, H, W]`` named ``input``."""
    out = Path(out)
    model = model.eval()
    example = torch.zeros((2, *input_spec.shape), dtype=torch.float32)
    # The dynamic axis is keyed by the forward argument's own name.
    arg_name = _first_arg_name(model)
    try:
        prog = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={arg_name: {0: torch.export.Dim("batch")}},
            verbose=False,
        )
        prog.save(str(out))
    except Exception as e:  # the exporter raises many types; the user needs one line
        raise OnnxExportError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    strip_debug_info(out)
    return out


def strip_debug_info(path: str | Path) -> None:
    """Drop the exporter's per-node stack traces and doc strings (in place).

    They carry the exporting machine's local source paths (a privacy leak in an
    artifact shipped to devices) and were 22 KB of a 123 KB ds-cnn file.
    """
    import onnx

    m = onnx.load(str(path))
    graphs = [m.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            del node.metadata_props[:]
            node.doc_string = ""
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    m.doc_string = ""
    onnx.save(m, str(path))


def _first_arg_name(model: nn.Module) -> str:
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    return params[0] if params else "x"


def options_for_types(types: str, **kwargs) -> OnnxQuantOptions:
    """``"s8s8"`` -> ``OnnxQuantOptions(activations="s8", weights="s8", **kwargs)``; OnnxExportError for another name."""
    if types not in ONNX_INT8_TYPES:
        raise OnnxExportError(f"ONNX int8 types must be one of {', '.join(ONNX_INT8_TYPES)}, not {types!r}")
    return OnnxQuantOptions(activations=types[:2], weights=types[2:], **kwargs)


def quant_types(options: OnnxQuantOptions) -> tuple:
    """ONNX Runtime's ``(activation_type, weight_type)`` for ``options``; OnnxExportError for another name."""
    from onnxruntime.quantization import QuantType

    types = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
    for field in ("activations", "weights"):
        if getattr(options, field) not in types:
            raise OnnxExportError(f"{field} must be 's8' or 'u8', not {getattr(options, field)!r}")
    return types[options.activations], types[options.weights]


def quantize_onnx_int8(
    fp32_path: str | Path,
    out: str | Path,
    calibration: Iterable[np.ndarray],
    input_spec: InputSpec,
    options: OnnxQuantOptions = OnnxQuantOptions(),
) -> Path:
    """Static int8 (QDQ) quantization of an fp32 ONNX file, calibrated on ``calibration`` batches."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    if options.method not in methods:
        raise OnnxExportError(f"unknown calibration method {options.method!r} (minmax, percentile, entropy)")
    activation_type, weight_type = quant_types(options)
    samples = take_samples(calibration, options.samples, input_spec.shape)
    reader = ArrayCalibrationReader(batched(samples, options.batch_size), INPUT_NAME)
    extra: dict = {}
    if options.method == "percentile":
        extra["CalibPercentile"] = float(options.percentile)
    out = Path(out)
    try:
        quantize_static(
            str(fp32_path),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=activation_type,
            weight_type=weight_type,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            calibrate_method=methods[options.method],
            extra_options=extra,
            calibration_providers=["CPUExecutionProvider"],
            use_external_data_format=False,
        )
    except Exception as e:  # quantizer errors come in many types
        raise OnnxExportError(f"ONNX int8 quantization failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return out


def set_onnx_metadata(path: str | Path, props: dict[str, str]) -> None:
    """Write string ``props`` into the ONNX model's ``metadata_props`` (in place)."""
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {k: str(v) for k, v in props.items()})
    onnx.save(model, str(path))


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
