"""Images in the one-folder-per-class layout, converted to a model's input spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from edge_agent.data.labeled import DataError, LabeledSet
from edge_agent.inputs import InputSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | Path, spec: InputSpec) -> np.ndarray:
    """One image as float32 ``[C, H, W]``, resized to ``spec.shape`` and normalized."""
    c, h, w = spec.shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return normalize(arr, spec)


def normalize(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``(x - mean) / std`` with per-channel (or shared) values from the spec; ``arr`` is ``[..., C, H, W]`` in [0, 1]."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return ((arr - mean) / std).astype(np.float32)


def load_image_folder(root: str | Path, spec: InputSpec, classes: list[str] | None = None) -> LabeledSet:
    """Load ``root/<class>/*.png|jpg...``; ``classes`` restricts which subfolders are read."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no data folder at {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if classes is not None:
        folders = [p for p in folders if p.name in set(classes)]
    xs: list[np.ndarray] = []
    labels: list[str] = []
    for folder in folders:
        for f in image_files(folder):
            xs.append(read_image(f, spec))
            labels.append(folder.name)
    if not xs:
        raise DataError(
            f"no images found in {root}: expected one folder per class with png/jpg files inside (e.g. {root}/cat/1.png)"
        )
    return LabeledSet(torch.from_numpy(np.stack(xs)), labels)
