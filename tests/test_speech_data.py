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
from edge_agent.data.speech import (
    SILENCE,
    UNKNOWN,
    list_clips,
    load_background_noise,
    load_speech_commands,
    load_waves,
    read_clip,
)
from edge_agent.data.speech_synth import (
    SAMPLE_RATE,
    default_ood_clip_path,
    room_and_microphone,
    write_speech_dataset,
    write_wav,
)

WORDS = ("yes", "no", "up")
UNKNOWN_WORDS = ("bed", "cat", "dog")
ACCENTS = ("en-us", "en-gb-scotland")
TINY = dict(
    words=WORDS, unknown_words=UNKNOWN_WORDS, accents=ACCENTS, speakers_per_accent=3, clips_per_speaker=2, seed=3
)
LABELS12 = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", SILENCE, UNKNOWN]


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
    assert summary["clips"] == 3 * 2 * 3 * 2 + 3 * 2 * 3  # words x accents x speakers x clips, unknown words x 1
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "_background_noise_",
        "bed",
        "cat",
        "dog",
        "no",
        "up",
        "yes",
    ]
    assert len(list((root / "_background_noise_").glob("*.wav"))) == 5
    assert soundfile.info(str(root / "_background_noise_" / "pink_noise.wav")).frames == 60 * 16000
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
    # Whole voices are held out: no test or validation voice variant is heard in training, in any accent.
    variants = {
        split: {s["variant"] for s in speakers.values() if s["split"] == split}
        for split in ("train", "validation", "testing")
    }
    assert not variants["train"] & variants["testing"] and not variants["train"] & variants["validation"]
    assert not variants["validation"] & variants["testing"]
    assert summary["splits"] == {"train": 18, "validation": 18, "testing": 18}


def test_loader_round_trip(tiny):
    root, _ = tiny
    fe = AudioFrontend()
    train = load_speech_commands(root, fe, "train")
    test = load_speech_commands(root, fe, "testing")
    everything = load_speech_commands(root, fe, "all")
    assert train.x.shape == (18, 1, 49, 40) and len(test) == 18 and len(everything) == 54
    assert train.classes == sorted(WORDS + UNKNOWN_WORDS)  # without a model's labels: every folder a class
    waves, labels = load_waves(root, "testing")
    np.testing.assert_array_equal(test.x.numpy(), fe(waves))
    assert labels == test.labels
    only = load_speech_commands(root, fe, "all", words=["up"])
    assert only.classes == ["up"] and len(only) == 12
    with pytest.raises(DataError, match="no folder for word.*stop"):
        load_speech_commands(root, fe, words=["stop"])
    assert len(load_background_noise(root)) == 5
    twelve = load_speech_commands(root, fe, "train", labels=LABELS12)
    assert set(twelve.labels) == {*WORDS, SILENCE, UNKNOWN}
    assert twelve.labels.count(SILENCE) == twelve.labels.count(UNKNOWN) == 1  # 10% of the 12 keyword clips


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
    keyword = [c for c in list_clips(folder, "all") if c[1] in WORDS]
    assert len(list_clips(folder, "testing")) == len(list_clips(folder, "all")) == len(list_clips(folder, "train"))
    assert len(keyword) == 12


def test_domain_and_class_streams(tiny, tmp_path):
    root, _ = tiny
    speakers = json.loads((root / "speakers.json").read_text())
    domain = write_kws_stream(root, tmp_path / "domain", kind="domain", n_devices=2)
    for folder, accent in zip(domain, ACCENTS, strict=True):
        clips = list_clips(folder, "all")
        assert {w for _, w in clips} == set(WORDS + UNKNOWN_WORDS)
        assert {speakers[Path(r).name.split("_nohash_")[0]]["accent"] for r, _ in clips} == {accent}
        assert len(load_speech_commands(folder, split="testing")) == 9
        assert len(load_speech_commands(folder, split="train")) == 9
        assert len(list((folder / "_background_noise_").glob("*.wav"))) == 5  # every device can make _silence_
        twelve = load_speech_commands(folder, split="train", labels=LABELS12)
        assert {SILENCE, UNKNOWN} <= set(twelve.labels)
    assert len(list_clips(tmp_path / "domain" / "test", "testing")) == 18
    classes = write_kws_stream(root, tmp_path / "class", kind="class", n_devices=3)
    assert [[w for w in sorted(f.name for f in d.iterdir() if f.is_dir()) if w in WORDS] for d in classes] == [
        ["yes"],
        ["no"],
        ["up"],
    ]
    # The unknown-word clips are dealt out: each is on exactly one device.
    unknown = [sorted(r for r, w in list_clips(d, "all") if w in UNKNOWN_WORDS) for d in classes]
    assert sum(map(len, unknown)) == 18 and len(set(sum(unknown, []))) == 18
    meta = json.loads((tmp_path / "class" / "stream.json").read_text())
    assert meta["words"] == list(WORDS) and meta["unknown_words"] == sorted(UNKNOWN_WORDS)
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


def _real_layout(root: Path) -> dict[str, np.ndarray]:
    """A small folder laid out like the real Speech Commands download (not made by the synthesizer)."""
    rng = np.random.default_rng(0)
    words = {"yes": 10, "no": 10, "bed": 6, "marvin": 6}  # two keywords, two other words
    val, test = [], []
    for word, n in words.items():
        (root / word).mkdir(parents=True)
        for k in range(n):
            rel = f"{word}/{k:04x}abcd_nohash_0.wav"
            write_wav(root / rel, 0.3 * np.sin(2 * np.pi * (200 + 30 * k) * np.arange(16000) / 16000))
            (val if k % 5 == 3 else test if k % 5 == 4 else []).append(rel)
    (root / "validation_list.txt").write_text("".join(r + "\n" for r in val))
    (root / "testing_list.txt").write_text("".join(r + "\n" for r in test))
    noise = {
        "running_tap.wav": rng.uniform(-0.5, 0.5, 20 * 16000),
        "exercise_bike.wav": rng.uniform(-0.5, 0.5, 30 * 16000),
    }
    (root / "_background_noise_").mkdir()
    for name, wave_ in noise.items():
        write_wav(root / "_background_noise_" / name, wave_)
    (root / "_background_noise_" / "README.md").write_text("recordings")
    return noise


def test_twelve_labels_on_the_real_layout(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    noise = _real_layout(root)
    labels = ["yes", "no", SILENCE, UNKNOWN]
    splits = {s: list_clips(root, s, labels=labels) for s in ("train", "validation", "testing")}
    for split, clips in splits.items():
        known = [c for c in clips if c[1] in ("yes", "no")]
        unknown = [r for r, w in clips if w == UNKNOWN]
        silence = [r for r, w in clips if w == SILENCE]
        assert len(known) == {"train": 12, "validation": 4, "testing": 4}[split]
        # Non-keyword folders become _unknown_, about 10% of the keyword clips, from this split only.
        assert len(unknown) == max(1, round(0.1 * len(known))) and {r.split("/")[0] for r in unknown} <= {
            "bed",
            "marvin",
        }
        assert set(unknown) <= {r for r, _ in list_clips(root, split)}
        assert len(silence) == max(1, round(0.1 * len(known)))
        for entry in silence:
            name, _, where = entry.partition("#")
            start, gain = int(where.split(":")[0]), float(where.split(":")[1])
            wave_ = noise[name.split("/")[1]]
            lo, hi = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "testing": (0.9, 1.0)}[split]
            assert lo * wave_.size <= start and start + 16000 <= hi * wave_.size  # each split has its own stretch
            assert 0.05 <= gain <= 1.0
    data = load_speech_commands(root, AudioFrontend(), "train", labels=labels)
    assert data.classes == sorted(["yes", "no", SILENCE, UNKNOWN]) and len(data) == len(splits["train"])
    waves, names = load_waves(root, "train", labels=labels)
    i = names.index(SILENCE)
    name, _, where = splits["train"][i][0].partition("#")
    start, gain = int(where.split(":")[0]), float(where.split(":")[1])
    expected = np.clip(np.round(noise[name.split("/")[1]][start : start + 16000] * 32767), -32768, 32767) / 32768
    np.testing.assert_allclose(waves[i], expected * gain, atol=1e-4)  # a window of the recording at its level
    # A model without the two shared classes keeps one class per folder (no silence, no unknown).
    assert {w for _, w in list_clips(root, "train", labels=["yes", "no"])} == {"yes", "no", "bed", "marvin"}
    # The same real layout splits into device streams whose devices all have _silence_ and _unknown_.
    folders = write_kws_stream(root, tmp_path / "class", kind="class", n_devices=2)
    meta = json.loads((tmp_path / "class" / "stream.json").read_text())
    assert meta["words"] == ["no", "yes"] and meta["unknown_words"] == ["bed", "marvin"]
    for folder in folders:
        assert {SILENCE, UNKNOWN} <= set(load_speech_commands(folder, AudioFrontend(), "train", labels=labels).labels)


def test_room_and_microphone_change_the_sound():
    rng = np.random.default_rng(1)
    click = np.zeros(8000, np.float32)
    click[100] = 1.0
    room = room_and_microphone(click, rng, reverb_p=1.0, band_p=0.0)
    assert room.size > click.size and np.abs(room[2000:]).max() > 1e-3  # a decaying tail after the click
    noise = np.random.default_rng(2).standard_normal(SAMPLE_RATE).astype(np.float32)
    mic = room_and_microphone(noise, np.random.default_rng(3), reverb_p=0.0, band_p=1.0)
    spec_in, spec_out = np.abs(np.fft.rfft(noise)) ** 2, np.abs(np.fft.rfft(mic)) ** 2
    freqs = np.fft.rfftfreq(SAMPLE_RATE, 1 / SAMPLE_RATE)
    top, mid = freqs > 7500, (freqs > 1000) & (freqs < 2000)
    # Band-limited: the top of the band loses far more than the middle.
    assert spec_out[top].sum() / spec_in[top].sum() < 0.5 * spec_out[mid].sum() / spec_in[mid].sum()


def test_bundled_ood_clip():
    path = default_ood_clip_path()
    assert path.stat().st_size < 300_000
    info = soundfile.info(str(path))
    assert info.samplerate == 16000 and info.channels == 1 and info.duration > 3.0
