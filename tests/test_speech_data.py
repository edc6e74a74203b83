"""Synthetic keyword data, the Speech Commands loader and device streams."""

from __future__ import annotations

import hashlib
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edge_agent.audio import AudioFrontend
from edge_agent.data.kws_streams import write_kws_stream
from edge_agent.data.labeled import DataError
from edge_agent.data.speech import list_clips, load_background_noise, load_speech_commands, load_waves, read_clip
from edge_agent.data.speech_synth import default_ood_clip_path, write_speech_dataset

WORDS = ("yes", "no", "up")
ACCENTS = ("en-us", "en-gb-scotland")
TINY = dict(words=WORDS, accents=ACCENTS, speakers_per_accent=3, clips_per_speaker=2, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("speech") / "ds"
    return root, write_speech_dataset(root, **TINY)


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_and_wav_format(tiny):
    root, summary = tiny
    assert summary["clips"] == 3 * 2 * 3 * 2  # words x accents x speakers x clips
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["_background_noise_", "no", "up", "yes"]
    assert len(list((root / "_background_noise_").glob("*.wav"))) == 4
    path = next((root / "yes").glob("*.wav"))
    assert path.name.split("_nohash_")[0] in json.loads((root / "speakers.json").read_text())
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 16000, 16000)
    clip = read_clip(path)
    assert 0.05 < np.abs(clip).max() <= 1.0  # speech is there, not silence


def test_splits_are_by_speaker(tiny):
    root, summary = tiny
    speakers = json.loads((root / "speakers.json").read_text())
    seen: dict[str, str] = {}
    for split in ("train", "validation", "testing"):
        for rel, _ in list_clips(root, split):
            spk = Path(rel).name.split("_nohash_")[0]
            assert seen.setdefault(spk, split) == split, f"speaker {spk} in two splits"
            assert speakers[spk]["split"] == split
    # Every accent has held-out speakers: per-accent devices can be tested.
    for accent in ACCENTS:
        assert {s["split"] for s in speakers.values() if s["accent"] == accent} == {"train", "validation", "testing"}
    assert summary["splits"] == {"train": 12, "validation": 12, "testing": 12}


def test_loader_round_trip(tiny):
    root, _ = tiny
    fe = AudioFrontend()
    train = load_speech_commands(root, fe, "train")
    test = load_speech_commands(root, fe, "testing")
    everything = load_speech_commands(root, fe, "all")
    assert train.x.shape == (12, 1, 49, 40) and len(test) == 12 and len(everything) == 36
    assert train.classes == sorted(WORDS)
    waves, labels = load_waves(root, "testing")
    np.testing.assert_array_equal(test.x.numpy(), fe(waves))
    assert labels == test.labels
    only = load_speech_commands(root, fe, "all", words=["up"])
    assert only.classes == ["up"] and len(only) == 12
    with pytest.raises(DataError, match="no folder for word.*stop"):
        load_speech_commands(root, fe, words=["stop"])
    assert len(load_background_noise(root)) == 4


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    root, _ = tiny
    write_speech_dataset(tmp_path / "again", **TINY)
    assert _tree_hash(tmp_path / "again") == _tree_hash(root)
    write_speech_dataset(tmp_path / "other", **{**TINY, "seed": 4})
    assert _tree_hash(tmp_path / "other") != _tree_hash(root)


def test_read_clip_resamples_mixes_and_centres(tmp_path):
    t = np.arange(4000) / 8000  # 0.5 s at 8 kHz
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo8k.wav"
    soundfile.write(path, np.stack([left, np.zeros_like(left)], axis=1), 8000, subtype="PCM_16")
    clip = read_clip(path, 16000)
    assert clip.shape == (16000,) and clip.dtype == np.float32
    # 0.5 s of sound centred in 1 s: zeros on both sides.
    assert np.abs(clip[:3900]).max() < 1e-3 and np.abs(clip[-3900:]).max() < 1e-3
    middle = clip[4500:11500]
    assert abs(np.abs(middle).max() - 0.25) < 0.02  # the mono mix halves one channel
    freqs = np.fft.rfftfreq(middle.size, 1 / 16000)
    assert abs(freqs[np.argmax(np.abs(np.fft.rfft(middle)))] - 440) < 5


def test_corrupt_file_and_bad_folder_errors(tmp_path):
    bad = tmp_path / "ds" / "yes" / "abc_nohash_0.wav"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError) as err:
        load_speech_commands(tmp_path / "ds")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(DataError, match="expected the Speech Commands layout"):
        load_speech_commands(tmp_path / "empty")
    with pytest.raises(DataError, match="not a folder"):
        load_speech_commands(tmp_path / "missing")


def test_without_lists_testing_means_all_files(tiny, tmp_path):
    root, _ = tiny
    stream = write_kws_stream(root, tmp_path / "s", kind="class", n_devices=3)
    folder = stream[0]
    (folder / "testing_list.txt").unlink()
    (folder / "validation_list.txt").unlink()
    assert len(list_clips(folder, "testing")) == len(list_clips(folder, "all")) == len(list_clips(folder, "train")) == 12


def test_domain_and_class_streams(tiny, tmp_path):
    root, _ = tiny
    speakers = json.loads((root / "speakers.json").read_text())
    domain = write_kws_stream(root, tmp_path / "domain", kind="domain", n_devices=2)
    for folder, accent in zip(domain, ACCENTS, strict=True):
        clips = list_clips(folder, "all")
        assert {w for _, w in clips} == set(WORDS)
        assert {speakers[Path(r).name.split("_nohash_")[0]]["accent"] for r, _ in clips} == {accent}
        assert len(load_speech_commands(folder, split="testing")) == 6
        assert len(load_speech_commands(folder, split="train")) == 6
    assert len(list_clips(tmp_path / "domain" / "test", "testing")) == 12
    classes = write_kws_stream(root, tmp_path / "class", kind="class", n_devices=3)
    assert [[w for w in (f.name for f in d.iterdir() if f.is_dir())] for d in classes] == [["yes"], ["no"], ["up"]]
    assert json.loads((tmp_path / "class" / "stream.json").read_text())["kind"] == "class"
    with pytest.raises(DataError, match="1 to 3 devices"):
        write_kws_stream(root, tmp_path / "x", kind="class", n_devices=4)


def test_a_written_stream_is_kept_until_its_source_or_settings_change(tiny, tmp_path):
    root, _ = tiny
    out = tmp_path / "domain"
    first = write_kws_stream(root, out, kind="domain", n_devices=2)
    marker = first[0] / "marker"  # a rewrite would delete the device folders
    marker.write_text("x")
    assert write_kws_stream(root, out, kind="domain", n_devices=2) == first and marker.exists()
    write_kws_stream(root, out, kind="class", n_devices=3)  # other settings: rewritten
    assert not marker.exists() and json.loads((out / "stream.json").read_text())["kind"] == "class"
    (out / "device-01" / "marker").write_text("x")
    write_kws_stream(root, out, kind="class", n_devices=3)
    assert (out / "device-01" / "marker").exists()
    clip = next(p for p in root.rglob("*.wav") if "_background_noise_" not in p.parts)
    original = clip.read_bytes()
    clip.write_bytes(original + b"\0\0")  # the dataset changed: rewritten
    try:
        write_kws_stream(root, out, kind="class", n_devices=3)
    finally:
        clip.write_bytes(original)  # the fixture is shared with other tests
    assert not (out / "device-01" / "marker").exists()


def test_bundled_ood_clip():
    path = default_ood_clip_path()
    assert path.stat().st_size < 300_000
    info = soundfile.info(str(path))
    assert info.samplerate == 16000 and info.channels == 1 and info.duration > 3.0
