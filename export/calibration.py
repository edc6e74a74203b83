"""int8 calibration data: any iterable of model-ready float32 batches plugs in.

The central has no real data, so calibration batches come from its OOD source
(augmented patches of one photo, noise, ...). Everything here takes an
``Iterable[np.ndarray]`` of ``[B, C, H, W]`` float32 batches, the same data
consolidation uses, and adapts it to what each quantizer wants.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edge_agent.inputs import InputSpec


def take_samples(calibration: Iterable[np.ndarray], n: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Collect up to ``n`` samples from an iterable of batches into one float32 ``[n, ...]`` array.

    ``shape`` (without batch) is checked when given, so a wrong calibration
    source fails here with a clear message rather than inside a quantizer.
    """
    out: list[np.ndarray] = []
    have = 0
    for batch in calibration:
        b = np.asarray(batch, dtype=np.float32)
        if shape is not None and b.ndim == len(shape):
            b = b[None]
        if shape is not None and tuple(b.shape[1:]) != tuple(shape):
            raise ValueError(f"calibration batch has shape {list(b.shape)}, the model wants [B, {', '.join(map(str, shape))}]")
        out.append(b[: n - have])
        have += len(out[-1])
        if have >= n:
            break
    if not out:
        raise ValueError("calibration data is empty")
    return np.concatenate(out, axis=0)


def batched(samples: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Split ``[N, ...]`` into consecutive ``[batch_size, ...]`` chunks (the last may be smaller)."""
    for i in range(0, len(samples), batch_size):
        yield samples[i : i + batch_size]


class ArrayCalibrationReader(CalibrationDataReader):
    """ONNX Runtime ``CalibrationDataReader`` over an iterable of float32 batches.

    ``layout="NHWC"`` transposes NCHW batches for models whose input is channels-last.
    """

    def __init__(self, calibration: Iterable[np.ndarray], input_name: str, layout: str = "NCHW"):
        self.input_name = input_name
        self.layout = layout
        self._it = iter(calibration)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return {self.input_name: x}


def noise_batches(spec: InputSpec, n: int, batch_size: int = 32, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` samples of the ``"noise"`` OOD source (the generator consolidation uses)."""
    return ood_batches("noise", spec, n, batch_size, seed)


def ood_batches(source: str | Path | None, spec: InputSpec, n: int, batch_size: int = 32, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` samples from an OOD source (``None`` = bundled photo, ``"noise"``, an image file or a folder).

    Uses :func:`edge_agent.data.ood.open_ood`, the same source consolidation uses.
    """
    import torch

    from edge_agent.ood_sources import open_ood

    src = open_ood(source, spec)
    g = torch.Generator().manual_seed(seed)
    left = n
    while left > 0:
        b = min(batch_size, left)
        with torch.no_grad():  # closed before the yield: a suspended generator must not hold grad off for its caller
            batch = src.sample(b, g).detach().cpu().numpy().astype(np.float32)
        yield batch
        left -= b
