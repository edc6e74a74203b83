"""The one distillation loop, ``setup / step / finish``, that one process and N data-parallel ranks both run.

A distillation method (``kd``, ``dac`` and their variants) supplies the hooks: where the student starts,
its projectors, the loss of one batch. :class:`DistillLoop` owns everything else: the optimizer and its
cosine schedule, the OOD generator, BatchNorm statistics, and, when ``ranks`` is a process group, the
DistributedDataParallel wrapper and the averaging of running statistics over ranks. ``central.distributed``
adds checkpoints and the launcher around the same three calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from central.methods.base import ConsolidationConfig, Teacher
from edge_agent.data.ood import OODSource
from edge_agent.models import EdgeModel

RANK_SEED_STRIDE = 1_000_003  # rank r draws from seed + r * stride: apart from the stream's per-step seeds


@dataclass(frozen=True)
class Ranks:
    """Who this process is in a consolidation job. ``backend`` None: one process, no process group.

    ``accelerator`` is the torch device this rank computes on (a GPU, or the CPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    accelerator: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the bundle and the checkpoints."""
        return self.rank == 0

    def batch_per_rank(self, batch_size: int) -> int:
        """Samples each rank draws per step: the global batch split evenly."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch size {batch_size} does not split over {self.world_size} processes: "
                f"use a multiple of {self.world_size}"
            )
        return batch_size // self.world_size


ONE_PROCESS = Ranks()


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s OOD generator; rank 0 uses ``seed`` itself (the same draws as one process)."""
    return seed + RANK_SEED_STRIDE * rank


class OODOnAccelerator:
    """An OOD source whose batches land on ``accelerator`` (pinned host memory, asynchronous copy on a GPU)."""

    def __init__(self, source: OODSource, accelerator: torch.device):
        self.source = source
        self.spec = source.spec
        self.accelerator = accelerator

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = self.source.sample(n, generator)
        if self.accelerator.type == "cuda":
            # Pinned memory lets the copy overlap the previous step's kernels.
            return x.pin_memory().to(self.accelerator, non_blocking=True)
        return x.to(self.accelerator)


class StudentAndProjectors(nn.Module):
    """Everything that trains, in one module, so a single DDP synchronises the student and the PLD maps.

    ``forward`` is the student's ``latent_and_logits``; the method applies the projections in its loss,
    outside DDP's forward, which DDP allows: every parameter still gets its gradient in the same backward.
    """

    def __init__(self, student: EdgeModel, projectors: nn.ModuleList):
        super().__init__()
        self.student = student
        self.projectors = projectors

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.student.latent_and_logits(x)


@dataclass
class LoopState:
    """Everything one consolidation carries from step to step."""

    cfg: ConsolidationConfig  # resolved for the input kind; cfg.batch_size is the global batch
    ranks: Ranks
    batch_per_rank: int
    teachers: list[Teacher]
    student: EdgeModel
    projectors: nn.ModuleList
    module: nn.Module  # DDP(StudentAndProjectors) across ranks, else the plain container
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator  # this rank's OOD generator
    ood: OODSource
    info: dict  # what the method chose on the way (e.g. where the student started)
    step: int = 0

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """(tensors, string header) to resume from: student, projectors, optimizer, scheduler, step, RNGs.

        Called on every rank (buffers are averaged, RNG states gathered); rank 0 gets the
        snapshot, the other ranks None.
        """
        ranks = self.ranks
        average_buffers(ranks, self.student)  # linear in the running stats: resuming gives the same final average
        gens = _gather_uint8(ranks, self.gen.get_state())
        torch_rngs = _gather_uint8(ranks, torch.get_rng_state())
        cuda = ranks.accelerator.type == "cuda"
        cuda_rngs = _gather_uint8(ranks, torch.cuda.get_rng_state(ranks.accelerator)) if cuda else []
        if not ranks.is_writer:
            return None
        tensors = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        tensors |= {f"proj.{k}": v for k, v in self.projectors.state_dict().items()}
        opt = self.opt.state_dict()
        for pid, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        for r in range(ranks.world_size):
            tensors[f"rng.{r}.gen"], tensors[f"rng.{r}.torch"] = gens[r], torch_rngs[r]
            if cuda_rngs:
                tensors[f"rng.{r}.cuda"] = cuda_rngs[r]
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        # param_groups carry the cosine-decayed learning rate the scheduler builds on.
        header = {"step": str(self.step), "param_groups": json.dumps(opt["param_groups"]),
                  "sched": json.dumps(self.sched.state_dict())}
        return tensors, header

    def restore(self, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
        """Put the loop back where :meth:`snapshot` left it (this rank's RNG included)."""
        dev, rank = self.ranks.accelerator, self.ranks.rank

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v.to(dev) for k, v in tensors.items() if k.startswith(prefix)}

        self.student.load_state_dict(part("student."))
        self.projectors.load_state_dict(part("proj."))
        opt = self.opt.state_dict()
        opt["state"] = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                # Adam keeps ``step`` on the CPU unless capturable; the moments live with the parameters.
                opt["state"].setdefault(int(pid), {})[name] = v if name == "step" else v.to(dev)
        opt["param_groups"] = json.loads(header["param_groups"])
        self.opt.load_state_dict(opt)
        self.sched.load_state_dict(json.loads(header["sched"]))
        self.step = int(header["step"])
        self.gen.set_state(tensors[f"rng.{rank}.gen"])
        torch.set_rng_state(tensors[f"rng.{rank}.torch"])
        if dev.type == "cuda" and f"rng.{rank}.cuda" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.{rank}.cuda"], dev)


class DistillLoop:
    """The template every distillation method runs; subclasses fill in the hooks below."""

    def initial_student(self, previous: Teacher, incoming: Teacher, ood: OODSource, cfg: ConsolidationConfig):
        """(student to train, info to record): by default a copy of the previous central."""
        raise NotImplementedError

    def make_projectors(self, student: EdgeModel, teachers: list[Teacher]) -> nn.ModuleList:
        return nn.ModuleList()

    def loss(self, teachers, teacher_outs, student_out, projectors, cfg: ConsolidationConfig):
        """(total, logit, latent) losses of one batch."""
        raise NotImplementedError

    def batch_source(self, ood: OODSource, teachers: list[Teacher], cfg: ConsolidationConfig) -> OODSource:
        """Where each step's inputs come from: the OOD source, steered towards the teachers' classes when ``cfg.steer``."""
        if not cfg.steer:
            return ood
        from central.methods.steer import SteeredOOD

        return SteeredOOD(ood, teachers, cfg.steer)

    def finish_student(self, s: LoopState) -> None:
        """Last touches on the trained student before it is frozen (BatchNorm variants hook in here)."""

    def setup(
        self, previous: Teacher, incoming: Teacher, ood: OODSource, cfg: ConsolidationConfig, ranks: Ranks = ONE_PROCESS
    ) -> LoopState:
        """Student, projections, optimizer and generator; ``cfg`` is already resolved for the input kind."""
        from torch.nn.parallel import DistributedDataParallel

        batch = ranks.batch_per_rank(cfg.batch_size)
        acc = ranks.accelerator
        teachers = [
            Teacher(t.model.to(acc), t.known.to(acc), None if t.support is None else t.support.to(acc))
            for t in (previous, incoming)
        ]
        for t in teachers:
            t.model.eval()
            t.model.requires_grad_(False)
        # Seed with the job's seed (identical on every rank) before the student and projectors are built,
        # then switch to this rank's own seed for its OOD batches.
        torch.manual_seed(cfg.seed)
        student, info = self.initial_student(teachers[0], teachers[1], ood, cfg)
        student = student.to(acc)
        student.requires_grad_(True)
        projectors = self.make_projectors(student, teachers).to(acc)
        params = list(student.parameters()) + list(projectors.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
        seed = rank_seed(cfg.seed, ranks.rank)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        student.train()
        if cfg.batchnorm == "frozen":
            for m in student.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        module: nn.Module = StudentAndProjectors(student, projectors)
        if ranks.distributed:
            # forward_sync_buffers=False: each rank keeps BatchNorm running stats from its own batches and
            # finish() averages them, which is the running stat of the whole batch (the EMA is linear).
            module = DistributedDataParallel(
                module, device_ids=[acc.index] if acc.type == "cuda" else None, forward_sync_buffers=False
            )
        source = self.batch_source(OODOnAccelerator(ood, acc), teachers, cfg)
        return LoopState(cfg, ranks, batch, teachers, student, projectors, module, opt, sched, gen, source, info)

    def step(self, s: LoopState) -> dict[str, torch.Tensor]:
        """One optimisation step on this rank's batch (DDP averages the gradients in ``backward``).

        Returns the losses as tensors: turning them into floats would wait for the GPU.
        """
        x = s.ood.sample(s.batch_per_rank, s.gen)
        with torch.no_grad():
            outs = [t.model.latent_and_logits(x) for t in s.teachers]
        loss, kd, lat = self.loss(s.teachers, outs, s.module(x), s.projectors, s.cfg)
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        s.opt.step()
        s.sched.step()
        s.step += 1
        return {"kd": kd.detach(), "pld": lat.detach()}

    def finish(self, s: LoopState) -> EdgeModel:
        """BatchNorm statistics averaged over ranks; the frozen student."""
        self.finish_student(s)
        average_buffers(s.ranks, s.student)
        s.student.eval()
        s.student.requires_grad_(False)
        return s.student

    def run(
        self,
        previous: Teacher,
        incoming: Teacher,
        ood: OODSource,
        cfg: ConsolidationConfig,
        progress: Callable[[int, dict], None] | None = None,
    ) -> tuple[EdgeModel, dict]:
        """The whole loop in this process: (student, info)."""
        s = self.setup(previous, incoming, ood, cfg)
        while s.step < cfg.steps:
            losses = self.step(s)
            if progress is not None:
                progress(s.step, {k: float(v) for k, v in losses.items()})
        return self.finish(s), s.info


def average_buffers(ranks: Ranks, model: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running stats) over ranks, in place."""
    if not ranks.distributed:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(ranks.world_size)


def _gather_uint8(ranks: Ranks, t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a uint8 tensor (RNG states have the same size on every rank)."""
    if not ranks.distributed:
        return [t]
    mine = t.to(ranks.accelerator)
    out = [torch.empty_like(mine) for _ in range(ranks.world_size)]
    dist.all_gather(out, mine)
    return [o.cpu() for o in out]
