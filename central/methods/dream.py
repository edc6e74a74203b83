"""Dreamed inputs: OOD samples pulled towards each teacher's own data through its BatchNorm statistics.

A device model's BatchNorm layers keep the running mean and variance of its
training data at every depth: a summary of that data which the central already
holds, since it came with the uploaded weights. DeepInversion (Yin et al.,
"Dreaming to Distill", CVPR 2020) synthesises inputs whose batch statistics
match those running statistics, plus a cross-entropy term towards a chosen
class so the samples do not collapse onto the statistics alone.

Here each teacher keeps a pool of such inputs, started from augmented OOD
samples and refined a little further every time a batch draws them (a few
Adam steps with per-sample state), so the synthesis cost is spread over the
consolidation instead of paid up front. Every batch is part fresh OOD, part
pool. The pool samples carry the class they were dreamed towards
(:attr:`DreamOOD.last_labels`); the distillation can train on those labels
directly, which teaches the student which *task* a sample belongs to, the
one thing logit targets from separately trained devices cannot calibrate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from central.methods.base import Teacher


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def statistics_loss(model: nn.Module, layers: list, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over BN layers of ||batch mean - running mean|| + ||batch var - running var||, logits)."""
    terms: list[torch.Tensor] = []

    def hook(module, inputs, output):
        h = inputs[0]
        dims = [d for d in range(h.dim()) if d != 1]
        mean, var = h.mean(dims), h.var(dims, unbiased=False)
        terms.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(terms).sum(), logits


class _Pool:
    """One teacher's dreamed samples, their target classes, and per-sample Adam moments.

    ``local`` indexes the teacher's known classes, ``y`` the global label list.
    """

    def __init__(self, x: torch.Tensor, local: torch.Tensor, y: torch.Tensor):
        self.x, self.local, self.y = x, local, y
        self.m, self.v = torch.zeros_like(x), torch.zeros_like(x)
        self.t = torch.zeros(len(x))


class DreamOOD:
    """An OOD source whose batches are ``1 - share`` fresh OOD samples and ``share`` dreamed ones.

    ``steps`` Adam steps (learning rate ``lr``) refine the drawn pool samples before each batch.
    ``last_labels`` holds, for the last batch, the class each dreamed sample was pulled towards
    (an index into the global label list) and -1 for the fresh OOD samples.
    """

    def __init__(
        self,
        source,
        teachers: list[Teacher],
        steps: int,
        lr: float = 0.1,
        share: float = 0.5,
        pool_size: int = 512,
        ce_weight: float = 1.0,
    ):
        self.source, self.spec = source, source.spec
        self.teachers, self.steps, self.lr, self.share = teachers, steps, lr, share
        self.pool_size, self.ce_weight = pool_size, ce_weight
        self.layers = [_bn_layers(t.model) for t in teachers]
        if not all(self.layers):
            raise ValueError("dreaming needs teachers with BatchNorm layers (their running statistics are the target)")
        self.pools: list[_Pool] | None = None
        self.last_labels: torch.Tensor | None = None

    def _init_pools(self, generator: torch.Generator) -> None:
        self.pools = []
        for t in self.teachers:
            known = t.known.nonzero().flatten()
            x = self.source.sample(self.pool_size, generator)
            local = torch.randint(len(known), (self.pool_size,), generator=generator).to(x.device)
            self.pools.append(_Pool(x, local, known.to(x.device)[local]))

    def _refine(self, k: int, idx: torch.Tensor) -> None:
        pool, model = self.pools[k], self.teachers[k].model
        known = self.teachers[k].known.nonzero().flatten().to(pool.x.device)
        local = pool.local[idx]
        x, m, v = pool.x[idx], pool.m[idx], pool.v[idx]
        t = pool.t[idx]
        b1, b2, eps = 0.9, 0.999, 1e-8
        for _ in range(self.steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                stat, logits = statistics_loss(model, self.layers[k], x)
                loss = stat + self.ce_weight * F.cross_entropy(logits[:, known], local)
                (grad,) = torch.autograd.grad(loss, x)
            t = t + 1
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            shape = (-1,) + (1,) * (x.dim() - 1)
            m_hat = m / (1 - b1 ** t).reshape(shape).to(x)
            v_hat = v / (1 - b2 ** t).reshape(shape).to(x)
            x = x.detach() - self.lr * m_hat / (v_hat.sqrt() + eps)
        pool.x[idx], pool.m[idx], pool.v[idx], pool.t[idx] = x.detach(), m, v, t

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.pools is None:
            self._init_pools(generator)
        K = len(self.teachers)
        per = max(1, round(n * self.share / K))
        fresh = self.source.sample(n - per * K, generator)
        xs, ys = [fresh], [torch.full((len(fresh),), -1, dtype=torch.long, device=fresh.device)]
        for k, pool in enumerate(self.pools):
            idx = torch.randperm(len(pool.x), generator=generator)[:per]
            if self.steps > 0:
                self._refine(k, idx)
            xs.append(pool.x[idx])
            ys.append(pool.y[idx])
        self.last_labels = torch.cat(ys)
        return torch.cat(xs)
