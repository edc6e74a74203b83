"""Adam with cosine learning-rate decay, for device training, without ``torch.optim``.

``torch.optim`` imports ``torch._dynamo`` (and with it sympy, torch.distributed
and torch.onnx) the first time an optimizer is built or stepped: about 70 MB
of resident memory (measured on the ds-cnn ``edge-agent train``, torch 2.13),
for a compiler a device never uses, against a 512 MB Raspberry Pi Zero 2 W.

The arithmetic is exactly that of ``torch.optim.Adam`` (its single-tensor CPU
path, without weight decay or amsgrad) followed by
``torch.optim.lr_scheduler.CosineAnnealingLR`` stepped once per batch, so a
device model is bit for bit what those two give (``tests/test_train.py``
checks it against torch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class AdamCosine:
    """Adam whose learning rate decays from ``lr`` to 0 along a half cosine over ``total_steps`` steps.

    ``step()`` updates the parameters from their ``.grad`` (parameters without
    a gradient are left alone, as torch does), then decays the learning rate.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        total_steps: int,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = list(params)
        self.base_lr = float(lr)
        self.lr = float(lr)
        self.total_steps = max(1, int(total_steps))
        self.betas = betas
        self.eps = eps
        self.steps = 0  # scheduler steps taken (torch's ``last_epoch``)
        # Per parameter: step count (float32, as torch keeps it), first and second moments.
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            s = self.state.get(i)
            if s is None:
                s = self.state[i] = {
                    "step": torch.tensor(0.0, dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
            s["step"] += 1
            t = s["step"].item()
            s["exp_avg"].lerp_(grad, 1 - beta1)
            s["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1**t)
            denom = (s["exp_avg_sq"].sqrt() / (1 - beta2**t) ** 0.5).add_(self.eps)
            p.addcdiv_(s["exp_avg"], denom, value=-step_size)
        self._decay()

    def _decay(self) -> None:
        # CosineAnnealingLR's recursive form (eta_min 0), not the closed form: the two differ in the last bits.
        self.steps += 1
        e, n = self.steps, self.total_steps
        if (e - 1 - n) % (2 * n) == 0:
            self.lr = self.lr + self.base_lr * (1 - math.cos(math.pi / n)) / 2
        else:
            self.lr = (1 + math.cos(math.pi * e / n)) / (1 + math.cos(math.pi * (e - 1) / n)) * self.lr

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The moments and step counts as ``{"<param index>.<name>": tensor}`` (for a checkpoint)."""
        return {f"{i}.{k}": v for i, s in self.state.items() for k, v in s.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], lr: float, steps: int) -> None:
        """Inverse of :meth:`state_tensors`, with the learning rate and step count reached."""
        self.state = {}
        for key, v in tensors.items():
            i, name = key.split(".", 1)
            self.state.setdefault(int(i), {})[name] = v
        self.lr, self.steps = float(lr), int(steps)
