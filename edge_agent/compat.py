"""Whether a device bundle can be consolidated into a central: one rule for the server and the consolidator.

:func:`check_compatible` compares two manifests (no model is built), so the server
can refuse an upload before it costs anything; :func:`check_weights` checks the
tensors once they are read. Both raise a :class:`BundleError` whose message is
one line naming the field that is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from edge_agent.bundle import BundleError, Manifest

# Weights of these small CNNs stay within a few units; 1e6 is far above anything training
# gives and far below where float32 sums overflow (a 3e38 weight turns consolidation into inf).
MAX_ABS_WEIGHT = 1e6

_SHOWN = 5  # labels listed in a message before "and N more"
_REPR = 200  # characters of a value shown in a message


class IncompatibleBundle(BundleError):
    """A valid bundle that does not fit the central it would be consolidated into."""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= _REPR else text[: _REPR - 3] + "..."


def _listed(names: list[str]) -> str:
    shown = ", ".join(_short(n) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


MAX_LABELS = 4096  # one head row each; far beyond any edge task, small enough to bound a hostile manifest
MAX_LABEL_CHARS = 100


def label_problem(label: object) -> str | None:
    """Why ``label`` cannot be a class name (None when it can): a short, printable, one-line string."""
    if not isinstance(label, str):
        return f"{_short(label)} is not a string"
    if not label.strip() or label != label.strip():
        return f"{_short(label)} is blank or has surrounding spaces"
    if len(label) > MAX_LABEL_CHARS:
        return f"{_short(label)} is longer than {MAX_LABEL_CHARS} characters"
    if not label.isprintable():  # also catches a byte-order mark glued to the first label
        return f"{_short(label)} has control or invisible characters"
    return None


def merge_labels(base: list[str], incoming: list[str]) -> list[str]:
    """The union of two label lists in a stable order: ``base``'s labels keep their index, new ones follow."""
    known = set(base)
    return list(base) + [c for c in incoming if c not in known]


def check_labels(base: list[str], incoming: list[str]) -> None:
    """The label rule: classes are matched by name, so the incoming list may add labels, lack some or reorder them.

    Refused: a label that is not a short printable name, a repeated label, or a
    union with the central's list beyond :data:`MAX_LABELS`.
    """
    if not isinstance(incoming, list):
        raise IncompatibleBundle(f"labels must be a list of class names, not {_short(incoming)}")
    for c in incoming:
        if (why := label_problem(c)) is not None:
            raise IncompatibleBundle(f"bad label: {why}")
    seen: set[str] = set()
    repeated = [c for c in incoming if c in seen or seen.add(c)]
    if repeated:
        raise IncompatibleBundle(f"labels repeat {_listed(sorted(set(repeated)))}")
    total = len(merge_labels(base, incoming))
    if total > MAX_LABELS:
        raise IncompatibleBundle(f"the merged label list would have {total} labels, more than {MAX_LABELS}")


def check_class_support(m: Manifest) -> None:
    """``extra.class_support``, when present, maps labels to how many devices back them (positive integers)."""
    record = m.extra.get("class_support")
    if record is None:
        return
    if not isinstance(record, Mapping):
        raise IncompatibleBundle(f"extra.class_support must map classes to device counts, not {_short(record)}")
    unknown = [c for c in record if c not in set(m.labels)]
    if unknown:
        raise IncompatibleBundle(f"extra.class_support names classes not in the labels: {_listed(unknown)}")
    for c, n in record.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise IncompatibleBundle(f"extra.class_support[{_short(c)}] must be a positive integer, not {_short(n)}")


def check_compatible(base: Manifest, incoming: Manifest) -> None:
    """Refuse ``incoming`` unless it can be consolidated into the central ``base``.

    Same architecture and arch_config, same input spec, a label list that
    :func:`check_labels` accepts (it may add classes the central does not know),
    a non-empty ``trained_classes`` within the labels, an ``extra`` object whose
    ``class_support`` (if any) is well formed.
    """
    if incoming.arch != base.arch:
        raise IncompatibleBundle(f"architecture differs from the central's: arch {_short(incoming.arch)} vs {_short(base.arch)}")
    if incoming.arch_config != base.arch_config:
        raise IncompatibleBundle(
            f"architecture differs from the central's: arch_config {_short(incoming.arch_config)} vs {_short(base.arch_config)}"
        )
    if incoming.input != base.input:
        raise IncompatibleBundle(f"input spec differs from the central's: input {_short(incoming.input)} vs {_short(base.input)}")
    check_labels(base.labels, incoming.labels)
    trained = incoming.trained_classes
    if not isinstance(trained, list) or not all(isinstance(c, str) for c in trained):
        raise IncompatibleBundle(f"trained_classes must be a list of labels, not {_short(trained)}")
    if not trained:
        raise IncompatibleBundle("trained_classes is empty: the device model was not trained on any class")
    stray = [c for c in trained if c not in set(incoming.labels)]
    if stray:
        raise IncompatibleBundle(f"trained_classes not in the labels: {_listed(stray)}")
    if not isinstance(incoming.extra, dict):
        raise IncompatibleBundle(f"extra must be a JSON object, not {_short(incoming.extra)}")
    check_class_support(incoming)


def check_weights(tensors: Mapping[str, torch.Tensor]) -> None:
    """Every floating tensor finite and within ``MAX_ABS_WEIGHT``; raises :class:`BundleError` naming the tensor."""
    for name, t in tensors.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        if not torch.isfinite(t).all():
            raise BundleError(f"tensor {name!r} has NaN or infinite values")
        peak = t.abs().max().item()
        if peak > MAX_ABS_WEIGHT:
            raise BundleError(f"tensor {name!r} has weights up to {peak:.3g}, beyond the {MAX_ABS_WEIGHT:.0e} bound")
