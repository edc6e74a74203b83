"""Side experiment: devices that pulled the latest central also learn that their data is none of its classes.

A device that fine-tunes the latest central starts from a model of every class consolidated so far, and
it is the only party that sees both its own data and a model of the old classes. Three knobs, on top of
``python -m benchmarks.dcl --devices latest`` (all other options pass through to it):

- ``--old-negatives W``: the device adds W x BCE pushing the old classes' logits to 0 on its own batch;
- ``--lwf W``: and W x MSE keeping the old classes' logits on its negatives (the quadrant-shuffled batch)
  at what the pulled central gave them (learning without forgetting, on inputs that are not its own);
- ``--old-weight W``: the consolidation also takes the device's old-class logits as targets, at weight W
  against the previous central's 1 per device behind the class (0: the device teaches its own classes only).

    python -m benchmarks.device_old_classes --old-negatives 1 --lwf 1 --old-weight 1 \\
        --stream split-digits --split val --seeds 2 --ft-epochs 0 --methods dac --tag oldneg

Not a product setting: results and what they say are in benchmarks/results/dcl/dcl-split-digits-devlog.md.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F

import benchmarks.dcl as dcl
import central.consolidate as consolidate
import edge_agent.train as train
from central.methods import Teacher


class OldClasses:
    """The patches, with their weights and the device being trained."""

    def __init__(self, old_negatives: float, lwf: float, old_weight: float):
        self.old_negatives, self.lwf, self.old_weight = old_negatives, lwf, old_weight
        self.old: torch.Tensor | None = None  # head indices of the pulled central's classes
        self.pulled: torch.nn.Module | None = None  # the central as pulled, frozen

    def device_loss(self, model, x, target, own_idx, cfg, g, neg_x=None):
        if self.old is None or cfg.loss == "ce":
            return ORIGINAL["device_loss"](model, x, target, own_idx, cfg, g, neg_x)
        if neg_x is None:
            neg_x = train.negatives_for(x, cfg, g)
        logits = model(torch.cat([x, neg_x]))
        own, neg = logits[: len(x), own_idx], logits[len(x) :, own_idx]
        loss = F.binary_cross_entropy_with_logits(own, F.one_hot(target, len(own_idx)).float())
        loss = loss + cfg.negatives * F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        old = logits[: len(x), self.old]
        loss = loss + self.old_negatives * F.binary_cross_entropy_with_logits(old, torch.zeros_like(old))
        if self.lwf:
            with torch.no_grad():
                ref = self.pulled(neg_x)[:, self.old]
            loss = loss + self.lwf * F.mse_loss(logits[len(x) :, self.old], ref)
        return loss

    def pull_and_fine_tune(self, setup, model, t):
        labels = list(setup.base.labels)
        self.old = torch.tensor(sorted({labels.index(c) for e in setup.stream.experiences[:t] for c in e["classes"]}))
        self.pulled = copy.deepcopy(model).eval().requires_grad_(False)
        try:
            return ORIGINAL["pull_and_fine_tune"](setup, model, t)
        finally:
            self.old = self.pulled = None

    def step_inputs(self, central, incoming):
        s = ORIGINAL["step_inputs"](central, incoming)
        if self.old_weight > 0 and s.previous is not None:
            inc = s.incoming
            old = s.previous.known & ~inc.known
            support = inc.weights().clone()
            support[old] = self.old_weight
            s.incoming = Teacher(inc.model, inc.known | old, support)
        return s


ORIGINAL = {"device_loss": train.device_loss, "pull_and_fine_tune": dcl.pull_and_fine_tune,
            "step_inputs": consolidate.step_inputs}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    ap.add_argument("--old-negatives", type=float, default=1.0)
    ap.add_argument("--lwf", type=float, default=0.0)
    ap.add_argument("--old-weight", type=float, default=0.0)
    args, rest = ap.parse_known_args(argv)
    patch = OldClasses(args.old_negatives, args.lwf, args.old_weight)
    train.device_loss = patch.device_loss
    dcl.pull_and_fine_tune = patch.pull_and_fine_tune
    consolidate.step_inputs = patch.step_inputs
    argv = sys.argv[1:] if argv is None else argv
    # One process: the patches live in this interpreter, not in the workers --jobs would start.
    return dcl.main([*rest, "--devices", "latest", "--jobs", "1"],
                    command="python -m benchmarks.device_old_classes " + " ".join(argv))


if __name__ == "__main__":
    main()
