"""The ex-model recipe variant: cross-entropy on the targets' argmax on top of the logit loss, and SGD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.variants import EXMODEL_LR, EXMODEL_MOMENTUM, variant
from central.methods import ConsolidationConfig, Teacher, get_method
from edge_agent.data.ood import NoiseOOD
from edge_agent.inputs import InputSpec
from edge_agent.models import create_model

SPEC = InputSpec("image", (1, 8, 8))


def _teacher(seed: int, known: list[int]) -> Teacher:
    torch.manual_seed(seed)
    return Teacher(create_model("cnn-s", 6, in_chans=1, width=4).eval(), torch.tensor(known, dtype=torch.bool))


def test_exmodel_loss_adds_cross_entropy_on_the_argmax_of_the_targets():
    ex = get_method(variant("dac", {"recipe": "exmodel"}))
    assert ex.name == "dac[recipe=exmodel]" and variant("dac", {"recipe": "default"}) == "dac"
    torch.manual_seed(0)
    student, target = torch.randn(5, 4), torch.randn(5, 4)
    mask = torch.tensor([True, True, True, False])
    want = F.mse_loss(student[:, :3], target[:, :3]) + F.cross_entropy(student[:, :3], target[:, :3].argmax(1))
    assert float(ex.logit_loss(student, target, mask)) == pytest.approx(float(want), rel=1e-6)
    assert float(ex.logit_loss(student, target, mask)) > float(get_method("dac").logit_loss(student, target, mask))


def test_exmodel_trains_with_sgd_and_momentum():
    ex = get_method(variant("kd", {"recipe": "exmodel"}))
    prev, new = _teacher(0, [1, 1, 0, 0, 0, 0]), _teacher(1, [0, 0, 1, 1, 0, 0])
    cfg = ConsolidationConfig(steps=4, batch_size=8, seed=0).for_input("image")
    s = ex.setup(prev, new, NoiseOOD(SPEC), cfg)
    assert isinstance(s.opt, torch.optim.SGD)
    group = s.opt.param_groups[0]
    assert group["lr"] == EXMODEL_LR and group["momentum"] == EXMODEL_MOMENTUM
    before = [p.detach().clone() for p in s.student.parameters()]
    for _ in range(cfg.steps):
        ex.step(s)
    assert any(not torch.equal(a, b) for a, b in zip(before, s.student.parameters(), strict=True))
    out = ex(prev, new, NoiseOOD(SPEC), cfg)
    assert all(torch.isfinite(v).all() for v in out.model.state_dict().values() if v.is_floating_point())
