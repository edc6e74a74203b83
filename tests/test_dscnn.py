"""ds-cnn: the Hello Edge DS-CNN behind the uniform model interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_agent.models import EdgeModel, create_model, list_models


def test_registered_and_small():
    assert "ds-cnn" in list_models()
    model = create_model("ds-cnn", num_classes=10)
    assert isinstance(model, EdgeModel) and model.arch == "ds-cnn"
    n_params = sum(p.numel() for p in model.parameters())
    assert 20_000 <= n_params <= 40_000, n_params


def test_shapes_latent_and_head():
    model = create_model("ds-cnn", num_classes=12).eval()
    x = torch.randn(3, 1, 49, 40)
    features = model.forward_features(x)
    assert features.shape == (3, 64, 24, 20)
    z = model.forward_head(features, pre_logits=True)
    assert z.shape == (3, model.latent_dim) == (3, 64)
    logits = model(x)
    assert logits.shape == (3, 12)
    torch.testing.assert_close(model.head(z), logits)
    z2, logits2 = model.latent_and_logits(x)
    torch.testing.assert_close(z2, z)
    torch.testing.assert_close(logits2, logits)


def test_config_rebuilds_the_same_architecture():
    model = create_model("ds-cnn", num_classes=5, width=32, blocks=2)
    assert model.config == {"in_chans": 1, "width": 32, "blocks": 2}
    twin = create_model("ds-cnn", num_classes=5, **model.config)
    twin.load_state_dict(model.state_dict())  # raises on any key or shape mismatch
    assert model.latent_dim == 32 and model(torch.randn(2, 1, 49, 40)).shape == (2, 5)
    with pytest.raises(ValueError, match="width"):
        create_model("ds-cnn", num_classes=5, width=0)


def test_only_export_friendly_layers():
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear, nn.Sequential)
    model = create_model("ds-cnn", num_classes=10)
    for name, module in model.named_modules():
        if module is not model:
            assert isinstance(module, allowed), f"{name}: {type(module).__name__}"


def test_learns_a_time_frequency_pattern():
    torch.manual_seed(0)
    # Class 0: energy in low bands early; class 1: high bands late.
    x = torch.randn(64, 1, 49, 40) * 0.5
    y = torch.arange(64) % 2
    x[y == 0, :, :20, :10] += 1.5
    x[y == 1, :, 29:, 30:] += 1.5
    model = create_model("ds-cnn", num_classes=2, width=16, blocks=1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() == 1.0
