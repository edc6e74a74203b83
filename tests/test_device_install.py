"""A device that only runs kits: the base package plus its runtimes, in a venv where torch cannot be installed.

`make device-venv` builds that venv (``.ci/run`` does so before the suite); the kit is exported here, with
torch, and then run there by the installed ``edge-agent`` console script, as on a 32-bit Pi.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edge_agent.inputs import InputSpec
from edge_agent.models import create_model
from edge_agent.runtime import infer
from export.calibration import noise_batches
from export.kit import write_kit

ROOT = Path(__file__).resolve().parents[1]
DEVICE_BIN = ROOT / ".venv-device" / "bin"
SPEC = InputSpec("image", (1, 16, 16), mean=(0.5,), std=(0.5,))
LABELS = [f"c{i}" for i in range(10)]

pytestmark = pytest.mark.skipif(
    not (DEVICE_BIN / "edge-agent").exists(), reason=f"no torch-free venv at {DEVICE_BIN.parent} (make device-venv)"
)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(DEVICE_BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("cnn-s", 10, in_chans=1, width=8).eval()
    out = tmp_path_factory.mktemp("device-kit") / "kit"
    # An untrained network's near-tied logits: a looser gate than the 0.97 for trained models (test_export.py).
    return write_kit(model, SPEC, LABELS, "d" * 64, out, ("onnx", "tflite"), "int8", noise_batches(SPEC, 96),
                     calib_samples=64, parity_samples=32, int8_min_top1=0.9).path


def test_the_device_venv_has_no_torch(tmp_path):
    p = subprocess.run([str(DEVICE_BIN / "python"), "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode != 0 and "No module named 'torch'" in p.stderr


def test_infer_runs_without_torch_and_matches_the_kit_here(kit, tmp_path):
    img = tmp_path / "frame.jpg"
    Image.fromarray((np.random.default_rng(3).random((120, 160, 3)) * 255).astype(np.uint8)).save(img)
    for fmt in ("onnx", "tflite"):
        p = _run("edge-agent", "infer", str(kit), str(img), "--format", fmt, "--top-k", "3", "--json", cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        there = json.loads(p.stdout)["predictions"]
        here = infer(kit, img, k=3, format=fmt)
        assert [r["label"] for r in there] == [r.label for r in here]
        assert np.allclose([r["logit"] for r in there], [r.logit for r in here], atol=1e-4)


def test_infer_takes_a_48k_stereo_float_wav_without_torch(tmp_path):
    import soundfile

    from edge_agent.audio.frontend import AudioFrontend

    fe = AudioFrontend()
    spec = InputSpec("audio", fe.input_shape, frontend=fe.to_dict())
    torch.manual_seed(0)
    kit = write_kit(create_model("ds-cnn", 3).eval(), spec, ["yes", "no", "up"], "e" * 64, tmp_path / "kws", ("onnx",),
                    parity_samples=8).path
    t = np.arange(48000) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)
    clip = tmp_path / "clip48k.wav"
    soundfile.write(str(clip), np.stack([tone, 0.5 * tone], 1).astype(np.float32), 48000, subtype="FLOAT")
    p = _run("edge-agent", "infer", str(kit), str(clip), "--top-k", "3", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    there = json.loads(p.stdout)["predictions"]
    here = infer(kit, clip, k=3)
    assert [r["label"] for r in there] == [r.label for r in here]
    assert np.allclose([r["logit"] for r in there], [r.logit for r in here], atol=1e-4)


def test_bench_runs_without_torch(kit, tmp_path):
    p = _run("edge-agent", "bench", str(kit), "--runs", "20", "--warmup", "5", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads(p.stdout)
    assert {(r["runtime"], r["precision"]) for r in rows} == {("onnx", "int8"), ("tflite", "int8")}
    assert all(r["p50_ms"] > 0 and r["runs"] == 20 for r in rows)


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (("edge-agent", "train", "--model", "m.safetensors", "--data", "d", "--out", "o.safetensors"), "train"),
        (("central", "init", "--labels", "labels.txt"), "train"),
        (("central", "serve", "--data-dir", "reg"), "central"),
    ],
)
def test_a_missing_extra_is_one_line_and_exit_2(argv, extra, tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\n")
    p = _run(*argv, cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'edge-dcl[{extra}]'" in lines[0], p.stderr
