"""Image preprocessing, once: used by training, evaluation and the torch-free device runtime.

NumPy and PIL only, so a device that runs artifact kits needs no torch.  A file and
an in-memory frame (a camera's ``H x W x C`` uint8 array) go through the same
conversion: L or RGB, bilinear resize to the spec, [0, 1], normalized.
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


def from_uint8(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 ``[..., C, H, W]`` at the spec's size to model-ready float32: ``/ 255`` then :func:`normalize`."""
    return normalize(np.asarray(pixels).astype(np.float32) / 255.0, spec)


def _convert(im, spec: InputSpec) -> np.ndarray:
    from PIL import Image

    c, h, w = spec.shape
    im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def read_image_uint8(path: str | Path, spec: InputSpec) -> tuple[np.ndarray, str]:
    """One image file as uint8 ``[C, H, W]`` at the spec's size, and what it was (e.g. ``"RGB 64x48"``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            source = f"{im.mode} {im.width}x{im.height}"
            return _convert(im, spec), source
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_image(path: str | Path, spec: InputSpec) -> np.ndarray:
    """One image file as model-ready float32 ``[C, H, W]``."""
    return from_uint8(read_image_uint8(path, spec)[0], spec)


def image_array(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A frame in memory as model-ready float32 ``[C, H, W]``, exactly as a file of the same pixels.

    ``frame`` is uint8 ``H x W`` (grey), ``H x W x 1``, ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA), any size.
    """
    from PIL import Image

    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise ImageReadError(f"an image array must be uint8 (0-255), not {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise ImageReadError(f"an image array is H x W, H x W x 1, 3 or 4, not {list(a.shape)}")
    return from_uint8(_convert(Image.fromarray(np.ascontiguousarray(a)), spec), spec)
