"""Image preprocessing, once: used by training, evaluation and the torch-free device runtime.

NumPy and PIL only, so a device that runs artifact kits needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.inputs import InputSpec


class ImageReadError(ValueError):
    """A file that is not a readable image."""


def normalize(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``(x - mean) / std`` with per-channel (or shared) values from the spec; ``arr`` is ``[..., C, H, W]`` in [0, 1]."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return ((arr - mean) / std).astype(np.float32)


def read_image(path: str | Path, spec: InputSpec) -> np.ndarray:
    """One image as float32 ``[C, H, W]``: L or RGB, bilinear resize to the spec, [0, 1], normalized."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = spec.shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageReadError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return normalize(arr, spec)
