"""Side-by-side latency of the exported models on this machine, with a roofline.

    python -m benchmarks.latency                 # waits up to 20 min for a quiet machine, then measures
    python -m benchmarks.latency --wait-min 0 --rounds 2 --runs 200   # quick look

For each model (image ``cnn-s`` 1x16x16, audio ``ds-cnn`` 1x49x40; freshly
initialised weights, since latency does not depend on them): torch eager fp32
(the baseline), ONNX Runtime fp32 and int8, LiteRT fp32 and int8 (as written
by ``export.kit.export_bundle``), plus three diagnostic rows: LiteRT int8 without
the XNNPACK delegate (do int8 ops go to XNNPACK?), an ONNX int8 variant
with the stem convolution left in fp32 (a proposed export setting), and the
ONNX kit quantized S8S8 instead of the default U8U8 (what the scheme costs on
this CPU; S8S8 saturates on x86 without VNNI, see export/onnx_export.py). Every
target runs in its own process, ``--rounds`` times in rotating order; samples
are pooled. Batch 1 and 1 thread are the on-device case; ``--batch2`` adds a
larger batch.

Roofline: MACs are counted with forward hooks on Conv2d/Linear; the fp32 peak
is the best single-thread torch GEMM (1024^3) of this machine. Writes
``benchmarks/results/latency/latency-<cpu>.{json,md,png}``. Free-text notes
are read from ``latency-<cpu>.notes.md`` beside them when that file exists;
``--render`` otherwise keeps the notes already in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_agent.bench import BenchConfig, BenchRow, Target, bench, cpu_info, machine_slug, profile_onnx

RESULTS = Path(__file__).parent / "results" / "latency"
MODELS = {
    # name: (arch, labels, input shape)
    "cnn-s": ("cnn-s", [str(i) for i in range(10)], (1, 16, 16)),
    "ds-cnn": ("ds-cnn", ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_"], (1, 49, 40)),
}


# ---------------------------------------------------------------------------
# Waiting for a quiet machine.


def wait_for_quiet(max_load: float, wait_min: float, poll_s: float = 30.0) -> tuple[bool, list[float]]:
    """Poll the 1-min load average every ``poll_s`` s until it is below ``max_load`` or ``wait_min`` minutes pass.

    Returns whether it got quiet and the load averages seen.
    """
    seen = [os.getloadavg()[0]]
    deadline = time.monotonic() + wait_min * 60
    while seen[-1] >= max_load and time.monotonic() < deadline:
        print(f"load {seen[-1]:.2f} >= {max_load}: waiting ({(deadline - time.monotonic()) / 60:.1f} min left)", file=sys.stderr, flush=True)
        time.sleep(poll_s)
        seen.append(os.getloadavg()[0])
    return seen[-1] < max_load, seen


# ---------------------------------------------------------------------------
# Roofline.


def count_macs(model, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1, from hooks on Conv2d and Linear (the rest is negligible)."""
    import torch
    from torch import nn

    total = 0

    def conv(m: nn.Conv2d, _inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear(m: nn.Linear, _inp, out) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.inference_mode():
        model(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total


def gemm_peak_gmacs(sizes: tuple[int, ...] = (256, 384, 512), repeats: int = 200) -> float:
    """Best single-thread fp32 GEMM rate in GMAC/s over square sizes ``sizes`` (n^3 MACs per call, best of ``repeats``).

    Sizes stay cache-resident and short (< 5 ms per call): a 1024^3 GEMM measured
    less than half of this on the shared box, as it spans scheduler time slices.
    """
    import torch

    torch.set_num_threads(1)
    peak = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        peak = max(peak, n**3 / best / 1e9)
    return peak


# ---------------------------------------------------------------------------
# Artifacts.


def build(work: Path) -> dict[str, dict]:
    """Bundles, fp32 and int8 kits, and the diagnostic ONNX variant for each model; returns targets per model."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from central.init import init_central
    from edge_agent.inputs import InputSpec
    from export.calibration import ArrayCalibrationReader, batched, noise_batches, take_samples
    from export.kit import export_bundle
    from export.onnx_export import OnnxQuantOptions, quant_types, quantize_onnx_int8

    out = {}
    for name, (arch, labels, shape) in MODELS.items():
        bundle = work / f"{name}.safetensors"
        fp32_dir, int8_dir, stem = work / f"{name}-fp32", work / f"{name}-int8", work / f"{name}-int8-stem-fp32.onnx"
        s8s8 = work / f"{name}-int8-s8s8.onnx"
        if not (stem.is_file() and s8s8.is_file() and (int8_dir / "manifest.json").is_file()):  # --work reuses a finished build
            init_central(arch, labels, bundle, shape, seed=0)
            print(f"exporting {name} ...", file=sys.stderr, flush=True)
            export_bundle(bundle, "all", "none", fp32_dir)
            # Calibration on Gaussian noise in input space (the export CLI's fallback); the weights are untrained anyway.
            int8 = export_bundle(bundle, "all", "int8", int8_dir)
            # Diagnostic: the export's own int8 settings (QDQ, its weight and activation types, per-channel, percentile)
            # but the first conv kept in fp32.
            opts = OnnxQuantOptions()
            activation_type, weight_type = quant_types(opts)
            src = fp32_dir / "model.onnx"
            first_conv = next(n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv")
            spec = InputSpec.from_dict(int8.manifest["input"])
            calib = take_samples(noise_batches(spec, opts.samples), opts.samples)
            quantize_static(
                str(src), str(stem), ArrayCalibrationReader(batched(calib, opts.batch_size), "input"),
                quant_format=QuantFormat.QDQ, activation_type=activation_type, weight_type=weight_type,
                per_channel=opts.per_channel, reduce_range=opts.reduce_range, calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": opts.percentile}, nodes_to_exclude=[first_conv],
            )
            # Diagnostic: the export's int8 settings with signed activations and weights (the kits' scheme until U8U8).
            s8 = dataclasses.replace(opts, activations="s8", weights="s8")
            quantize_onnx_int8(src, s8s8, batched(calib, opts.batch_size), spec, s8)
        t = {
            "torch fp32": Target("torch", str(bundle), "fp32", shape),
            "onnx fp32": Target("onnx", str(fp32_dir / "model.onnx"), "fp32", shape),
            "tflite fp32": Target("tflite", str(fp32_dir / "model.tflite"), "fp32", shape, "NHWC"),
            "onnx int8": Target("onnx", str(int8_dir / "model.int8.onnx"), "int8", shape),
            "tflite int8": Target("tflite", str(int8_dir / "model.int8.tflite"), "int8", shape, "NHWC"),
            "onnx int8 stem-fp32": Target("onnx", str(stem), "int8", shape),
            "onnx int8 s8s8": Target("onnx", str(s8s8), "int8", shape),
            "tflite int8 no-xnnpack": Target("tflite", str(int8_dir / "model.int8.tflite"), "int8", shape, "NHWC", options={"xnnpack": False}),
        }
        out[name] = {"bundle": bundle, "shape": shape, "targets": {k: dataclasses.replace(v, label=k) for k, v in t.items()}}
    return out


# ---------------------------------------------------------------------------
# Report.


KIT_ROWS = ("torch fp32", "onnx fp32", "tflite fp32", "onnx int8", "tflite int8")


def verdicts(rows: dict[str, dict]) -> dict[str, dict]:
    """Each int8 artifact of the kit against the latency targets (p50 <= 0.1x torch, no slower than the fastest fp32, p99 <= 2x p50): met or not, with the figures."""
    base = rows["torch fp32"]["p50_ms"]
    fastest_fp32 = min(rows["onnx fp32"]["p50_ms"], rows["tflite fp32"]["p50_ms"])
    out = {}
    for k in ("onnx int8", "tflite int8"):
        r = rows[k]
        out[k] = {
            "ratio_to_torch_p50": r["p50_ms"] / base,
            "le_0.1x_torch": r["p50_ms"] <= 0.1 * base,
            "ratio_to_fastest_fp32_p50": r["p50_ms"] / fastest_fp32,
            "no_slower_than_fastest_fp32": r["p50_ms"] <= fastest_fp32,
            "p99_over_p50": r["p99_ms"] / r["p50_ms"],
            "p99_le_2x_p50": r["p99_ms"] <= 2 * r["p50_ms"],
        }
        out[k]["all_met"] = all(v for kk, v in out[k].items() if isinstance(v, bool))
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Latency of exported models: {m['cpu_model']} ({m['logical_cpus']} logical CPUs)",
        "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['created']}; CPU flags: {', '.join(m['cpu_flags'])}  ",
        f"Load average (1 min) before: {res['load']['before']:.2f}, after: {res['load']['after']:.2f}; quiet (< {res['load']['threshold']}) reached: {res['load']['quiet']}  ",
        f"Each row: {res['config']['rounds']} rounds x {res['config']['runs']} timed runs after {res['config']['warmup']} warm-up calls, one fresh process per round, targets in rotating order; threads pinned per row.  ",
        f"fp32 GEMM peak (torch, 1 thread, best of 200 calls at 256/384/512 square): {res['gemm_peak_gmacs']:.1f} GMAC/s.",
        "",
    ]
    for batch_key, block in res["batches"].items():
        for name, mod in block.items():
            lines += [
                f"## {name}, batch {batch_key}, {res['config']['threads']} thread ({mod['macs'] / 1e6:.2f} M MACs per sample)",
                "",
                "| row | runtime | size KB | init ms | first ms | mean | std | min | p50 | p90 | p95 | p99 | max | /s | RSS MB | p50 vs torch | GMAC/s | of fp32 peak |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for k, r in mod["rows"].items():
                lines.append(
                    f"| {k} | {r['runtime']} {r['runtime_version']} | {r['size_bytes'] / 1024:.1f} | {r['init_ms']:.1f} | {r['first_ms']:.3f} | "
                    f"{r['mean_ms']:.4f} | {r['std_ms']:.4f} | {r['min_ms']:.4f} | **{r['p50_ms']:.4f}** | {r['p90_ms']:.4f} | {r['p95_ms']:.4f} | "
                    f"{r['p99_ms']:.4f} | {r['max_ms']:.3f} | {r['throughput_per_s']:,.0f} | {r['peak_rss_mb']:.0f} | {r['ratio_to_torch_p50']:.3f}x | "
                    f"{r['gmacs']:.1f} | {r['fraction_of_fp32_peak']:.0%} |"
                )
            lines.append("")
            if "verdicts" in mod:
                lines += ["Targets (batch 1, 1 thread): int8 p50 <= 0.1x torch p50; int8 p50 <= fastest fp32 runtime p50; p99 <= 2x p50.", ""]
                lines += ["| int8 artifact | p50 / torch | <= 0.1x | p50 / fastest fp32 | no slower | p99 / p50 | <= 2x | all met |", "|---|---:|---|---:|---|---:|---|---|"]
                for k, v in mod["verdicts"].items():
                    yn = {True: "yes", False: "**no**"}
                    lines.append(
                        f"| {k} | {v['ratio_to_torch_p50']:.3f} | {yn[v['le_0.1x_torch']]} | {v['ratio_to_fastest_fp32_p50']:.3f} | "
                        f"{yn[v['no_slower_than_fastest_fp32']]} | {v['p99_over_p50']:.2f} | {yn[v['p99_le_2x_p50']]} | {yn[v['all_met']]} |"
                    )
                lines.append("")
            if "onnx_profile_us" in mod:
                lines += ["ONNX Runtime profiler, µs per call by op type (profiling inflates times; compare shares):", ""]
                for k, prof in mod["onnx_profile_us"].items():
                    lines.append(f"- {k}: " + ", ".join(f"{op} {us:.1f}" for op, us in list(prof.items())[:6]))
                lines.append("")
    lines += ["## Notes", "", res.get("notes", "").strip(), ""]
    return "\n".join(lines)


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    block = res["batches"]["1"]
    fig, axes = plt.subplots(1, len(block), figsize=(6 * len(block), 4))
    for ax, (name, mod) in zip(np.atleast_1d(axes), block.items(), strict=True):
        keys = list(mod["rows"])
        p50 = [mod["rows"][k]["p50_ms"] * 1e3 for k in keys]
        p99 = [mod["rows"][k]["p99_ms"] * 1e3 for k in keys]
        y = np.arange(len(keys))
        ax.barh(y, p50, color=["#888" if k.startswith("torch") else "#2a7" if "int8" in k else "#37b" for k in keys], label="p50")
        ax.scatter(p99, y, marker="|", s=200, color="k", label="p99")
        ax.set_yticks(y, keys)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("latency per call, µs (log)")
        ax.set_title(f"{name}: batch 1, 1 thread ({mod['macs'] / 1e6:.1f} M MACs)")
        ax.legend(loc="lower right")
    fig.suptitle(f"{res['machine']['cpu_model']}, load {res['load']['before']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_block(models: dict, cfg: BenchConfig, macs: dict, peak: float, keys: list[str]) -> dict:
    """Bench ``keys`` for every model; rows with ratios to torch and the roofline figures."""
    block = {}
    for name, mod in models.items():
        targets = [mod["targets"][k] for k in keys]
        rows: list[BenchRow] = bench(targets, cfg, progress=lambda s, n=name: print(f"{n} {s}", file=sys.stderr, flush=True))
        d = {k: r.to_dict() for k, r in zip(keys, rows, strict=True)}
        base = d["torch fp32"]["p50_ms"]
        for r in d.values():
            r["ratio_to_torch_p50"] = r["p50_ms"] / base
            r["gmacs"] = macs[name] * cfg.batch / (r["p50_ms"] / 1e3) / 1e9
            r["fraction_of_fp32_peak"] = r["gmacs"] / peak
        block[name] = {"macs": macs[name], "rows": d}
    return block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000, help="timed calls per round and target")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of all targets in rotating order; samples pooled")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch2", type=int, default=8, help="the larger batch (0: skip)")
    ap.add_argument("--max-load", type=float, default=1.0, help="1-min load average to wait for before measuring")
    ap.add_argument("--wait-min", type=float, default=20.0, help="how long to wait for it (minutes)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=None, help="keep bundles and kits here (default: a temp dir)")
    ap.add_argument("--render", action="store_true", help="only re-render .md/.png from the committed .json (notes: the .notes.md file if present, else the .json's)")
    args = ap.parse_args(argv)
    stem = args.out / f"latency-{machine_slug()}"
    notes_path = stem.with_suffix(".notes.md")
    if args.render:
        res = json.loads(stem.with_suffix(".json").read_text())
        res["notes"] = notes_path.read_text() if notes_path.is_file() else res.get("notes", "")
        stem.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        stem.with_suffix(".md").write_text(markdown(res))
        chart(res, stem.with_suffix(".png"))
        print(f"rendered {stem}.md/.png")
        return 0

    import torch

    from edge_agent.bundle import load_bundle

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="latency-")
        args.work = Path(tmp.name)
    args.work.mkdir(parents=True, exist_ok=True)
    models = build(args.work)
    macs = {n: count_macs(load_bundle(m["bundle"]).model, m["shape"]) for n, m in models.items()}
    torch.set_num_threads(args.threads)

    quiet, seen = wait_for_quiet(args.max_load, args.wait_min)
    load_before = os.getloadavg()[0]
    peak = gemm_peak_gmacs()
    cfg = BenchConfig(threads=args.threads, runs=args.runs, warmup=args.warmup, batch=1, rounds=args.rounds)
    res: dict = {
        "command": "python -m benchmarks.latency " + " ".join(sys.argv[1:] if argv is None else argv),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": cpu_info(),
        "config": {"runs": args.runs, "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads, "batch2": args.batch2},
        "gemm_peak_gmacs": peak,
        "batches": {},
    }
    keys = list(models["cnn-s"]["targets"])
    res["batches"]["1"] = run_block(models, cfg, macs, peak, keys)
    for name, mod in res["batches"]["1"].items():
        mod["verdicts"] = verdicts(mod["rows"])
        # Where the ONNX time goes (in this process, after the timed rounds so it cannot disturb them).
        pcfg = BenchConfig(threads=args.threads, runs=300, warmup=50, isolate=False)
        mod["onnx_profile_us"] = {k: profile_onnx(models[name]["targets"][k].path, models[name]["shape"], pcfg) for k in ("onnx fp32", "onnx int8", "onnx int8 stem-fp32", "onnx int8 s8s8")}
    if args.batch2 > 1:
        cfg2 = BenchConfig(threads=args.threads, runs=max(50, args.runs // 5), warmup=max(10, args.warmup // 5), batch=args.batch2, rounds=max(1, args.rounds // 2))
        res["batches"][str(args.batch2)] = run_block(models, cfg2, macs, peak, list(KIT_ROWS))
    load_after = os.getloadavg()[0]
    res["load"] = {"threshold": args.max_load, "quiet": quiet, "before": load_before, "after": load_after, "seen_while_waiting": seen}

    res["notes"] = notes_path.read_text() if notes_path.is_file() else ""
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    chart(res, stem.with_suffix(".png"))
    for name, mod in res["batches"]["1"].items():
        print(name, " ".join(f"{k}={r['p50_ms']:.4f}ms({r['ratio_to_torch_p50']:.3f}x)" for k, r in mod["rows"].items()))
        print("  targets:", {k: v["all_met"] for k, v in mod["verdicts"].items()})
    print(f"wrote {stem}.json/.md/.png")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
