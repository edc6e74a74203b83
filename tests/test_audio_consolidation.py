"""Audio consolidation: the audio OOD source, and one keyword round through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.data.labeled import DataError
from edge_agent.data.ood import open_ood
from edge_agent.data.ood_audio import AudioOOD, open_audio_ood
from edge_agent.data.speech_synth import default_ood_clip_path, write_speech_dataset, write_wav
from edge_agent.models import default_input_spec

BIN = Path(sys.executable).parent
WORDS = ("yes", "no", "up")


@pytest.fixture(scope="module")
def spec():
    return default_input_spec("ds-cnn", None)


@pytest.fixture(scope="module")
def tiny_speech(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kws") / "speech"
    write_speech_dataset(
        root, words=WORDS, accents=("en-us", "en-gb-scotland"), speakers_per_accent=3, clips_per_speaker=2, seed=5
    )
    return root


def test_default_source_is_model_ready(spec):
    src = open_ood(None, spec)
    assert isinstance(src, AudioOOD) and src.name == str(default_ood_clip_path())
    x = src.sample(32, torch.Generator().manual_seed(0))
    assert x.shape == (32, 1, 49, 40) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # Normalized log-mel: near zero mean and unit scale, not a constant.
    assert abs(float(x.mean())) < 1.5 and 0.2 < float(x.std()) < 3
    assert (x[:, 0] == 0).all(dim=2).any(), "no time mask was applied"


def test_seeded_and_varied(spec):
    src = open_audio_ood(None, spec)
    a = src.sample(8, torch.Generator().manual_seed(1))
    b = src.sample(8, torch.Generator().manual_seed(1))
    c = src.sample(8, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # samples of a batch differ too


def test_waves_stay_in_range_and_augment_options(spec):
    src = open_audio_ood(None, spec, rate=(1.0, 1.0), mix_p=0.0, noise_p=0.0, time_masks=0, freq_masks=0)
    w = src.waves(16, torch.Generator().manual_seed(0))
    assert w.shape == (16, 16000) and float(w.abs().max()) <= 1.0
    with pytest.raises(DataError, match="unknown audio augmentation"):
        open_audio_ood(None, spec, speed=2)


def test_word_segments_leave_silence_around_one_segment(spec):
    plain = dict(rate=(1.0, 1.0), mix_p=0.0, noise_p=0.0, time_masks=0, freq_masks=0)
    src = open_audio_ood(None, spec, word_p=1.0, word_len=(0.3, 0.5), **plain)
    w = src.waves(32, torch.Generator().manual_seed(0))
    spans = []
    for x in w:
        sounding = torch.nonzero(x != 0).flatten()
        spans.append(int(sounding[-1] - sounding[0]) + 1)  # the speech can pause inside the segment, never outside
        assert spans[-1] <= 0.5 * 16000 + 2
    assert 0.2 * 16000 < np.mean(spans) <= 0.5 * 16000
    full = open_audio_ood(None, spec, **plain).waves(32, torch.Generator().manual_seed(0))
    assert float((full != 0).float().mean()) > 0.7  # without it, crops are running speech
    with pytest.raises(DataError, match="word_len"):
        open_audio_ood(None, spec, word_len=(0.5, 1.5))


def test_folder_of_clips(tmp_path, spec):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    t = np.arange(24000) / 16000
    write_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32))
    write_wav(tmp_path / "sub" / "b.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32))  # shorter than 1 s
    src = open_ood(tmp_path, spec)
    assert len(src.lengths) == 2
    x = src.sample(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 1, 49, 40) and torch.isfinite(x).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        open_ood(tmp_path / "empty", spec)


def test_corrupt_clip_is_a_one_line_data_error(tmp_path, spec):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(DataError) as e:
        open_ood(bad, spec)
    assert "bad.wav" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="no OOD clip"):
        open_ood(tmp_path / "missing.wav", spec)


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def test_keyword_cli_round(tmp_path, tiny_speech):
    central, ea = str(BIN / "central"), str(BIN / "edge-agent")
    from edge_agent.data.kws_streams import write_kws_stream

    write_kws_stream(tiny_speech, tmp_path / "stream", kind="domain", n_devices=2)
    # The 12-label convention: the keywords, then the two classes every device shares.
    labels = [*WORDS, "_silence_", "_unknown_"]
    (tmp_path / "words.txt").write_text("\n".join(labels) + "\n")
    run(central, "init", "--arch", "ds-cnn", "--labels", "words.txt", "--out", "c0.safetensors", cwd=tmp_path)
    for dev in ("device-01", "device-02"):
        run(ea, "train", "--model", "c0.safetensors", "--data", f"stream/{dev}", "--out", f"{dev}.safetensors",
            "--epochs", "2", cwd=tmp_path)  # fmt: skip
    # Two devices: the first is copied, the second goes through DAC with the default clip.
    run(central, "consolidate", "--base", "c0.safetensors", "--incoming", "device-01.safetensors",
        "--incoming", "device-02.safetensors", "--out", "c1.safetensors", "--steps", "3", "--batch-size", "16",
        cwd=tmp_path)  # fmt: skip
    p = run(central, "evaluate", "--model", "c1.safetensors", "--data", str(tiny_speech), "--json", cwd=tmp_path)
    report = json.loads(p.stdout)
    from edge_agent.data.speech import list_clips

    testing = list_clips(tiny_speech, "testing", labels=labels)
    keyword = [s for s in (tiny_speech / "testing_list.txt").read_text().splitlines() if s.split("/")[0] in WORDS]
    assert len(testing) == len(keyword) + 2  # one unknown word and one silence window per ~10 keyword clips
    assert report["n"] == len(testing) and set(report["per_class"]) == set(labels)
    assert 0.0 <= report["accuracy"] <= 1.0

    from edge_agent.bundle import load_bundle

    b = load_bundle(tmp_path / "c1.safetensors")
    assert b.manifest.method == "dac" and b.manifest.trained_classes == labels
    # _silence_ and _unknown_ are on every device: their support grows like a domain class's.
    assert b.manifest.extra["class_support"]["_silence_"] == b.manifest.extra["class_support"]["_unknown_"] == 2
    assert b.manifest.extra["ood"] == "default"
