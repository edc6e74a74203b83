"""Consolidation methods: what the distillation touches, what the targets are, determinism."""

from __future__ import annotations

import copy

import torch

from central.methods import ConsolidationConfig, Teacher, get_method
from central.methods.distill import DAC, logit_targets
from edge_agent.data.ood import NoiseOOD
from edge_agent.inputs import InputSpec
from edge_agent.models import create_model

SPEC = InputSpec("image", (1, 8, 8))


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model("cnn-s", num_classes=6, in_chans=1, width=4)
    m.eval()
    return m


def _teachers() -> tuple[Teacher, Teacher]:
    prev = Teacher(_model(0), torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool))
    new = Teacher(_model(1), torch.tensor([0, 0, 1, 1, 0, 0], dtype=torch.bool))
    return prev, new


def _cfg(**kw) -> ConsolidationConfig:
    return ConsolidationConfig(**{"steps": 3, "batch_size": 8, "seed": 0, **kw})


def test_logit_targets_average_only_knowing_teachers():
    a = Teacher(_model(0), torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool))
    b = Teacher(_model(1), torch.tensor([0, 1, 1, 0, 0, 0], dtype=torch.bool))
    la = torch.arange(6.0).expand(2, 6)
    lb = 10 + torch.arange(6.0).expand(2, 6)
    target, mask = logit_targets([a, b], [la, lb], norm="none")
    assert mask.tolist() == [True, True, True, False, False, False]  # classes nobody knows are excluded
    assert target[0, 0] == 0.0  # only a knows class 0
    assert target[0, 1] == (1.0 + 11.0) / 2  # both know class 1
    assert target[0, 2] == 12.0  # only b knows class 2


def test_centred_targets_remove_each_teachers_mean_level():
    a = Teacher(_model(0), torch.tensor([1, 1, 0, 0], dtype=torch.bool))
    b = Teacher(_model(1), torch.tensor([0, 0, 1, 1], dtype=torch.bool))
    la = torch.tensor([[5.0, 7.0, 99.0, 99.0]])
    lb = torch.tensor([[-9.0, -9.0, 1.0, -3.0]])
    target, mask = logit_targets([a, b], [la, lb], norm="centre")
    assert torch.allclose(target, torch.tensor([[-1.0, 1.0, 2.0, -2.0]]))
    assert mask.all()


def test_dac_trains_student_and_both_projections_and_leaves_teachers_untouched(monkeypatch):
    prev, new = _teachers()
    before = [copy.deepcopy(t.model.state_dict()) for t in (prev, new)]
    captured = {}
    original = DAC.make_projectors

    def spy(self, student, teachers, cfg):
        captured["proj"] = original(self, student, teachers, cfg)
        captured["init"] = copy.deepcopy(captured["proj"].state_dict())
        return captured["proj"]

    monkeypatch.setattr(DAC, "make_projectors", spy)
    student = get_method("dac")(prev, new, NoiseOOD(SPEC), _cfg())
    for t, state in zip((prev, new), before, strict=True):
        for k, v in t.model.state_dict().items():
            assert torch.equal(v, state[k]), f"teacher changed: {k}"
        assert all(p.grad is None for p in t.model.parameters())
    assert len(captured["proj"]) == 2
    for k, v in captured["proj"].state_dict().items():
        assert not torch.equal(v, captured["init"][k]), f"projection not trained: {k}"
    moved = [k for k, v in student.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[0][k])]
    assert any(k.startswith("features") for k in moved) and "head.weight" in moved


def test_average_merges_head_rows_by_who_knows_them():
    prev, new = _teachers()
    out = get_method("avg")(prev, new, NoiseOOD(SPEC), _cfg()).state_dict()
    sp, sn = prev.model.state_dict(), new.model.state_dict()
    assert torch.equal(out["head.weight"][:2], sp["head.weight"][:2])  # only the previous central knows 0, 1
    assert torch.equal(out["head.weight"][2:4], sn["head.weight"][2:4])  # only the device knows 2, 3
    assert torch.allclose(out["head.weight"][4:], 0.5 * (sp["head.weight"][4:] + sn["head.weight"][4:]))
    k = "features.0.0.weight"  # 2 known classes each: equal weights
    assert torch.allclose(out[k], 0.5 * (sp[k] + sn[k]))


def test_distillation_is_deterministic_for_a_seed():
    runs = []
    for i in range(2):
        prev, new = _teachers()
        torch.manual_seed(100 + i)  # the global RNG's history must not matter (projector init)
        runs.append(get_method("dac")(prev, new, NoiseOOD(SPEC), _cfg(seed=3)).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
