"""Images in the one-folder-per-class layout, converted to a model's input spec."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from edge_agent import preprocess
from edge_agent.data.labeled import CachedSet, DataError, DataReport, LabeledSet, cached_rows, source_key
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


def scan_image_folder(
    root: str | Path, spec: InputSpec, classes: list[str] | None = None
) -> tuple[list[tuple[Path, str]], DataReport]:
    """The image files of ``root/<class>/`` (sorted by class, then name) and a report of what else is there."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no data folder at {root}")
    c, h, w = spec.shape
    report = DataReport(str(root), "image", f"{'grey' if c == 1 else 'RGB'} {w}x{h} ({c}x{h}x{w})")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    report.loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if classes is not None:
        folders = [p for p in folders if p.name in set(classes)]
    files: list[tuple[Path, str]] = []
    ignored: Counter[str] = Counter()
    for folder in folders:
        found = image_files(folder)
        for p in folder.iterdir():
            if p.is_dir() and not p.name.startswith("."):
                report.nested.append(f"{folder.name}/{p.name}/")
            elif p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES and not p.name.startswith("."):
                ignored[p.suffix.lower() or "(no suffix)"] += 1
        if not found:
            report.empty.append(folder.name)
        files += [(f, folder.name) for f in found]
    report.nested.sort()
    report.ignored = dict(ignored)
    if not files:
        raise DataError(
            f"no images found in {root}: expected one folder per class with png/jpg files inside (e.g. {root}/cat/1.png)"
        )
    return files, report


def _read_all(files, spec, report: DataReport, skip_bad: bool, keep) -> list[str]:
    labels: list[str] = []
    sources: Counter[str] = Counter()
    per_class: Counter[str] = Counter()
    for f, cls in files:
        try:
            pixels, source = preprocess.read_image_uint8(f, spec)
        except preprocess.ImageReadError as e:
            if not skip_bad:
                raise DataError(str(e)) from None
            report.skipped.append((str(f), str(e).split(": ", 1)[-1]))
            continue
        keep(pixels)
        sources[source] += 1
        per_class[cls] += 1
        labels.append(cls)
    if not labels:
        raise DataError(f"no readable image in {report.root} ({len(report.skipped)} skipped)")
    report.sources = dict(sources)
    report.per_class = dict(per_class)
    report.empty = sorted(set(report.empty) | ({c for _, c in files} - set(per_class)))
    return labels


def load_image_folder(
    root: str | Path,
    spec: InputSpec,
    classes: list[str] | None = None,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
) -> LabeledSet | CachedSet:
    """Load ``root/<class>/*.png|jpg...``; ``classes`` restricts which subfolders are read.

    An unreadable or truncated file raises :class:`DataError` naming it, or with
    ``skip_bad`` is left out and listed in ``.report.skipped``.  With ``cache_dir``
    the images are converted once to uint8 at the spec's size in a file there and
    a :class:`CachedSet` reads them back a batch at a time; without it every input
    is held in memory as float32.  The result's ``report`` says what was read.
    """
    files, report = scan_image_folder(root, spec, classes)
    if cache_dir is None:
        pixels = np.empty((len(files), *spec.shape), dtype=np.uint8)
        n = 0

        def keep(row):
            nonlocal n
            pixels[n] = row
            n += 1

        labels = _read_all(files, spec, report, skip_bad, keep)
        x = np.empty((n, *spec.shape), dtype=np.float32)
        for i in range(0, n, 256):  # in pieces: one float32 copy of the set, not three
            x[i : i + 256] = preprocess.from_uint8(pixels[i : i + 256], spec)
        del pixels
        return LabeledSet(torch.from_numpy(x), labels, report)
    else:
        key = source_key("image", spec.to_dict(), skip_bad, files=[f for f, _ in files])

        def build(write):
            return _read_all(files, spec, report, skip_bad, write), report

        store, labels, report = cached_rows(cache_dir, key, "uint8", spec.shape, build)
        return CachedSet(store, np.arange(len(labels)), labels, lambda rows: preprocess.from_uint8(rows, spec), key, report)
