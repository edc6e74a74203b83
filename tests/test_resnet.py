"""resnet-s: the small ResNet behind the uniform model interface, exported to ONNX and TFLite."""

from __future__ import annotations

import pytest
import torch

from edge_agent.inputs import InputSpec
from edge_agent.models import EdgeModel, create_model, list_models


def test_registered_shapes_latent_and_head():
    assert "resnet-s" in list_models()
    model = create_model("resnet-s", num_classes=10).eval()
    assert isinstance(model, EdgeModel) and model.arch == "resnet-s"
    assert 250_000 <= sum(p.numel() for p in model.parameters()) <= 400_000
    for size in (28, 32):
        x = torch.randn(3, 1, size, size)
        f = model.forward_features(x)
        assert f.shape == (3, 128, (size + 3) // 4, (size + 3) // 4)
        z, logits = model.latent_and_logits(x)
        assert z.shape == (3, model.latent_dim) == (3, 128) and logits.shape == (3, 10)
        torch.testing.assert_close(model.head(z), model(x))


def test_config_rebuilds_the_same_architecture():
    model = create_model("resnet-s", num_classes=4, in_chans=3, width=16, blocks=2)
    assert model.config == {"in_chans": 3, "width": 16, "blocks": 2} and model.latent_dim == 64
    twin = create_model("resnet-s", num_classes=4, **model.config)
    twin.load_state_dict(model.state_dict())
    assert twin(torch.randn(2, 3, 28, 28)).shape == (2, 4)
    with pytest.raises(ValueError, match="blocks"):
        create_model("resnet-s", num_classes=4, blocks=0)


def test_exports_to_onnx_and_tflite_with_parity(tmp_path):
    pytest.importorskip("litert_torch", reason="the converters are in the export extra")
    from edge_agent.runtime import load_kit
    from export.kit import write_kit

    torch.manual_seed(0)
    model = create_model("resnet-s", 10).eval()
    spec = InputSpec("image", (1, 28, 28))
    write_kit(model, spec, [f"c{i}" for i in range(10)], "r" * 64, tmp_path, ("onnx", "tflite"), "none", None, parity_samples=32)
    arts = load_kit(tmp_path).manifest["artifacts"]
    assert {a["file"] for a in arts} == {"model.onnx", "model.tflite"}
    for a in arts:
        assert a["parity"]["passed"] and a["parity"]["max_abs_diff"] < 1e-4 and a["parity"]["top1_agreement"] == 1.0


def test_central_init_and_bundle_round_trip(tmp_path):
    from central.init import init_central
    from edge_agent.bundle import load_bundle

    init_central("resnet-s", [str(i) for i in range(10)], tmp_path / "c0.safetensors", (1, 28, 28), seed=3, width=16)
    b = load_bundle(tmp_path / "c0.safetensors")
    assert b.manifest.arch == "resnet-s" and b.manifest.arch_config == {"in_chans": 1, "width": 16, "blocks": 1}
    torch.manual_seed(3)
    twin = create_model("resnet-s", 10, in_chans=1, width=16).eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(b.model.eval()(x), twin(x))
