"""Device runtime: kit loading, checksums, preprocessing, top-k, the infer CLI, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from edge_agent.inputs import InputSpec
from edge_agent.models import create_model
from edge_agent.runtime import (
    ChecksumError,
    KitError,
    KitInputError,
    _dequantize,
    _quantize,
    check_input,
    infer,
    load_kit,
    preprocess_image,
    top_k,
)
from export.kit import write_kit

SPEC = InputSpec("image", (1, 16, 16))
LABELS = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("cnn-s", 10, in_chans=1, width=8).eval()
    return write_kit(model, SPEC, LABELS, "c" * 64, tmp_path_factory.mktemp("kit") / "k", ("onnx",), parity_samples=16).path


@pytest.fixture()
def png(tmp_path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_runtime_does_not_import_torch():
    code = "import sys, edge_agent.runtime, edge_agent.infer_cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_checksum_mismatch_is_detected(kit_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(kit_dir, bad)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumError, match="checksum mismatch for .*model.onnx"):
        load_kit(bad)
    with pytest.raises(KitError, match="no manifest.json"):
        load_kit(tmp_path)


def test_manifest_cannot_point_outside_the_kit(kit_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(kit_dir, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["files"]["../model.onnx"] = m["files"].pop("model.onnx")
    m["artifacts"][0]["file"] = "../model.onnx"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(KitError, match="not a plain name"):
        load_kit(bad)


def test_preprocess_image_matches_spec(png):
    spec = InputSpec("image", (1, 16, 16), mean=(0.5,), std=(0.25,))
    x = preprocess_image(png, spec)
    assert x.shape == (1, 1, 16, 16) and x.dtype == np.float32
    ref = np.asarray(Image.open(png).convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(x[0, 0], (ref - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(KitInputError, match="does not match"):
        check_input(np.zeros((1, 3, 16, 16), np.float32), spec)


def test_top_k_and_int8_io():
    preds = top_k(np.array([0.0, 3.0, 1.0], np.float32), ["a", "b", "c"], k=2)
    assert [p.label for p in preds] == ["b", "c"] and preds[0].score > preds[1].score
    detail = {"dtype": np.int8, "quantization": (0.05, -3)}
    x = np.linspace(-10, 10, 101, dtype=np.float32)
    q = _quantize(x, detail)
    assert q.dtype == np.int8 and q.min() == -128 and q.max() == 127  # out-of-range values saturate
    inside = (x > (-128 + 3) * 0.05) & (x < (127 + 3) * 0.05)
    assert np.abs(_dequantize(q, detail) - x)[inside].max() <= 0.025 + 1e-6  # half a step


def test_infer_and_cli(kit_dir, png, tmp_path):
    preds = infer(kit_dir, png, k=3)
    assert len(preds) == 3 and abs(sum(p.score for p in top_k_all(kit_dir, png)) - 1) < 1e-5
    from edge_agent.infer_cli import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    runner = CliRunner()
    res = runner.invoke(app, ["infer", str(kit_dir), str(png), "--top-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["kit"] == str(kit_dir) and out["input"] == str(png)
    assert [p["label"] for p in out["predictions"]] == [p.label for p in preds[:2]]
    wav = tmp_path / "x.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 800)
    res = runner.invoke(app, ["infer", str(kit_dir), str(wav)])
    assert res.exit_code == 2 and "takes images" in res.output and "Traceback" not in res.output


def top_k_all(kit_dir, png):
    return infer(kit_dir, png, k=len(LABELS))


def test_audio_kit_resamples_other_rates(tmp_path):
    from edge_agent.audio.frontend import AudioFrontend

    fe = AudioFrontend()
    spec = InputSpec("audio", fe.input_shape, frontend=fe.to_dict())
    torch.manual_seed(0)
    model = create_model("ds-cnn", 3).eval()
    kit = write_kit(model, spec, ["yes", "no", "up"], "d" * 64, tmp_path / "k", ("onnx",), parity_samples=8).path
    assert load_kit(kit).manifest["audio_frontend"] == fe.to_dict()
    logits = {}
    for rate in (fe.sample_rate, 48000):
        wav = tmp_path / f"{rate}.wav"
        t = np.arange(rate) / rate
        pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(pcm.tobytes())
        logits[rate] = [p.logit for p in sorted(infer(kit, wav, k=3), key=lambda p: p.label)]
    assert np.allclose(logits[48000], logits[fe.sample_rate], atol=0.05)
