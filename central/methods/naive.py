"""Naive: the newest device model replaces the central (the lower bound)."""

import copy

from central.methods.base import Consolidated, register_method


class Naive:
    name = "naive"
    summary = "the newest device model replaces the central (a baseline)"

    def __call__(self, previous, incoming, ood, cfg, progress=None):
        return Consolidated(copy.deepcopy(incoming.model))


register_method(Naive())
