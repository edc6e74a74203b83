"""Disk cost of each install layer: a fresh venv per extra, installed through the lock, ``du`` of site-packages.

    python -m benchmarks.install_size --out benchmarks/results/install

Layers without ``train`` are installed with a ``torch<0`` constraint, as a kit-only device would be, so
the figure proves torch stays out. Each venv starts from the same lock (constraints.txt), so the sizes are
those of the versions CI tests. Writes ``install-size.json`` and ``install-size.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "base": ("", "what every device needs: kits' preprocessing, the central link (no runtime, no torch)"),
    "onnx": ("onnx", "base + ONNX Runtime"),
    "litert": ("litert", "base + LiteRT (ai-edge-litert)"),
    "onnx,litert": ("onnx,litert", "a kit-only device with both runtimes"),
    "train": ("train", "base + torch (CPU build), safetensors, scipy: on-device fine-tuning"),
    "train,litert": ("train,litert", "a 64-bit Pi that trains and runs TFLite kits"),
    "export": ("export", "train + both runtimes + the converters (onnx, onnxscript, litert-torch)"),
    "central": ("central", "export + server, datasets, plots"),
    "dev": ("dev", "central + test tools"),
}


def _du_mb(path: Path) -> float:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total / 2**20


def _biggest(site: Path, n: int = 6) -> list[tuple[str, float]]:
    sizes = []
    for p in site.iterdir():
        if p.name.endswith(".dist-info") or p.name == "__pycache__":
            continue
        sizes.append((p.name, _du_mb(p) if p.is_dir() else p.stat().st_size / 2**20))
    return [(k, round(v, 1)) for k, v in sorted(sizes, key=lambda kv: -kv[1])[:n]]


def measure(layer: str, extras: str, work: Path) -> dict:
    venv = work / layer.replace(",", "+")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt")]
    subprocess.run([*pip, "pip", "setuptools"], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    empty = _du_mb(site)
    cons = []
    if "train" not in extras and extras not in ("export", "central", "dev"):
        (work / "no-torch.txt").write_text("torch<0\n")
        cons = ["-c", str(work / "no-torch.txt")]
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    t0 = time.perf_counter()
    build = Path(tempfile.mkdtemp())  # keep build/ out of the checkout
    subprocess.run([*pip, *cons, "--no-build-isolation", target], check=True, cwd=build,
                   env={**os.environ, "TMPDIR": str(build)})
    seconds = time.perf_counter() - t0
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    shutil.rmtree(build, ignore_errors=True)
    has_torch = subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0
    row = {
        "layer": layer,
        "pip_install": f"pip install 'edge-dcl[{extras}]'" if extras else "pip install edge-dcl",
        "what": LAYERS[layer][1],
        "site_packages_mb": round(_du_mb(site) - empty, 1),
        "install_seconds_warm_cache": round(seconds, 1),
        "torch": has_torch,
        "largest": _biggest(site),
    }
    shutil.rmtree(venv, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "install")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for the venvs (default: a temp dir)")
    ap.add_argument("--layers", default=" ".join(LAYERS), help="space-separated layers to measure (default: all)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="install-size-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for layer in args.layers.split():
        print(f"installing {layer} ...", file=sys.stderr, flush=True)
        rows.append(measure(layer, LAYERS[layer][0], work))
        print(f"  {rows[-1]['site_packages_mb']:.0f} MB", file=sys.stderr, flush=True)
    report = {
        "command": " ".join(["python -m benchmarks.install_size", *(argv if argv is not None else sys.argv[1:])]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "lock": "constraints.txt",
        "note": "MB = 2^20 bytes of files added to site-packages beyond a fresh venv's pip and setuptools; "
        "install seconds with pip's cache already warm (so they compare layers, not networks)",
        "layers": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "install-size.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Install size of each layer",
        "",
        f"Command: `{report['command']}`. Generated {report['created']} on {report['machine']}, CPython "
        f"{report['python']}, through the lock (`constraints.txt`). {report['note']}.",
        "",
        "| layer | install | what it is for | site-packages MB | torch | largest packages (MB) |",
        "|---|---|---|---:|---|---|",
    ]
    for r in rows:
        big = ", ".join(f"{n} {mb:.0f}" for n, mb in r["largest"][:4])
        lines.append(f"| {r['layer']} | `{r['pip_install']}` | {r['what']} | {r['site_packages_mb']:.0f} | "
                     f"{'yes' if r['torch'] else 'no'} | {big} |")
    (args.out / "install-size.md").write_text("\n".join(lines) + "\n")
    print(args.out / "install-size.md")


if __name__ == "__main__":
    main()
