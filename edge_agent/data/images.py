"""Images in the one-folder-per-class layout, converted to a model's input spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge_agent import preprocess
from edge_agent.data.labeled import DataError, LabeledSet
from edge_agent.inputs import InputSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | Path, spec: InputSpec) -> np.ndarray:
    """One image as float32 ``[C, H, W]`` (see :func:`edge_agent.preprocess.read_image`)."""
    try:
        return preprocess.read_image(path, spec)
    except preprocess.ImageReadError as e:
        raise DataError(str(e)) from None


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
