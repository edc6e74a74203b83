"""Split-Digits: scikit-learn's UCI handwritten digits as device experiences.

The 1,797 real 8x8 digits are written as PNG folders (one folder per class),
split into a held-out ``test/``, a ``val/`` split for choosing settings, and
device experiences ``dev1/ .. devN/`` with disjoint classes (class-incremental).
A ``stream.json`` records which classes each experience holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_split_digits(
    out: str | Path,
    n_devices: int = 5,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Write the Split-Digits stream under ``out``; returns the stream description.

    Idempotent: an existing complete stream written with the same settings is reused.
    """
    from sklearn.datasets import load_digits  # central/benchmark-side dependency

    out = Path(out)
    settings = {"n_devices": n_devices, "test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed}
    stream_file = out / "stream.json"
    if stream_file.exists():
        stream = json.loads(stream_file.read_text())
        if stream.get("settings") == settings:
            return stream
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    targets = digits.target
    classes = [str(c) for c in range(10)]
    if 10 % n_devices:
        raise ValueError(f"10 digit classes cannot be split evenly over {n_devices} devices")
    per_dev = 10 // n_devices
    rng = np.random.default_rng(seed)
    experiences = [
        {"name": f"dev{i + 1}", "classes": classes[i * per_dev : (i + 1) * per_dev]} for i in range(n_devices)
    ]
    owner = {c: e["name"] for e in experiences for c in e["classes"]}
    counts: dict[str, int] = {}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts = {"test": idx[:n_test], "val": idx[n_test : n_test + n_val], owner[str(c)]: idx[n_test + n_val :]}
        for split, ids in parts.items():
            folder = out / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in ids:
                Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
            counts[f"{split}/{c}"] = len(ids)
    (out / "labels.txt").write_text("\n".join(classes) + "\n")
    stream = {
        "name": "split-digits",
        "labels": classes,
        "experiences": experiences,
        "test": "test",
        "val": "val",
        "counts": counts,
        "settings": settings,
        "source": "scikit-learn load_digits (UCI ML hand-written digits, 8x8)",
    }
    stream_file.write_text(json.dumps(stream, indent=2) + "\n")
    return stream
