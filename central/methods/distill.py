"""Data-agnostic double distillation: ``kd`` (logits only) and ``dac`` (logits + PLD).

Each step draws a batch from the OOD source; both frozen teachers label it. For every class, the target
logit is the support-weighted mean over the teachers that know that class (:meth:`Teacher.weights`);
classes no teacher knows are left out of the loss, which is MSE on raw logits. ``dac`` adds Projected
Latent Distillation: one linear map per teacher sends the student's latent to that teacher's latent space
(MSE); the maps are trained with the student and thrown away afterwards. The loop itself is
:class:`central.methods.loop.DistillLoop`, shared with the data-parallel runner.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from central.methods.base import Consolidated, ConsolidationConfig, Teacher, get_method, register_method
from central.methods.loop import DistillLoop


def logit_targets(teachers: list[Teacher], logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class support-weighted mean of the logits of the teachers that know the class; (targets, known mask)."""
    weight = torch.stack([t.weights() for t in teachers])  # [K, C]
    stacked = torch.stack(logits)  # [K, B, C]
    total = weight.sum(0)
    target = (stacked * weight[:, None, :]).sum(0) / total.clamp(min=1e-12)
    return target, total > 0


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
    targets = [logit_targets(teachers, [t.model(x) for t in teachers]) for x in xs]
    scores = {}
    for name, model in candidates.items():
        was_training = model.training
        model.eval()
        err = [float(F.mse_loss(model(x)[:, mask], target[:, mask])) for x, (target, mask) in zip(xs, targets, strict=True)]
        model.train(was_training)
        scores[name] = sum(err) / len(err)
    return scores


class KD(DistillLoop):
    """Logit distillation from both teachers; :class:`DAC` adds the latent term."""

    name = "kd"
    summary = "knowledge distillation of both teachers' logits on OOD data"

    def __call__(self, previous: Teacher, incoming: Teacher, ood, cfg: ConsolidationConfig, progress=None) -> Consolidated:
        model, info = self.run(previous, incoming, ood, cfg.for_input(ood.spec.kind), progress)
        return Consolidated(model, info)

    def initial_student(self, previous: Teacher, incoming: Teacher, ood, cfg: ConsolidationConfig):
        """The previous central, the class-weighted parameter average of both teachers, or ``auto``.

        When the device fine-tuned a central version (what ``edge-agent`` does), both
        models share an ancestor, the average sits in one basin and already does most of
        the work; distillation then only has to fix the rest. When they do not (devices
        trained from unrelated starts), the average is noise. ``auto`` tells the two cases
        apart without data: it starts from whichever candidate already matches the
        distillation targets better on a few OOD batches (:func:`init_scores`).
        """
        if cfg.student_init == "previous":
            return copy.deepcopy(previous.model), {"chosen": "previous"}
        average = get_method("avg")(previous, incoming, ood, cfg).model
        if cfg.student_init == "average":
            return average, {"chosen": "average"}
        if cfg.student_init == "auto":
            candidates = {"previous": previous.model, "average": average}
            scores = init_scores(candidates, [previous, incoming], ood, cfg)
            chosen = min(scores, key=scores.get)
            return copy.deepcopy(candidates[chosen]), {"chosen": chosen, "target_mse": scores}
        raise ValueError(f"unknown student_init {cfg.student_init!r} (previous, average or auto)")

    def logit_loss(self, student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student[:, mask], target[:, mask])

    def targets(self, teachers: list[Teacher], logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return logit_targets(teachers, logits)

    def latent_loss(self, z_s: torch.Tensor, z_teachers: list[torch.Tensor], projectors: nn.ModuleList) -> torch.Tensor:
        return torch.zeros((), device=z_s.device)

    def loss(self, teachers, teacher_outs, student_out, projectors, cfg: ConsolidationConfig):
        """(total, logit, latent) losses of one batch."""
        z_s, l_s = student_out
        target, mask = self.targets(teachers, [o[1] for o in teacher_outs])
        kd = self.logit_loss(l_s, target, mask)
        lat = self.latent_loss(z_s, [o[0] for o in teacher_outs], projectors)
        return kd + cfg.pld_weight * lat, kd, lat


class DAC(KD):
    """KD + Projected Latent Distillation (the paper's method)."""

    name = "dac"
    summary = "data-agnostic consolidation: kd plus projected latent distillation (the default)"

    def make_projectors(self, student, teachers) -> nn.ModuleList:
        return nn.ModuleList(nn.Linear(student.latent_dim, t.model.latent_dim) for t in teachers)

    def latent_loss(self, z_s, z_teachers, projectors):
        return sum(F.mse_loss(p(z_s), z) for p, z in zip(projectors, z_teachers, strict=True))


register_method(KD())
register_method(DAC())
