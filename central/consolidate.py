"""Data-Agnostic Consolidation of a stream of device models into the central model.

theta_t = method(theta_{t-1}, phi_t, OOD source): the central never sees device data.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from central.methods import ConsolidationConfig, Teacher, get_method
from edge_agent.bundle import Bundle, BundleError, load_bundle, new_manifest, save_bundle
from edge_agent.data.ood import OODSource, open_ood
from edge_agent.models import EdgeModel
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


def merged_support(
    labels: list[str], classes: list[str], support: dict[str, int] | None, incoming: Bundle
) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """What consolidating ``incoming`` into a central knowing ``classes`` gives.

    Returns (classes known afterwards, in label order; the central's counts, one per class
    where ``support`` is silent; the counts afterwards).
    """
    new_classes = [c for c in labels if c in set(classes) | set(incoming.manifest.trained_classes)]
    support = {c: 1 for c in classes} | (support or {})
    added = class_support(incoming)
    return new_classes, support, {c: support.get(c, 0) + added.get(c, 0) for c in new_classes}


def consolidate_step(
    current: EdgeModel,
    current_classes: list[str],
    incoming: Bundle,
    ood: OODSource,
    method: str,
    cfg: ConsolidationConfig,
    progress: bool = True,
    description: str = "consolidate",
    current_support: dict[str, int] | None = None,
) -> tuple[EdgeModel, list[str], dict]:
    """One consolidation: returns the new model, the classes it knows, and an info dict.

    Settings left at None in ``cfg`` take the defaults of the incoming model's input kind.

    ``current_support`` counts the devices behind each of ``current_classes`` (default:
    one each); the info dict has the updated count under ``class_support`` besides
    ``cpu_seconds`` and ``wall_seconds``.
    """
    cfg = cfg.for_input(incoming.input_spec.kind)
    labels = incoming.labels
    new_classes, support, new_support = merged_support(labels, current_classes, current_support, incoming)
    t0 = time.process_time()
    w0 = time.perf_counter()
    if not current_classes:
        # Nothing consolidated yet: the first device model *is* the central.
        import copy

        model = copy.deepcopy(incoming.model)
    else:
        previous = Teacher(current, known_mask(labels, current_classes), support_tensor(labels, support))
        added = support_tensor(labels, class_support(incoming))
        inc = Teacher(incoming.model, known_mask(labels, incoming.manifest.trained_classes), added)
        fn = get_method(method)
        with make_progress(progress) as bar:
            task = bar.add_task(description, total=cfg.steps, info="")

            def report(step: int, losses: dict) -> None:
                if step % 10 == 0 or step == cfg.steps:
                    bar.update(task, completed=step, info=" ".join(f"{k} {v:.4f}" for k, v in losses.items()))

            result = fn(previous, inc, ood, cfg, progress=report)
        model = result.model
    info = {
        "cpu_seconds": time.process_time() - t0,
        "wall_seconds": time.perf_counter() - w0,
        "class_support": new_support,
    }
    if current_classes and "chosen" in result.info:
        info["student_init"] = result.info  # recorded in the bundle's lineage (``stream``)
    return model, new_classes, info


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
    model, classes, support = base.model, list(base.manifest.trained_classes), class_support(base)
    steps = []
    for i, b in enumerate(incoming):
        step_cfg = replace(cfg, seed=step_seed(cfg.seed, i))
        model, classes, info = consolidate_step(
            model,
            classes,
            b,
            source,
            method,
            step_cfg,
            progress,
            description=f"consolidate {i + 1}/{len(incoming)}",
            current_support=support,
        )
        support = info.pop("class_support")
        steps.append({"incoming": b.id, "classes": b.manifest.trained_classes, **info})
    version = base.manifest.extra.get("version")
    manifest = new_manifest(
        model,
        base.labels,
        base.input_spec,
        trained_classes=classes,
        parents=[base.id] + [b.id for b in incoming],
        method=method,
        extra={
            "consolidation": asdict(cfg.for_input(base.input_spec.kind)),
            "ood": str(ood) if ood is not None else "default",
            "stream": steps,
            "version": (version + len(incoming)) if isinstance(version, int) else None,
            "class_support": support,
        },
    )
    bid = save_bundle(model, manifest, out_path)
    return {"id": bid, "out": str(out_path), "method": method, "trained_classes": classes, "steps": steps}

