"""Data-Agnostic Consolidation of a stream of device models into the central model.

theta_t = method(theta_{t-1}, phi_t, OOD source): the central never sees device data.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from central.methods import ConsolidationConfig, Teacher, get_method
from edge_agent.bundle import Bundle, BundleError, Manifest, load_bundle, new_manifest, save_bundle
from edge_agent.compat import merge_labels
from edge_agent.data.ood import OODSource, open_ood
from edge_agent.models import EdgeModel, remap_head
from edge_agent.progress import make_progress


class ConsolidationError(ValueError):
    """Models that cannot be consolidated together."""


def known_mask(bundle_labels: list[str], classes: list[str]) -> torch.Tensor:
    mask = torch.zeros(len(bundle_labels), dtype=torch.bool)
    index = {c: i for i, c in enumerate(bundle_labels)}
    for c in classes:
        mask[index[c]] = True
    return mask


def class_support(bundle: Bundle) -> dict[str, int]:
    """How many device models stand behind each class ``bundle`` knows.

    A consolidated central records it in its manifest (``extra.class_support``);
    anything else (a device model, central-0, an older central) counts one per trained class.
    """
    record = bundle.manifest.extra.get("class_support")
    record = record if isinstance(record, dict) else {}
    return {c: max(1, int(record.get(c, 1))) for c in bundle.manifest.trained_classes}


def support_tensor(labels: list[str], support: dict[str, int]) -> torch.Tensor:
    return torch.tensor([float(support.get(c, 0)) for c in labels])


@dataclass
class Central:
    """What consolidation carries from one device model to the next: the model and its label space."""

    model: EdgeModel
    labels: list[str]
    classes: list[str]  # the labels some device trained, in label order
    support: dict[str, int]  # devices behind each known class

    @classmethod
    def of(cls, bundle: Bundle) -> Central:
        return cls(bundle.model, list(bundle.labels), list(bundle.manifest.trained_classes), class_support(bundle))


@dataclass
class StepInputs:
    """One consolidation in the merged label space: both teachers, and the central it will give."""

    labels: list[str]
    previous: Teacher | None  # None: nothing consolidated yet, the device model becomes the central
    incoming: Teacher
    classes: list[str]
    support: dict[str, int]

    def central(self, model: EdgeModel) -> Central:
        return Central(model, self.labels, self.classes, self.support)


def step_inputs(central: Central, incoming: Bundle) -> StepInputs:
    """Teachers over the union of both label lists (existing labels keep their index; new ones grow every head)."""
    labels = merge_labels(central.labels, incoming.labels)
    trained = incoming.manifest.trained_classes
    known = set(central.classes) | set(trained)
    classes = [c for c in labels if c in known]
    before = {c: 1 for c in central.classes} | central.support
    added = class_support(incoming)
    support = {c: before.get(c, 0) + added.get(c, 0) for c in classes}
    inc = Teacher(remap_head(incoming.model, incoming.labels, labels), known_mask(labels, trained),
                  support_tensor(labels, added))
    previous = None
    if central.classes:
        previous = Teacher(remap_head(central.model, central.labels, labels), known_mask(labels, central.classes),
                           support_tensor(labels, before))
    return StepInputs(labels, previous, inc, classes, support)


def consolidate_step(
    central: Central,
    incoming: Bundle,
    ood: OODSource,
    method: str,
    cfg: ConsolidationConfig,
    progress: bool = True,
    description: str = "consolidate",
) -> tuple[Central, dict]:
    """One consolidation: the next central and an info dict (``cpu_seconds``, ``wall_seconds``, ``student_init``).

    Settings left at None in ``cfg`` take the defaults of the incoming model's input kind.
    """
    cfg = cfg.for_input(incoming.input_spec.kind)
    step = step_inputs(central, incoming)
    t0 = time.process_time()
    w0 = time.perf_counter()
    result = None
    if step.previous is None:
        # Nothing consolidated yet: the first device model *is* the central.
        model = copy.deepcopy(step.incoming.model)
    else:
        fn = get_method(method)
        with make_progress(progress) as bar:
            task = bar.add_task(description, total=cfg.steps, info="")

            def report(i: int, losses: dict) -> None:
                if i % 10 == 0 or i == cfg.steps:
                    bar.update(task, completed=i, info=" ".join(f"{k} {v:.4f}" for k, v in losses.items()))

            result = fn(step.previous, step.incoming, ood, cfg, progress=report)
        model = result.model
    info = {"cpu_seconds": time.process_time() - t0, "wall_seconds": time.perf_counter() - w0}
    if result is not None and "chosen" in result.info:
        info["student_init"] = result.info  # recorded in the bundle's lineage (``stream``)
    return step.central(model), info


def stream_record(incoming: Bundle, before: Central, info: dict) -> dict:
    """One entry of a consolidated bundle's ``extra.stream``: what came in, the labels it added, what it cost."""
    added = [c for c in incoming.labels if c not in set(before.labels)]
    record = {"incoming": incoming.id, "classes": incoming.manifest.trained_classes, **info}
    return record | ({"new_labels": added} if added else {})


def consolidated_manifest(
    central: Central, base: Bundle, incoming: list[Bundle], method: str, cfg: ConsolidationConfig,
    ood: str | Path | None, stream: list[dict], **extra,
) -> Manifest:
    """The manifest of the bundle a consolidation writes: lineage, settings, OOD source, stream, support."""
    version = base.manifest.extra.get("version")
    return new_manifest(
        central.model,
        central.labels,
        base.input_spec,
        trained_classes=central.classes,
        parents=[base.id] + [b.id for b in incoming],
        method=method,
        extra={
            "consolidation": asdict(cfg.for_input(base.input_spec.kind)),
            "ood": str(ood) if ood is not None else "default",
            "stream": stream,
            "version": (version + len(incoming)) if isinstance(version, int) else None,
            "class_support": central.support,
            **extra,
        },
    )


def step_seed(seed: int, position: int) -> int:
    """The seed of the consolidation at ``position`` of a stream run with ``seed`` (one rule everywhere)."""
    return seed * 1000 + position


def load_inputs(base_path: str | Path, incoming_paths: list[str | Path]) -> tuple[Bundle, list[Bundle]]:
    """Load the central and the device bundles; each must fit the central (:func:`edge_agent.compat.check_compatible`)."""
    base = load_bundle(base_path)
    incoming = []
    for p in incoming_paths:
        try:
            b = load_bundle(p, expect=base.manifest)  # the compatibility rule runs before any model is built
        except BundleError as e:
            raise type(e)(f"{p}: {e}") from None
        incoming.append(b)
    if not incoming:
        raise ConsolidationError("nothing to consolidate: give at least one --incoming device model")
    return base, incoming


def consolidate_files(
    base_path: str | Path,
    incoming_paths: list[str | Path],
    out_path: str | Path,
    ood: str | Path | None = None,
    method: str = "dac",
    cfg: ConsolidationConfig | None = None,
    progress: bool = True,
) -> dict:
    """Consolidate ``incoming_paths`` one after another into ``base_path``; write the result to ``out_path``.

    Returns ``{"id", "out", "method", "trained_classes", "steps": [...]}``.
    """
    cfg = cfg or ConsolidationConfig()
    get_method(method)  # fail before any work on a wrong name
    base, incoming = load_inputs(base_path, incoming_paths)
    source = open_ood(ood, base.input_spec)
    central, stream = Central.of(base), []
    for i, b in enumerate(incoming):
        before = central
        central, info = consolidate_step(central, b, source, method, replace(cfg, seed=step_seed(cfg.seed, i)),
                                         progress, description=f"consolidate {i + 1}/{len(incoming)}")
        stream.append(stream_record(b, before, info))
    bid = save_bundle(central.model, consolidated_manifest(central, base, incoming, method, cfg, ood, stream), out_path)
    return {"id": bid, "out": str(out_path), "method": method, "labels": central.labels,
            "trained_classes": central.classes, "steps": stream}
