"""Continual-learning metrics over an accuracy matrix R[t, j] (Avalanche conventions).

R[t, j] is the accuracy of the model after experience t on the test split of
experience j (class-incremental: argmax over every class seen so far).
"""

from __future__ import annotations

import numpy as np


def average_accuracy(R: np.ndarray, t: int | None = None) -> float:
    """Mean of R[t, j] over j <= t (default: the last row)."""
    t = R.shape[0] - 1 if t is None else t
    return float(np.mean(R[t, : t + 1]))


def forgetting(R: np.ndarray) -> list[float]:
    """For each j < T: max over earlier t' of R[t', j] minus R[T, j]."""
    T = R.shape[0] - 1
    return [float(np.max(R[j:T, j]) - R[T, j]) for j in range(T)]


def summarize(R: np.ndarray) -> dict:
    f = forgetting(R)
    return {
        "final_avg_acc": average_accuracy(R),
        "avg_acc_curve": [average_accuracy(R, t) for t in range(R.shape[0])],
        "forgetting": f,
        "avg_forgetting": float(np.mean(f)) if f else 0.0,
        "matrix": R.tolist(),
    }
