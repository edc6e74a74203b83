"""Data-agnostic double distillation: ``kd`` (logits only) and ``dac`` (logits + PLD).

The student starts from the previous central model. Each step draws a batch
from the OOD source; both frozen teachers label it. For every class, the target
logit is the mean over the teachers that know that class; classes no teacher
knows are left out of the loss. ``dac`` adds Projected Latent Distillation: one
linear map per teacher sends the student's latent to that teacher's latent space
(MSE); the maps are trained with the student and thrown away afterwards.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from central.methods.base import ConsolidationConfig, Teacher, get_method, register_method


def logit_targets(
    teachers: list[Teacher], logits: list[torch.Tensor], norm: str = "none", weighting: str = "equal"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class weighted mean of the logits of the teachers that know the class; returns (targets, known mask).

    ``weighting="equal"`` gives every teacher that knows a class the same weight;
    ``"support"`` weights it by the number of devices behind it (:meth:`Teacher.weights`),
    so after k domain devices the previous central counts k times and the new device once.

    ``norm="centre"`` first subtracts, per sample, each teacher's mean logit over the
    classes it knows: a masked-CE device only ever learned logit *differences*, so its
    mean level is arbitrary and must not decide which task wins the argmax.
    """
    known = torch.stack([t.known for t in teachers]).float()  # [K, C]
    weight = torch.stack([t.weights(weighting) for t in teachers])  # [K, C]
    stacked = torch.stack(logits)  # [K, B, C]
    if norm == "centre":
        mean = (stacked * known[:, None, :]).sum(-1, keepdim=True) / known.sum(-1).clamp(min=1)[:, None, None]
        stacked = stacked - mean
    elif norm != "none":
        raise ValueError(f"unknown target normalisation {norm!r} (none or centre)")
    total = weight.sum(0)
    target = (stacked * weight[:, None, :]).sum(0) / total.clamp(min=1e-12)
    return target, total > 0


def logit_loss(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cfg: ConsolidationConfig) -> torch.Tensor:
    s, t = student[:, mask], target[:, mask]
    if cfg.logit_loss == "mse":
        return F.mse_loss(s, t)
    if cfg.logit_loss == "kl":
        tau = cfg.temperature
        return F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="batchmean") * tau * tau
    raise ValueError(f"unknown logit loss {cfg.logit_loss!r} (mse or kl)")


@torch.no_grad()
def init_scores(
    candidates: dict[str, nn.Module], teachers: list[Teacher], ood, cfg: ConsolidationConfig, batches: int = 4
) -> dict[str, float]:
    """Mean squared error of each candidate's logits to the distillation targets on ``batches`` OOD batches.

    Eval mode (running BatchNorm statistics), as the candidate would be deployed; the batches
    come from their own generator so the consolidation's batch sequence is unchanged.
    """
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    device = next(teachers[0].model.parameters()).device
    xs = [ood.sample(cfg.batch_size, g).to(device) for _ in range(batches)]
    targets = [logit_targets(teachers, [t.model(x) for t in teachers], cfg.target_norm, cfg.teacher_weighting) for x in xs]
    scores = {}
    for name, model in candidates.items():
        was_training = model.training
        model.eval()
        err = [float(F.mse_loss(model(x)[:, mask], target[:, mask])) for x, (target, mask) in zip(xs, targets, strict=True)]
        model.train(was_training)
        scores[name] = sum(err) / len(err)
    return scores


def make_projector(d_in: int, d_out: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(), nn.Linear(d_in, d_out))
    raise ValueError(f"unknown projector {kind!r} (linear or mlp)")


class Distill:
    """KD-only consolidation; subclasses add latent losses in :meth:`latent_loss`."""

    name = "kd"
    uses_pld = False

    def __call__(self, previous, incoming, ood, cfg: ConsolidationConfig, progress=None):
        cfg = cfg.for_input(ood.spec.kind)
        teachers = [previous, incoming]
        for t in teachers:
            t.model.eval()
            t.model.requires_grad_(False)
        # Seed before anything random is built (the projectors' init), not just before the loop.
        torch.manual_seed(cfg.seed)
        self.last_init = {"chosen": cfg.student_init}  # ``auto`` adds what it chose and why
        student = self.initial_student(previous, incoming, ood, cfg)
        student.requires_grad_(True)
        projectors = self.make_projectors(student, teachers, cfg)
        params = list(student.parameters()) + list(projectors.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
        g = torch.Generator().manual_seed(cfg.seed)
        ood = self.batch_source(ood, teachers, cfg)
        student.train(cfg.bn_mode != "frozen")
        for step in range(cfg.steps):
            x = ood.sample(cfg.batch_size, g)
            with torch.no_grad():
                outs = [t.model.latent_and_logits(x) for t in teachers]
            labels = getattr(ood, "last_labels", None)
            loss, kd, lat = self.loss(teachers, outs, student.latent_and_logits(x), projectors, cfg, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(step + 1, {"kd": float(kd.detach()), "pld": float(lat.detach())})
        if cfg.bn_mode == "reestimate":
            reestimate_bn(student, ood, g, cfg.batch_size)
        student.eval()
        student.requires_grad_(False)
        return student

    def initial_student(self, previous: Teacher, incoming: Teacher, ood, cfg: ConsolidationConfig) -> nn.Module:
        """The previous central, the class-weighted parameter average of both teachers, or ``auto``.

        When the device fine-tuned a central version (what ``edge-agent`` does), both
        models share an ancestor, the average sits in one basin and already does most of
        the work; distillation then only has to fix the rest. When they do not (devices
        trained from unrelated starts), the average is noise. ``auto`` tells the two cases
        apart without data: it starts from whichever candidate already matches the
        distillation targets better on a few OOD batches (:func:`init_scores`).
        """
        if cfg.student_init == "previous":
            return copy.deepcopy(previous.model)
        average = get_method("avg")(previous, incoming, ood, cfg)
        if cfg.student_init == "average":
            return average
        if cfg.student_init == "auto":
            candidates = {"previous": previous.model, "average": average}
            scores = init_scores(candidates, [previous, incoming], ood, cfg)
            self.last_init = {"chosen": min(scores, key=scores.get), "target_mse": scores}
            return copy.deepcopy(candidates[self.last_init["chosen"]])
        raise ValueError(f"unknown student_init {cfg.student_init!r} (previous, average or auto)")

    def loss(self, teachers, teacher_outs, student_out, projectors, cfg: ConsolidationConfig, labels=None):
        """(total, logit, latent) losses of one batch; the distributed runner calls this same function.

        ``labels`` (dreamed batches only, :mod:`central.methods.dream`): the class each sample
        was dreamed towards, -1 for plain OOD samples; adds ``cfg.dream_ce`` x cross-entropy on them.
        """
        z_s, l_s = student_out
        target, mask = logit_targets(teachers, [o[1] for o in teacher_outs], cfg.target_norm, cfg.teacher_weighting)
        kd = logit_loss(l_s, target, mask, cfg)
        lat = self.latent_loss(z_s, [o[0] for o in teacher_outs], projectors)
        total = kd + cfg.pld_weight * lat if self.uses_pld else kd
        if labels is not None and cfg.dream_ce > 0 and bool((labels >= 0).any()):
            dreamed = labels >= 0
            position = mask.long().cumsum(0) - 1  # class index -> index among the known classes
            total = total + cfg.dream_ce * F.cross_entropy(l_s[dreamed][:, mask], position[labels[dreamed]])
        return total, kd, lat

    def batch_source(self, ood, teachers: list[Teacher], cfg: ConsolidationConfig):
        """Where each step's inputs come from: the OOD source, or it dreamed towards the teachers (``dream_steps``)."""
        if cfg.dream_steps <= 0:
            return ood
        from central.methods.dream import DreamOOD

        return DreamOOD(ood, teachers, cfg.dream_steps, cfg.dream_lr, cfg.dream_share)

    def make_projectors(self, student, teachers, cfg) -> nn.ModuleList:
        return nn.ModuleList()

    def latent_loss(self, z_s: torch.Tensor, z_teachers: list[torch.Tensor], projectors: nn.ModuleList) -> torch.Tensor:
        return torch.zeros(())


class DAC(Distill):
    """KD + Projected Latent Distillation (the paper's method)."""

    name = "dac"
    uses_pld = True

    def make_projectors(self, student, teachers, cfg) -> nn.ModuleList:
        return nn.ModuleList(make_projector(student.latent_dim, t.model.latent_dim, cfg.projector) for t in teachers)

    def latent_loss(self, z_s, z_teachers, projectors):
        return sum(F.mse_loss(p(z_s), z) for p, z in zip(projectors, z_teachers, strict=True))


@torch.no_grad()
def reestimate_bn(model: nn.Module, ood, g: torch.Generator, batch_size: int, batches: int = 50) -> None:
    """Recompute BatchNorm running statistics as a plain average over OOD batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for _ in range(batches):
        model(ood.sample(batch_size, g))
    for m in bns:
        m.momentum = 0.1


register_method(Distill())
register_method(DAC())
