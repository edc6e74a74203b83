"""Data-parallel consolidation on this machine: throughput and quality, 1 process vs N processes.

Run:  .venv/bin/python benchmarks/distributed.py [--steps 200] [--repeats 3] [--quality-steps 500] [--seeds 0]

1. Throughput: one consolidation (device 2 into device 1's model, cnn-s, global batch
   128) with ``consolidate_distributed(nproc=1)`` and ``nproc=2`` (gloo), checkpoints
   off. Reported: OOD samples per second over all ranks, training loop only (rank 0's
   clock; process start-up, rendezvous and bundle loading are reported separately as
   the job's wall time). The plain single-process path (``consolidate_files``) is the
   reference.
2. Quality: the Split-Digits stream (5 devices, class-incremental), consolidated with
   DAC after each device, once by ``consolidate_files`` (one process, batch B) and
   once by ``consolidate_distributed`` with 2 ranks of B/2, the same number of steps.
   Reported: final average accuracy and average forgetting per seed.

Writes ``benchmarks/results/distributed/distributed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from central.consolidate import consolidate_files  # noqa: E402
from central.demo import split_digits_stream  # noqa: E402
from central.distributed import consolidate_distributed  # noqa: E402
from central.init import init_central  # noqa: E402
from central.methods import ConsolidationConfig  # noqa: E402
from central.metrics import summarize  # noqa: E402
from central.stream import Stream, train_devices  # noqa: E402
from edge_agent.bundle import load_bundle  # noqa: E402
from edge_agent.evaluate import evaluate_model  # noqa: E402
from edge_agent.train import TrainConfig  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "distributed"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: the machine is shared, so say how busy it was."""
    return [round(v, 2) for v in os.getloadavg()]


MODES = ("1 process, 1 thread", "1 process, 2 threads", "nproc=1", "nproc=2")


def throughput(work: Path, base: Path, incoming: Path, steps: int, batch: int, repeats: int, log) -> dict:
    """OOD samples per second: the plain path with 1 and 2 threads, and 1 and 2 processes of 1 thread each.

    Ranks get 1 thread each (torchrun's default for several ranks, forced here for 1 too) so
    that 2 processes x 1 thread compares with 1 process x 1 thread (data parallelism alone)
    and with 1 process x 2 threads (the same cores used by intra-op threads instead).
    """
    cfg = ConsolidationConfig(steps=steps, batch_size=batch, seed=0)
    rows: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(repeats):
        for mode in MODES:
            out = work / f"tp-{mode.replace(' ', '').replace(',', '-')}-{r}.safetensors"
            load = load_average()
            w0 = time.perf_counter()
            if mode.startswith("1 process"):
                torch.set_num_threads(int(mode.split(", ")[1].split()[0]))
                res = consolidate_files(base, [incoming], out, method="dac", cfg=cfg, progress=False)
                # consolidate_step's clock covers the loop plus setup (deepcopy, optimizer): a few ms.
                sps = steps * batch / res["steps"][0]["wall_seconds"]
                torch.set_num_threads(1)
            else:
                os.environ["OMP_NUM_THREADS"] = "1"
                res = consolidate_distributed(
                    base,
                    [incoming],
                    out,
                    method="dac",
                    cfg=cfg,
                    nproc=int(mode.split("=")[1]),
                    checkpoint_every=0,
                    progress=False,
                )
                sps = res["steps"][0]["samples_per_second"]
            job_wall = time.perf_counter() - w0
            rows[mode].append({"samples_per_second": sps, "job_wall_seconds": job_wall, "load_average_before": load})
            log(f"throughput {mode:>20} repeat {r}: {sps:7.0f} samples/s (job wall {job_wall:.1f} s, load {load[0]})")
    summary = {
        mode: {
            "median_samples_per_second": statistics.median(x["samples_per_second"] for x in v),
            "median_job_wall_seconds": statistics.median(x["job_wall_seconds"] for x in v),
            "runs": v,
        }
        for mode, v in rows.items()
    }
    return {"steps": steps, "global_batch": batch, "repeats": repeats, "modes": summary}


def file_stream(
    stream: Stream, base: Path, devices: list[Path], work: Path, mode: str, cfg: ConsolidationConfig, log
) -> dict:
    """Consolidate the device bundles one after another through the files, as the CLI does; the accuracy matrix."""
    T = len(devices)
    R = np.zeros((T, T))
    current = base
    for t, dev in enumerate(devices):
        step_cfg = ConsolidationConfig(**{**cfg.__dict__, "seed": cfg.seed + t})
        out = work / f"{mode}-s{cfg.seed}-{t}.safetensors"
        if mode == "single-process":
            consolidate_files(current, [dev], out, method="dac", cfg=step_cfg, progress=False)
        else:
            n = int(mode.split("=")[1])
            consolidate_distributed(current, [dev], out, method="dac", cfg=step_cfg, nproc=n, progress=False)
        b = load_bundle(out)
        rep = evaluate_model(
            b.model, b.labels, stream.test, known=b.manifest.trained_classes, experiences=stream.experiences
        )
        for j, e in enumerate(stream.experiences):
            R[t, j] = rep["per_experience"].get(e["name"], {}).get("accuracy", 0.0)
        log(f"quality {mode:>14} seed {cfg.seed} after device {t + 1}: avg acc {R[t, : t + 1].mean():.3f}")
        current = out
    s = summarize(R)
    return {"final_avg_acc": s["final_avg_acc"], "avg_forgetting": s["avg_forgetting"], "matrix": s["matrix"]}


def markdown(report: dict) -> str:
    tp = report["throughput"]
    lines = [
        "# Distributed consolidation: 1 vs 2 processes on this machine",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpus']} CPUs (shared with other jobs; load average before the run "
        f"{report['machine']['load_average_start']}), torch {report['machine']['torch']}, backend gloo.",
        "",
        f"## Throughput (DAC, cnn-s, global batch {tp['global_batch']}, {tp['steps']} steps, median of {tp['repeats']})",
        "",
        "| mode | OOD samples/s (training loop) | job wall time (s) |",
        "|---|---|---|",
    ]
    for mode, r in tp["modes"].items():
        lines.append(f"| {mode} | {r['median_samples_per_second']:.0f} | {r['median_job_wall_seconds']:.1f} |")
    q = report["quality"]
    lines += [
        "",
        f"## Quality (Split-Digits, 5 devices, DAC, {q['steps']} steps per device, global batch {q['global_batch']})",
        "",
        "| seed | mode | final avg acc | avg forgetting |",
        "|---|---|---|---|",
    ]
    for seed, modes in q["seeds"].items():
        for mode, r in modes.items():
            lines.append(f"| {seed} | {mode} | {r['final_avg_acc']:.3f} | {r['avg_forgetting']:.3f} |")
    lines += ["", report.get("notes", ""), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="throughput: steps per run")
    ap.add_argument("--batch-size", type=int, default=128, help="global OOD batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quality-steps", type=int, default=500, help="quality: steps per device")
    ap.add_argument("--seeds", default="0", help="comma-separated consolidation seeds for the quality runs")
    ap.add_argument("--epochs", type=int, default=30, help="device training epochs")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder [default: a temp folder]")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the quality runs: one core per process, in both modes
    log = print
    os.environ.setdefault("EDGE_PROGRESS", "0")
    t0 = time.perf_counter()
    report: dict = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_start": load_average(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        labels = [str(c) for c in range(10)]
        central0 = work / "central-0.safetensors"
        init_central("cnn-s", labels, central0, (1, 16, 16), seed=0)
        base = load_bundle(central0)
        stream = split_digits_stream(work / "data", base.input_spec)
        devices = train_devices(stream, central0, work / "devices", TrainConfig(epochs=args.epochs, seed=0), False, log)
        dev_paths = [Path(d.path) for d in devices]
        report["throughput"] = throughput(
            work, dev_paths[0], dev_paths[1], args.steps, args.batch_size, args.repeats, log
        )
        os.environ["OMP_NUM_THREADS"] = "1"
        if not args.skip_quality:
            seeds = [int(s) for s in args.seeds.split(",")]
            q = {"steps": args.quality_steps, "global_batch": args.batch_size, "seeds": {}}
            for seed in seeds:
                cfg = ConsolidationConfig(steps=args.quality_steps, batch_size=args.batch_size, seed=seed)
                q["seeds"][str(seed)] = {
                    mode: file_stream(stream, central0, dev_paths, work, mode, cfg, log)
                    for mode in ("single-process", "nproc=2")
                }
            report["quality"] = q
    report["machine"]["load_average_end"] = load_average()
    report["wall_seconds"] = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps(report, indent=2) + "\n")
    if "quality" in report:
        (RESULTS / "distributed.md").write_text(markdown(report))
    log(f"wrote {RESULTS / 'distributed.json'} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
