"""Data-parallel consolidation: gloo ranks in real processes on CPU, a killed rank, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from central.consolidate import consolidate_files
from central.distributed import DistributedJob, Interrupted, consolidate_distributed, run_job
from central.methods import ConsolidationConfig
from central.methods.loop import Ranks
from edge_agent.bundle import load_bundle, new_manifest, save_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def devices(tmp_path_factory, central0) -> tuple[Path, Path]:
    """Two device bundles that know classes 0-1 and 2-3 (random weights: fast, and enough to distil)."""
    root = tmp_path_factory.mktemp("dist-devices")
    c0 = load_bundle(central0)
    paths = []
    for i, classes in enumerate((["0", "1"], ["2", "3"])):
        torch.manual_seed(100 + i)
        model = c0.model
        for p in model.parameters():
            p.data.add_(0.1 * torch.randn_like(p))
        manifest = new_manifest(
            model, c0.labels, c0.input_spec, trained_classes=classes, parents=[c0.id], method="train"
        )
        save_bundle(model, manifest, root / f"dev{i + 1}.safetensors")
        paths.append(root / f"dev{i + 1}.safetensors")
    return paths[0], paths[1]


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_after_interruption_gives_the_same_bundle(tmp_path, central0, devices):
    cfg = ConsolidationConfig(steps=24, batch_size=8, seed=1)
    inc = list(devices)
    torch.manual_seed(0)  # the projections' initial weights come from the global RNG (see distill.py)
    run_job(
        DistributedJob(central0, inc, tmp_path / "full.safetensors", cfg=cfg, checkpoint_every=5), Ranks(), False
    )
    job = DistributedJob(central0, inc, tmp_path / "cut.safetensors", cfg=cfg, checkpoint_every=5)
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        run_job(job, Ranks(), False, stop_after_step=13)
    assert job.checkpoint_path().exists() and not job.out.exists()
    with pytest.raises(ValueError, match="--resume"):
        run_job(job, Ranks(), False)  # never silently overwrites an interrupted run's checkpoint
    job.resume = True
    r = run_job(job, Ranks(), False)
    assert r["distributed"]["resumed_from"] == {"position": 1, "step": 10}
    assert _state_equal(load_bundle(tmp_path / "full.safetensors").model, load_bundle(job.out).model)
    assert not job.checkpoint_path().exists()


def test_two_gloo_ranks_keep_identical_students_and_write_a_valid_bundle(tmp_path, central0, devices):
    out = tmp_path / "c2.safetensors"
    cfg = ConsolidationConfig(steps=20, batch_size=16, seed=0)
    r = consolidate_distributed(central0, list(devices), out, method="dac", cfg=cfg, nproc=2, progress=False)
    d = r["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo" and d["batch_per_rank"] == 8
    # Rank 0 all-gathers a sha256 of every rank's weights and refuses to write unless they agree.
    assert d["replicas_identical"] is True
    b = load_bundle(out)  # validates header, checksum, shapes, finite values
    assert b.id == r["id"] and b.manifest.method == "dac"
    assert b.manifest.trained_classes == ["0", "1", "2", "3"]
    assert b.manifest.parents == [load_bundle(p).id for p in (central0, *devices)]
    assert b.manifest.extra["distributed"]["world_size"] == 2
    assert not (tmp_path / "c2.safetensors.ckpt").exists()
    # The lineage records where each student started, as one process records it.
    one = consolidate_files(central0, list(devices), tmp_path / "c1.safetensors", method="dac", cfg=cfg, progress=False)
    assert [s.get("student_init", {}).get("chosen") for s in b.manifest.extra["stream"]] == [
        s.get("student_init", {}).get("chosen") for s in one["steps"]
    ]
    assert b.manifest.extra["stream"][1]["student_init"]["chosen"] in ("previous", "average")


def test_bad_requests_fail_before_launching(tmp_path, central0, devices):
    with pytest.raises(ValueError, match="multiple of 3"):
        consolidate_distributed(
            central0, list(devices), tmp_path / "x", cfg=ConsolidationConfig(batch_size=16), nproc=3
        )
    with pytest.raises(ValueError, match="'avg' is not a distillation: only .*kd.* run on several processes"):
        consolidate_distributed(central0, list(devices), tmp_path / "x", method="avg", nproc=2)


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _checkpoint_step(path: Path) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return int((f.metadata() or {}).get("step", -1))
    except Exception:
        return -1


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks through /proc")
def test_killed_rank_fails_the_job_with_a_clear_error_and_no_bundle(tmp_path, central0, devices):
    out = tmp_path / "c2.safetensors"
    ckpt = tmp_path / "c2.safetensors.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "central.cli",
        "consolidate",
    ]  # every rank runs the same `central consolidate` a person would give torchrun
    cmd += ["--base", str(central0), "--out", str(out), "--steps", "400", "--batch-size", "16"]
    cmd += [a for d in devices for a in ("--incoming", str(d))]
    env |= {"CENTRAL_CHECKPOINT_EVERY": "5", "CENTRAL_DIST_TIMEOUT": "30", "EDGE_PROGRESS": "0"}
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while _checkpoint_step(ckpt) < 5 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, "the job ended before a rank could be killed"
        ranks = _children(p.pid)
        assert len(ranks) == 2
        os.kill(ranks[-1], signal.SIGKILL)
        err = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert "No bundle was written" in err and "--resume" in err, err[-3000:]
    assert not out.exists()
    assert not list(tmp_path.glob(".c2.safetensors.*"))  # no temp file of an atomic write either
    assert _checkpoint_step(ckpt) >= 5
