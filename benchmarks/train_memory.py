"""Peak memory and throughput of ``edge-agent train`` as the local dataset grows.

Run:  .venv/bin/python benchmarks/train_memory.py [--code DIR] [--tag after] [--cases img-5000-64,...]

Each case writes a generated dataset (images: 10 classes of RGB PNGs, a coloured
shape on noise, at the model's input size; clips: 10 classes of 1 s 16 kHz int16
WAVs, each a class-specific pair of tones plus white noise, synthesised here, not
speech), creates a central model with ``central init`` and runs ``edge-agent train
--epochs 1`` as a real subprocess.  Peak RSS is the child's ``ru_maxrss``
(``os.wait4``); throughput is files per second of the whole command (start-up,
reading the files, one epoch, validation).  ``--code`` runs another checkout of
the package (e.g. a worktree of the previous release) on the same data, so the
results can say before and after.  Results are merged into
``benchmarks/results/train-memory/train-memory.json`` under ``--tag`` and the
Markdown table is rewritten from the whole JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "train-memory"
CASES = {
    **{f"img-{n}-{s}": ("cnn-s", n, s) for n in (500, 5000) for s in (16, 28, 64)},
    "clips-5000": ("ds-cnn", 5000, 0),
}
LIMIT_MB = 400
N_CLASSES = 10


def write_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        c = i % N_CLASSES
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        cx, cy = 0.3 + 0.4 * rng.random(2)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.1 + 0.02 * c) ** 2
        img = rng.integers(0, 80, (size, size, 3))
        img[mask] = [(37 * c) % 256, (91 * c) % 256, 255 - 20 * c]
        Image.fromarray(img.astype(np.uint8)).save(d / f"{i:05d}.png")


def write_clips(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    for i in range(n):
        c = i % N_CLASSES
        d = root / f"w{c}"
        d.mkdir(parents=True, exist_ok=True)
        f1, f2 = 300 + 150 * c, 2000 + 300 * c
        x = 0.3 * np.sin(2 * np.pi * f1 * t) + 0.2 * np.sin(2 * np.pi * f2 * t) + 0.1 * rng.standard_normal(16000)
        with wave.open(str(d / f"s{i % 50}_nohash_{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def measure(argv: list[str], code: Path, cwd: Path) -> tuple[int, float, float, str]:
    """Run ``argv`` as a child, reaped with ``os.wait4`` so its own ``ru_maxrss`` is read."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    log = cwd / "child.log"
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss / 1024, wall, log.read_text(errors="replace")[-800:]


def prepare(name: str, work: Path) -> Path:
    """The dataset of case ``name`` under ``work``, written once."""
    arch, n, size = CASES[name]
    data = work / name / "data"
    if not (data / ".done").exists():
        if arch == "ds-cnn":
            write_clips(data, n)
        else:
            write_images(data, n, size)
        (data / ".done").write_text("")
    return data


def run_case(name: str, code: Path, work: Path, batch_size: int | None = None) -> dict:
    arch, n, size = CASES[name]
    data = prepare(name, work)
    run = work / name / "run"
    shutil.rmtree(run, ignore_errors=True)  # scratch: each case starts from an empty run folder (the data stays)
    run.mkdir(parents=True)
    labels = run / "labels.txt"
    labels.write_text("".join(f"{'w' if arch == 'ds-cnn' else 'c'}{c}\n" for c in range(N_CLASSES)))
    py = sys.executable
    init = [py, "-c", "from central.cli import main; main()", "init", "--arch", arch, "--labels", str(labels),
            "--out", str(run / "central-0.safetensors")]
    if arch != "ds-cnn":
        init += ["--input-shape", f"3x{size}x{size}"]
    rc, _, _, log = measure(init, code, run)
    if rc != 0:
        raise SystemExit(f"central init failed for {name}: {log}")
    out = run / "dev.safetensors"
    for stale in (out, run / "dev.safetensors.ckpt"):
        stale.unlink(missing_ok=True)
    train = [py, "-c", "from edge_agent.cli import main; main()", "train", "--model", str(run / "central-0.safetensors"),
             "--data", str(data), "--out", str(out), "--epochs", "1"]
    if batch_size:
        train += ["--batch-size", str(batch_size)]
    rc, peak_mb, wall, log = measure(train, code, run)
    if rc != 0:
        raise SystemExit(f"edge-agent train failed for {name} (exit {rc}): {log}")
    with open(out, "rb") as f:  # the bundle's manifest, from the safetensors header: what training reported
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    metrics = json.loads(header["__metadata__"]["manifest"]).get("metrics", {})
    return {"case": name, "arch": arch, "files": n, "size": size, "batch_size": batch_size,
            "micro_batches": metrics.get("micro_batches"), "peak_rss_mb": round(peak_mb, 1),
            "wall_s": round(wall, 2), "files_per_s": round(n / wall, 1), "within_limit": peak_mb <= LIMIT_MB}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def commands_behind(results: dict) -> list[str]:
    """The commands that measured the figures in the table: each run's own, or for runs stored without one, the
    recorded commands of that tag that name its case."""
    out = set()
    for case, by_tag in results["runs"].items():
        for tag, r in by_tag.items():
            if "command" in r:
                out.add(r["command"])
                continue
            for c in results.get("commands", []):
                words = c.split()
                if words[words.index("--tag") + 1] == tag and case in words[words.index("--cases") + 1].split(","):
                    out.add(c)
    return sorted(out)


def machines_line(results: dict) -> str:
    """One machine, or which runs each machine measured (runs carry their own since results accumulate)."""
    where: dict[str, list[str]] = {}
    for case, by_tag in results["runs"].items():
        for tag, r in by_tag.items():
            where.setdefault(r.get("machine", results.get("machine", "?")), []).append(f"{tag} {case}")
    if len(where) == 1:
        return next(iter(where))
    return "; ".join(f"{m} ({', '.join(sorted(runs))})" for m, runs in sorted(where.items()))


def write_markdown(results: dict) -> None:
    rows = []
    tags = sorted({t for r in results["runs"].values() for t in r})
    head = "| case | files | " + " | ".join(f"{t}: peak RSS MB | {t}: files/s" for t in tags)
    if {"before", "after"} <= set(tags):
        head += " | peak RSS before/after"
    rows.append(head + " |")
    rows.append("|" + "---|" * (head.count("|")))
    for case in CASES:
        by_tag = results["runs"].get(case)
        if not by_tag:
            continue
        n = next(iter(by_tag.values()))["files"]
        cells = [case, str(n)]
        for t in tags:
            r = by_tag.get(t)
            cells += [f"{r['peak_rss_mb']:.0f}", f"{r['files_per_s']:.0f}"] if r else ["-", "-"]
        if {"before", "after"} <= set(tags):
            b, a = by_tag.get("before"), by_tag.get("after")
            cells.append(f"{b['peak_rss_mb'] / a['peak_rss_mb']:.1f}x" if b and a else "-")
        rows.append("| " + " | ".join(cells) + " |")
    notes = "".join(f"\n- {n}" for n in results.get("notes", []))
    notes = f"\nNotes:\n{notes}\n" if notes else ""
    text = f"""# edge-agent train: peak memory and throughput

`edge-agent train --epochs 1` as a subprocess; peak RSS is the child's `ru_maxrss`, files/s counts the whole
command (start-up, reading, one epoch, validation). Images: 10 classes of generated RGB PNGs at the model's input
size, `cnn-s`, batch 32, default loss (bce-jigsaw). Clips: 10 classes of synthesised 1 s 16 kHz WAVs (two tones and
white noise per class, not speech), `ds-cnn`, batch 16. Target: {LIMIT_MB} MB at every size (a Raspberry Pi Zero 2 W
has 512 MB). `before` is the code before streaming from a uint8/feature cache, `after` the code with it and
with the default `--step-memory-mb` (a batch whose backward pass would keep more runs as micro-batches; the
result's `metrics.micro_batches`), `after-batch16` the same with `--batch-size 16`. A `-` was not measured.

Machine: {machines_line(results)}, {os.cpu_count()} cores shared with other jobs while it ran (files/s is indicative;
peak RSS does not depend on load). Commands: {'; '.join(commands_behind(results))}

{chr(10).join(rows)}
{notes}"""
    (OUT / "train-memory.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=REPO, help="checkout whose edge_agent/central is run")
    ap.add_argument("--tag", default="after", help="name of this run in the results (before/after)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--work", type=Path, default=Path("/tmp/train-memory-work"), help="where the datasets are written")
    ap.add_argument("--batch-size", type=int, default=None, help="passed to edge-agent train (default: its own)")
    ap.add_argument("--prepare-only", action="store_true", help="write the datasets and stop")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the Markdown from the JSON and stop")
    args = ap.parse_args()
    if args.prepare_only:
        for name in args.cases.split(","):
            prepare(name, args.work)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "train-memory.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}, "commands": []}
    if args.markdown_only:
        write_markdown(results)
        return
    results["machine"] = cpu_name()
    cmd = f"python benchmarks/train_memory.py --tag {args.tag} --cases {args.cases}" + (
        f" --batch-size {args.batch_size}" if args.batch_size else "") + (
        " --code <checkout of the previous code>" if args.code.resolve() != REPO else "")
    results["commands"] = sorted(set(results.get("commands", [])) | {cmd})
    for name in args.cases.split(","):
        r = run_case(name, args.code.resolve(), args.work, args.batch_size)
        r["command"] = cmd
        r["machine"] = results["machine"]
        print(json.dumps(r), flush=True)
        results["runs"].setdefault(name, {})[args.tag] = r
        path.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results)


if __name__ == "__main__":
    main()
