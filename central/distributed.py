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
from central.consolidate import Central, consolidated_manifest, step_inputs, step_seed, stream_record
from central.methods import ConsolidationConfig, get_method, list_methods
from central.methods.loop import DistillLoop, LoopState, Ranks
from edge_agent.bundle import Bundle, save_bundle, write_atomic
from edge_agent.data.ood import open_ood
from edge_agent.models import EdgeModel, remap_head
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
    """A distributed consolidation that failed (a rank died, timed out or disagreed): one line, exit 1."""


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
        runs = ", ".join(n for n in list_methods() if isinstance(get_method(n), DistillLoop))
        raise ValueError(f"method {method!r} is not a distillation: only {runs} run on several processes")
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
        raise DistributedConsolidationError(f"the students of ranks {differ} differ from rank 0's: refusing to write the bundle")


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path: Path, ranks: Ranks, s: LoopState, previous: EdgeModel, meta: dict[str, object]) -> None:
    """Write the loop's full state (called on every rank: RNG states and buffers are collected; rank 0 writes).

    ``previous`` is the teacher being consolidated into (the model after the stream's earlier
    positions); ``meta`` holds JSON-able facts of the job (fingerprint, position, classes, ...).
    """
    snap = s.snapshot()
    if not ranks.is_writer:
        return
    tensors, header = snap
    tensors |= {f"previous.{k}": v.detach().to("cpu").contiguous().clone() for k, v in previous.state_dict().items()}
    header |= {"format": CHECKPOINT_FORMAT, "world_size": str(ranks.world_size), "job": json.dumps(meta)}
    write_atomic(path, st_save(tensors, metadata=header))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of a checkpoint; a clear error when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError) as e:
        why = str(e).splitlines()[0]
        raise DistributedConsolidationError(f"checkpoint {path} is unreadable ({why}): delete it to start over") from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise DistributedConsolidationError(f"{path} is not a consolidation checkpoint: delete it to start over")
    return tensors, header


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
    """What a checkpoint must match to be resumed: the bundles, method, OOD source, settings, world size."""
    h = hashlib.sha256()
    for part in (base.id, *[b.id for b in incoming], job.method, str(job.ood), str(world_size)):
        h.update(part.encode() + b"\0")
    h.update(json.dumps(asdict(job.cfg), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _resume_point(job: DistributedJob, ranks: Ranks, base: Bundle, fp: str):
    """(central, position, stream so far, checkpoint tensors and header, resumed_from) to start the job from."""
    ckpt = job.checkpoint_path()
    if ckpt.exists() and not job.resume:
        raise DistributedConsolidationError(
            f"a checkpoint of an interrupted consolidation is at {ckpt}: add --resume to continue it, or delete it"
        )
    if not (job.resume and ckpt.exists()):
        return Central.of(base), 0, [], None, {}, None
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
    labels = meta.get("labels", base.labels)
    model = copy.deepcopy(remap_head(base.model, base.labels, labels))
    model.load_state_dict({k[len("previous.") :]: v for k, v in tensors.items() if k.startswith("previous.")})
    central = Central(model, labels, meta["classes"], meta.get("support") or {})
    resumed = {"position": meta["position"], "step": int(header["step"])}
    return central, meta["position"], meta["done"], tensors, header, resumed


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
    fp = _fingerprint(job, base, incoming, ranks.world_size)
    ckpt = job.checkpoint_path()
    central, start, done, tensors, header, resumed = _resume_point(job, ranks, base, fp)

    for i in range(start, len(incoming)):
        b = incoming[i]
        where.position, where.step = i, 0
        step_cfg = replace(job.cfg.for_input(b.input_spec.kind), seed=step_seed(job.cfg.seed, i))
        step = step_inputs(central, b)
        t0, w0 = time.process_time(), time.perf_counter()
        if step.previous is None:
            # Nothing consolidated yet: the first device model *is* the central (as consolidate_step).
            done.append(stream_record(b, central, {"cpu_seconds": 0.0, "wall_seconds": 0.0}))
            central = step.central(copy.deepcopy(step.incoming.model))
            continue
        s = method.setup(step.previous, step.incoming, source, step_cfg, ranks)
        fresh = True
        if tensors is not None and i == start:
            s.restore(tensors, header)
            tensors = None
            fresh = False  # the checkpoint at this step is the one just read
        first_step, train_wall = s.step, time.perf_counter()
        meta = {"fingerprint": fp, "position": i, "labels": central.labels, "classes": central.classes,
                "support": central.support, "done": list(done)}
        with make_progress(progress and ranks.is_writer) as bar:
            task = bar.add_task(f"consolidate {i + 1}/{len(incoming)} x{ranks.world_size}", total=step_cfg.steps,
                                completed=s.step, info="")
            while s.step < step_cfg.steps:
                if job.checkpoint_every > 0 and s.step % job.checkpoint_every == 0 and fresh:
                    save_checkpoint(ckpt, ranks, s, central.model, meta)
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
        steps_run = s.step - first_step
        info = {
            "cpu_seconds": time.process_time() - t0,
            "wall_seconds": time.perf_counter() - w0,
            "steps_run": steps_run,
            "samples_per_second": steps_run * step_cfg.batch_size / train_wall if train_wall > 0 else None,
            **({"student_init": s.info} if "chosen" in s.info else {}),
        }
        done.append(stream_record(b, central, info))
        central = step.central(method.finish(s))

    central.model = central.model.to("cpu")
    check_replicas(ranks, central.model)
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
    manifest = consolidated_manifest(central, base, incoming, job.method, job.cfg, job.ood, done, distributed=info)
    bid = save_bundle(central.model, manifest, job.out)
    ckpt.unlink(missing_ok=True)  # the bundle is complete: nothing left to resume
    return {"id": bid, "out": str(job.out), "method": job.method, "labels": central.labels,
            "trained_classes": central.classes, "steps": done, "distributed": info}


# ------------------------------------------------------------------------------ per-rank entry point


def describe_failure(e: BaseException, ranks: Ranks, job: DistributedJob, where: Where) -> str:
    """One paragraph a person can act on: which rank, where, why, and what to do next."""
    cause = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, dist.DistError) or any(w in cause.lower() for w in ("gloo", "nccl", "connection")):
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

    ``cfg.batch_size`` is the global batch (each rank draws ``batch_size / nproc``). A failed job
    raises :class:`DistributedConsolidationError` naming the ranks; ``resume=True`` continues it.
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
        cmd += ["--batchnorm", cfg.batchnorm] if cfg.batchnorm is not None else []
        cmd += ["--steer", str(cfg.steer)]
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
        raise DistributedConsolidationError(f"distributed consolidation on {nproc} processes failed (exit {rc}): {detail}")
