"""Parameter averaging (FedAvg-style), weighted by how many classes each model knows.

Head rows are averaged only over the models that know each class, so a class
one model never learned does not drag the other's classifier towards noise.
With ``teacher_weighting="support"`` every weight counts devices instead of
classes (:meth:`Teacher.weights`), which makes the stream a running FedAvg.
"""

import copy

from central.methods.base import register_method


class Average:
    name = "avg"

    def __call__(self, previous, incoming, ood, cfg, progress=None):
        cp, cn = previous.weights(cfg.teacher_weighting), incoming.weights(cfg.teacher_weighting)
        wp, wn = float(cp.sum()), float(cn.sum())
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
            share = (cp[both] / (cp[both] + cn[both])).reshape(-1, *([1] * (rows.dim() - 1)))
            rows[both] = share * sp[k][both] + (1 - share) * sn[k][both]
        out.load_state_dict(merged)
        return out


register_method(Average())
