"""Consolidation methods: what the distillation touches, what the targets are, determinism."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.variants import centred_targets, variant
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
    # Resolved for image models, as every method resolves it (Method.loss is also called directly here).
    return ConsolidationConfig(**{"steps": 3, "batch_size": 8, "seed": 0, **kw}).for_input("image")


def test_logit_targets_average_only_knowing_teachers():
    a = Teacher(_model(0), torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool))
    b = Teacher(_model(1), torch.tensor([0, 1, 1, 0, 0, 0], dtype=torch.bool))
    la = torch.arange(6.0).expand(2, 6)
    lb = 10 + torch.arange(6.0).expand(2, 6)
    target, mask = logit_targets([a, b], [la, lb])
    assert mask.tolist() == [True, True, True, False, False, False]  # classes nobody knows are excluded
    assert target[0, 0] == 0.0  # only a knows class 0
    assert target[0, 1] == (1.0 + 11.0) / 2  # both know class 1
    assert target[0, 2] == 12.0  # only b knows class 2


def test_centred_targets_remove_each_teachers_mean_level():
    a = Teacher(_model(0), torch.tensor([1, 1, 0, 0], dtype=torch.bool))
    b = Teacher(_model(1), torch.tensor([0, 0, 1, 1], dtype=torch.bool))
    la = torch.tensor([[5.0, 7.0, 99.0, 99.0]])
    lb = torch.tensor([[-9.0, -9.0, 1.0, -3.0]])
    target, mask = centred_targets([a, b], [la, lb])
    assert torch.allclose(target, torch.tensor([[-1.0, 1.0, 2.0, -2.0]]))
    assert mask.all()


def test_dac_trains_student_and_both_projections_and_leaves_teachers_untouched(monkeypatch):
    prev, new = _teachers()
    before = [copy.deepcopy(t.model.state_dict()) for t in (prev, new)]
    captured = {}
    original = DAC.make_projectors

    def spy(self, student, teachers):
        captured["proj"] = original(self, student, teachers)
        captured["init"] = copy.deepcopy(captured["proj"].state_dict())
        return captured["proj"]

    monkeypatch.setattr(DAC, "make_projectors", spy)
    student = get_method("dac")(prev, new, NoiseOOD(SPEC), _cfg()).model
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
    out = get_method("avg")(prev, new, NoiseOOD(SPEC), _cfg()).model.state_dict()
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
        runs.append(get_method("dac")(prev, new, NoiseOOD(SPEC), _cfg(seed=3)).model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_frozen_batchnorm_keeps_the_starting_points_statistics_and_still_learns_its_scale():
    def stats(m):
        return {k: v.clone() for k, v in m.state_dict().items() if "running" in k}

    out = {}
    for mode in ("train", "frozen"):
        prev, new = _teachers()
        before = stats(prev.model)
        weights = {k: v.clone() for k, v in prev.model.state_dict().items() if "running" not in k and "num_batches" not in k}
        student = get_method("kd")(prev, new, NoiseOOD(SPEC), _cfg(student_init="previous", batchnorm=mode)).model
        after = stats(student)
        out[mode] = all(torch.equal(before[k], after[k]) for k in before)
        assert any(not torch.equal(weights[k], student.state_dict()[k]) for k in weights)  # it did learn
    assert out == {"train": False, "frozen": True}
    with pytest.raises(ValueError, match="batchnorm must be one of train, frozen"):
        ConsolidationConfig(batchnorm="off").check()


def test_steering_pulls_half_the_batch_towards_a_class_its_teacher_knows():
    from central.methods.steer import SteeredOOD

    prev, new = _teachers()
    plain, steered = NoiseOOD(SPEC), SteeredOOD(NoiseOOD(SPEC), [prev, new], steps=3)
    x = plain.sample(64, torch.Generator().manual_seed(4))
    y = steered.sample(64, torch.Generator().manual_seed(4))
    assert torch.equal(x[32:], y[32:]) and not torch.equal(x[:32], y[:32])  # only the first half moves
    assert torch.equal(y, steered.sample(64, torch.Generator().manual_seed(4)))  # the generator decides everything
    # With one teacher that knows one class, every moved sample climbs that class's log-probability.
    one = Teacher(_model(2), torch.tensor([0, 0, 0, 1, 0, 0], dtype=torch.bool))
    z = SteeredOOD(NoiseOOD(SPEC), [one], steps=3).sample(64, torch.Generator().manual_seed(4))
    with torch.no_grad():
        gain = torch.log_softmax(one.model(z[:32]), 1)[:, 3] - torch.log_softmax(one.model(x[:32]), 1)[:, 3]
    assert bool((gain > 0).all())
    # Through a method: the loop draws steered batches when cfg.steer is set, and the result differs.
    a = get_method("kd")(*_teachers(), NoiseOOD(SPEC), _cfg(steer=0)).model.state_dict()
    b = get_method("kd")(*_teachers(), NoiseOOD(SPEC), _cfg(steer=2)).model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="steer must be 0"):
        ConsolidationConfig(steer=-1).check()


def test_support_weighting_makes_the_target_a_running_mean_over_devices():
    both = torch.ones(4, dtype=torch.bool)
    prev = Teacher(_model(0), both, support=torch.full((4,), 3.0))  # a central holding 3 devices
    new = Teacher(_model(1), both)  # one device
    lp, ln = torch.zeros(1, 4), torch.full((1, 4), 4.0)
    equal, _ = logit_targets([Teacher(prev.model, both), new], [lp, ln])
    support, _ = logit_targets([prev, new], [lp, ln])
    assert torch.allclose(equal, torch.full((1, 4), 2.0))
    assert torch.allclose(support, torch.full((1, 4), 1.0))  # (3 * 0 + 1 * 4) / 4


def test_average_with_support_weighting_is_a_running_fedavg():
    both = torch.ones(6, dtype=torch.bool)
    prev = Teacher(_model(0), both, support=torch.full((6,), 3.0))
    new = Teacher(_model(1), both, support=torch.ones(6))
    out = get_method("avg")(prev, new, NoiseOOD(SPEC), _cfg()).model.state_dict()
    sp, sn = prev.model.state_dict(), new.model.state_dict()
    for k in ("features.0.0.weight", "head.weight", "head.bias"):
        assert torch.allclose(out[k], 0.75 * sp[k] + 0.25 * sn[k])


def test_consolidated_bundles_record_and_use_how_many_devices_back_each_class(tmp_path):
    from central.consolidate import consolidate_files
    from edge_agent.bundle import load_bundle, new_manifest, save_bundle

    labels = [str(i) for i in range(6)]
    paths = []
    for i in range(4):
        model = _model(10 + i)
        classes = labels[:4] if i else []  # bundle 0 plays central-0; 1..3 are domain devices on classes 0-3
        p = tmp_path / f"b{i}.safetensors"
        save_bundle(model, new_manifest(model, labels, SPEC, trained_classes=classes), p)
        paths.append(p)
    cfg = ConsolidationConfig(steps=1, batch_size=4)
    consolidate_files(paths[0], paths[1:3], tmp_path / "c2.safetensors", method="avg", cfg=cfg, progress=False)
    c2 = load_bundle(tmp_path / "c2.safetensors")
    assert c2.manifest.extra["class_support"] == {c: 2 for c in labels[:4]}
    consolidate_files(tmp_path / "c2.safetensors", [paths[3]], tmp_path / "c3.safetensors", method="avg", cfg=cfg, progress=False)
    c3 = load_bundle(tmp_path / "c3.safetensors")
    assert c3.manifest.extra["class_support"] == {c: 3 for c in labels[:4]}
    k = "features.0.0.weight"  # the stored count of 2 is what gives the central 2/3 of the weight
    d3 = load_bundle(paths[3]).model.state_dict()[k]
    assert torch.allclose(c3.model.state_dict()[k], (2 * c2.model.state_dict()[k] + d3) / 3, atol=1e-6)


def test_benchmark_variants_change_one_hook_and_keep_the_loop():
    kl = get_method(variant("kd", {"logit_loss": "kl"}))
    assert kl.name == "kd[logit_loss=kl]" and variant("kd", {"logit_loss": "mse"}) == "kd"
    target, mask = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([True, True, False])
    assert float(kl.logit_loss(target.clone(), target, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(get_method("kd").logit_loss(target + 1, target, mask)) == pytest.approx(1.0)
    mlp = get_method(variant("dac", {"projector": "mlp", "bn": "reestimate"}))
    prev, new = _teachers()
    out = mlp(prev, new, NoiseOOD(SPEC), _cfg(steps=2))
    assert all(torch.isfinite(v).all() for v in out.model.state_dict().values() if v.is_floating_point())
    with pytest.raises(ValueError, match="unknown variant option"):
        variant("dac", {"bn": "sometimes"})


def _permuted(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same function with the hidden channels of the first two conv blocks shuffled: an unrelated basin."""
    out = copy.deepcopy(model)
    sd = out.state_dict()
    g = torch.Generator().manual_seed(seed)
    for block, nxt in (("features.0", "features.2.0.weight"), ("features.2", "features.4.0.weight")):
        n = sd[f"{block}.0.weight"].shape[0]
        perm = torch.randperm(n, generator=g)
        sd[f"{block}.0.weight"] = sd[f"{block}.0.weight"][perm]
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{block}.1.{k}"] = sd[f"{block}.1.{k}"][perm]
        sd[nxt] = sd[nxt][:, perm]
    out.load_state_dict(sd)
    return out


def test_auto_student_init_averages_only_models_that_share_a_basin():
    """A device fine-tuned from the central is averaged in; the same function in another basin is not."""
    known = torch.ones(6, dtype=torch.bool)
    prev = Teacher(_model(0), known)
    with torch.no_grad():  # give BatchNorm non-trivial statistics, so a shuffle matters everywhere
        for m in prev.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
    tuned = copy.deepcopy(prev.model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in tuned.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))
    shuffled = _permuted(prev.model, 5)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(shuffled(x), prev.model(x), atol=1e-5)  # same function, other parameters
    dac = get_method("dac")
    assert dac(prev, Teacher(tuned, known), NoiseOOD(SPEC), _cfg(student_init="auto")).info["chosen"] == "average"
    info = dac(prev, Teacher(shuffled, known), NoiseOOD(SPEC), _cfg(student_init="auto")).info
    assert info["chosen"] == "previous"
    assert info["target_mse"]["previous"] < 1e-8 < info["target_mse"]["average"]


def test_unset_settings_take_the_input_kinds_defaults():
    image = ConsolidationConfig().for_input("image")
    audio = ConsolidationConfig().for_input("audio")
    assert (image.steps, image.lr) == (1000, 3e-3)
    assert (audio.steps, audio.lr) == (500, 1e-3)
    assert (image.batchnorm, audio.batchnorm) == ("train", "frozen")
    assert (image.steer, audio.steer) == (2, 2)
    assert ConsolidationConfig(steer=0).for_input("image").steer == 0  # off stays off
    mine = ConsolidationConfig(steps=7, lr=5e-4).for_input("image")  # what the user set stays
    assert (mine.steps, mine.lr) == (7, 5e-4)
    with pytest.raises(ValueError, match="student-init must be one of previous, average, auto"):
        ConsolidationConfig(student_init="mean").check()


def test_the_consolidator_refuses_what_the_server_refuses_with_the_same_message(tmp_path):
    # The server's upload check and `central consolidate` apply one rule (edge_agent.compat);
    # test_server.py checks the server's answers to these same bundles.
    from test_server_support import make_central, refusal, unconsolidatable_uploads, wide_claim_upload

    from central.consolidate import load_inputs
    from edge_agent.bundle import BundleError

    base = tmp_path / "central-0.safetensors"
    make_central(base)
    cases = {**unconsolidatable_uploads(base), "width 2500 claimed": (wide_claim_upload(base), "arch_config")}
    for i, (name, (body, field)) in enumerate(cases.items()):
        p = tmp_path / f"upload-{i}.safetensors"
        p.write_bytes(body)
        with pytest.raises(BundleError) as e:
            load_inputs(base, [p])
        assert str(e.value) == f"{p}: {refusal(base, body)}", name
        assert field in str(e.value), name
