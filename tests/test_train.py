"""Device training: masked logits, label checks, determinism, resume after an interruption, device footprint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch
from conftest import cli

from central.init import init_central
from edge_agent.bundle import BundleError, load_bundle
from edge_agent.data.labeled import DataError
from edge_agent.optim import AdamCosine
from edge_agent.train import (
    DEVICE_BATCH_SIZE,
    Interrupted,
    TrainConfig,
    accumulated_loss,
    device_loss,
    jigsaw,
    load_local_data,
    micro_batch_count,
    train_bundle,
)

CFG = TrainConfig(epochs=4, seed=3)  # image models: the bce-jigsaw loss
BCE = TrainConfig(epochs=10, seed=3)  # enough epochs for a bce-* device to reach its accuracy


@pytest.mark.parametrize("loss", ["ce", "bce-noise", "bce-jigsaw"])
def test_only_own_classes_move_in_the_head(tmp_path, central0, split_digits, loss):
    cfg = replace(CFG, loss="ce") if loss == "ce" else replace(BCE, loss=loss)
    r = train_bundle(central0, split_digits / "dev2", tmp_path / "d.safetensors", cfg, progress=False)
    before, after = load_bundle(central0).model, load_bundle(r["out"]).model
    own = [2, 3]
    others = [i for i in range(10) if i not in own]
    assert torch.equal(before.head.weight[others], after.head.weight[others])
    assert torch.equal(before.head.bias[others], after.head.bias[others])
    assert not torch.equal(before.head.weight[own], after.head.weight[own])
    b = load_bundle(r["out"])
    assert b.manifest.trained_classes == ["2", "3"]
    assert b.manifest.parents == [load_bundle(central0).id]
    assert r["metrics"]["val_accuracy"] > 0.9


def _own_logits(bundle_path, x, own):
    model = load_bundle(bundle_path).model.eval()
    with torch.no_grad():
        return model(x)[:, own]


def test_jigsaw_shuffles_quadrants_and_never_returns_the_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 16, 16)
    y = jigsaw(x, g)
    assert not (y == x).flatten(1).all(1).any()  # no sample kept its own order
    quads = lambda t: t.reshape(len(t), 1, 2, 8, 2, 8).permute(0, 2, 4, 1, 3, 5).reshape(len(t), 4, -1)  # noqa: E731
    qx, qy = quads(x), quads(y)
    for i in range(len(x)):  # every output quadrant is one of the sample's own, each used once
        match = (qy[i][:, None] == qx[i][None]).all(-1)
        assert match.sum(1).eq(1).all() and match.sum(0).eq(1).all()
    assert torch.equal(jigsaw(x, torch.Generator().manual_seed(5)), jigsaw(x, torch.Generator().manual_seed(5)))
    odd = torch.randn(4, 1, 5, 7)
    z = jigsaw(odd, g)
    assert torch.equal(z[:, :, 4], odd[:, :, 4]) and torch.equal(z[:, :, :, 6], odd[:, :, :, 6])


def test_bce_jigsaw_is_the_image_default_and_says_no_on_shuffled_digits(tmp_path, central0, split_digits):
    """A bce-jigsaw device answers "mine" on its data and "not mine" on its data quadrant-shuffled."""
    r = train_bundle(central0, split_digits / "dev2", tmp_path / "b.safetensors", BCE, progress=False)
    assert r["metrics"]["loss"] == "bce-jigsaw" and r["metrics"]["val_accuracy"] > 0.9
    assert load_bundle(r["out"]).manifest.extra["train"]["loss"] == "bce-jigsaw"
    data = load_local_data(split_digits / "dev2", load_bundle(central0))
    shuffled = jigsaw(data.x, torch.Generator().manual_seed(123))
    own = [2, 3]
    on_data, on_neg = _own_logits(r["out"], data.x, own), _own_logits(r["out"], shuffled, own)
    assert (on_data.max(1).values > 0).float().mean() > 0.9  # sigmoid > 0.5: one of mine
    assert (on_neg.max(1).values < 0).float().mean() > 0.8  # not mine (a shuffled 3 can still look like a 3)


def test_a_bce_noise_device_says_no_on_noise_and_ce_has_no_scale(tmp_path, central0, split_digits):
    """A bce-noise device answers "mine" on its data and "not mine" on noise; a ce device has no such scale."""
    r = train_bundle(central0, split_digits / "dev2", tmp_path / "b.safetensors", replace(BCE, loss="bce-noise"), progress=False)
    assert r["metrics"]["loss"] == "bce-noise" and r["metrics"]["val_accuracy"] > 0.9
    data = load_local_data(split_digits / "dev2", load_bundle(central0))
    noise = torch.randn((256, *data.x.shape[1:]), generator=torch.Generator().manual_seed(0))
    own = [2, 3]
    on_data, on_noise = _own_logits(r["out"], data.x, own), _own_logits(r["out"], noise, own)
    assert (on_data.max(1).values > 0).float().mean() > 0.9  # sigmoid > 0.5: one of mine
    assert (on_noise.max(1).values < 0).float().mean() > 0.9  # not mine
    shuffled = jigsaw(data.x, torch.Generator().manual_seed(123))
    assert (_own_logits(r["out"], shuffled, own).max(1).values < 0).float().mean() < 0.5  # what bce-jigsaw adds
    ce = train_bundle(central0, split_digits / "dev2", tmp_path / "c.safetensors", replace(CFG, loss="ce"), progress=False)
    assert ce["metrics"]["loss"] == "ce" and ce["metrics"]["val_accuracy"] > 0.9
    wb, wc = load_bundle(r["out"]).model.state_dict(), load_bundle(ce["out"]).model.state_dict()
    assert not torch.equal(wb["head.weight"], wc["head.weight"])


def test_a_one_class_device_learns_only_with_bce_noise(tmp_path, central0, split_digits):
    """Softmax over a single class is constant (zero loss); one-vs-rest with negatives still teaches it."""
    data = tmp_path / "one"
    shutil.copytree(split_digits / "dev1" / "0", data / "0")
    before = load_bundle(central0).model.state_dict()
    ce = train_bundle(central0, data, tmp_path / "c.safetensors", replace(CFG, loss="ce"), progress=False)
    assert all(torch.equal(before[k], v) for k, v in load_bundle(ce["out"]).model.state_dict().items() if "weight" in k)
    b = train_bundle(central0, data, tmp_path / "b.safetensors", replace(BCE, loss="bce-noise"), progress=False)
    x = load_local_data(data, load_bundle(central0)).x
    noise = torch.randn((len(x), *x.shape[1:]), generator=torch.Generator().manual_seed(1))
    assert _own_logits(b["out"], x, [0]).min() > _own_logits(b["out"], noise, [0]).max()


def test_unknown_loss_is_refused(tmp_path, central0, split_digits):
    with pytest.raises(DataError, match="unknown training loss 'mse': use one of ce, bce-noise, bce-jigsaw"):
        train_bundle(central0, split_digits / "dev1", tmp_path / "d.safetensors", replace(CFG, loss="mse"), progress=False)
    assert not (tmp_path / "d.safetensors").exists()
    from typer.testing import CliRunner

    from edge_agent.cli import app

    args = ["train", "--model", str(central0), "--data", str(split_digits / "dev1"), "--out", str(tmp_path / "d.safetensors")]
    for bad in ("-1", "nan"):
        r = CliRunner().invoke(app, [*args, "--negatives", bad])
        assert r.exit_code != 0
        assert f"the weight of the negatives must be 0 or more, not {float(bad)}" in r.output
    assert not (tmp_path / "d.safetensors").exists()


def test_a_class_the_model_does_not_know_joins_its_label_list(tmp_path, central0, split_digits):
    data = tmp_path / "data"
    shutil.copytree(split_digits / "dev1" / "0", data / "0")
    shutil.copytree(split_digits / "dev1" / "1", data / "cat")
    r = train_bundle(central0, data, tmp_path / "d.safetensors", CFG, progress=False)
    b, base = load_bundle(r["out"]), load_bundle(central0)
    assert r["added_labels"] == ["cat"] and b.labels == [*base.labels, "cat"] and b.manifest.trained_classes == ["0", "cat"]
    assert b.model.head.weight.shape[0] == len(base.labels) + 1 and b.manifest.parents == [base.id]
    (tmp_path / "bad" / "dog\n").mkdir(parents=True)
    shutil.copy(next((split_digits / "dev1" / "0").iterdir()), tmp_path / "bad" / "dog\n")
    with pytest.raises(BundleError, match="bad label"):
        train_bundle(central0, tmp_path / "bad", tmp_path / "e.safetensors", CFG, progress=False)


def test_same_seed_same_bundle(tmp_path, central0, split_digits):
    a = train_bundle(central0, split_digits / "dev1", tmp_path / "a.safetensors", CFG, progress=False)
    b = train_bundle(central0, split_digits / "dev1", tmp_path / "b.safetensors", CFG, progress=False)
    wa, wb = load_bundle(a["out"]).model.state_dict(), load_bundle(b["out"]).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train_bundle(central0, split_digits / "dev1", tmp_path / "c.safetensors", TrainConfig(epochs=4, seed=4), progress=False)
    wc = load_bundle(c["out"]).model.state_dict()
    assert not torch.equal(wa["head.weight"], wc["head.weight"])


def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path, central0, split_digits):
    full = train_bundle(central0, split_digits / "dev3", tmp_path / "full.safetensors", CFG, progress=False)
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(Interrupted):
        train_bundle(central0, split_digits / "dev3", out, CFG, progress=False, stop_after_epoch=2)
    assert (tmp_path / "resumed.safetensors.ckpt").exists() and not out.exists()
    resumed = train_bundle(central0, split_digits / "dev3", out, CFG, progress=False)
    assert not (tmp_path / "resumed.safetensors.ckpt").exists()
    wf, wr = load_bundle(full["out"]).model.state_dict(), load_bundle(resumed["out"]).model.state_dict()
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_checkpoint_from_another_run_is_refused(tmp_path, central0, split_digits):
    out = tmp_path / "x.safetensors"
    with pytest.raises(Interrupted):
        train_bundle(central0, split_digits / "dev3", out, CFG, progress=False, stop_after_epoch=1)
    with pytest.raises(DataError, match="belongs to another run"):
        train_bundle(central0, split_digits / "dev4", out, CFG, progress=False)


def test_adam_cosine_is_torch_adam_with_cosine_annealing_bit_for_bit():
    def run(use_torch: bool) -> tuple[list[torch.Tensor], float]:
        torch.manual_seed(0)
        layers = [torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 3)]
        model = torch.nn.Sequential(*layers)
        unused = torch.nn.Parameter(torch.ones(2))  # never gets a gradient: left alone by both
        params, steps, total = [*model.parameters(), unused], 7, 9  # stop before the end: the lr is not 0 yet
        if use_torch:
            opt = torch.optim.Adam(params, lr=3e-3)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        else:
            opt = AdamCosine(params, lr=3e-3, total_steps=total)
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = torch.randn(5, 1, 6, 6, generator=g)
            model(x).square().mean().backward()
            opt.step()
            if use_torch:
                sched.step()
            opt.zero_grad()
        lr = opt.param_groups[0]["lr"] if use_torch else opt.lr
        return [p.detach().clone() for p in params], lr

    ours, ours_lr = run(False)
    ref, ref_lr = run(True)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))
    assert ours_lr == ref_lr > 0


@pytest.mark.parametrize("loss", ["ce", "bce-noise", "bce-jigsaw"])
def test_micro_batches_add_up_to_the_gradient_of_the_whole_batch(central0, loss):
    """In eval mode (BatchNorm on its running statistics, so samples are independent) the accumulated gradients of
    3 micro-batches are those of the batch in one piece, and the random stream moves as far."""
    cfg = replace(CFG, loss=loss).for_input("image")
    x, t, own = torch.rand(11, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(11) % 3, torch.arange(3)
    grads, states = [], []
    for parts in (1, 3):
        model = load_bundle(central0).model.eval()
        g = torch.Generator().manual_seed(5)
        if parts == 1:
            loss_value = device_loss(model, x, t, own, cfg, g)
            loss_value.backward()
            loss_value = float(loss_value.detach())
        else:
            assert accumulated_loss(model, x, t, own, cfg, g, parts) == pytest.approx(loss_value, rel=1e-5)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        states.append(g.get_state())
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6) for k in grads[0])
    assert torch.equal(states[0], states[1])


def test_step_memory_limit_runs_micro_batches_through_the_cli(tmp_path, central0, split_digits):
    """A real `edge-agent train` under a small --step-memory-mb: each batch of 32 runs as micro-batches, it still
    learns its two classes, and the default limit leaves 16x16 inputs in one piece."""
    model = load_bundle(central0).model
    assert micro_batch_count(model, (1, 16, 16), TrainConfig().for_input("image")) == 1
    per_step = micro_batch_count(model, (1, 16, 16), replace(TrainConfig(), step_memory_mb=0.5).for_input("image"))
    assert 1 < per_step <= 16
    base = [cli("edge-agent"), "train", "--model", str(central0), "--data", str(split_digits / "dev1"), "--epochs", "10",
            "--seed", "3", "--json"]
    p = subprocess.run([*base, "--out", str(tmp_path / "m.safetensors"), "--step-memory-mb", "0.5"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads(p.stdout)["metrics"]
    assert m["micro_batches"] == per_step and m["val_accuracy"] >= 0.9
    assert load_bundle(tmp_path / "m.safetensors").manifest.extra["train"]["step_memory_mb"] == 0.5
    p = subprocess.run([*base, "--out", str(tmp_path / "bad.safetensors"), "--step-memory-mb", "0"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "the step memory limit must be more than 0 MB, not 0.0" in p.stderr
    assert not (tmp_path / "bad.safetensors").exists()


def test_device_training_does_not_load_what_a_device_does_not_need(tmp_path):
    """`edge-agent train` on an audio model: no torch._dynamo or sympy (what using torch.optim pulls in, ~70 MB),
    no HTTP or crypto stack, no scipy; and audio models train in the device batch size by default."""
    words = ["no", "yes"]
    rng = np.random.default_rng(0)
    for w in words:
        (tmp_path / "data" / w).mkdir(parents=True)
        for i in range(3):
            soundfile.write(tmp_path / "data" / w / f"s{i}_nohash_0.wav", rng.uniform(-0.3, 0.3, 16000), 16000)
    init_central("ds-cnn", words, tmp_path / "c0.safetensors", seed=0)
    heavy = ["torch._dynamo", "sympy", "httpx", "cryptography", "scipy"]
    script = (
        "import sys\n"
        "from edge_agent.cli import main\n"
        "sys.argv = ['edge-agent', 'train', '--model', 'c0.safetensors', '--data', 'data', '--out', 'd.safetensors',"
        " '--epochs', '1']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
    )
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"
    assert load_bundle(tmp_path / "d.safetensors").manifest.extra["train"]["batch_size"] == DEVICE_BATCH_SIZE["audio"]


def test_stream_reuses_a_device_only_when_its_recipe_matches(tmp_path, central0, split_digits):
    from central.stream import Stream, train_devices
    from edge_agent.data.labeled import LabeledSet

    exps = [{"name": "dev1", "classes": ["0", "1"], "path": split_digits / "dev1"}]
    stream = Stream(split_digits, [str(i) for i in range(10)], exps, LabeledSet(torch.zeros(0), []))
    logs = []
    first = train_devices(stream, central0, tmp_path, CFG, False, logs.append, reuse=True)
    again = train_devices(stream, central0, tmp_path, CFG, False, logs.append, reuse=True)
    assert "reusing" not in logs[0] and "reusing" in logs[1] and first[0].id == again[0].id
    other = train_devices(stream, central0, tmp_path, replace(CFG, loss="ce"), False, logs.append, reuse=True)
    assert "reusing" not in logs[2] and other[0].manifest.extra["train"]["loss"] == "ce"
