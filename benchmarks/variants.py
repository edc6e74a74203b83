"""Ablation variants of the distillation methods, as small subclasses registered under their own names.

The product's ``kd`` and ``dac`` have one recipe (MSE on raw logits, support-weighted targets, linear
projectors; BatchNorm is a ConsolidationConfig setting). A benchmark that measures an alternative asks for it by name:

    variant("dac", {"projector": "mlp", "bn": "reestimate"})   # -> "dac[bn=reestimate,projector=mlp]"

and passes that name wherever a method name goes. Registration is deterministic, so worker processes
that call :func:`variant` with the same options get the same method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from central.methods import get_method, register_method
from central.methods.base import Teacher
from central.methods.distill import DAC, KD
from central.methods.loop import LoopState

OPTIONS = {
    "logit_loss": ("mse", "kl"),  # kl: KL divergence of softmax at temperature 4, times T^2
    "target_norm": ("none", "centre"),  # centre: subtract each teacher's mean logit over its own classes
    "weighting": ("support", "equal"),  # equal: every teacher that knows a class counts once
    "projector": ("linear", "mlp"),  # mlp: Linear-ReLU-Linear
    # reestimate: recompute BN statistics on OOD batches at the end (eval-mode BN while distilling is not a
    # variant but the ConsolidationConfig field ``batchnorm``: --set batchnorm=frozen)
    "bn": ("train", "reestimate"),
    # exmodel: the ex-model distillation recipe: cross-entropy on the argmax of the targets added to the logit
    # loss, SGD (lr 0.1, momentum 0.9, cosine decay) instead of Adam; give it more steps with --steps
    "recipe": ("default", "exmodel"),
    # (steered OOD batches are not a variant but the ConsolidationConfig field ``steer``: --set steer=2)
}
TEMPERATURE = 4.0
EXMODEL_LR, EXMODEL_MOMENTUM = 0.1, 0.9


def centred_targets(teachers: list[Teacher], logits: list[torch.Tensor], equal: bool = False):
    """Targets after subtracting, per sample, each teacher's mean logit over the classes it knows."""
    known = torch.stack([t.known for t in teachers]).float()
    weight = known if equal else torch.stack([t.weights() for t in teachers])
    stacked = torch.stack(logits)
    mean = (stacked * known[:, None, :]).sum(-1, keepdim=True) / known.sum(-1).clamp(min=1)[:, None, None]
    stacked = stacked - mean
    total = weight.sum(0)
    return (stacked * weight[:, None, :]).sum(0) / total.clamp(min=1e-12), total > 0


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


def _make_class(base: type[KD], opts: dict[str, str]) -> type[KD]:
    class Variant(base):
        def logit_loss(self, student, target, mask):
            if opts.get("logit_loss", "mse") == "kl":
                s, t, tau = student[:, mask], target[:, mask], TEMPERATURE
                loss = F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="batchmean") * tau * tau
            else:
                loss = super().logit_loss(student, target, mask)
            if opts.get("recipe") == "exmodel":
                loss = loss + F.cross_entropy(student[:, mask], target[:, mask].argmax(1))
            return loss

        def targets(self, teachers, logits):
            equal = opts.get("weighting", "support") == "equal"
            if opts.get("target_norm", "none") == "centre":
                return centred_targets(teachers, logits, equal)
            if equal:
                teachers = [Teacher(t.model, t.known) for t in teachers]  # no support: one per known class
            return super().targets(teachers, logits)

        def make_projectors(self, student, teachers):
            if opts.get("projector", "linear") == "mlp" and base is not KD:
                d = student.latent_dim
                return nn.ModuleList(
                    nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, t.model.latent_dim)) for t in teachers
                )
            return super().make_projectors(student, teachers)

        def setup(self, *args, **kwargs):
            s = super().setup(*args, **kwargs)
            if opts.get("recipe") == "exmodel":
                s.opt = torch.optim.SGD(s.module.parameters(), lr=EXMODEL_LR, momentum=EXMODEL_MOMENTUM)
                s.sched = torch.optim.lr_scheduler.CosineAnnealingLR(s.opt, T_max=max(1, s.cfg.steps))
            return s

        def finish_student(self, s: LoopState) -> None:
            if opts.get("bn") == "reestimate":
                reestimate_bn(s.student, s.ood, s.gen, s.batch_per_rank)

    return Variant


def variant(method: str, opts: dict[str, str]) -> str:
    """Register ``method`` with ``opts`` changed (see :data:`OPTIONS`); returns its name. No opts: ``method``."""
    for k, v in (opts or {}).items():
        if k not in OPTIONS or v not in OPTIONS[k]:
            raise ValueError(f"unknown variant option {k}={v} (options: {OPTIONS})")
    opts = {k: v for k, v in (opts or {}).items() if OPTIONS[k][0] != v}  # defaults are the method itself
    if not opts:
        return method
    name = f"{method}[{','.join(f'{k}={v}' for k, v in sorted(opts.items()))}]"
    try:
        get_method(name)
    except ValueError:
        base = {"kd": KD, "dac": DAC}.get(method)
        if base is None:
            raise ValueError(f"variants exist of kd and dac only, not {method!r}") from None
        cls = _make_class(base, opts)
        obj = cls()
        obj.name = name
        obj.summary = f"{base.summary}, with {', '.join(f'{k}={v}' for k, v in sorted(opts.items()))}"
        register_method(obj)
    return name
