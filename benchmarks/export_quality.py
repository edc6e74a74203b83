"""Export quality: artifact sizes and test accuracy of every exported artifact.

    python -m benchmarks.export_quality            # full run, writes benchmarks/results/export-quality/export-quality.{json,md}
    python -m benchmarks.export_quality --quick    # smaller data and fewer epochs, writes export-quality-quick.*

For two models,

* image: ``cnn-s`` 1x16x16 on Split-Digits (scikit-learn's 8x8 digits written as
  PNG folders by ``write_split_digits``; the five device folders ``dev1..dev5``
  jointly are the training set, ``test/`` the test split);
* audio: ``ds-cnn`` 1x49x40 log-mel on the synthetic Speech Commands dataset
  (``write_speech_dataset``; ``train`` / ``testing`` splits, held-out speakers),

the script trains the torch model (Adam, lr 3e-3 cosine-decayed, batch 64), saves it as a bundle,
and exports kits with ``export.kit.write_kit``: one fp32 kit (ONNX + TFLite) and
one int8 kit (ONNX + TFLite) per calibration source:

* ``real``:  training samples (what a device could calibrate on);
* ``ood``:   the central's OOD source, ``export.calibration.ood_batches(None, spec, n)``
  (bundled photo for images, bundled German speech clip for audio): what
  ``central export --quantize int8`` does, since the central has no real data;
* ``noise``: Gaussian noise in the model's input space (baseline).

Each artifact is loaded back through the device runtime (``load_kit`` +
``open_runner``, which checks sha256 and does the int8 input/output
quantization) and run on the whole test split. Reported per artifact: file
bytes, test top-1 accuracy, its difference from torch fp32 in points, top-1
agreement with torch and max/mean |logit - torch logit| on the test split.

Targets: int8 file <= 30 % of the fp32 file of the same format, and
int8 test accuracy at most 1 point below torch fp32.

The export's own parity gate (int8 top-1 agreement >= ``INT8_MIN_TOP1``, 0.97,
on 128 held-out samples of the calibration source) is disabled here so that every artifact is
written and measured; whether the default gate would have passed is recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from edge_agent.bench import cpu_info
from edge_agent.bundle import load_bundle, new_manifest, save_bundle
from edge_agent.inputs import InputSpec
from edge_agent.models import create_model, default_input_spec
from edge_agent.runtime import load_kit, open_runner
from export.calibration import noise_batches, ood_batches
from export.kit import tool_versions, write_kit
from export.onnx_export import OnnxQuantOptions
from export.parity import INT8_MIN_TOP1, torch_logits

RESULTS = Path(__file__).parent / "results" / "export-quality"
SIZE_TARGET = 0.30  # int8 bytes / fp32 bytes, same format
ACC_TARGET_POINTS = 1.0  # int8 may lose at most this many accuracy points vs torch fp32
FORMATS = ("onnx", "tflite")
CALIBRATIONS = ("real", "ood", "noise")
LR = 3e-3
BATCH = 64
SEED = 0


# ---------------------------------------------------------------------------
# Data.


def load_digits_data(work: Path, spec: InputSpec) -> dict:
    """Split-Digits: all device folders jointly for training, ``test/`` for testing."""
    from edge_agent.data.digits import write_split_digits
    from edge_agent.data.images import load_image_folder

    stream = write_split_digits(work / "split-digits")
    root = work / "split-digits"
    train = [load_image_folder(root / e["name"], spec) for e in stream["experiences"]]
    test = load_image_folder(root / stream["test"], spec)
    labels = stream["labels"]
    x_train = torch.cat([s.x for s in train])
    y_train = torch.cat([s.targets(labels) for s in train])
    return {
        "labels": labels,
        "x_train": x_train,
        "y_train": y_train,
        "x_test": test.x.numpy(),
        "y_test": test.targets(labels).numpy(),
        "source": "Split-Digits (sklearn load_digits 8x8 PNGs, bilinear to 16x16); train = dev1..dev5 jointly, test = test/",
    }


def load_speech_data(work: Path, spec: InputSpec, speakers_per_accent: int) -> dict:
    """Synthetic Speech Commands (10 core words): ``train`` split for training, ``testing`` for testing."""
    from edge_agent.audio.frontend import AudioFrontend
    from edge_agent.data.speech import load_speech_commands
    from edge_agent.data.speech_synth import write_speech_dataset

    root = work / f"speech-{speakers_per_accent}"
    summary_file = root / "synth.json"
    if summary_file.exists() and json.loads(summary_file.read_text()).get("speakers_per_accent") == speakers_per_accent:
        print(f"  reusing {root}", flush=True)
    else:
        t = time.perf_counter()
        write_speech_dataset(root, speakers_per_accent=speakers_per_accent, seed=SEED)
        print(f"  synthesized {root} in {time.perf_counter() - t:.0f} s", flush=True)
    fe = AudioFrontend()
    assert tuple(fe.input_shape) == spec.shape
    train = load_speech_commands(root, fe, split="train")
    test = load_speech_commands(root, fe, split="testing")
    labels = sorted(set(train.labels))
    return {
        "labels": labels,
        "x_train": train.x,
        "y_train": train.targets(labels),
        "x_test": test.x.numpy(),
        "y_test": test.targets(labels).numpy(),
        "source": f"synthetic Speech Commands (write_speech_dataset, {speakers_per_accent} speakers/accent, seed {SEED}); "
        "train = 'train' split, test = 'testing' split (held-out speakers)",
    }


# ---------------------------------------------------------------------------
# Training and bundling.


def train(arch: str, spec: InputSpec, data: dict, epochs: int) -> torch.nn.Module:
    """Plain supervised training: Adam, cosine-decayed lr (per step, as ``edge_agent.train``), shuffled mini-batches, seeded."""
    torch.manual_seed(SEED)
    cfg = {"in_chans": spec.channels} if spec.kind == "image" else {}
    model = create_model(arch, len(data["labels"]), **cfg)
    opt = torch.optim.Adam(model.parameters(), LR)
    x, y = data["x_train"], data["y_train"]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * -(-len(x) // BATCH))
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x), generator=g).split(BATCH):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: train loss {total / len(x):.4f}", flush=True)
    return model.eval()


def make_bundle(model: torch.nn.Module, spec: InputSpec, labels: list[str], path: Path):
    """Save ``model`` as a bundle (what ``central export`` starts from) and load it back."""
    manifest = new_manifest(model, labels, spec, trained_classes=labels, method="joint", extra={"version": 1})
    save_bundle(model, manifest, path)
    return load_bundle(path)


# ---------------------------------------------------------------------------
# Export and evaluation.


def calibration_source(name: str, spec: InputSpec, data: dict, n: int):
    """``n`` model-ready float32 NCHW samples (as batches) from one calibration source."""
    if name == "real":
        # A seeded random subset of the training set, so every class is represented.
        idx = torch.randperm(len(data["x_train"]), generator=torch.Generator().manual_seed(SEED))[:n]
        return [data["x_train"][idx].numpy()]
    if name == "ood":
        return ood_batches(None, spec, n, seed=SEED)
    return noise_batches(spec, n, seed=SEED)


def evaluate_kit(kit_dir: Path, data: dict, ref_logits: np.ndarray) -> dict:
    """Every artifact of a kit through the device runtime on the whole test split."""
    kit = load_kit(kit_dir)  # verifies sha256 of every file
    out = {}
    for art in kit.artifacts:
        t = time.perf_counter()
        logits = open_runner(kit, format=art.format, precision=art.precision, num_threads=1).run(data["x_test"])
        diff = np.abs(logits.astype(np.float64) - ref_logits.astype(np.float64))
        pred = logits.argmax(1)
        parity = art.extra["parity"]
        out[art.format] = {
            "file": art.file,
            "precision": art.precision,
            "bytes": kit.manifest["files"][art.file]["bytes"],
            "test_acc": float((pred == data["y_test"]).mean()),
            "top1_agreement_vs_torch": float((pred == ref_logits.argmax(1)).mean()),
            "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean()),
            "export_parity": {
                "samples": parity["samples"],
                "top1_agreement": parity["top1_agreement"],
                "max_abs_diff": parity["max_abs_diff"],
                "default_gate_passes": parity["precision"] == "fp32" or parity["top1_agreement"] >= INT8_MIN_TOP1,
            },
            "eval_seconds": round(time.perf_counter() - t, 1),
        }
    return out


def onnx_size_breakdown(path: Path) -> dict:
    """Where an ONNX file's bytes go: tensor data, and the file size once per-node metadata is stripped.

    The torch exporter annotates every node with ``metadata_props`` (source stack
    trace, fx node, module path) for debugging; the runtime does not need them.
    The stripped copy is written to a temp file and measured, not estimated.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    tensor_bytes = sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer)
    node_meta = sum(p.ByteSize() for n in m.graph.node for p in n.metadata_props)
    for n in m.graph.node:
        del n.metadata_props[:]
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(m, Path(tmp) / "stripped.onnx")
        stripped = (Path(tmp) / "stripped.onnx").stat().st_size
    return {"tensor_bytes": tensor_bytes, "node_metadata_bytes": node_meta, "bytes_without_node_metadata": stripped}


def run_model(name: str, arch: str, work: Path, args) -> dict:
    t0 = time.perf_counter()
    spec = default_input_spec(arch, None)
    print(f"[{name}] data", flush=True)
    if spec.kind == "image":
        data = load_digits_data(work, spec)
        epochs = args.image_epochs
    else:
        data = load_speech_data(work, spec, args.speakers_per_accent)
        epochs = args.audio_epochs
    print(f"[{name}] train {arch} on {len(data['x_train'])} samples, {epochs} epochs", flush=True)
    t = time.perf_counter()
    model = train(arch, spec, data, epochs)
    train_s = time.perf_counter() - t
    bundle = make_bundle(model, spec, data["labels"], work / f"{name}.safetensors")
    model = bundle.model.eval()
    ref = torch_logits(model, data["x_test"])
    torch_acc = float((ref.argmax(1) == data["y_test"]).mean())
    print(f"[{name}] torch fp32 test acc {torch_acc:.4f} on {len(ref)} samples", flush=True)

    kits = {"fp32": ("none", None)}
    for c in CALIBRATIONS:
        # write_kit takes the first calib_samples for calibration and holds out the next 128 for its parity check.
        kits[f"int8-{c}"] = ("int8", calibration_source(c, spec, data, args.calib_samples + 128))
    artifacts = {}
    for kit_name, (quantize, calib) in kits.items():
        t = time.perf_counter()
        kit_dir = work / f"{name}-kit-{kit_name}"
        write_kit(
            model, spec, bundle.labels, bundle.id, kit_dir, formats=FORMATS, quantize=quantize,
            calibration=calib, calib_samples=args.calib_samples, int8_min_top1=0.0,
        )  # fmt: skip
        export_s = time.perf_counter() - t
        for fmt, r in evaluate_kit(kit_dir, data, ref).items():
            r["export_seconds"] = round(export_s, 1)
            if fmt == "onnx":
                r["onnx_size"] = onnx_size_breakdown(kit_dir / r["file"])
            artifacts[f"{fmt}-{kit_name}"] = r
            print(f"[{name}] {fmt} {kit_name}: {r['bytes']} B, acc {r['test_acc']:.4f}, "
                  f"agree {r['top1_agreement_vs_torch']:.4f}, max|dlogit| {r['max_abs_logit_diff']:.3g}", flush=True)  # fmt: skip

    targets = {}
    for fmt in FORMATS:
        fp32 = artifacts[f"{fmt}-fp32"]["bytes"]
        for c in CALIBRATIONS:
            r = artifacts[f"{fmt}-int8-{c}"]
            r["size_ratio_vs_fp32"] = r["bytes"] / fp32
            r["acc_drop_points"] = 100 * (torch_acc - r["test_acc"])
            targets[f"{fmt}-int8-{c}"] = {
                "size_ratio": r["size_ratio_vs_fp32"],
                "size_met": r["size_ratio_vs_fp32"] <= SIZE_TARGET,
                "acc_drop_points": r["acc_drop_points"],
                "acc_met": r["acc_drop_points"] <= ACC_TARGET_POINTS,
            }
        artifacts[f"{fmt}-fp32"]["acc_drop_points"] = 100 * (torch_acc - artifacts[f"{fmt}-fp32"]["test_acc"])
    # Diagnostic: the ONNX size ratio if the exporter's per-node debug metadata were stripped.
    fp32_stripped = artifacts["onnx-fp32"]["onnx_size"]["bytes_without_node_metadata"]
    for c in CALIBRATIONS:
        o = artifacts[f"onnx-int8-{c}"]["onnx_size"]
        o["size_ratio_without_node_metadata"] = o["bytes_without_node_metadata"] / fp32_stripped
    return {
        "arch": arch,
        "input": spec.to_dict(),
        "data": data["source"],
        "labels": data["labels"],
        "torch_params": sum(p.numel() for p in model.parameters()),
        "n_train": len(data["x_train"]),
        "n_test": len(data["x_test"]),
        "epochs": epochs,
        "train_seconds": round(train_s, 1),
        "bundle_id": bundle.id,
        "torch_fp32_test_acc": torch_acc,
        "torch_max_abs_logit": float(np.abs(ref).max()),
        "artifacts": artifacts,
        "targets": targets,
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------------------
# Report.


def git_state() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "modified_files": git("status", "--porcelain", "--untracked-files=no").splitlines(),
    }


def _onnx_scheme() -> str:
    """The ONNX int8 scheme ``write_kit`` uses by default, e.g. "U8U8 minmax"."""
    o = OnnxQuantOptions()
    return f"{o.activations.upper()}{o.weights.upper()} {o.method}"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Export quality: artifact size and test accuracy",
        "",
        f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min). Generated {res['created']} by `benchmarks/export_quality.py`.",
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs shared with other jobs (load average at start "
        f"{m['load_avg'][0]}), torch 1 thread, runtimes 1 thread. Tools: "
        + ", ".join(f"{k} {v}" for k, v in res["tools"].items())
        + f". Code: {res['git']['commit'][:12]}"
        + (
            f" with uncommitted changes in {', '.join(x.split()[-1] for x in res['git']['modified_files'])}"
            if res["git"]["modified_files"]
            else ""
        )
        + ".",
        "",
        f"Calibration: {res['calib_samples']} samples per source; int8 = ONNX Runtime QDQ {res['onnx_int8_scheme']} / "
        "LiteRT PT2E full-integer minmax (the `write_kit` defaults). Sources: `real` = random training samples, "
        "`ood` = `ood_batches(None, spec, n)` (the central's OOD source: bundled photo for images, bundled German "
        "speech clip for audio; what `central export --quantize int8` uses), `noise` = Gaussian noise in input space.",
        "",
    ]
    for name, r in res["models"].items():
        n = r["n_test"]
        lines += [
            f"## {name}: `{r['arch']}` {'x'.join(map(str, r['input']['shape']))}",
            "",
            f"Data: {r['data']}. {r['n_train']} train / {n} test samples; {r['epochs']} epochs Adam {LR} cosine-decayed, batch {BATCH} "
            f"({r['train_seconds']:.0f} s). Torch fp32 test accuracy **{r['torch_fp32_test_acc']:.4f}**; "
            f"one test sample = {100 / n:.2f} points; max |torch logit| on the test split {r['torch_max_abs_logit']:.1f}.",
            "",
            "| artifact | calibration | bytes | % of fp32 | test acc | drop vs torch (points) | top-1 agreement vs torch | max abs logit diff | mean abs logit diff |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| torch fp32 | - | - | - | {r['torch_fp32_test_acc']:.4f} | - | - | - | - |",
        ]
        for fmt in FORMATS:
            for kit_name in ("fp32", *(f"int8-{c}" for c in CALIBRATIONS)):
                a = r["artifacts"][f"{fmt}-{kit_name}"]
                calib = kit_name.removeprefix("int8-") if kit_name != "fp32" else "-"
                ratio = f"{100 * a['size_ratio_vs_fp32']:.1f}" if "size_ratio_vs_fp32" in a else "100"
                label = f"{'ONNX' if fmt == 'onnx' else 'TFLite'} {a['precision']}"
                lines.append(
                    f"| {label} | {calib} | {a['bytes']:,} | {ratio} | {a['test_acc']:.4f} | {a['acc_drop_points']:+.2f} | "
                    f"{a['top1_agreement_vs_torch']:.4f} | {a['max_abs_logit_diff']:.3g} | {a['mean_abs_logit_diff']:.3g} |"
                )
        lines += ["", "Targets (size: int8 <= 30 % of fp32; accuracy: int8 at most 1 point below torch fp32):", ""]
        lines += [
            "| int8 artifact | size ratio | size target | accuracy drop (points) | accuracy target |",
            "|---|---|---|---|---|",
        ]
        for key, t in r["targets"].items():
            lines.append(
                f"| {key} | {100 * t['size_ratio']:.1f} % | {'met' if t['size_met'] else 'NOT met'} | "
                f"{t['acc_drop_points']:+.2f} | {'met' if t['acc_met'] else 'NOT met'} |"
            )
        lines += [
            "",
            f"Where the ONNX bytes go ({r['torch_params']:,} torch parameters, BatchNorm included, folded into the convs "
            "on export; node metadata = the exporter's per-node debug `metadata_props`):",
            "",
            "| ONNX file | bytes | tensor data bytes | node metadata bytes | bytes with node metadata stripped | stripped, % of stripped fp32 |",
            "|---|---|---|---|---|---|",
        ]
        for kit_name in ("fp32", *(f"int8-{c}" for c in CALIBRATIONS)):
            a = r["artifacts"][f"onnx-{kit_name}"]
            o = a["onnx_size"]
            ratio = (
                f"{100 * o['size_ratio_without_node_metadata']:.1f}"
                if "size_ratio_without_node_metadata" in o
                else "100"
            )
            lines.append(
                f"| {kit_name} | {a['bytes']:,} | {o['tensor_bytes']:,} | {o['node_metadata_bytes']:,} | "
                f"{o['bytes_without_node_metadata']:,} | {ratio} |"
            )
        gate = [k for k, a in r["artifacts"].items() if not a["export_parity"]["default_gate_passes"]]
        lines += ["", f"Default export parity gate (int8 top-1 agreement >= {res['int8_min_top1']:g} on 128 held-out samples of the calibration source): "
                  + (f"would have refused {', '.join(gate)}." if gate else "passes for every artifact."), ""]  # fmt: skip
    lines += ["## What the numbers mean", "", *res["reading"], ""]
    return "\n".join(lines)


def reading(res: dict) -> list[str]:
    """Plain statements derived from the measured numbers (no numbers that were not measured)."""
    out = []
    for name, r in res["models"].items():
        t = r["targets"]
        size_ok = all(v["size_met"] for v in t.values())
        acc = {c: all(t[f"{f}-int8-{c}"]["acc_met"] for f in FORMATS) for c in CALIBRATIONS}
        fp32_exact = all(r["artifacts"][f"{f}-fp32"]["top1_agreement_vs_torch"] == 1.0 for f in FORMATS)
        ratios = ", ".join(f"{f} {100 * t[f'{f}-int8-real']['size_ratio']:.1f} %" for f in FORMATS)
        out.append(
            f"* **{name}**: size target {'met' if size_ok else 'NOT met'} ({ratios}); accuracy target "
            + ", ".join(f"{c}: {'met' if ok else 'NOT met'}" for c, ok in acc.items())
            + f" (both formats). fp32 artifacts {'agree with torch on every test sample' if fp32_exact else 'do NOT agree with torch on every test sample'}."
        )
        drops = {c: max(t[f"{f}-int8-{c}"]["acc_drop_points"] for f in FORMATS) for c in CALIBRATIONS}
        maxd = {c: max(r["artifacts"][f"{f}-int8-{c}"]["max_abs_logit_diff"] for f in FORMATS) for c in CALIBRATIONS}
        agree = {
            c: min(r["artifacts"][f"{f}-int8-{c}"]["top1_agreement_vs_torch"] for f in FORMATS) for c in CALIBRATIONS
        }
        out.append(
            "  Worst of the two formats per calibration source: accuracy drop "
            + ", ".join(f"{c} {v:+.2f}" for c, v in drops.items())
            + " points; top-1 agreement with torch "
            + ", ".join(f"{c} {v:.4f}" for c, v in agree.items())
            + "; max |logit diff| "
            + ", ".join(f"{c} {v:.3g}" for c, v in maxd.items())
            + f" (max |torch logit| {r['torch_max_abs_logit']:.1f})."
        )
        o32, o8 = r["artifacts"]["onnx-fp32"]["onnx_size"], r["artifacts"]["onnx-int8-ood"]["onnx_size"]
        out.append(
            f"  ONNX int8 (ood) vs fp32: tensor data alone {100 * o8['tensor_bytes'] / o32['tensor_bytes']:.1f} % "
            "(int8 weights are 25 % of fp32 weights; per-channel float scales and int32 biases come on top), "
            f"whole file with the exporter's per-node debug metadata stripped {100 * o8['size_ratio_without_node_metadata']:.1f} %."
        )
    out += [
        "* Accuracy differences smaller than one test sample (see each model's line) cannot be measured; when the",
        "  accuracy column ties, top-1 agreement with torch and the logit differences are what separate the",
        "  calibration sources: they compare each int8 artifact with the exact fp32 model on the same test inputs.",
        "* A negative drop means the int8 artifact got more test samples right than torch fp32 (quantization noise",
        "  flipped borderline samples), not that quantization improves the model.",
        "* One seed, one training run, one calibration draw per source: differences of a sample or two between",
        "  sources are within run-to-run noise.",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small speech set, few epochs; writes export-quality-quick.*")
    p.add_argument("--work", type=Path, help="keep data, bundles and kits here (reused data) instead of a temp folder")
    args = p.parse_args(argv)
    args.image_epochs, args.audio_epochs = (3, 4) if args.quick else (15, 15)
    args.speakers_per_accent = 4 if args.quick else 10
    args.calib_samples = 64 if args.quick else 256
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = {
        "command": " ".join(["python -m benchmarks.export_quality", *(sys.argv[1:] if argv is None else argv)]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": cpu_info(),
        "tools": tool_versions(),
        "git": git_state(),
        "torch_threads": 1,
        "calib_samples": args.calib_samples,
        "onnx_int8_scheme": _onnx_scheme(),
        "int8_min_top1": INT8_MIN_TOP1,
        "targets": {"int8_size_ratio_max": SIZE_TARGET, "int8_acc_drop_points_max": ACC_TARGET_POINTS},
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="export-quality-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res["models"]["image"] = run_model("image", "cnn-s", work, args)
        res["models"]["audio"] = run_model("audio", "ds-cnn", work, args)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["reading"] = reading(res)
    stem = "export-quality-quick" if args.quick else "export-quality"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(res))
    print("\n".join(res["reading"]))
    print(f"wrote {RESULTS / stem}.json/.md in {res['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
