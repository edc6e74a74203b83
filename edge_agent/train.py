"""Local fine-tuning on a device: greedy, on the device's own classes only.

The loss sees only the logits of the classes present in the local data (masked
logits), so the rest of the head is left exactly as pulled (Adam without weight
decay gives zero updates to parameters whose gradient is always zero).

Three losses (:data:`DEVICE_LOSSES`): ``ce``, softmax cross-entropy over the own classes;
``bce-noise``, one-vs-rest binary cross-entropy over the own classes plus Gaussian-noise
inputs on which every own class is a negative; ``bce-jigsaw``, the same with the device's own
batch, its four quadrants shuffled, as the negatives (shapes made of its own strokes that are
not its classes). A ``ce`` device learns only logit *differences* between its classes, so where
its logits sit is arbitrary; the ``bce-*`` devices learn "mine" against "not mine" as well, which
puts the devices of a class-incremental stream on one scale for the central's distillation.
Training is deterministic for a seed and resumable: a checkpoint (safetensors,
weights + optimizer + RNG state) is written after every epoch and picked up by
the same command after an interruption.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from edge_agent.bundle import Bundle, load_bundle, new_manifest, save_bundle
from edge_agent.data.labeled import CachedSet, DataError, LabeledSet
from edge_agent.optim import AdamCosine
from edge_agent.progress import make_progress

# cnn-s keeps 151 MB for the backward pass of 32 + 32 bce-jigsaw inputs of 3x64x64, and `edge-agent train` then
# peaks over the 400 MB a Raspberry Pi Zero 2 W can give it (benchmarks/results/train-memory); 28x28 keeps 29 MB
# and ds-cnn on 16 clips 34 MB, both trained in one piece under this limit, as before.
STEP_MEMORY_MB = 80.0


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int | None = 32  # None: the device default for the model's input kind (see train_bundle)
    seed: int = 0
    val_fraction: float = 0.15
    shift: int = 1  # random translation in pixels/frames (light augmentation); 0 disables
    loss: str | None = None  # "ce", "bce-noise" or "bce-jigsaw"; None: the device default for the model's input kind (DEVICE_LOSS)
    # Weight of the negatives term of the "bce-noise" and "bce-jigsaw" losses (edge-agent train --negatives); 1.0 was
    # within noise on Split-Digits val and slower at short budgets (benchmarks/results/dcl/dcl-split-digits-devlog.md).
    negatives: float = 0.3
    # Activation memory one optimizer step may keep for the backward pass (edge-agent train --step-memory-mb); a batch
    # whose estimate exceeds it runs as micro-batches with gradient accumulation. None: no limit.
    step_memory_mb: float | None = STEP_MEMORY_MB

    def for_input(self, kind: str) -> TrainConfig:
        """This config with its None fields set to the device defaults for ``kind`` (image or audio)."""
        cfg = self
        if cfg.batch_size is None:
            cfg = replace(cfg, batch_size=DEVICE_BATCH_SIZE.get(kind, TrainConfig.batch_size))
        if cfg.loss is None:
            cfg = replace(cfg, loss=DEVICE_LOSS.get(kind, "ce"))
        if cfg.loss not in DEVICE_LOSSES:
            raise DataError(f"unknown training loss {cfg.loss!r}: use one of {', '.join(DEVICE_LOSSES)}")
        if not cfg.negatives >= 0:  # also catches NaN
            raise DataError(f"the weight of the negatives must be 0 or more, not {cfg.negatives}")
        if cfg.step_memory_mb is not None and not cfg.step_memory_mb > 0:
            raise DataError(f"the step memory limit must be more than 0 MB, not {cfg.step_memory_mb}")
        return cfg


# On a device, audio models train in batches of 16 unless told otherwise (images: TrainConfig's 32).  ds-cnn keeps
# about 2 MB of activations per clip for the backward pass: at 32, `edge-agent train` peaked at 421 MB resident,
# over the 400 MB a Raspberry Pi Zero 2 W (512 MB) can give it; at 16, 358 MB (medians of 3, /usr/bin/time -v),
# about as many clips per second, and with the CLI's lr the same 30 epochs learn more (synthetic device-01, seeds
# 0-2: local validation accuracy 0.89 vs 0.76, its test speakers 0.90 vs 0.76).  The audio demo and the KWS
# benchmarks train their simulated devices with this same value.
DEVICE_BATCH_SIZE = {"audio": 16}

DEVICE_LOSSES = ("ce", "bce-noise", "bce-jigsaw")
# Image devices train with negatives: one-vs-rest devices put their logits on one scale, which consolidates better on
# Split-Digits val (benchmarks/results/dcl/dcl-split-digits-devlog.md). Audio keeps ce: bce-jigsaw on log-mel
# spectrograms halved KWS-class DAC on val (benchmarks/results/dcl/dcl-kws-devlog.md).
DEVICE_LOSS = {"image": "bce-jigsaw", "audio": "ce"}


# What fine_tune trains on: inputs in memory, or rows read from a cache file a batch at a time.
DataSet = LabeledSet | CachedSet


class Interrupted(RuntimeError):
    """Training stopped by the user; the checkpoint allows resuming."""


def split_train_val(data: LabeledSet, fraction: float, seed: int) -> tuple[LabeledSet, LabeledSet | None]:
    """A stratified, seeded hold-out of ``fraction`` of each class."""
    if fraction <= 0:
        return data, None
    g = torch.Generator().manual_seed(seed + 7919)
    train_idx, val_idx = [], []
    for c in data.classes:
        idx = torch.tensor([i for i, lab in enumerate(data.labels) if lab == c])
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        val_idx += idx[:k].tolist()
        train_idx += idx[k:].tolist()
    return data.subset(sorted(train_idx)), (data.subset(sorted(val_idx)) if val_idx else None)


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    if max_shift <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def masked_accuracy(
    model: torch.nn.Module, x: torch.Tensor | DataSet, y: torch.Tensor, mask: torch.Tensor, batch_size: int = 64
) -> float:
    """Top-1 accuracy with logits restricted to ``mask`` (the device's own task), ``batch_size`` inputs at a time.

    ``x`` is a tensor of inputs or a loaded set (whose batches may be read from disk).
    """
    model.eval()
    batches = x.split(batch_size) if isinstance(x, torch.Tensor) else x.batches(batch_size)
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in batches])  # small batches: devices have little memory
    logits = logits.masked_fill(~mask, float("-inf"))
    return float((logits.argmax(1) == y).float().mean())


def jigsaw(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``x`` (N, C, H, W) with each sample's four quadrants in a random order, never the original one.

    Odd heights or widths leave their last row or column in place.
    """
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    q = x[:, :, : 2 * h2, : 2 * w2].reshape(n, c, 2, h2, 2, w2).permute(0, 2, 4, 1, 3, 5).reshape(n, 4, c, h2, w2)
    perm = torch.rand(n, 4, generator=g).argsort(1)
    same = (perm == torch.arange(4)).all(1)
    perm[same] = torch.tensor([3, 2, 1, 0])  # the identity would make a positive a negative
    q = q[torch.arange(n)[:, None], perm]
    out = x.clone()
    out[:, :, : 2 * h2, : 2 * w2] = q.reshape(n, 2, 2, c, h2, w2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, 2 * h2, 2 * w2)
    return out


def negatives_for(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor | None:
    """The negatives of the ``bce-*`` losses for batch ``x`` (None for ``ce``), drawn from ``g``."""
    if cfg.loss == "ce":
        return None
    return jigsaw(x, g) if cfg.loss == "bce-jigsaw" else torch.randn(x.shape, generator=g)


def device_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    own_idx: torch.Tensor,
    cfg: TrainConfig,
    g: torch.Generator | None,
    neg_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss of one batch; ``target`` indexes ``own_idx`` (the classes present on the device).

    ``neg_x``: the batch's negatives, already drawn (:func:`negatives_for`); None draws them from ``g``.
    """
    if cfg.loss == "ce":
        return F.cross_entropy(model(x)[:, own_idx], target)
    # bce-noise / bce-jigsaw: one forward over the batch and as many negatives (N(0, 1) noise in the model's input
    # space, or the batch itself quadrant-shuffled), so the BatchNorm running statistics see both: that is how it was
    # measured.  Twice the activations of "ce".
    if neg_x is None:
        neg_x = negatives_for(x, cfg, g)
    logits = model(torch.cat([x, neg_x]))[:, own_idx]
    own, neg = logits[: len(x)], logits[len(x) :]
    positives = F.binary_cross_entropy_with_logits(own, F.one_hot(target, len(own_idx)).float())
    return positives + cfg.negatives * F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))


def backward_bytes_per_input(model: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """Bytes the model keeps for the backward pass per input of ``input_shape``, by a training-mode probe.

    The probe runs a copy of the model on two zero inputs, so neither the model's BatchNorm
    statistics nor any random generator moves; parameters are not counted.
    """
    import copy

    probe = copy.deepcopy(model).train()
    params = {p.untyped_storage().data_ptr() for p in probe.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = probe(torch.zeros(2, *input_shape))
    del out, probe
    return sum(saved.values()) / 2


def micro_batch_count(model: torch.nn.Module, input_shape: tuple[int, ...], cfg: TrainConfig) -> int:
    """How many micro-batches one batch of ``cfg`` runs as so that its backward memory stays within the limit."""
    if cfg.step_memory_mb is None:
        return 1
    per_step = backward_bytes_per_input(model, input_shape) * cfg.batch_size * (1 if cfg.loss == "ce" else 2)
    n = math.ceil(per_step / (cfg.step_memory_mb * 2**20))
    return max(1, min(n, cfg.batch_size // 2))  # BatchNorm needs two samples in each micro-batch


def accumulated_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    own_idx: torch.Tensor,
    cfg: TrainConfig,
    g: torch.Generator,
    parts: int,
) -> float:
    """Backward of the batch's loss as ``parts`` micro-batches, gradients summed; returns the batch's loss.

    The negatives are drawn for the whole batch before it is split, so the random stream is the
    one batch in one piece draws; each part's loss is weighted by its share of the batch, so the
    gradients add up to those of the batch's mean loss (BatchNorm normalises each part by its own
    statistics).
    """
    neg_x = negatives_for(x, cfg, g)
    total = 0.0
    for part in torch.arange(len(x)).tensor_split(parts):
        i, j = int(part[0]), int(part[-1]) + 1
        loss = device_loss(model, x[i:j], target[i:j], own_idx, cfg, None, None if neg_x is None else neg_x[i:j])
        (loss * ((j - i) / len(x))).backward()
        total += float(loss.detach()) * (j - i) / len(x)
    return total


def _fingerprint(bundle: Bundle, data: DataSet, cfg: TrainConfig) -> str:
    h = hashlib.sha256()
    h.update(bundle.id.encode())
    h.update("\n".join(bundle.labels).encode())  # a grown label list is another model
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    data.digest(h)
    h.update("\n".join(data.labels).encode())
    return h.hexdigest()


def fine_tune(
    bundle: Bundle,
    data: DataSet,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    return_memory: bool = False,
) -> tuple[torch.nn.Module, dict]:
    """Fine-tune ``bundle.model`` in place on ``data``; returns the model and metrics.

    ``data`` is in memory (:class:`LabeledSet`) or read from disk a batch at a time
    (:class:`CachedSet`); both give the same batches for a seed.
    ``stop_after_epoch`` simulates an interruption (tests); a real Ctrl-C does the same.
    ``return_memory`` calls :func:`return_freed_memory` first: for a process that only trains.
    """
    labels = bundle.labels
    cfg = cfg.for_input(bundle.input_spec.kind)
    y_all = data.targets(labels)  # raises DataError for labels the model does not know
    train, val = split_train_val(data, cfg.val_fraction, cfg.seed)
    x, y = train, train.targets(labels)
    own = torch.zeros(len(labels), dtype=torch.bool)
    own[y_all.unique()] = True
    own_idx = own.nonzero().flatten()
    remap = torch.full((len(labels),), -1, dtype=torch.long)
    remap[own_idx] = torch.arange(len(own_idx))

    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = bundle.model
    if return_memory:
        return_freed_memory()
    parts = micro_batch_count(model, tuple(bundle.input_spec.shape), cfg)
    steps_per_epoch = max(1, (len(x) + cfg.batch_size - 1) // cfg.batch_size)
    # Adam and cosine decay as torch.optim computes them, without importing torch.optim (see edge_agent.optim).
    opt = AdamCosine(model.parameters(), lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    start_epoch = 0
    fp = _fingerprint(bundle, data, cfg)
    if checkpoint is not None and checkpoint.exists():
        start_epoch = _load_checkpoint(checkpoint, fp, model, opt, g)

    loss_val = float("nan")
    with make_progress(progress) as bar:
        task = bar.add_task("train", total=cfg.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            perm = torch.randperm(len(x), generator=g)
            total, count = 0.0, 0
            for i in range(0, len(x), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                if len(idx) < 2:  # BatchNorm needs more than one sample
                    continue
                xb, tb = _shift(x.take(idx), cfg.shift, g), remap[y[idx]]
                if parts == 1:
                    loss = device_loss(model, xb, tb, own_idx, cfg, g)
                    loss.backward()
                    batch_loss = float(loss.detach())
                else:
                    batch_loss = accumulated_loss(model, xb, tb, own_idx, cfg, g, min(parts, len(idx) // 2))
                del xb
                opt.step()
                # Drop the gradients now, not before the next backward: the next forward's activations then find
                # free blocks that the small gradient tensors have not splintered (less heap fragmentation).
                opt.zero_grad()
                total += batch_loss * len(idx)
                count += len(idx)
            loss_val = total / max(count, 1)
            if not torch.isfinite(torch.tensor(loss_val)):
                raise DataError("training diverged (loss is NaN): try a lower --lr")
            bar.update(task, advance=1, info=f"loss {loss_val:.4f}")
            if checkpoint is not None:
                _save_checkpoint(checkpoint, fp, epoch + 1, model, opt, g)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
                raise Interrupted(f"stopped after epoch {epoch + 1}")

    metrics = {"train_loss": loss_val, "loss": cfg.loss, "epochs": cfg.epochs, "n_train": len(x), "micro_batches": parts}
    # Evaluation batches no larger than the training ones: they fit in memory the training steps already used.
    if val is not None:
        metrics["val_accuracy"] = masked_accuracy(model, val, val.targets(labels), own, cfg.batch_size)
        metrics["n_val"] = len(val)
    metrics["train_accuracy"] = masked_accuracy(model, x, y, own, cfg.batch_size)
    model.eval()
    return model, metrics


def return_freed_memory() -> None:
    """Have glibc give large freed blocks back to the system instead of keeping them in the heap.

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MB), so
    the activations of later steps land in a heap that fragments and is never returned: a fixed
    threshold lowered the peak of bce-jigsaw steps of cnn-s at 64x64 by about 100 MB (measured:
    benchmarks/results/train-memory). No effect outside glibc or where MALLOC_MMAP_THRESHOLD_ is set.
    The setting is process-wide and costs page faults in whatever the process runs next (it took a
    consolidation from 25.3 to 48.5 CPU s, benchmarks/results/train-memory/train-memory-devlog.md),
    so only the device command asks for it.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 128 * 1024)  # glibc's initial value, now fixed


def _save_checkpoint(path: Path, fp: str, epoch: int, model, opt: AdamCosine, g: torch.Generator) -> None:
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"opt.{k}": v.detach().clone().contiguous() for k, v in opt.state_tensors().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.gen"] = g.get_state()
    # The current (cosine-decayed) learning rate is what the next decay step builds on: kept exactly (repr).
    meta = {"fingerprint": fp, "epoch": str(epoch), "lr": repr(opt.lr), "lr_steps": str(opt.steps)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, fp: str, model, opt: AdamCosine, g: torch.Generator) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # a checkpoint cut short by the interruption itself
        raise DataError(f"checkpoint {path} is unreadable ({str(e).splitlines()[0]}): pass --fresh to start over") from None
    if meta.get("fingerprint") != fp:
        raise DataError(
            f"checkpoint {path} belongs to another run (model, data or settings such as --epochs differ): "
            "pass --fresh to discard it and start over, or the same options to resume"
        )
    if "lr" not in meta:
        raise DataError(f"checkpoint {path} was written by an older edge-agent: pass --fresh to start over")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt.load_state_tensors(
        {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}, lr=float(meta["lr"]), steps=int(meta["lr_steps"])
    )
    torch.set_rng_state(tensors["rng.torch"])
    g.set_state(tensors["rng.gen"])
    return int(meta["epoch"])


def load_local_data(
    path: str | Path,
    bundle: Bundle,
    split: str = "train",
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
) -> DataSet:
    """Read a device's local data in the layout that fits the model's input kind.

    ``skip_bad`` leaves unreadable files out (listed in ``.report.skipped``) instead
    of stopping at the first; ``cache_dir`` converts the files once into a cache
    there and returns a set that reads it a batch at a time (bounded memory).
    """
    spec = bundle.input_spec
    if spec.kind == "audio":
        from edge_agent.audio.frontend import AudioFrontend
        from edge_agent.data.speech import load_speech_commands

        return load_speech_commands(
            path, AudioFrontend.from_dict(spec.frontend), split=split, skip_bad=skip_bad, cache_dir=cache_dir,
            labels=bundle.labels,
        )
    from edge_agent.data.images import load_image_folder

    return load_image_folder(path, spec, skip_bad=skip_bad, cache_dir=cache_dir)


def train_bundle(
    model_path: str | Path,
    data_dir: str | Path,
    out_path: str | Path,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    fresh: bool = False,
    skip_bad: bool = False,
    summary: Callable[[str], None] | None = None,
    return_memory: bool = False,
) -> dict:
    """Fine-tune the bundle at ``model_path`` on ``data_dir``; write the new bundle to ``out_path``.

    Returns ``{"id", "out", "classes", "added_labels", "metrics", "notes", "skipped", "resumed_from_epoch"}``.
    Classes of the data that the model does not know join its label list (``added_labels``; the
    head grows, old outputs unchanged). The inputs are converted once into a cache folder next
    to ``out_path`` (``<out>.cache``) and read from it a batch at a time, so memory does not grow
    with the data; the cache and the checkpoint (``<out>.ckpt``) live until training completes;
    ``fresh`` discards the checkpoint first. ``summary``, if given, is called with each line of
    what was read and converted before training starts. ``cfg.batch_size=None`` takes
    :data:`DEVICE_BATCH_SIZE` for the bundle's input kind (what the device CLIs pass).
    ``return_memory`` is :func:`fine_tune`'s: ``edge-agent train`` sets it.
    """
    import shutil

    cfg = cfg or TrainConfig()
    bundle = parent = load_bundle(model_path)
    cfg = cfg.for_input(bundle.input_spec.kind)
    out_path = Path(out_path)
    cache = out_path.with_name(out_path.name + ".cache")
    checkpoint = out_path.with_name(out_path.name + ".ckpt")
    try:
        data = load_local_data(data_dir, bundle, split="train", skip_bad=skip_bad, cache_dir=cache)
    except BaseException as e:
        if not checkpoint.exists():  # nothing to resume: the cache folder would only be litter
            shutil.rmtree(cache, ignore_errors=True)
        if not isinstance(e, DataError) or skip_bad or "cannot read" not in str(e):
            raise
        raise DataError(f"{e} (--skip-bad leaves unreadable files out)") from None
    notes = []
    if len(data.classes) == 1:
        notes.append(
            f"one class ({data.classes[0]}): validation accuracy is 1.0 by construction (masked logits of one class) "
            "and measures nothing; the device model still learns its class against the rest for the central"
        )
    if summary is not None and data.report is not None:
        for line in data.report.lines():
            summary(line)
    # Classes the central has never seen join the label list (edge_agent.models.remap_head draws their rows).
    new_labels = [c for c in data.classes if c not in set(bundle.labels)]
    if new_labels:
        bundle = bundle.with_labels([*bundle.labels, *new_labels])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        checkpoint.unlink(missing_ok=True)
    resumed = _checkpoint_epoch(checkpoint)
    model, metrics = fine_tune(bundle, data, cfg, checkpoint, progress, stop_after_epoch, return_memory)
    manifest = new_manifest(
        model,
        bundle.labels,
        bundle.input_spec,
        trained_classes=data.classes,
        parents=[parent.id],
        method="train",
        metrics=metrics,
        extra={"train": asdict(cfg), "base_version": parent.manifest.extra.get("version"),
               **({"added_labels": new_labels} if new_labels else {})},
    )
    bid = save_bundle(model, manifest, out_path)
    checkpoint.unlink(missing_ok=True)
    skipped = [f for f, _ in data.report.skipped] if data.report is not None else []
    classes = data.classes
    del data  # closes the cache file before it is removed
    shutil.rmtree(cache, ignore_errors=True)
    return {"id": bid, "out": str(out_path), "classes": classes, "added_labels": new_labels, "metrics": metrics,
            "notes": notes, "skipped": skipped, "resumed_from_epoch": resumed}


def _checkpoint_epoch(path: Path) -> int:
    """Epochs a checkpoint holds (0 when there is none or it cannot be read: fine_tune reports that)."""
    if not path.exists():
        return 0
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return int((f.metadata() or {}).get("epoch", 0))
    except Exception:
        return 0
