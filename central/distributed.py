"""Consolidation on several processes: data-parallel distillation (kd, dac) with ``torch.distributed``.

Every rank holds the frozen teachers and a replica of the student and of the PLD
projections, draws its own OOD batches (its own seeded generator) of ``B / N``
samples, and DistributedDataParallel averages the gradients, so N ranks with
``B / N`` each take the same optimisation steps as one process with ``B``.
Backends: NCCL on GPUs, gloo on CPU. Rank 0 writes the bundle, atomically, only
after every rank finished and the replicas were checked identical.

Faults: the process group has a timeout and torchrun's elastic agent tears the
group down when a rank dies, so a dead rank fails the whole job with a clear
message and no bundle. A checkpoint (safetensors, no pickle: student,
projections, optimizer, scheduler, step, every rank's RNG) is written every
``checkpoint_every`` steps; ``--resume`` continues from it.

Entry points: ``torchrun --nproc_per_node N -m central.consolidate ...`` (runs
:func:`main` on every rank) and :func:`consolidate_distributed` (launches
torchrun for ``central consolidate --nproc N``).

The per-step logic comes from the method object (its ``make_projectors`` hook
and its ``loss``, the very function ``Distill.__call__`` calls), but
the loop skeleton is :class:`DataParallelDistill`'s ``setup/step/finish``: the
loop in ``Distill.__call__`` is one function, so neither the student's forward
(to go through DDP) nor the optimizer, scheduler and step counter (to checkpoint
and resume) can be reached from outside. A test checks that this loop on one
process gives bit-identical weights to ``Distill.__call__``, so a change to the
method's loop that is not mirrored here fails loudly.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from central import consolidate
from central.consolidate import class_support, known_mask, merged_support, support_tensor
from central.methods import ConsolidationConfig, Teacher, get_method
from central.methods.distill import Distill, reestimate_bn
from edge_agent.bundle import Bundle, new_manifest, save_bundle, write_atomic
from edge_agent.data.ood import OODSource, open_ood
from edge_agent.models import EdgeModel
from edge_agent.progress import make_progress

DEFAULT_TIMEOUT_S = 300.0  # a collective waiting longer than this means a rank is gone or hung
DEFAULT_CHECKPOINT_EVERY = 100  # steps; one checkpoint of a small CNN costs a few ms
CHECKPOINT_FORMAT = "central-distributed-checkpoint/1"
RANK_SEED_STRIDE = 1_000_003  # rank r draws from seed + r * stride: apart from the stream's seed + i


class DistributedConsolidationError(ValueError):
    """A distributed consolidation that failed (a rank died, timed out or disagreed).

    The CLI prints it as one line and exits 1 (``edge_agent.cli_support.EXIT_CODE_OF_ERROR``).
    """


class Interrupted(RuntimeError):
    """Stopped on purpose (``stop_after_step``, SIGTERM from the launcher); the checkpoint allows resuming."""


# --------------------------------------------------------------------------------------------- ranks


@dataclass(frozen=True)
class RankContext:
    """Who this process is in the job. ``backend`` None: a single process without a process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the bundle and the checkpoints."""
        return self.rank == 0


def init_rank(timeout_s: float = DEFAULT_TIMEOUT_S) -> RankContext:
    """Join the process group torchrun describes in the environment (or run alone without one).

    ``timeout_s`` (seconds) bounds every collective: a rank that died or hangs makes
    the others fail after at most that long instead of waiting forever.
    """
    if "WORLD_SIZE" not in os.environ:
        return RankContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return RankContext(rank, world, local, device, backend)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s OOD generator; rank 0 uses ``seed`` itself (same draws as one process)."""
    return seed + RANK_SEED_STRIDE * rank


class DeviceOOD:
    """An OOD source whose batches land on ``device`` (pinned host memory, asynchronous copy on GPU)."""

    def __init__(self, source: OODSource, device: torch.device):
        self.source = source
        self.spec = source.spec
        self.device = device

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = self.source.sample(n, generator)
        if self.device.type == "cuda":
            # Pinned memory lets the copy overlap the previous step's kernels.
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)


# ------------------------------------------------------------------------------------ the training loop


class StudentAndProjectors(nn.Module):
    """One module holding everything that trains, so a single DDP synchronises student and PLD maps.

    ``forward`` is the student's ``latent_and_logits``; the projections are applied by the
    method's ``latent_loss`` outside DDP's forward, which DDP allows: every parameter
    still gets its gradient in the same backward pass.
    """

    def __init__(self, student: EdgeModel, projectors: nn.ModuleList):
        super().__init__()
        self.student = student
        self.projectors = projectors

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.student.latent_and_logits(x)


@dataclass
class RunState:
    """Everything one consolidation's loop carries from step to step."""

    cfg: ConsolidationConfig  # cfg.batch_size is the global batch B (samples per step over all ranks)
    batch_per_rank: int
    teachers: list[Teacher]
    student: EdgeModel
    projectors: nn.ModuleList
    module: nn.Module  # DDP(StudentAndProjectors) when distributed, else the plain container
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator  # this rank's OOD generator
    ood: OODSource
    step: int = 0


class DataParallelDistill:
    """A distillation method (``Distill`` or a subclass) run as ``setup / step / finish`` on every rank.

    ``__call__`` has the signature of a registered method, so on one process without a
    process group it is a drop-in replacement for the method itself (and gives the
    same weights bit for bit).
    """

    def __init__(self, method: Distill, ctx: RankContext | None = None):
        if not isinstance(method, Distill):
            raise ValueError(
                f"method {getattr(method, 'name', method)!r} is not a distillation: only kd and dac run on several processes"
            )
        self.method = method
        self.ctx = ctx or RankContext()

    def batch_per_rank(self, cfg: ConsolidationConfig) -> int:
        """Samples each rank draws per step: the global batch split evenly."""
        if cfg.batch_size % self.ctx.world_size:
            raise ValueError(
                f"batch size {cfg.batch_size} does not split over {self.ctx.world_size} processes: use a multiple of {self.ctx.world_size}"
            )
        return cfg.batch_size // self.ctx.world_size

    def setup(self, previous: Teacher, incoming: Teacher, ood: OODSource, cfg: ConsolidationConfig) -> RunState:
        """Student, projections, optimizer and generator, in the order ``Distill.__call__`` makes them.

        ``cfg`` is resolved for the input kind (:meth:`ConsolidationConfig.for_input`) by the callers.
        """
        dev = self.ctx.device
        teachers = [
            Teacher(t.model.to(dev), t.known.to(dev), None if t.support is None else t.support.to(dev))
            for t in (previous, incoming)
        ]
        for t in teachers:
            t.model.eval()
            t.model.requires_grad_(False)
        # Same order as Distill.__call__: seed with the job's seed (identical on every rank) before the
        # student and projectors are built, then switch to this rank's own seed for its OOD batches.
        torch.manual_seed(cfg.seed)
        student = self.method.initial_student(teachers[0], teachers[1], ood, cfg).to(dev)
        student.requires_grad_(True)
        projectors = self.method.make_projectors(student, teachers, cfg).to(dev)
        params = list(student.parameters()) + list(projectors.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
        seed = rank_seed(cfg.seed, self.ctx.rank)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        student.train(cfg.bn_mode != "frozen")
        module: nn.Module = StudentAndProjectors(student, projectors)
        if self.ctx.distributed:
            # forward_sync_buffers=False: each rank keeps BatchNorm running stats from its own batches and
            # finish() averages them, which is the running stat of the whole batch (the EMA is linear).
            module = DistributedDataParallel(
                module, device_ids=[dev.index] if dev.type == "cuda" else None, forward_sync_buffers=False
            )
        return RunState(
            cfg,
            self.batch_per_rank(cfg),
            teachers,
            student,
            projectors,
            module,
            opt,
            sched,
            gen,
            self.method.batch_source(DeviceOOD(ood, dev), teachers, cfg),
        )

    def step(self, s: RunState) -> dict[str, torch.Tensor]:
        """One optimisation step on this rank's batch; DDP averages the gradients in ``backward``.

        Returns the losses as tensors (turning them into floats would wait for the GPU).
        """
        cfg = s.cfg
        x = s.ood.sample(s.batch_per_rank, s.gen)
        with torch.no_grad():
            outs = [t.model.latent_and_logits(x) for t in s.teachers]
        labels = getattr(s.ood, "last_labels", None)
        loss, kd, lat = self.method.loss(s.teachers, outs, s.module(x), s.projectors, cfg, labels)
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        s.opt.step()
        s.sched.step()
        s.step += 1
        return {"kd": kd.detach(), "pld": lat.detach()}

    def finish(self, s: RunState) -> EdgeModel:
        """BatchNorm statistics (re-estimated if asked, then averaged over ranks); the frozen student."""
        if s.cfg.bn_mode == "reestimate":
            reestimate_bn(s.student, s.ood, s.gen, s.batch_per_rank)
        average_buffers(self.ctx, s.student)
        s.student.eval()
        s.student.requires_grad_(False)
        return s.student

    def __call__(
        self,
        previous: Teacher,
        incoming: Teacher,
        ood: OODSource,
        cfg: ConsolidationConfig,
        progress: Callable[[int, dict], None] | None = None,
    ) -> EdgeModel:
        cfg = cfg.for_input(ood.spec.kind)
        s = self.setup(previous, incoming, ood, cfg)
        while s.step < cfg.steps:
            losses = self.step(s)
            if progress is not None:
                progress(s.step, {k: float(v) for k, v in losses.items()})
        return self.finish(s)


def average_buffers(ctx: RankContext, model: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running stats) over ranks, in place."""
    if not ctx.distributed:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(ctx.world_size)


def weights_digest(model: nn.Module) -> bytes:
    """sha256 of every tensor of ``model``'s state dict (parameters and buffers), in key order."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def check_replicas(ctx: RankContext, model: nn.Module) -> None:
    """Fail unless every rank holds bit-identical weights (what DDP promises; checked before writing)."""
    if not ctx.distributed:
        return
    mine = torch.frombuffer(bytearray(weights_digest(model)), dtype=torch.uint8).to(ctx.device)
    digests = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(digests, mine)
    differ = [r for r, d in enumerate(digests) if not torch.equal(d, digests[0])]
    if differ:
        raise DistributedConsolidationError(
            f"the students of ranks {differ} differ from rank 0's: refusing to write the bundle"
        )


# ------------------------------------------------------------------------------------------ checkpoints


def _gather_uint8(ctx: RankContext, t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a uint8 tensor (RNG states have the same size on every rank)."""
    if not ctx.distributed:
        return [t]
    mine = t.to(ctx.device)
    out = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(out, mine)
    return [o.cpu() for o in out]


def save_checkpoint(path: Path, ctx: RankContext, s: RunState, previous: EdgeModel, meta: dict[str, object]) -> None:
    """Write the loop's full state (called on every rank: RNG states and buffers are collected; rank 0 writes).

    ``previous`` is the teacher being consolidated into (the model after the stream's earlier
    positions); ``meta`` holds JSON-able facts of the job (fingerprint, position, classes, ...).
    """
    average_buffers(ctx, s.student)  # linear in the running stats: resuming gives the same final average
    gens = _gather_uint8(ctx, s.gen.get_state())
    torch_rngs = _gather_uint8(ctx, torch.get_rng_state())
    cuda_rngs = _gather_uint8(ctx, torch.cuda.get_rng_state(ctx.device)) if ctx.device.type == "cuda" else []
    if not ctx.is_writer:
        return
    tensors = {f"previous.{k}": v for k, v in previous.state_dict().items()}
    tensors |= {f"student.{k}": v for k, v in s.student.state_dict().items()}
    tensors |= {f"proj.{k}": v for k, v in s.projectors.state_dict().items()}
    opt = s.opt.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    for r in range(ctx.world_size):
        tensors[f"rng.{r}.gen"] = gens[r]
        tensors[f"rng.{r}.torch"] = torch_rngs[r]
        if cuda_rngs:
            tensors[f"rng.{r}.cuda"] = cuda_rngs[r]
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {
        "format": CHECKPOINT_FORMAT,
        "step": str(s.step),
        "world_size": str(ctx.world_size),
        # param_groups carry the cosine-decayed learning rate the scheduler builds on.
        "param_groups": json.dumps(opt["param_groups"]),
        "sched": json.dumps(s.sched.state_dict()),
        "job": json.dumps(meta),
    }
    write_atomic(path, st_save(tensors, metadata=header))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of a checkpoint; a clear error when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError) as e:
        raise DistributedConsolidationError(
            f"checkpoint {path} is unreadable ({str(e).splitlines()[0]}): delete it to start over"
        ) from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise DistributedConsolidationError(f"{path} is not a consolidation checkpoint: delete it to start over")
    return tensors, header


def load_checkpoint_state(
    ctx: RankContext, s: RunState, tensors: dict[str, torch.Tensor], header: dict[str, str]
) -> None:
    """Put the loop back where the checkpoint left it: weights, optimizer, scheduler, step, this rank's RNG."""
    dev = ctx.device

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v.to(dev) for k, v in tensors.items() if k.startswith(prefix)}

    s.student.load_state_dict(part("student."))
    s.projectors.load_state_dict(part("proj."))
    opt = s.opt.state_dict()
    opt["state"] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            # Adam keeps ``step`` on the CPU unless capturable; the moments live with the parameters.
            opt["state"].setdefault(int(pid), {})[name] = v if name == "step" else v.to(dev)
    opt["param_groups"] = json.loads(header["param_groups"])
    s.opt.load_state_dict(opt)
    s.sched.load_state_dict(json.loads(header["sched"]))
    s.step = int(header["step"])
    s.gen.set_state(tensors[f"rng.{ctx.rank}.gen"])
    torch.set_rng_state(tensors[f"rng.{ctx.rank}.torch"])
    if dev.type == "cuda" and f"rng.{ctx.rank}.cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.{ctx.rank}.cuda"], dev)


def default_checkpoint_path(out: str | Path) -> Path:
    """``central-1.safetensors`` checkpoints to ``central-1.safetensors.ckpt`` next to it."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


# ------------------------------------------------------------------------------------------ one job


@dataclass
class DistributedJob:
    """What ``central consolidate --nproc N`` asks for; every rank runs the same job."""

    base: Path
    incoming: list[Path]
    out: Path
    ood: str | None = None
    method: str = "dac"
    cfg: ConsolidationConfig = field(default_factory=ConsolidationConfig)  # batch_size: global batch B
    checkpoint: Path | None = None  # default: next to ``out``
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # steps; 0 disables checkpoints
    resume: bool = False

    def checkpoint_path(self) -> Path:
        return self.checkpoint or default_checkpoint_path(self.out)


@dataclass
class Where:
    """How far this rank got, for error messages."""

    position: int = 0
    step: int = 0
    checkpoint_step: tuple[int, int] | None = None  # (position, step) of the last checkpoint written


def _fingerprint(job: DistributedJob, base: Bundle, incoming: list[Bundle], world_size: int) -> str:
    h = hashlib.sha256()
    for part in (base.id, *[b.id for b in incoming], job.method, str(job.ood), str(world_size)):
        h.update(part.encode() + b"\0")
    h.update(json.dumps(asdict(job.cfg), sort_keys=True, default=str).encode())
    return h.hexdigest()


def load_inputs(job: DistributedJob) -> tuple[Bundle, list[Bundle]]:
    """Load and check the base and device bundles (the same checks as ``consolidate_files``)."""
    return consolidate.load_inputs(job.base, job.incoming)


def run_job(
    job: DistributedJob,
    ctx: RankContext,
    progress: bool = True,
    where: Where | None = None,
    stop_after_step: int | None = None,
) -> dict | None:
    """Run ``job`` on this rank; rank 0 writes the bundle and returns the result (other ranks: None).

    The result is ``consolidate_files``' dict plus ``"distributed"``: world size, backend, batch
    per rank, throughput (OOD samples per second over all ranks, training loop only).
    ``stop_after_step`` simulates an interruption after that many steps of a consolidation (tests).
    """
    where = where or Where()
    method = get_method(job.method)
    runner = DataParallelDistill(method, ctx)
    runner.batch_per_rank(job.cfg)  # a batch that does not split fails before any work
    base, incoming = load_inputs(job)
    source = open_ood(job.ood, base.input_spec)
    labels = base.labels
    fp = _fingerprint(job, base, incoming, ctx.world_size)
    ckpt = job.checkpoint_path()

    model, classes, support = base.model, list(base.manifest.trained_classes), class_support(base)
    start, done, resumed = 0, [], None
    tensors: dict[str, torch.Tensor] | None = None
    header: dict[str, str] = {}
    if ckpt.exists() and not job.resume:
        raise DistributedConsolidationError(
            f"a checkpoint of an interrupted consolidation is at {ckpt}: add --resume to continue it, or delete it"
        )
    if job.resume and ckpt.exists():
        tensors, header = read_checkpoint(ckpt)
        meta = json.loads(header["job"])
        if int(header["world_size"]) != ctx.world_size:
            raise DistributedConsolidationError(
                f"checkpoint {ckpt} was written by {header['world_size']} processes: resume with --nproc {header['world_size']}"
            )
        if meta["fingerprint"] != fp:
            raise DistributedConsolidationError(
                f"checkpoint {ckpt} belongs to another consolidation (bundles, method or settings differ): delete it to start over"
            )
        model = copy.deepcopy(base.model)
        model.load_state_dict({k[len("previous.") :]: v for k, v in tensors.items() if k.startswith("previous.")})
        classes, start, done = meta["classes"], meta["position"], meta["done"]
        support = meta.get("support")  # merged_support counts one per class when absent
        resumed = {"position": start, "step": int(header["step"])}

    for i in range(start, len(incoming)):
        b = incoming[i]
        where.position, where.step = i, 0
        step_cfg = ConsolidationConfig(**{**asdict(job.cfg.for_input(b.input_spec.kind)), "seed": job.cfg.seed + i})
        new_classes, support, new_support = merged_support(labels, classes, support, b)  # as consolidate_step
        t0, w0 = time.process_time(), time.perf_counter()
        if not classes:
            # Nothing consolidated yet: the first device model *is* the central (as consolidate_step).
            model, classes, support = copy.deepcopy(b.model), new_classes, new_support
            done.append(
                {"incoming": b.id, "classes": b.manifest.trained_classes, "cpu_seconds": 0.0, "wall_seconds": 0.0}
            )
            continue
        previous = Teacher(model, known_mask(labels, classes), support_tensor(labels, support))
        inc = Teacher(b.model, known_mask(labels, b.manifest.trained_classes), support_tensor(labels, class_support(b)))
        s = runner.setup(previous, inc, source, step_cfg)
        fresh = True
        if tensors is not None and i == start:
            load_checkpoint_state(ctx, s, tensors, header)
            tensors = None
            fresh = False  # the checkpoint at this step is the one just read
        first_step, train_wall = s.step, time.perf_counter()
        meta = {"fingerprint": fp, "position": i, "classes": classes, "support": support, "done": list(done)}
        with make_progress(progress and ctx.is_writer) as bar:
            task = bar.add_task(
                f"consolidate {i + 1}/{len(incoming)} x{ctx.world_size}",
                total=step_cfg.steps,
                completed=s.step,
                info="",
            )
            while s.step < step_cfg.steps:
                if job.checkpoint_every > 0 and s.step % job.checkpoint_every == 0 and fresh:
                    save_checkpoint(ckpt, ctx, s, model, meta)
                    where.checkpoint_step = (i, s.step)
                fresh = True
                losses = runner.step(s)
                where.step = s.step
                if s.step % 10 == 0 or s.step == step_cfg.steps:
                    bar.update(task, completed=s.step, info=" ".join(f"{k} {float(v):.4f}" for k, v in losses.items()))
                if stop_after_step is not None and s.step >= stop_after_step and s.step < step_cfg.steps:
                    raise Interrupted(f"stopped after step {s.step}")
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        train_wall = time.perf_counter() - train_wall
        model = runner.finish(s)
        classes, support = new_classes, new_support
        steps_run = s.step - first_step
        done.append(
            {
                "incoming": b.id,
                "classes": b.manifest.trained_classes,
                "cpu_seconds": time.process_time() - t0,
                "wall_seconds": time.perf_counter() - w0,
                "steps_run": steps_run,
                "samples_per_second": steps_run * step_cfg.batch_size / train_wall if train_wall > 0 else None,
            }
        )

    model = model.to("cpu")
    check_replicas(ctx, model)
    if ctx.distributed:
        dist.barrier()  # every rank finished: only now may rank 0 write
    if not ctx.is_writer:
        return None
    info = {
        "world_size": ctx.world_size,
        "backend": ctx.backend or "none",
        "batch_per_rank": runner.batch_per_rank(job.cfg),
        "replicas_identical": True,
        "resumed_from": resumed,
    }
    version = base.manifest.extra.get("version")
    manifest = new_manifest(
        model,
        labels,
        base.input_spec,
        trained_classes=classes,
        parents=[base.id] + [b.id for b in incoming],
        method=job.method,
        extra={
            "consolidation": asdict(job.cfg.for_input(base.input_spec.kind)),
            "ood": str(job.ood) if job.ood is not None else "default",
            "stream": done,
            "version": (version + len(incoming)) if isinstance(version, int) else None,
            "class_support": support,
            "distributed": info,
        },
    )
    bid = save_bundle(model, manifest, job.out)
    ckpt.unlink(missing_ok=True)  # the bundle is complete: nothing left to resume
    return {
        "id": bid,
        "out": str(job.out),
        "method": job.method,
        "trained_classes": classes,
        "steps": done,
        "distributed": info,
    }


# ------------------------------------------------------------------------------ per-rank entry point


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m central.consolidate",
        description="Data-parallel consolidation; run it under torchrun, e.g. "
        "torchrun --nproc_per_node 4 -m central.consolidate --base c0.safetensors --incoming dev1.safetensors --out c1.safetensors",
    )
    p.add_argument("--base", type=Path, required=True, help="the current central bundle")
    p.add_argument(
        "--incoming", type=Path, action="extend", nargs="+", required=True, help="device bundle(s), in stream order"
    )
    p.add_argument("--out", type=Path, required=True, help="where rank 0 writes the consolidated bundle")
    p.add_argument(
        "--ood", default=None, help="OOD data (image, folder, clip, 'noise'); default: the bundled photo / clip"
    )
    p.add_argument("--method", default="dac", help="kd or dac")
    p.add_argument("--config", default=None, help="ConsolidationConfig as JSON (what consolidate_distributed passes)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per incoming model")
    p.add_argument("--batch-size", type=int, default=None, help="global OOD samples per step, split over the ranks")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--pld-weight", type=float, default=None)
    p.add_argument("--logit-loss", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint of an interrupted run")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file [default: OUT.ckpt]")
    p.add_argument(
        "--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY, help="steps between checkpoints (0: none)"
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="process-group timeout in seconds")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-dir", type=Path, default=None, help=argparse.SUPPRESS)  # consolidate_distributed's mailbox
    return p


def job_from_args(args: argparse.Namespace) -> DistributedJob:
    cfg = ConsolidationConfig(**json.loads(args.config)) if args.config else ConsolidationConfig()
    for name in ("steps", "batch_size", "lr", "pld_weight", "logit_loss", "seed"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return DistributedJob(
        args.base,
        list(args.incoming),
        args.out,
        args.ood,
        args.method,
        cfg,
        args.checkpoint,
        args.checkpoint_every,
        args.resume,
    )


def describe_failure(e: BaseException, ctx: RankContext, job: DistributedJob, where: Where) -> str:
    """One paragraph a person can act on: which rank, where, why, and what to do next."""
    cause = str(e).splitlines()[0] if str(e) else type(e).__name__
    if (
        isinstance(e, dist.DistError)
        or "gloo" in cause.lower()
        or "connection" in cause.lower()
        or "nccl" in cause.lower()
    ):
        cause = f"lost contact with another rank (it died, or hung longer than the process-group timeout): {cause}"
    msg = (
        f"rank {ctx.rank}/{ctx.world_size}: consolidation failed at incoming {where.position + 1}/{len(job.incoming)}, "
        f"step {where.step}: {cause}. No bundle was written to {job.out}."
    )
    if where.checkpoint_step is not None or job.checkpoint_path().exists():
        msg += f" The checkpoint {job.checkpoint_path()} keeps the progress: rerun the same command with --resume."
    return msg


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # torchrun's agent sends SIGTERM to the surviving ranks when one dies: leave with a message, not silently.
    raise Interrupted("stopped by the launcher (SIGTERM), most likely because another rank failed")


def main(argv: list[str] | None = None) -> None:
    """Entry point of one rank: ``python -m central.consolidate`` (under torchrun, or alone)."""
    args = _parser().parse_args(argv)
    job = job_from_args(args)
    if "WORLD_SIZE" in os.environ and "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one machine share its cores: more threads than cores per rank only adds contention.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    where = Where()
    ctx = RankContext()
    try:
        ctx = init_rank(args.timeout)
        result = run_job(job, ctx, progress=not args.no_progress, where=where)
    except (Exception, Interrupted) as e:
        msg = describe_failure(e, ctx, job, where)
        print(f"error: {msg}", file=sys.stderr, flush=True)
        if args.report_dir is not None:
            (args.report_dir / f"rank{ctx.rank}.error.txt").write_text(msg + "\n")
        # Skip the process-group teardown: with a peer gone it can block until the timeout.
        os._exit(1)
    if ctx.distributed:
        dist.destroy_process_group()
    if result is not None:
        text = json.dumps(result, indent=2)
        if args.report_dir is not None:
            write_atomic(args.report_dir / "result.json", text.encode())
        else:
            print(text)


# ------------------------------------------------------------------------------------------ launcher


def consolidate_distributed(
    base: str | Path,
    incoming: list[str | Path],
    out: str | Path,
    ood: str | Path | None = None,
    method: str = "dac",
    cfg: ConsolidationConfig | None = None,
    nproc: int = 2,
    resume: bool = False,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
) -> dict:
    """Consolidate on ``nproc`` processes of this machine (torchrun standalone); returns the result dict.

    ``cfg.batch_size`` is the global batch (each rank draws ``batch_size / nproc``), so the
    result matches one process with the same config in quality. Raises
    :class:`DistributedConsolidationError` naming the failed ranks when the job fails;
    then no bundle is written and ``resume=True`` continues from the checkpoint.
    """
    cfg = cfg or ConsolidationConfig()
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, not {nproc}")
    DataParallelDistill(get_method(method), RankContext(world_size=nproc)).batch_per_rank(cfg)
    load_inputs(DistributedJob(Path(base), [Path(p) for p in incoming], Path(out)))  # fail here, not in N ranks
    with tempfile.TemporaryDirectory(prefix="central-dist-") as tmp:
        report = Path(tmp)
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
            "-m", "central.consolidate",
            "--base", str(base), "--incoming", *[str(p) for p in incoming], "--out", str(out),
            "--method", method, "--config", json.dumps(asdict(cfg)),
            "--checkpoint-every", str(checkpoint_every), "--timeout", str(timeout_s), "--report-dir", str(report),
        ]  # fmt: skip
        if ood is not None:
            cmd += ["--ood", str(ood)]
        if resume:
            cmd.append("--resume")
        if not progress:
            cmd.append("--no-progress")
        rc = subprocess.run(cmd).returncode
        result = report / "result.json"
        if rc == 0 and result.exists():
            return json.loads(result.read_text())
        errors = sorted(report.glob("rank*.error.txt"))
        detail = " | ".join(p.read_text().strip() for p in errors) or "no rank left a message (killed by a signal?)"
        raise DistributedConsolidationError(
            f"distributed consolidation on {nproc} processes failed (exit {rc}): {detail}"
        )
