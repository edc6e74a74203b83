"""Parameter averaging (FedAvg-style), weighted by how many classes each model knows.

Head rows are averaged only over the models that know each class, so a class
one model never learned does not drag the other's classifier towards noise.
"""

import copy

from central.methods.base import register_method


class Average:
    name = "avg"

    def __call__(self, previous, incoming, ood, cfg, progress=None):
        wp = float(previous.known.sum())
        wn = float(incoming.known.sum())
        a, b = wp / (wp + wn), wn / (wp + wn)
        out = copy.deepcopy(previous.model)
        sp, sn = previous.model.state_dict(), incoming.model.state_dict()
        merged = {}
        for k, v in sp.items():
            merged[k] = a * v + b * sn[k] if v.is_floating_point() else v
        for k in ("head.weight", "head.bias"):
            both = previous.known & incoming.known
            rows = merged[k]
            rows[incoming.known & ~previous.known] = sn[k][incoming.known & ~previous.known]
            rows[previous.known & ~incoming.known] = sp[k][previous.known & ~incoming.known]
            rows[both] = 0.5 * (sp[k][both] + sn[k][both])
        out.load_state_dict(merged)
        return out


register_method(Average())
