"""`central evaluate` takes an artifact kit exactly as it takes a bundle."""

from __future__ import annotations

import json
import subprocess

from conftest import cli


def test_kit_and_bundle_give_the_same_report(tmp_path, central0, split_digits):
    from edge_agent.train import TrainConfig, train_bundle

    dev = train_bundle(central0, split_digits / "dev1", tmp_path / "dev1.safetensors", TrainConfig(epochs=10), progress=False)
    central = cli("central")
    kit = tmp_path / "kit"
    p = subprocess.run(
        [central, "export", "--model", dev["out"], "--format", "onnx", "--quantize", "none", "--out", str(kit)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["trained_classes"] == ["0", "1"] and manifest["source_bundle_id"] == dev["id"]
    reports = {}
    for name, model in (("bundle", dev["out"]), ("kit", str(kit))):
        p = subprocess.run(
            [central, "evaluate", "--model", model, "--data", str(split_digits / "test"), "--json"],
            capture_output=True, text=True, timeout=300,
        )
        assert p.returncode == 0, p.stderr
        reports[name] = json.loads(p.stdout)
    b, k = reports["bundle"], reports["kit"]
    assert set(b) >= {"accuracy", "n", "per_class", "per_experience"} and set(k) >= set(b) - {"model"}
    assert b["n"] == k["n"] and b["known_classes"] == k["known_classes"] == ["0", "1"]
    assert abs(b["accuracy"] - k["accuracy"]) < 1e-9  # fp32 artifact: identical predictions
    assert b["per_experience"]["dev1"]["accuracy"] > 0.9

    # Artifacts go to devices: they must not carry this machine's source paths.
    import edge_agent

    onnx_file = next(kit.glob("*.onnx"))
    from pathlib import Path

    assert str(Path(edge_agent.__file__).resolve().parent.parent).encode() not in onnx_file.read_bytes()

    # A kit whose file was edited is refused with one line.
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10] + b"0123456789")
    p = subprocess.run([central, "evaluate", "--model", str(kit), "--data", str(split_digits / "test")], capture_output=True, text=True)
    assert p.returncode == 2 and "checksum mismatch" in p.stderr and "Traceback" not in p.stderr
