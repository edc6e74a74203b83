"""The bundle: round trip, and every way a file can be wrong is refused with one line."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from edge_agent.bundle import BundleError, bundle_id, load_bundle, load_bundle_bytes, new_manifest, save_bundle
from edge_agent.inputs import InputSpec
from edge_agent.models import create_model, list_models

SPEC = InputSpec("image", (1, 16, 16))


def _saved(tmp_path, num_classes=3):
    torch.manual_seed(0)
    model = create_model("cnn-s", num_classes, width=8)
    manifest = new_manifest(model, [f"c{i}" for i in range(num_classes)], SPEC, trained_classes=["c1"], parents=["p" * 64])
    path = tmp_path / "b.safetensors"
    bid = save_bundle(model, manifest, path)
    return model, path, bid


def _one_line_error(data: bytes) -> str:
    with pytest.raises(BundleError) as e:
        load_bundle_bytes(data)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_round_trip_keeps_weights_manifest_and_id(tmp_path):
    model, path, bid = _saved(tmp_path)
    b = load_bundle(path)
    assert b.id == bid == bundle_id(path)
    assert b.manifest.labels == ["c0", "c1", "c2"]
    assert b.manifest.trained_classes == ["c1"]
    assert b.manifest.parents == ["p" * 64]
    assert b.manifest.arch == "cnn-s" and b.manifest.arch_config["width"] == 8
    for k, v in model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    x = torch.randn(4, 1, 16, 16)
    model.eval()
    assert torch.allclose(model(x), b.model(x))


def test_every_model_exposes_latent_and_logits():
    for name in list_models():
        cfg = {"in_chans": 1} if name == "cnn-s" else {}
        m = create_model(name, 7, **cfg).eval()
        shape = (1, 16, 16) if name == "cnn-s" else (1, 49, 40)
        z, logits = m.latent_and_logits(torch.randn(2, *shape))
        assert z.shape == (2, m.latent_dim) and logits.shape == (2, 7)
        assert torch.allclose(m.head(z), logits)


def test_truncated_file(tmp_path):
    _, path, _ = _saved(tmp_path)
    data = path.read_bytes()
    assert "truncated" in _one_line_error(data[: len(data) // 2])
    assert "too short" in _one_line_error(data[:5])


def test_edited_byte_in_weights_is_caught(tmp_path):
    _, path, _ = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    assert "checksum" in _one_line_error(bytes(data))


def test_edited_byte_in_header_is_caught(tmp_path):
    _, path, _ = _saved(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n]
    assert header.count(b"cnn-s") == 1
    header = header.replace(b"cnn-s", b"cnn-x")
    assert "unknown architecture 'cnn-x'" in _one_line_error(data[:8] + header + data[8 + n :])


def _rewrite(tmp_path, mutate):
    """Re-save tensors with an edited manifest or edited tensors (a crafted, well-formed file)."""
    from safetensors.torch import load as st_load

    _, path, _ = _saved(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    manifest = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["manifest"])
    tensors = st_load(data)
    mutate(manifest, tensors)
    import hashlib

    from edge_agent.bundle import _data_section

    manifest["weights_sha256"] = hashlib.sha256(_data_section(st_save(tensors))).hexdigest()
    return st_save(tensors, metadata={"manifest": json.dumps(manifest)})


def test_wrong_shape(tmp_path):
    def mutate(m, t):
        t["head.weight"] = torch.zeros(4, t["head.weight"].shape[1])

    assert "shape" in _one_line_error(_rewrite(tmp_path, mutate))


def test_wrong_dtype(tmp_path):
    def mutate(m, t):
        t["head.bias"] = t["head.bias"].double()

    assert "dtype" in _one_line_error(_rewrite(tmp_path, mutate))


def test_nan_weights(tmp_path):
    def mutate(m, t):
        t["head.weight"][0, 0] = float("nan")

    assert "NaN" in _one_line_error(_rewrite(tmp_path, mutate))


def test_unknown_architecture(tmp_path):
    def mutate(m, t):
        m["arch"] = "resnet-9000"

    assert "unknown architecture" in _one_line_error(_rewrite(tmp_path, mutate))


def test_missing_and_extra_tensors(tmp_path):
    def drop(m, t):
        del t["head.bias"]

    assert "lacks" in _one_line_error(_rewrite(tmp_path, drop))

    def add(m, t):
        t["evil"] = torch.zeros(1)

    assert "evil" in _one_line_error(_rewrite(tmp_path, add))


def test_labels_must_fit_the_head(tmp_path):
    def mutate(m, t):
        m["labels"] = m["labels"] + ["extra"]

    assert "shape" in _one_line_error(_rewrite(tmp_path, mutate))


def test_plain_safetensors_without_manifest(tmp_path):
    data = st_save({"w": torch.zeros(2)})
    assert "no manifest" in _one_line_error(data)


def test_refuses_to_save_nan(tmp_path):
    model = create_model("cnn-s", 2, width=8)
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    manifest = new_manifest(model, ["a", "b"], SPEC)
    with pytest.raises(BundleError, match="NaN or infinite"):
        save_bundle(model, manifest, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
