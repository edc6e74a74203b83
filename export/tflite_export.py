"""torch -> TFLite with litert-torch (no TensorFlow): fp32 and full-integer int8.

Layout: the ``.tflite`` input is NHWC ``[1, H, W, C]``. TFLite kernels are
channels-last; an NCHW input makes the converter add a TRANSPOSE (or a RESHAPE
when C=1) in front of the first conv, on every call. ``litert_torch.to_channel_last_io``
moves the permute into the graph boundary instead, so the graph starts with the
conv. The runtime transposes NCHW batches (what the manifest's input spec
describes) before setting the tensor. The batch is fixed at 1: devices infer
one sample at a time, and a static shape keeps old runtimes happy.

int8: PT2E static quantization with litert-torch's quantizer (per-channel
symmetric int8 weights, int8 activations observed with a histogram observer
by default). The converted model has int8 input and output tensors; their
scale/zero point live in the file and :mod:`edge_agent.runtime` applies them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_agent.inputs import InputSpec
from export.calibration import take_samples

LAYOUT = "NHWC"


class TfliteExportError(RuntimeError):
    """The LiteRT converter or quantizer failed; the message is one line."""


@dataclass(frozen=True)
class TfliteQuantOptions:
    """PT2E int8 knobs: ``observer`` is ``"histogram"`` (L2-optimal range) or ``"minmax"``; ``samples`` calibration samples."""

    observer: str = "minmax"
    per_channel: bool = True
    samples: int = 256


@contextlib.contextmanager
def _quiet():
    """Silence the converter's progress lines on stdout (Python-level only)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _channels_last(model: nn.Module) -> nn.Module:
    import litert_torch

    return litert_torch.to_channel_last_io(model.eval(), args=[0]).eval()


def _example(input_spec: InputSpec) -> torch.Tensor:
    c, h, w = input_spec.shape
    return torch.zeros((1, h, w, c), dtype=torch.float32)


def export_tflite_fp32(model: nn.Module, input_spec: InputSpec, out: str | Path) -> Path:
    """Convert ``model`` to an fp32 ``.tflite`` with NHWC input ``[1, H, W, C]``."""
    import litert_torch

    out = Path(out)
    try:
        with _quiet():
            edge = litert_torch.convert(_channels_last(model), (_example(input_spec),))
            edge.export(str(out))
    except Exception as e:  # the converter raises many types; the user needs one line
        raise TfliteExportError(f"TFLite conversion failed: {type(e).__name__}: {_first_line(e)}") from None
    return out


def _quant_config(options: TfliteQuantOptions):
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e.observer import MinMaxObserver

    cfg = pq.get_symmetric_quantization_config(is_per_channel=options.per_channel)
    if options.observer == "minmax":
        act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)
    elif options.observer != "histogram":
        raise TfliteExportError(f"unknown observer {options.observer!r} (histogram, minmax)")
    return pq.PT2EQuantizer().set_global(cfg)


def export_tflite_int8(
    model: nn.Module,
    input_spec: InputSpec,
    out: str | Path,
    calibration: Iterable[np.ndarray],
    options: TfliteQuantOptions = TfliteQuantOptions(),
) -> Path:
    """Full-integer int8 ``.tflite`` (int8 input/output, NHWC ``[1, H, W, C]``) calibrated on NCHW float32 batches."""
    import litert_torch
    from litert_torch.quantize import quant_config as qc
    from torchao.quantization.pt2e import quantize_pt2e

    out = Path(out)
    samples = take_samples(calibration, options.samples, input_spec.shape)
    nhwc = torch.from_numpy(np.ascontiguousarray(samples.transpose(0, 2, 3, 1)))
    example = _example(input_spec)
    quantizer = _quant_config(options)
    try:
        with _quiet():
            graph = torch.export.export(_channels_last(model), (example,)).module()
            graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
            with torch.no_grad():
                # Batch 1 matches the exported graph; observers accumulate over all calls.
                for x in nhwc:
                    graph(x[None])
            graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
            edge = litert_torch.convert(graph, (example,), quant_config=qc.QuantConfig(pt2e_quantizer=quantizer))
            edge.export(str(out))
    except TfliteExportError:
        raise
    except Exception as e:  # the converter raises many types; the user needs one line
        raise TfliteExportError(f"TFLite int8 conversion failed: {type(e).__name__}: {_first_line(e)}") from None
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
