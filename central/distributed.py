"""Consolidation on several processes: data-parallel distillation (kd, dac) with ``torch.distributed``.

Every rank holds the frozen teachers and a replica of the student and of the PLD projections, draws its own
OOD batches (its own seeded generator) of ``B / N`` samples, and DistributedDataParallel averages the
gradients, so N ranks with ``B / N`` each take the same optimisation steps as one process with ``B``. The
loop is the method's own (:class:`central.methods.loop.DistillLoop`: ``setup / step / finish``); this module
adds the process group, the replica check, checkpoints and the launcher. Backends: NCCL on GPUs, gloo on
CPU. Rank 0 writes the bundle, atomically, only after every rank finished and the replicas were checked
identical.

Faults: the process group has a timeout and torchrun's elastic agent tears the group down when a rank dies,
so a dead rank fails the whole job with a clear message and no bundle. A checkpoint (safetensors, no pickle:
student, projections, optimizer, scheduler, step, every rank's RNG) is written every ``checkpoint_every``
steps; ``--resume`` continues from it.

Entry points: ``torchrun --nproc_per_node N $(which central) consolidate ...`` (every rank runs the same
command: ``central consolidate`` sees torchrun's environment and calls :func:`run_rank`) and
:func:`consolidate_distributed` (what ``central consolidate --nproc N`` runs: torchrun on this machine).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from central import consolidate
from central.consolidate import class_support, known_mask, merged_support, step_seed, support_tensor
from central.methods import ConsolidationConfig, Teacher, get_method
from central.methods.loop import DistillLoop, LoopState, Ranks, average_buffers
from edge_agent.bundle import Bundle, new_manifest, save_bundle, write_atomic
from edge_agent.data.ood import open_ood
from edge_agent.models import EdgeModel
from edge_agent.progress import make_progress

DEFAULT_TIMEOUT_S = 300.0  # a collective waiting longer than this means a rank is gone or hung
DEFAULT_CHECKPOINT_EVERY = 100  # steps; one checkpoint of a small CNN costs a few ms
CHECKPOINT_FORMAT = "central-distributed-checkpoint/1"
# How the launcher (or a person) tunes the ranks of `central consolidate` under torchrun.
RANK_ENV = {
    "checkpoint_every": "CENTRAL_CHECKPOINT_EVERY",  # steps between checkpoints (0: none)
    "timeout_s": "CENTRAL_DIST_TIMEOUT",  # process-group timeout, seconds
    "report_dir": "CENTRAL_DIST_REPORT_DIR",  # where each rank leaves its error or rank 0 its result
}


def rank_settings() -> dict:
    """``checkpoint_every``, ``timeout_s`` and ``report_dir`` of this rank, from :data:`RANK_ENV`."""
    env = {k: os.environ.get(v) for k, v in RANK_ENV.items()}
    return {
        "checkpoint_every": int(env["checkpoint_every"] or DEFAULT_CHECKPOINT_EVERY),
        "timeout_s": float(env["timeout_s"] or DEFAULT_TIMEOUT_S),
        "report_dir": Path(env["report_dir"]) if env["report_dir"] else None,
    }


class DistributedConsolidationError(ValueError):
    """A distributed consolidation that failed (a rank died, timed out or disagreed).

    The CLI prints it as one line and exits 1 (``edge_agent.cli_support.EXIT_CODE_OF_ERROR``).
    """


class Interrupted(RuntimeError):
    """Stopped on purpose (``stop_after_step``, SIGTERM from the launcher); the checkpoint allows resuming."""


# --------------------------------------------------------------------------------------------- ranks


def init_rank(timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Join the process group torchrun describes in the environment (or run alone without one).

    ``timeout_s`` (seconds) bounds every collective: a rank that died or hangs makes
    the others fail after at most that long instead of waiting forever.
    """
    if "WORLD_SIZE" not in os.environ:
        return Ranks()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        backend, accelerator = "nccl", torch.device("cuda", local)
        torch.cuda.set_device(accelerator)
    else:
        backend, accelerator = "gloo", torch.device("cpu")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Ranks(rank, world, local, accelerator, backend)


def distillation(method: str) -> DistillLoop:
    """The registered method ``method``, if it runs the distillation loop (only those run on several ranks)."""
    m = get_method(method)
    if not isinstance(m, DistillLoop):
        raise ValueError(f"method {method!r} is not a distillation: only kd and dac run on several processes")
    return m


def weights_digest(model: nn.Module) -> bytes:
    """sha256 of every tensor of ``model``'s state dict (parameters and buffers), in key order."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def check_replicas(ranks: Ranks, model: nn.Module) -> None:
    """Fail unless every rank holds bit-identical weights (what DDP promises; checked before writing)."""
    if not ranks.distributed:
        return
    mine = torch.frombuffer(bytearray(weights_digest(model)), dtype=torch.uint8).to(ranks.accelerator)
    digests = [torch.empty_like(mine) for _ in range(ranks.world_size)]
    dist.all_gather(digests, mine)
    differ = [r for r, d in enumerate(digests) if not torch.equal(d, digests[0])]
    if differ:
        raise DistributedConsolidationError(
            f"the students of ranks {differ} differ from rank 0's: refusing to write the bundle"
        )


# ------------------------------------------------------------------------------------------ checkpoints


def _gather_uint8(ranks: Ranks, t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a uint8 tensor (RNG states have the same size on every rank)."""
    if not ranks.distributed:
        return [t]
    mine = t.to(ranks.accelerator)
    out = [torch.empty_like(mine) for _ in range(ranks.world_size)]
    dist.all_gather(out, mine)
    return [o.cpu() for o in out]


def save_checkpoint(path: Path, ranks: Ranks, s: LoopState, previous: EdgeModel, meta: dict[str, object]) -> None:
    """Write the loop's full state (called on every rank: RNG states and buffers are collected; rank 0 writes).

    ``previous`` is the teacher being consolidated into (the model after the stream's earlier
    positions); ``meta`` holds JSON-able facts of the job (fingerprint, position, classes, ...).
    """
    average_buffers(ranks, s.student)  # linear in the running stats: resuming gives the same final average
    gens = _gather_uint8(ranks, s.gen.get_state())
    torch_rngs = _gather_uint8(ranks, torch.get_rng_state())
    cuda_rngs = _gather_uint8(ranks, torch.cuda.get_rng_state(ranks.accelerator)) if ranks.accelerator.type == "cuda" else []
    if not ranks.is_writer:
        return
    tensors = {f"previous.{k}": v for k, v in previous.state_dict().items()}
    tensors |= {f"student.{k}": v for k, v in s.student.state_dict().items()}
    tensors |= {f"proj.{k}": v for k, v in s.projectors.state_dict().items()}
    opt = s.opt.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    for r in range(ranks.world_size):
        tensors[f"rng.{r}.gen"] = gens[r]
        tensors[f"rng.{r}.torch"] = torch_rngs[r]
        if cuda_rngs:
            tensors[f"rng.{r}.cuda"] = cuda_rngs[r]
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {
        "format": CHECKPOINT_FORMAT,
        "step": str(s.step),
        "world_size": str(ranks.world_size),
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
    ranks: Ranks, s: LoopState, tensors: dict[str, torch.Tensor], header: dict[str, str]
) -> None:
    """Put the loop back where the checkpoint left it: weights, optimizer, scheduler, step, this rank's RNG."""
    dev = ranks.accelerator

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
    s.gen.set_state(tensors[f"rng.{ranks.rank}.gen"])
    torch.set_rng_state(tensors[f"rng.{ranks.rank}.torch"])
    if dev.type == "cuda" and f"rng.{ranks.rank}.cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.{ranks.rank}.cuda"], dev)


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


def run_job(
    job: DistributedJob,
    ranks: Ranks,
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
    method = distillation(job.method)
    batch_per_rank = ranks.batch_per_rank(job.cfg.batch_size)  # a batch that does not split fails before any work
    base, incoming = consolidate.load_inputs(job.base, job.incoming)
    source = open_ood(job.ood, base.input_spec)
    labels = base.labels
    fp = _fingerprint(job, base, incoming, ranks.world_size)
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
        if int(header["world_size"]) != ranks.world_size:
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
        step_cfg = replace(job.cfg.for_input(b.input_spec.kind), seed=step_seed(job.cfg.seed, i))
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
        s = method.setup(previous, inc, source, step_cfg, ranks)
        fresh = True
        if tensors is not None and i == start:
            load_checkpoint_state(ranks, s, tensors, header)
            tensors = None
            fresh = False  # the checkpoint at this step is the one just read
        first_step, train_wall = s.step, time.perf_counter()
        meta = {"fingerprint": fp, "position": i, "classes": classes, "support": support, "done": list(done)}
        with make_progress(progress and ranks.is_writer) as bar:
            task = bar.add_task(
                f"consolidate {i + 1}/{len(incoming)} x{ranks.world_size}",
                total=step_cfg.steps,
                completed=s.step,
                info="",
            )
            while s.step < step_cfg.steps:
                if job.checkpoint_every > 0 and s.step % job.checkpoint_every == 0 and fresh:
                    save_checkpoint(ckpt, ranks, s, model, meta)
                    where.checkpoint_step = (i, s.step)
                fresh = True
                losses = method.step(s)
                where.step = s.step
                if s.step % 10 == 0 or s.step == step_cfg.steps:
                    bar.update(task, completed=s.step, info=" ".join(f"{k} {float(v):.4f}" for k, v in losses.items()))
                if stop_after_step is not None and s.step >= stop_after_step and s.step < step_cfg.steps:
                    raise Interrupted(f"stopped after step {s.step}")
        if ranks.accelerator.type == "cuda":
            torch.cuda.synchronize(ranks.accelerator)
        train_wall = time.perf_counter() - train_wall
        model = method.finish(s)
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
                **({"student_init": s.info} if "chosen" in s.info else {}),
            }
        )

    model = model.to("cpu")
    check_replicas(ranks, model)
    if ranks.distributed:
        dist.barrier()  # every rank finished: only now may rank 0 write
    if not ranks.is_writer:
        return None
    info = {
        "world_size": ranks.world_size,
        "backend": ranks.backend or "none",
        "batch_per_rank": batch_per_rank,
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


def describe_failure(e: BaseException, ranks: Ranks, job: DistributedJob, where: Where) -> str:
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
        f"rank {ranks.rank}/{ranks.world_size}: consolidation failed at incoming {where.position + 1}/{len(job.incoming)}, "
        f"step {where.step}: {cause}. No bundle was written to {job.out}."
    )
    if where.checkpoint_step is not None or job.checkpoint_path().exists():
        msg += f" The checkpoint {job.checkpoint_path()} keeps the progress: rerun the same command with --resume."
    return msg


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # torchrun's agent sends SIGTERM to the surviving ranks when one dies: leave with a message, not silently.
    raise Interrupted("stopped by the launcher (SIGTERM), most likely because another rank failed")


def run_rank(job: DistributedJob, timeout_s: float = DEFAULT_TIMEOUT_S, report_dir: Path | None = None,
             progress: bool = True) -> dict | None:
    """What ``central consolidate`` does on one torchrun rank: join the group, run ``job``, report.

    A failure prints one paragraph and ends the process with exit 1 (skipping the process-group
    teardown, which can block until the timeout with a peer gone). Rank 0 returns the result.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one machine share its cores: more threads than cores per rank only adds contention.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    where = Where()
    ranks = Ranks()
    try:
        ranks = init_rank(timeout_s)
        result = run_job(job, ranks, progress=progress, where=where)
    except (Exception, Interrupted) as e:
        msg = describe_failure(e, ranks, job, where)
        print(f"error: {msg}", file=sys.stderr, flush=True)
        if report_dir is not None:
            (report_dir / f"rank{ranks.rank}.error.txt").write_text(msg + "\n")
        os._exit(1)
    if ranks.distributed:
        dist.destroy_process_group()
    if result is not None and report_dir is not None:
        write_atomic(report_dir / "result.json", json.dumps(result, indent=2).encode())
    return result


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
    distillation(method)
    Ranks(world_size=nproc).batch_per_rank(cfg.batch_size)
    consolidate.load_inputs(base, list(incoming))  # fail here, not in N ranks
    with tempfile.TemporaryDirectory(prefix="central-dist-") as tmp:
        report = Path(tmp)
        # Every rank runs the same `central consolidate` command a person would give torchrun.
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
            "-m", "central.cli", "consolidate",
            "--base", str(base), *[a for p in incoming for a in ("--incoming", str(p))], "--out", str(out),
            "--method", method, "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed),
            "--pld-weight", repr(cfg.pld_weight), "--student-init", cfg.student_init,
        ]  # fmt: skip
        cmd += ["--steps", str(cfg.steps)] if cfg.steps is not None else []
        cmd += ["--lr", repr(cfg.lr)] if cfg.lr is not None else []
        cmd += ["--ood", str(ood)] if ood is not None else []
        cmd += ["--resume"] if resume else []
        env = {**os.environ, RANK_ENV["report_dir"]: str(report), RANK_ENV["checkpoint_every"]: str(checkpoint_every),
               RANK_ENV["timeout_s"]: str(timeout_s)}
        if not progress:
            env["EDGE_PROGRESS"] = "0"
        rc = subprocess.run(cmd, env=env).returncode
        result = report / "result.json"
        if rc == 0 and result.exists():
            return json.loads(result.read_text())
        errors = sorted(report.glob("rank*.error.txt"))
        detail = " | ".join(p.read_text().strip() for p in errors) or "no rank left a message (killed by a signal?)"
        raise DistributedConsolidationError(
            f"distributed consolidation on {nproc} processes failed (exit {rc}): {detail}"
        )
