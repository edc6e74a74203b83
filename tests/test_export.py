"""Export: real converters (torch.onnx dynamo, litert-torch) and real runtimes, on small models."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from edge_agent.inputs import InputSpec
from edge_agent.models import create_model
from edge_agent.runtime import TfliteRunner, load_kit, sha256_file
from export.calibration import ArrayCalibrationReader, noise_batches, take_samples
from export.kit import KitExportError, write_kit
from export.onnx_export import read_onnx_metadata
from export.parity import ParityError, check_parity, compare_logits

ROOT = Path(__file__).resolve().parents[1]
TFLRT_PY = ROOT / ".venv-tflrt" / "bin" / "python"
SPEC = InputSpec("image", (1, 16, 16))
LABELS = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cnn-s", 10, in_chans=1).eval()


@pytest.fixture(scope="module")
def kits(cnn, tmp_path_factory) -> dict[str, Path]:
    """fp32 and int8 kits, each with an ONNX and a TFLite artifact (built once: conversion takes seconds)."""
    root = tmp_path_factory.mktemp("kits")
    out = {}
    for q in ("none", "int8"):
        calib = noise_batches(SPEC, 192, seed=0) if q == "int8" else None
        # An untrained network's logits on noise are near ties, so int8 flips some top-1s: the 0.97 default
        # is for trained models (tests/test_cli_output.py holds a trained one to it).
        write_kit(cnn, SPEC, LABELS, "b" * 64, root / q, ("onnx", "tflite"), q, calib, calib_samples=128, parity_samples=64,
                  int8_min_top1=0.9)
        out[q] = root / q
    return out


def test_fp32_kit_manifest_and_parity(kits):
    kit = load_kit(kits["none"])
    m = kit.manifest
    assert m["source_bundle_id"] == "b" * 64 and m["labels"] == LABELS and m["input"] == SPEC.to_dict()
    assert {a["file"]: a["layout"] for a in m["artifacts"]} == {"model.onnx": "NCHW", "model.tflite": "NHWC"}
    for a in m["artifacts"]:
        assert a["precision"] == "fp32" and a["parity"]["passed"]
        assert a["parity"]["max_abs_diff"] < 1e-4 and a["parity"]["top1_agreement"] == 1.0
        assert m["files"][a["file"]]["sha256"] == sha256_file(kits["none"] / a["file"])
    assert {"torch", "onnxruntime", "litert-torch"} <= set(m["tools"])
    meta = read_onnx_metadata(kits["none"] / "model.onnx")
    assert json.loads(meta["labels"]) == LABELS and meta["source_bundle_id"] == "b" * 64
    assert json.loads(meta["input_spec"]) == SPEC.to_dict()


def test_int8_kit_is_small_and_agrees(kits):
    fp32 = load_kit(kits["none"]).manifest["files"]
    int8 = load_kit(kits["int8"]).manifest
    for fmt in ("onnx", "tflite"):
        ratio = int8["files"][f"model.int8.{fmt}"]["bytes"] / fp32[f"model.{fmt}"]["bytes"]
        assert ratio <= 0.30, f"{fmt} int8 is {ratio:.0%} of fp32"
    for a in int8["artifacts"]:
        assert a["precision"] == "int8" and a["parity"]["top1_agreement"] >= 0.8
    # Full-integer TFLite: the input tensor itself is int8, the runtime quantizes it.
    tfl = next(a for a in int8["artifacts"] if a["format"] == "tflite")
    assert tfl["input_dtype"] == "int8"


def test_fp32_parity_failure_is_one_line(cnn):
    class Broken:
        def run(self, x):
            return cnn(torch.from_numpy(x)).detach().numpy() + 0.5

    x = take_samples(noise_batches(SPEC, 8), 8)
    with pytest.raises(ParityError) as e:
        check_parity(cnn, Broken(), x, "broken.onnx", "fp32")
    assert "\n" not in str(e.value) and "broken.onnx" in str(e.value)


def test_int8_fails_only_on_gross_disagreement():
    ref = np.eye(10, dtype=np.float32)
    near = ref + 0.3
    assert compare_logits("a", "int8", ref, near).passed
    assert not compare_logits("a", "int8", ref, np.roll(ref, 1, axis=1)).passed


def test_a_calibration_stream_read_only_in_part_leaves_autograd_on():
    it = noise_batches(SPEC, 64, batch_size=32)
    assert next(it).shape == (32, 1, 16, 16)
    assert torch.is_grad_enabled()  # the suspended generator holds no no_grad() for its caller
    take_samples(noise_batches(SPEC, 64, batch_size=16), 16)
    assert torch.is_grad_enabled()


def test_calibration_adapters():
    batches = list(noise_batches(SPEC, 70, batch_size=32))
    assert [len(b) for b in batches] == [32, 32, 6]
    assert take_samples(batches, 40).shape == (40, 1, 16, 16)
    with pytest.raises(ValueError, match="calibration batch has shape"):
        take_samples([np.zeros((2, 3, 16, 16), np.float32)], 4, SPEC.shape)
    reader = ArrayCalibrationReader(batches, "input", layout="NHWC")
    assert reader.get_next()["input"].shape == (32, 16, 16, 1)


def test_write_kit_rejects_bad_options(cnn, tmp_path):
    with pytest.raises(KitExportError, match="unknown format"):
        write_kit(cnn, SPEC, LABELS, "x", tmp_path, ("coreml",))
    with pytest.raises(KitExportError, match="calibration"):
        write_kit(cnn, SPEC, LABELS, "x", tmp_path, ("onnx",), "int8")
    with pytest.raises(KitExportError, match="labels"):
        write_kit(cnn, SPEC, LABELS[:3], "x", tmp_path, ("onnx",))


def test_export_cli_bundle_to_kit(cnn, tmp_path):
    from edge_agent.bundle import new_manifest, save_bundle
    from export.cli import register

    bundle = tmp_path / "central-5.safetensors"
    save_bundle(cnn, new_manifest(cnn, LABELS, SPEC), bundle)
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    runner = CliRunner()
    res = runner.invoke(app, ["export", "--model", str(bundle), "--format", "onnx", "--out", str(tmp_path / "kit")])
    assert res.exit_code == 0, res.output
    kit = load_kit(tmp_path / "kit")
    assert kit.source_bundle_id == sha256_file(bundle)
    res = runner.invoke(app, ["export", "--model", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "k2")])
    assert res.exit_code == 2 and "Traceback" not in res.output


@pytest.mark.tflite_runtime
def test_tflite_runs_on_tflite_runtime_2_14(kits, tmp_path):
    """The .tflite files (cnn-s fp32/int8 and ds-cnn int8) load and match under tflite-runtime 2.14 (numpy<2)."""
    if not TFLRT_PY.exists():
        pytest.skip(f"no tflite-runtime venv at {TFLRT_PY.parent.parent} (make tflite-runtime-venv)")
    torch.manual_seed(0)
    audio_spec = InputSpec("audio", (1, 49, 40))
    ds = create_model("ds-cnn", 4).eval()
    audio_kit = write_kit(ds, audio_spec, list("abcd"), "a" * 64, tmp_path / "ds", ("tflite",), "int8",
                          noise_batches(audio_spec, 64), calib_samples=32, parity_samples=32).path
    cases = [(kits["none"], SPEC), (kits["int8"], SPEC), (audio_kit, audio_spec)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for i, (kit_dir, spec) in enumerate(cases):
        kit = load_kit(kit_dir)
        x = take_samples(noise_batches(spec, 4, seed=7), 4)
        expected = np.stack([TfliteRunner(kit.path / a.file, a).run(x) for a in kit.artifacts if a.format == "tflite"])
        np.save(tmp_path / f"x{i}.npy", x)
        np.save(tmp_path / f"y{i}.npy", expected)
        proc = subprocess.run(
            [str(TFLRT_PY), str(ROOT / "tests" / "tflite_runtime_check.py"), str(kit_dir), str(tmp_path / f"x{i}.npy"), str(tmp_path / f"y{i}.npy")],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["tflite_runtime"] == "2.14.0" and not report["torch_imported"]


def _int8_types(path: Path) -> str:
    """``"u8s8"`` etc. as the quantized ONNX graph really holds them: activation zero points, then conv/linear weights."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name: i for i in g.initializer}
    name = {onnx.TensorProto.UINT8: "u8", onnx.TensorProto.INT8: "s8"}
    act = {name[inits[n.input[2]].data_type] for n in g.node if n.op_type == "QuantizeLinear"}
    weights = {name[inits[n.input[0]].data_type] for n in g.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) >= 2}
    assert len(act) == 1 and len(weights) == 1, (act, weights)
    return act.pop() + weights.pop()


def test_onnx_int8_types_are_chosen_by_export_and_by_the_server_builder(cnn, tmp_path):
    from central.server.kits import load_builder
    from edge_agent.bundle import new_manifest, save_bundle
    from export.cli import register

    bundle = tmp_path / "central-0.safetensors"
    save_bundle(cnn, new_manifest(cnn, LABELS, SPEC, trained_classes=[]), bundle)
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:
        pass

    runner = CliRunner()
    base = ["export", "--model", str(bundle), "--format", "onnx", "--quantize", "int8", "--ood", "noise",
            "--calib-samples", "64"]
    for types in (None, "s8s8", "u8s8"):
        out = tmp_path / f"kit-{types}"
        res = runner.invoke(app, base + ["--out", str(out)] + (["--onnx-int8", types] if types else []))
        assert res.exit_code == 0, res.output
        art = load_kit(out).manifest["artifacts"][0]
        assert art["int8_types"] == _int8_types(out / art["file"]) == (types or "u8u8")
    res = runner.invoke(app, base + ["--out", str(tmp_path / "bad"), "--onnx-int8", "s8u8"])
    assert res.exit_code == 2 and "Traceback" not in res.output and not (tmp_path / "bad").exists()

    # What `central serve --onnx-int8 s8s8` builds for each published version.
    load_builder(None, "noise", "s8s8")(bundle, "onnx-int8", tmp_path / "served")
    assert _int8_types(tmp_path / "served" / "model.int8.onnx") == "s8s8"
