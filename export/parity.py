"""Parity of an exported artifact with its torch model, run after every export.

The artifact runs through :mod:`edge_agent.runtime` (the code a device runs), so
parity also checks the runtime's layout and int8 (de)quantization handling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from edge_agent.runtime import Runner

# fp32: converters reorder float ops, so allow rounding noise relative to the logit scale.
FP32_RTOL = 1e-3
# int8: share of held-out inputs on which the artifact's top-1 must equal torch's. Near-ties may flip;
# more than 3 in 100 flipped means a calibration or a converter lost the model (central export --min-agreement).
INT8_MIN_TOP1 = 0.97
# A model trained on no class yet (central-0) has no decision to keep: its random logits tie everywhere,
# so only a gross break (a converter that lost the graph) fails it.
UNTRAINED_MIN_TOP1 = 0.5


class ParityError(RuntimeError):
    """An artifact that disagrees with its torch model beyond tolerance; one-line message."""


@dataclass(frozen=True)
class ParityReport:
    """``max_abs_diff``: max |logit_artifact - logit_torch| (logit units); ``top1_agreement``: share of equal argmax (0..1).

    The argmax runs over the ``decision_classes`` classes the model was trained on (all labels when it names
    none), as accuracy does everywhere in the project; ``top1_agreement_all_labels`` is the argmax over every label.
    """

    artifact: str
    precision: str
    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    logit_scale: float
    top1_agreement: float
    tolerance: float | None  # fp32 only: max allowed |dlogit|
    passed: bool
    min_agreement: float | None = None  # int8 only: the top-1 agreement it needed
    decision_classes: int | None = None  # how many classes the argmax of top1_agreement runs over
    top1_agreement_all_labels: float | None = None

    def failure(self) -> str:
        """Why it failed, in one line that names what was measured."""
        if self.precision == "fp32":
            finite = "" if np.isfinite(self.max_abs_diff) else " (non-finite logits)"
            return (f"parity check failed for {self.artifact} (fp32): max|dlogit| {self.max_abs_diff:.3g} > tolerance "
                    f"{self.tolerance:.3g}{finite} on {self.samples} inputs")
        if not np.isfinite(self.max_abs_diff):
            return f"parity check failed for {self.artifact} (int8): non-finite logits on {self.samples} inputs"
        over = f" (argmax over {self.decision_classes} classes)" if self.decision_classes else ""
        return (f"parity check failed for {self.artifact} (int8): top-1 agreement with torch {self.top1_agreement:.3f}{over} "
                f"on {self.samples} held-out inputs, below the required {self.min_agreement:g} "
                "(central export --min-agreement sets it)")

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        need = f" (min {self.min_agreement:g})" if self.min_agreement is not None else ""
        return (
            f"{self.artifact}: max|dlogit|={self.max_abs_diff:.3g}" + (f" (tol {self.tolerance:.3g})" if self.tolerance is not None else "") + ", "
            f"top-1 agreement {self.top1_agreement:.3f}{need} on {self.samples} inputs"
            + (f" (argmax over {self.decision_classes} classes)" if self.decision_classes else "")
        )


def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float32 logits ``[N, K]`` of ``model`` in eval mode on NCHW float32 ``x``."""
    model = model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))).numpy())
    return np.concatenate(outs, axis=0).astype(np.float32)


def _agreement(ref: np.ndarray, got: np.ndarray) -> float:
    return float((got.argmax(1) == ref.argmax(1)).mean()) if len(ref) else 1.0


def compare_logits(
    name: str,
    precision: str,
    ref: np.ndarray,
    got: np.ndarray,
    int8_min_top1: float = INT8_MIN_TOP1,
    decision_classes: list[int] | None = None,
) -> ParityReport:
    """Compare artifact logits ``got`` with torch logits ``ref`` (both ``[N, K]``).

    ``decision_classes``: column indices of the classes the model was trained on; top-1 agreement is
    the argmax over them (an untrained class's logit decides nothing, and on OOD inputs it often wins
    by a hair that int8 flips). None: every class.
    """
    if ref.shape != got.shape:
        raise ParityError(f"{name}: artifact gives logits of shape {list(got.shape)}, torch gives {list(ref.shape)}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    agree_all = _agreement(ref, got)
    cols = sorted(set(decision_classes)) if decision_classes else None
    agree = _agreement(ref[:, cols], got[:, cols]) if cols else agree_all
    finite = bool(np.isfinite(got).all())
    need = None
    if precision == "fp32":
        tol = FP32_RTOL * max(1.0, scale)
        passed = finite and float(diff.max()) <= tol
    else:
        # int8 logits differ by design (no logit tolerance); the decision must stay the same.
        tol, need = None, int8_min_top1
        passed = finite and agree >= int8_min_top1
    return ParityReport(name, precision, len(ref), float(diff.max()) if diff.size else 0.0, float(diff.mean()) if diff.size else 0.0,
                        scale, agree, tol, passed, need, len(cols) if cols else ref.shape[1], agree_all)


def check_parity(
    model: nn.Module,
    runner: Runner,
    inputs: np.ndarray,
    name: str,
    precision: str,
    int8_min_top1: float = INT8_MIN_TOP1,
    raise_on_fail: bool = True,
    decision_classes: list[int] | None = None,
) -> ParityReport:
    """Run ``runner`` and ``model`` on the same NCHW ``inputs`` and compare; raise :class:`ParityError` on failure."""
    report = compare_logits(name, precision, torch_logits(model, inputs), runner.run(inputs), int8_min_top1, decision_classes)
    if raise_on_fail and not report.passed:
        raise ParityError(report.failure())
    return report
