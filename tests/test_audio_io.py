"""One audio reader for training, evaluation and inference: WAV encodings, FLAC, channels, resampling."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from edge_agent.audio.frontend import AudioFrontend
from edge_agent.audio.io import AudioReadError, read_audio_file, resample
from edge_agent.data.labeled import DataError
from edge_agent.data.speech import load_speech_commands, read_clip
from edge_agent.inputs import InputSpec
from edge_agent.models import create_model
from edge_agent.runtime import KitInputError, audio_input, infer, preprocess_audio
from export.kit import write_kit

FE = AudioFrontend()
SPEC = InputSpec("audio", FE.input_shape, frontend=FE.to_dict())
# One tone per mel band (log-spaced 80 Hz .. 7 kHz): band-limited, so the same signal can be sampled at any rate,
# and every band of the log-mel has energy (an empty band's log would magnify resampling residue).
TONES = np.geomspace(80, 7000, 40)
PHASES = np.random.default_rng(0).uniform(0, 2 * np.pi, 40)


def signal(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (0.6 / 40 * np.sin(2 * np.pi * TONES[:, None] * t + PHASES[:, None]).sum(0)).astype(np.float64)


def write_wav(path: Path, x: np.ndarray, rate: int, encoding: str, extensible: bool = False) -> Path:
    """A WAV written byte by byte (not by the reader under test): ``x`` float ``[frames, channels]`` in [-1, 1]."""
    x = np.atleast_2d(x.T).T
    frames, ch = x.shape
    if encoding == "uint8":
        data, tag, width = (np.round(x * 127) + 128).astype(np.uint8).tobytes(), 1, 1
    elif encoding == "int16":
        data, tag, width = np.round(x * 32767).astype("<i2").tobytes(), 1, 2
    elif encoding == "int24":
        v = np.round(x * (2**23 - 1)).astype("<i4").reshape(-1)
        data = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes()
        tag, width = 1, 3
    elif encoding == "int32":
        data, tag, width = np.round(x * (2**31 - 1)).astype("<i4").tobytes(), 1, 4
    elif encoding in ("float32", "float64"):
        width = 4 if encoding == "float32" else 8
        data, tag = x.astype(f"<f{width}").tobytes(), 3
    else:
        raise ValueError(encoding)
    block = width * ch
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, ch, rate, rate * block, block, 8 * width)
    if extensible:
        guid = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, 8 * width, 0) + guid
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"LIST" + struct.pack("<I", 5) + b"INFOx\x00"  # an odd-sized chunk to skip, with its pad byte
    chunks += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return path


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The 16 kHz mono int16 original and its features."""
    path = write_wav(tmp_path_factory.mktemp("orig") / "orig.wav", signal(16000), 16000, "int16")
    return path, FE(read_clip(path))


def test_resampler_equals_scipy_resample_poly():
    signal_ = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(1)
    for rate_in, rate_out, up, down in ((48000, 16000, 1, 3), (44100, 16000, 160, 441), (8000, 16000, 2, 1),
                                        (22050, 16000, 320, 441), (16000, 44100, 441, 160)):
        x = rng.standard_normal((2, 3001))
        got = resample(x, rate_in, rate_out)
        want = signal_.resample_poly(x, up, down, axis=-1)
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-6  # the same filter; the rest is float32 rounding
    assert np.array_equal(resample(x, 48000, 16000), resample(x, 48000, 16000))  # deterministic


# Measured (max / mean abs feature difference to the original; features are roughly unit-variance): 16-bit plain and
# EXTENSIBLE 0 / 0; 24 and 32-bit, float32/64 and stereo 1.4e-4 / 3.2e-5 (the int16 rounding of the original);
# 8-bit 0.035 / 0.0069; 44.1 and 48 kHz resampled 0.020 / 0.0010.  Tolerances: about 2.5x those.
CASES = [
    # (name, rate, channels, encoding, extensible, max abs tolerance, mean abs tolerance)
    ("int16", 16000, 1, "int16", False, 1e-6, 1e-7),
    ("int16-extensible", 16000, 1, "int16", True, 1e-6, 1e-7),
    ("uint8", 16000, 1, "uint8", False, 0.09, 0.02),
    ("int24", 16000, 1, "int24", False, 4e-4, 1e-4),
    ("int32", 16000, 1, "int32", False, 4e-4, 1e-4),
    ("float32", 16000, 1, "float32", False, 4e-4, 1e-4),
    ("float64-extensible", 16000, 1, "float64", True, 4e-4, 1e-4),
    ("stereo-int16", 16000, 2, "int16", False, 4e-4, 1e-4),
    ("44k1-int24", 44100, 1, "int24", False, 0.05, 0.003),
    ("48k-stereo-float32", 48000, 2, "float32", False, 0.05, 0.003),
    ("48k-int16-extensible", 48000, 1, "int16", True, 0.05, 0.003),
]


@pytest.mark.parametrize(("name", "rate", "channels", "encoding", "ext", "max_tol", "mean_tol"), CASES)
def test_every_encoding_gives_the_features_of_the_original(tmp_path, original, name, rate, channels, encoding, ext,
                                                           max_tol, mean_tol):
    x = signal(rate)
    if channels == 2:
        x = np.stack([1.5 * x, 0.5 * x], 1)  # the mean of the channels is the signal
    path = write_wav(tmp_path / f"{name}.wav", x, rate, encoding, ext)
    samples, info = read_audio_file(path)
    assert (info.rate, info.channels, info.encoding) == (rate, channels, encoding if encoding != "uint8" else "uint8")
    assert samples.shape == (len(x), channels)
    feats = FE(read_clip(path))
    diff = np.abs(feats - original[1])
    assert diff.max() <= max_tol and diff.mean() <= mean_tol, (diff.max(), diff.mean())
    # inference reads the file with the same code: the same features, bit for bit
    assert np.array_equal(preprocess_audio(path, SPEC)[0], feats)


def test_flac_is_read_like_the_wav(tmp_path, original):
    path = tmp_path / "orig.flac"
    soundfile.write(str(path), np.round(signal(16000) * 32767).astype(np.int16), 16000, subtype="PCM_16")
    assert read_audio_file(path)[1].encoding == "flac/pcm_16"
    assert np.array_equal(FE(read_clip(path)), original[1])
    stereo48 = tmp_path / "s48.flac"
    soundfile.write(str(stereo48), np.stack([signal(48000)] * 2, 1), 48000, subtype="PCM_24")
    assert np.abs(FE(read_clip(stereo48)) - original[1]).max() <= 0.05


def test_a_training_folder_reads_flac_and_every_encoding(tmp_path, original):
    root = tmp_path / "dev"
    (root / "yes").mkdir(parents=True)
    (root / "no").mkdir()
    write_wav(root / "yes" / "a.wav", signal(16000), 16000, "int16")
    write_wav(root / "yes" / "b.wav", np.stack([signal(48000)] * 2, 1), 48000, "float32")
    soundfile.write(str(root / "no" / "c.flac"), signal(44100), 44100, subtype="PCM_24")
    data = load_speech_commands(root, FE, "all")
    assert data.labels == ["no", "yes", "yes"]
    assert torch.equal(data.x[1], torch.from_numpy(original[1]))
    for resampled in (data.x[0], data.x[2]):
        assert torch.abs(resampled - torch.from_numpy(original[1])).max() <= 0.05
    assert data.report.sources == {"16000 Hz mono int16": 1, "48000 Hz stereo float32": 1, "44100 Hz mono flac/pcm_24": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00\x00\x7d\x00\x00\x02\x00\x10\x00"
         b"data\x00\x7d\x00\x00" + b"\x00" * 100, "truncated"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x07\x00\x01\x00\x40\x1f\x00\x00\x40\x1f\x00\x00\x01\x00\x08\x00"
         b"data\x04\x00\x00\x00\x00\x00\x00\x00", "mu-law WAV is not supported"),
        (b"not a wav at all", "not a RIFF/WAVE file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00\x00\x7d\x00\x00\x02\x00\x10\x00"
         b"data\x00\x00\x00\x00", "has no samples"),
    ],
)
def test_bad_wavs_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioReadError, match=message) as e:
        read_audio_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match=message):
        read_clip(path)
    with pytest.raises(KitInputError, match=message):
        preprocess_audio(path, SPEC)


@pytest.fixture(scope="module")
def audio_kit(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("ds-cnn", 3).eval()
    return write_kit(model, SPEC, ["yes", "no", "up"], "d" * 64, tmp_path_factory.mktemp("k") / "k", ("onnx",),
                     parity_samples=8).path


def test_infer_takes_44k1_48k_float_and_24_bit_wavs(tmp_path, audio_kit, original):
    ref = infer(audio_kit, original[0], k=3)
    for rate, enc in ((48000, "float32"), (44100, "int24")):
        path = write_wav(tmp_path / f"{rate}.wav", np.stack([signal(rate)] * 2, 1), rate, enc)
        got = infer(audio_kit, path, k=3)
        assert [p.label for p in got] == [p.label for p in ref]
        assert np.allclose([p.logit for p in got], [p.logit for p in ref], atol=0.05)
    low = write_wav(tmp_path / "8k.wav", signal(8000), 8000, "int16")  # upsampled; no energy above 4 kHz
    assert len(infer(audio_kit, low, k=3)) == 3


def test_audio_buffers_get_the_file_preprocessing(original):
    wave16 = np.round(signal(16000) * 32767).astype(np.int16)
    assert np.array_equal(audio_input(wave16, 16000, SPEC)[0], preprocess_audio(original[0], SPEC)[0])
    stereo48 = np.stack([signal(48000)] * 2, 1).astype(np.float32)
    assert np.abs(audio_input(stereo48, 48000, SPEC)[0] - original[1]).max() <= 0.05
    with pytest.raises(KitInputError, match="sample rate"):
        audio_input(wave16, 0, SPEC)
    with pytest.raises(KitInputError, match="float, int16 or int32"):
        audio_input(wave16.astype(np.uint16), 16000, SPEC)
