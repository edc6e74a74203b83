"""Steered OOD batches: part of each batch pulled, by a few signed-gradient steps, towards a class a teacher knows.

Augmented OOD crops often land on one class of every teacher (a speech device calls nearly every crop of a
German sentence ``_unknown_``), so their targets say little about the other classes. Each steered sample draws
a teacher and one of the classes it knows, and moves up that teacher's log-probability of the class; the
other teachers' answers on it are then targets near that class. Measured in
benchmarks/results/dcl/dcl-kws-devlog.md (audio) and dcl-split-digits-devlog.md, dcl-split-fashion-devlog.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from central.methods.base import Teacher

STEER_EPS = 0.1  # step size, in units of the batch's input standard deviation
STEER_FRAC = 0.5  # share of each batch that is steered; the rest stays plain OOD


class SteeredOOD:
    """An OOD source whose first ``frac`` of every batch is steered by ``steps`` signed-gradient steps."""

    def __init__(self, ood, teachers: list[Teacher], steps: int, eps: float = STEER_EPS, frac: float = STEER_FRAC):
        self.ood, self.spec, self.teachers = ood, ood.spec, teachers
        self.steps, self.eps, self.frac = steps, eps, frac

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = self.ood.sample(n, generator)
        m = int(round(n * self.frac))
        if m == 0 or self.steps == 0:
            return x
        # Which teacher steers each sample (uniform; a teacher with no known class is skipped) and which of its
        # classes (uniform over the classes it knows).
        which = torch.randint(len(self.teachers), (m,), generator=generator)
        picks = torch.rand(m, generator=generator)
        out = x.clone()
        std = x[:m].std().clamp(min=1e-6)
        for k, t in enumerate(self.teachers):
            idx = (which == k).nonzero().flatten()
            classes = t.known.nonzero().flatten().cpu()
            if len(idx) == 0 or len(classes) == 0:
                continue
            target = classes[(picks[idx] * len(classes)).long().clamp(max=len(classes) - 1)].to(x.device)
            xi = x[idx.to(x.device)].clone()
            for _ in range(self.steps):
                xi.requires_grad_(True)
                with torch.enable_grad():
                    logp = F.log_softmax(t.model(xi), 1).gather(1, target[:, None]).sum()
                    (grad,) = torch.autograd.grad(logp, xi)
                xi = (xi.detach() + self.eps * std * grad.sign()).detach()
            out[idx.to(x.device)] = xi
        return out
