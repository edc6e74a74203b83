"""Local data folders: what is read and converted is said, bad files are named, batches stream from a cache."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from central.init import init_central, read_labels
from edge_agent.bundle import load_bundle
from edge_agent.data.images import load_image_folder
from edge_agent.data.labeled import CachedSet, DataError, LabeledSet, read_lines
from edge_agent.inputs import InputSpec
from edge_agent.train import Interrupted, TrainConfig, fine_tune, load_local_data, train_bundle

REPO = Path(__file__).resolve().parents[1]
SPEC = InputSpec("image", (1, 16, 16))


def _images(root: Path, per_class: dict[str, int], size=(24, 20), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c, n in per_class.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


def test_the_summary_says_what_is_read_and_converted(tmp_path):
    root = _images(tmp_path / "d", {"2": 5, "3": 4})
    _images(root, {"3": 2}, size=(16, 16), mode="L", seed=1)  # overwrites 0.png and 1.png of class 3 as grey 16x16
    (root / "7").mkdir()  # an empty class folder
    (root / "2" / "more").mkdir()  # a nested folder, not read
    (root / "2" / "notes.txt").write_text("x")
    Image.new("RGB", (8, 8)).save(root / "loose.png")
    data = load_image_folder(root, SPEC)
    text = "\n".join(data.report.lines())
    assert len(data) == 9 and data.classes == ["2", "3"]
    assert "9 images in 2 classes" in text and "2 5, 3 4" in text
    assert "every input becomes: grey 16x16 (1x16x16)" in text
    assert "7 from RGB 24x20" in text and "2 from L 16x16" in text
    assert "empty class folders (no class made): 7" in text
    assert "folders inside class folders are not read: 2/more/" in text
    assert "1 files in" in text and "outside any class folder" in text
    assert "not read (other file types): 1 .txt" in text
    assert len(data.report.lines()) <= 24


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def bundle16(tmp_path) -> Path:
    path = tmp_path / "central-0.safetensors"
    init_central("cnn-s", [str(i) for i in range(10)], path, (1, 16, 16), seed=0, width=8)
    return path


def _train_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "from edge_agent.cli import main; main()"
    env = {"PYTHONPATH": str(REPO), "EDGE_PROGRESS": "0", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code, "train", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_a_truncated_file_stops_training_with_its_name_unless_skip_bad(tmp_path, bundle16):
    root = _images(tmp_path / "d", {"2": 6, "3": 6})
    _truncate(root / "3" / "4.png")
    (root / "2" / "5.png").write_bytes(b"not an image")
    out = tmp_path / "dev.safetensors"
    p = _train_cli("--model", str(bundle16), "--data", str(root), "--out", str(out), "--epochs", "1", cwd=tmp_path)
    assert p.returncode == 2 and not out.exists() and not (tmp_path / "dev.safetensors.cache").exists()
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "5.png" in lines[0] and "--skip-bad" in lines[0], p.stderr
    p = _train_cli("--model", str(bundle16), "--data", str(root), "--out", str(out), "--epochs", "1", "--skip-bad",
                   cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "skipped 2 unreadable files" in p.stderr
    assert f"{root / '3' / '4.png'}: " in p.stderr and f"{root / '2' / '5.png'}: " in p.stderr
    assert "10 images in 2 classes" in p.stderr
    assert out.exists() and not (tmp_path / "dev.safetensors.cache").exists()
    assert load_bundle(out).manifest.metrics["n_train"] + load_bundle(out).manifest.metrics["n_val"] == 10


def test_a_one_class_device_is_told_its_validation_accuracy_means_nothing(tmp_path, bundle16):
    root = _images(tmp_path / "d", {"4": 8})
    out = tmp_path / "one.safetensors"
    p = _train_cli("--model", str(bundle16), "--data", str(root), "--out", str(out), "--epochs", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "note: one class (4): validation accuracy is 1.0 by construction" in p.stderr
    assert "one class only" in p.stderr  # in the summary before training, too


def test_training_from_the_cache_gives_the_same_model_as_in_memory(tmp_path, split_digits, central0):
    cfg = TrainConfig(epochs=2, seed=5)  # bce-jigsaw, shift 1: augmentation and negatives draw from the generator
    in_memory = load_local_data(split_digits / "dev2", load_bundle(central0))
    cached = load_local_data(split_digits / "dev2", load_bundle(central0), cache_dir=tmp_path / "cache")
    assert isinstance(in_memory, LabeledSet) and isinstance(cached, CachedSet)
    assert cached.labels == in_memory.labels and torch.equal(cached.x, in_memory.x)
    a, ma = fine_tune(load_bundle(central0), in_memory, cfg, progress=False)
    b, mb = fine_tune(load_bundle(central0), cached, cfg, progress=False)
    assert ma == mb
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    again = load_local_data(split_digits / "dev2", load_bundle(central0), cache_dir=tmp_path / "cache")
    assert again.key == cached.key and len(list((tmp_path / "cache").glob("*.rows"))) == 1  # written once


def test_interrupted_training_resumes_from_the_cache(tmp_path, split_digits, central0):
    out = tmp_path / "d.safetensors"
    cfg = replace(TrainConfig(epochs=3, seed=2), loss="ce")
    full = train_bundle(central0, split_digits / "dev1", tmp_path / "full.safetensors", cfg, progress=False)
    with pytest.raises(Interrupted, match="stopped after epoch 1"):
        train_bundle(central0, split_digits / "dev1", out, cfg, progress=False, stop_after_epoch=1)
    assert (tmp_path / "d.safetensors.cache").is_dir() and (tmp_path / "d.safetensors.ckpt").exists()
    resumed = train_bundle(central0, split_digits / "dev1", out, cfg, progress=False)
    assert resumed["metrics"] == full["metrics"]
    assert not (tmp_path / "d.safetensors.cache").exists()


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_through_the_cache_does_not_grow_with_the_dataset(tmp_path):
    spec = InputSpec("image", (3, 32, 32))
    peaks = {}
    for n in (200, 1000):
        root = _images(tmp_path / f"d{n}", {"a": n // 2, "b": n // 2}, size=(32, 32))

        def cached_epoch(root=root, n=n):
            data = load_image_folder(root, spec, cache_dir=tmp_path / f"c{n}")  # converts and writes the cache
            for idx in torch.randperm(len(data)).split(32):
                data.take(idx)

        peaks[n] = (_peak(cached_epoch), _peak(lambda root=root: load_image_folder(root, spec)))
    float_bytes = 1000 * 3 * 32 * 32 * 4  # 12 MB: the 1,000 inputs as float32
    assert peaks[1000][1] > float_bytes  # in memory: every input is held
    # through the cache: a few images and one batch, whatever the number of files (measured: 1.7 MB at both sizes)
    assert peaks[1000][0] < 1.2 * peaks[200][0] + 200_000 and peaks[1000][0] < float_bytes / 4, peaks


def test_label_files_are_utf8_sig_and_refuse_blank_and_repeated_lines(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_bytes("\ufeffcafé\n# a comment\nthé\n".encode())
    assert read_labels(f) == ["café", "thé"]
    f.write_text("a\nb\n\nc\n")
    with pytest.raises(DataError, match="line 3 is blank"):
        read_labels(f)
    f.write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"line 3 repeats 'a' \(first on line 1\)"):
        read_lines(f)
    f.write_bytes(b"\xff\xfea\x00")
    with pytest.raises(DataError, match="not UTF-8"):
        read_lines(f)


def test_speech_split_lists_are_checked(tmp_path):
    import wave

    root = tmp_path / "sc"
    for w in ("yes", "no"):
        (root / w).mkdir(parents=True)
        for i in range(3):
            with wave.open(str(root / w / f"s{i}_nohash_0.wav"), "wb") as f:
                f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000), f.writeframes(b"\1\0" * 16000)
    (root / "maybe").mkdir()  # no clips
    (root / "testing_list.txt").write_text("yes/s0_nohash_0.wav\n\nno/s0_nohash_0.wav\n", encoding="utf-8-sig")
    from edge_agent.data.speech import load_speech_commands

    with pytest.raises(DataError, match="testing_list.txt line 2 is blank"):
        load_speech_commands(root, split="testing")
    (root / "testing_list.txt").write_text("yes/s0_nohash_0.wav\nno/s0_nohash_0.wav\n", encoding="utf-8-sig")
    data = load_speech_commands(root, split="train")
    assert len(data) == 4
    text = "\n".join(data.report.lines())
    assert "empty class folders (no class made): maybe" in text and "4 from 16000 Hz mono int16" in text
