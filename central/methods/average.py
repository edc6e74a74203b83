"""Parameter averaging (FedAvg-style), weighted by how many classes each model knows.

Head rows are averaged only over the models that know each class, so a class
one model never learned does not drag the other's classifier towards noise.
Every weight counts the devices behind a class (:meth:`Teacher.weights`), which
makes the stream a running FedAvg.
"""

import copy

from central.methods.base import Consolidated, register_method


class Average:
    name = "avg"
    summary = "parameter averaging weighted by class support, FedAvg-style (a baseline)"

    def __call__(self, previous, incoming, ood, cfg, progress=None):
        cp, cn = previous.weights(), incoming.weights()
        wp, wn = float(cp.sum()), float(cn.sum())
        a, b = wp / (wp + wn), wn / (wp + wn)
        out = copy.deepcopy(previous.model)
        sp, sn = previous.model.state_dict(), incoming.model.state_dict()
        merged = {}
        for k, v in sp.items():
            merged[k] = a * v + b * sn[k] if v.is_floating_point() else v
        # The head's rows are per class: each model's own head, whatever the architecture calls its parameters.
        for k in (f"head.{name}" for name, _ in previous.model.head.named_parameters()):
            both = previous.known & incoming.known
            rows = merged[k]
            rows[incoming.known & ~previous.known] = sn[k][incoming.known & ~previous.known]
            rows[previous.known & ~incoming.known] = sp[k][previous.known & ~incoming.known]
            share = (cp[both] / (cp[both] + cn[both])).reshape(-1, *([1] * (rows.dim() - 1)))
            rows[both] = share * sp[k][both] + (1 - share) * sn[k][both]
        out.load_state_dict(merged)
        return Consolidated(out)


register_method(Average())
