"""Keyword spotting: data-free consolidation of ds-cnn device models, and device cost.

Run:  .venv/bin/python benchmarks/kws.py --mode test-voices --data /tmp/kws12/speech [--grid 30:3e-3,45:3e-3]
      .venv/bin/python benchmarks/kws.py [--streams domain,class] [--steps 500] [--batch-size 64]
      .venv/bin/python benchmarks/kws.py --only device-cost --tag cost
      .venv/bin/python benchmarks/kws.py --merge benchmarks/results/kws/kws.json benchmarks/results/kws/kws-cost.json
      (the last adds a new device-cost run to the committed results; the previous one is kept as an earlier run)

0. ``--mode test-voices``: does speech made by one synthesizer generalise to
   voices it never heard?  ds-cnn is trained from central-0 on the training
   voices of the synthetic set (12 labels: ten words, ``_silence_``,
   ``_unknown_``) with each ``--grid`` setting (epochs:lr); the setting with
   the best accuracy on the validation voices is the one reported on the
   held-out test voices (voice variants never heard in training, in any
   accent).  Target: >= 0.90 on the test voices.  Writes
   ``benchmarks/results/kws/test-voices.{json,md}``.
1. Accuracy.  For each stream (``domain``: five devices, same ten words, new
   accents; ``class``: five devices, two new words each) on the synthetic
   eSpeak NG dataset: device models are fine-tuned from central-0, then
   consolidated in order with naive, KD-only and DAC from the bundled German
   sentence alone.  Upper bound: joint training of central-0 on the union of
   every device's training data (same recipe).  Target: DAC's final average
   accuracy >= 90 % of the joint upper bound on the domain stream.
2. Device cost of ``edge-agent train`` (the real CLI, under ``/usr/bin/time -v``):
   peak resident memory (target <= 400 MB: a Raspberry Pi Zero 2 W has 512 MB),
   the same for ``import torch`` alone, and training throughput in clips/s
   from two runs with different epoch counts (the difference removes start-up
   and data loading).

Writes ``benchmarks/results/kws/kws.json`` and ``.md`` (``--tag`` appends a suffix
for side experiments).  The machine is shared: every timing comes with the
load average and CPU seconds, which depend less on the neighbours than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from central.demo_audio import KWS_LABELS, kws_stream, synthetic_speech  # noqa: E402
from central.init import init_central  # noqa: E402
from central.methods import ConsolidationConfig  # noqa: E402
from central.stream import run_stream as consolidate_stream  # noqa: E402
from central.stream import set_threads, train_devices, write_json  # noqa: E402
from edge_agent.audio.frontend import AudioFrontend  # noqa: E402
from edge_agent.bundle import load_bundle  # noqa: E402
from edge_agent.data.ood import open_ood  # noqa: E402
from edge_agent.evaluate import evaluate_logits, predict_logits  # noqa: E402
from edge_agent.train import DEVICE_BATCH_SIZE, TrainConfig, train_bundle  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "kws"
BIN = Path(sys.executable).parent


def load() -> float:
    """1-minute load average (processes wanting a CPU; this machine has ``os.cpu_count()`` cores)."""
    return round(os.getloadavg()[0], 2)


def accuracy_on(model, labels: list[str], tests, known: list[str]) -> list[float]:
    return [evaluate_logits(predict_logits(model, t.x), labels, t, known=known)["accuracy"] for t in tests]


# One sentence per language (none English, none a keyword): the "more sources"
# attempt, spoken by eSpeak NG next to the bundled German sentence.
MULTILINGUAL = {
    "fr": "Le matin, le brouillard couvre lentement les champs, et les enfants courent avec leurs chiens jusqu'à la vieille rivière.",
    "es": "Por la mañana la niebla cubre despacio los campos, y los niños corren con sus perros hasta el viejo río.",
    "it": "Al mattino la nebbia copre lentamente i campi, e i bambini corrono con i loro cani fino al vecchio fiume.",
    "nl": "In de vroege ochtend trekt de mist langzaam over de velden, en de kinderen lopen met hun honden naar de oude rivier.",
}


def multilingual_ood(folder: Path) -> Path:
    """A folder with the bundled German sentence and :data:`MULTILINGUAL` (about 32 s of speech in all)."""
    from edge_agent.data.speech_synth import default_ood_clip_path, synthesize_ood_clip

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default_ood_clip_path(), folder / "de.wav")
    for voice, text in MULTILINGUAL.items():
        if not (folder / f"{voice}.wav").is_file():
            synthesize_ood_clip(folder / f"{voice}.wav", text=text, voice=voice)
    return folder


def reused(path: Path, base, train_cfg: TrainConfig):
    """A bundle of an earlier run, checked to be fine-tuned from ``base`` with ``train_cfg``."""
    b = load_bundle(path)
    if b.manifest.parents != [base.id] or b.manifest.extra.get("train") != asdict(train_cfg):
        raise SystemExit(f"{path} was trained from another central-0 or with another recipe: drop --reuse")
    return b


def run_stream(kind: str, work: Path, data: Path, args, log=print) -> dict:
    """Devices, joint upper bound and every method on one stream; returns its result dict."""
    central0 = work / "central-0.safetensors"
    reuse = args.reuse and central0.is_file()
    if not reuse:
        init_central("ds-cnn", KWS_LABELS, central0, seed=args.seed)
    base = load_bundle(central0)
    fe = AudioFrontend.from_dict(base.input_spec.frontend)
    stream = kws_stream(data, work / f"stream-{kind}", kind, fe)
    train_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=DEVICE_BATCH_SIZE["audio"], seed=args.seed)
    dev_dir = work / f"devices-{kind}"
    dev_paths = [dev_dir / f"{e['name']}.safetensors" for e in stream.experiences]
    t = time.perf_counter()
    if reuse and all(p.is_file() for p in dev_paths):
        devices = [reused(p, base, train_cfg) for p in dev_paths]
    else:
        # A new central-0 has a new id, so checkpoints of an interrupted run cannot resume.
        shutil.rmtree(dev_dir, ignore_errors=True)
        devices = train_devices(stream, central0, dev_dir, train_cfg, progress=False, log=log)
    res: dict = {
        "experiences": [{k: v for k, v in e.items() if k != "path"} for e in stream.experiences],
        "test_clips": [len(t_) for t_ in stream.test_by_exp],
        "device_training_wall_seconds": round(time.perf_counter() - t, 1),
        "device_val_accuracy": [round(d.manifest.metrics["val_accuracy"], 4) for d in devices],
        # Each device model on its own test speakers, over its own classes:
        # what the devices reached locally (the ensemble oracle's per-experience accuracy).
        "device_own_test_accuracy": [
            round(accuracy_on(d.model, base.labels, [tst], e["classes"])[0], 4)
            for d, e, tst in zip(devices, stream.experiences, stream.test_by_exp, strict=True)
        ],
    }
    log(f"{kind}: devices on their own test sets {res['device_own_test_accuracy']}")
    # Joint upper bound: the same recipe on the union of the devices' training
    # clips (the dataset's train split); it does not depend on the stream.
    t = time.perf_counter()
    joint_path = work / "joint.safetensors"
    if reuse and joint_path.is_file():
        jm = reused(joint_path, base, train_cfg).model
    else:
        jm = load_bundle(train_bundle(central0, data, joint_path, train_cfg, progress=False)["out"]).model
    per_exp = accuracy_on(jm, base.labels, stream.test_by_exp, KWS_LABELS)
    res["joint"] = {
        "final_avg_acc": round(sum(per_exp) / len(per_exp), 4),
        "per_experience": [round(a, 4) for a in per_exp],
        "all_test": round(accuracy_on(jm, base.labels, [stream.test], KWS_LABELS)[0], 4),
        "wall_seconds": round(time.perf_counter() - t, 1),
    }
    log(f"{kind}: joint upper bound {res['joint']['final_avg_acc']:.3f}")
    ood = multilingual_ood(work / "ood-multilingual") if args.ood == "multilingual" else args.ood
    source = open_ood(ood, base.input_spec, **args.aug)
    cfg = ConsolidationConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    res["consolidation_config"] = asdict(cfg.for_input(base.input_spec.kind))  # the values used, not None
    res["methods"] = {}
    for m in args.methods:
        t = time.perf_counter()
        r = consolidate_stream(stream, base, devices, source, m, cfg, log=log)
        r.pop("model")
        r.pop("classes")
        r["wall_seconds"] = round(time.perf_counter() - t, 1)
        r["fraction_of_joint"] = round(r["final_avg_acc"] / res["joint"]["final_avg_acc"], 4)
        r["load_average"] = load()
        res["methods"][m] = r
    return res


def machine() -> str:
    """The CPU model (``lscpu``'s Model name) and core count."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), platform.machine()
    )
    return f"{name}, {os.cpu_count()} cores"


def test_voices(args) -> dict:
    """Train on the training voices with each grid setting, choose on validation voices, report on test voices."""
    from edge_agent.data.speech import list_clips, load_speech_commands

    data = synthetic_speech(args.data or args.work / "data", seed=args.seed)
    central0 = args.work / "central-0.safetensors"
    init_central("ds-cnn", KWS_LABELS, central0, seed=args.seed)
    base = load_bundle(central0)
    fe = AudioFrontend.from_dict(base.input_spec.frontend)
    sets = {split: load_speech_commands(data, fe, split, labels=KWS_LABELS) for split in ("validation", "testing")}
    speakers = json.loads((data / "speakers.json").read_text())
    voices = {
        split: sorted({v["variant"] for v in speakers.values() if v["split"] == split})
        for split in ("train", "validation", "testing")
    }
    runs = []
    for item in args.grid.split(","):
        epochs, lr = item.split(":")
        cfg = TrainConfig(epochs=int(epochs), lr=float(lr), batch_size=DEVICE_BATCH_SIZE["audio"], seed=args.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        out = train_bundle(central0, data, args.work / f"voices-{epochs}-{lr}.safetensors", cfg, progress=False)
        model = load_bundle(out["out"]).model
        run = {
            "epochs": cfg.epochs,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "n_train": out["metrics"].get("n_train"),
        }
        for split, name in (("validation", "val"), ("testing", "test")):
            rep = evaluate_logits(predict_logits(model, sets[split].x), base.labels, sets[split], known=KWS_LABELS)
            run[f"{name}_accuracy"] = round(rep["accuracy"], 4)
            run[f"{name}_per_class"] = {c: round(v["accuracy"], 4) for c, v in rep["per_class"].items()}
        pred = predict_logits(model, sets["testing"].x).argmax(1)
        right = (pred == sets["testing"].targets(base.labels)).tolist()
        per_voice: dict[str, list[bool]] = {}
        for (rel, _), ok in zip(list_clips(data, "testing", labels=KWS_LABELS), right, strict=True):
            spk = speakers.get(Path(rel).name.split("_nohash_")[0])
            if spk:  # silence windows have no speaker
                per_voice.setdefault(spk["variant"], []).append(ok)
        run["test_per_voice"] = {v: round(sum(r) / len(r), 4) for v, r in sorted(per_voice.items())}
        run["wall_seconds"] = round(time.perf_counter() - t0, 1)
        run["cpu_seconds"] = round(time.process_time() - c0, 1)
        print(f"epochs {epochs} lr {lr}: val {run['val_accuracy']:.3f} test {run['test_accuracy']:.3f}", flush=True)
        runs.append(run)
    best = max(runs, key=lambda r: r["val_accuracy"])
    synth = json.loads((data / "synth.json").read_text())
    return {
        "dataset": {k: synth[k] for k in synth if k != "seed"} | {"seed": synth["seed"]},
        "voices": voices,
        "n": {split: len(t) for split, t in sets.items()},
        "labels": KWS_LABELS,
        "runs": runs,
        "chosen": {"epochs": best["epochs"], "lr": best["lr"], "on": "validation voices"},
        "test_voices_accuracy": best["test_accuracy"],
        "target": 0.90,
        "target_met": best["test_accuracy"] >= 0.90,
    }


def test_voices_markdown(report: dict) -> str:
    r, d = report["result"], report["result"]["dataset"]
    best = next(x for x in r["runs"] if x["epochs"] == r["chosen"]["epochs"] and x["lr"] == r["chosen"]["lr"])
    lines = [
        "# Keyword spotting on held-out voices (12 labels)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}; torch {report['torch']}; 1 torch thread; wall {report['wall_seconds']:.0f} s.",
        "",
        f"Data: synthetic eSpeak NG Speech Commands (`edge-agent data speech`, seed {d['seed']}): {len(d['words'])} "
        f"keywords x {d['clips_per_speaker']} clips and {len(d['unknown_words'])} unknown words x "
        f"{d['unknown_clips_per_speaker']} clip per speaker, {d['speakers']} speakers over {len(d['accents'])} "
        f"accents; per clip rate/pitch jitter, room reverb (p={d['reverb_p']}), cheap-microphone band-pass "
        f"(p={d['band_p']}), level, noise at {d['snr_db'][0]:g}-{d['snr_db'][1]:g} dB SNR. Labels: the ten words, "
        "`_silence_` (background-noise windows) and `_unknown_` (other words), about 10% each.",
        "",
        f"Voices are split, not only speakers: training voices {', '.join(r['voices']['train'])}; validation voices "
        f"{', '.join(r['voices']['validation'])}; **test voices {', '.join(r['voices']['testing'])}** (never heard in "
        f"training, in any accent). {r['n']['validation']} validation and {r['n']['testing']} test clips.",
        "",
        "| epochs | lr | train clips | val-voices acc | test-voices acc | CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        lines.append(
            f"| {x['epochs']} | {x['lr']:g} | {x['n_train']} | {x['val_accuracy']:.3f} | {x['test_accuracy']:.3f} | {x['cpu_seconds']:.0f} |"
        )
    lines += [
        "",
        f"Chosen on the validation voices: {r['chosen']['epochs']} epochs, lr {r['chosen']['lr']:g}. Accuracy on the "
        f"held-out test voices: **{r['test_voices_accuracy']:.3f}** (target 0.90: "
        f"**{'met' if r['target_met'] else 'missed'}**).",
        "",
        "Per class on the test voices: " + ", ".join(f"{c} {v:.2f}" for c, v in best["test_per_class"].items()) + ".",
        "",
        "Per test voice: " + ", ".join(f"{v} {a:.2f}" for v, a in best["test_per_voice"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def time_v(cmd: list[str], cwd: Path) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: peak RSS (MB), wall, user+sys CPU seconds."""
    p = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd, env={**os.environ, "EDGE_PROGRESS": "0"}
    )
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {p.stderr[-1500:]}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (.+)", p.stderr).group(1).strip()

    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
    return {
        "peak_rss_mb": round(int(field("Maximum resident set size (kbytes)")) / 1024, 1),
        "wall_seconds": round(sum(float(v) * 60**i for i, v in enumerate(reversed(wall))), 2),
        "cpu_seconds": round(float(field("User time (seconds)")) + float(field("System time (seconds)")), 2),
        "load_average": load(),
    }


def git_commit() -> str:
    """The commit the measured code is at (``+dirty`` with uncommitted changes under edge_agent/)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "edge_agent"], cwd=REPO).returncode != 0
    return head.stdout.strip() + ("+dirty" if dirty else "")


def device_cost(work: Path, data: Path, args) -> dict:
    """Peak memory and throughput of the real ``edge-agent train`` CLI on one domain device."""
    central0 = work / "central-0.safetensors"
    if not central0.is_file():
        init_central("ds-cnn", KWS_LABELS, central0, seed=args.seed)
    dev = work / "stream-domain" / "device-01"
    if not dev.is_dir():
        kws_stream(data, work / "stream-domain", "domain", AudioFrontend())
    py = sys.executable
    out = {"import_torch": time_v([py, "-c", "import torch"], work)}
    out["import_cli"] = time_v([str(BIN / "edge-agent"), "--help"], work)
    runs = {}
    for epochs in (1, 1 + args.cost_epochs):
        cmd = [str(BIN / "edge-agent"), "train", "--model", str(central0), "--data", str(dev),
               "--out", str(work / f"cost-{epochs}.safetensors"), "--epochs", str(epochs)]  # fmt: skip
        runs[epochs] = time_v(cmd, work)
        runs[epochs]["epochs"] = epochs
    manifest = load_bundle(work / "cost-1.safetensors").manifest
    n_train = manifest.metrics["n_train"]
    a, b = runs[1], runs[1 + args.cost_epochs]
    clips = n_train * args.cost_epochs
    out["train_runs"] = list(runs.values())
    out["n_train_clips"] = n_train
    out["batch_size"] = manifest.extra["train"]["batch_size"]  # the CLI's default for audio models
    out["code"] = git_commit()
    out["train_clips_per_second_wall"] = round(clips / max(b["wall_seconds"] - a["wall_seconds"], 1e-9), 1)
    out["train_clips_per_cpu_second"] = round(clips / max(b["cpu_seconds"] - a["cpu_seconds"], 1e-9), 1)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs.values())
    out["target_peak_rss_mb"] = 400
    out["peak_rss_target_met"] = out["peak_rss_mb"] <= 400
    return out


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [
        "# Keyword spotting: data-free consolidation and device cost",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}; torch {report['torch']}; accuracy runs use 1 torch thread, the timed CLI "
        f"runs torch's default; the 2 cores were shared with other jobs (load averages are recorded).",
        "",
        f"Synthetic eSpeak NG Speech Commands (10 words, 8 accents, 80 speakers, seed {a['seed']}); "
        f"ds-cnn; devices fine-tuned {a['epochs']} epochs at lr {a['lr']}; consolidation {a['steps']} steps of "
        f"{a['batch_size']} OOD clips from {a['ood'] or 'the bundled German sentence'}"
        + (f", augmentation overrides {a['aug']}" if a["aug"] else "")
        + ".",
    ]
    for kind, r in report.get("streams", {}).items():
        j = r["joint"]["final_avg_acc"]
        lines += [
            "",
            f"## {kind}-incremental stream",
            "",
            f"Devices on their own test speakers: {', '.join(f'{v:.3f}' for v in r['device_own_test_accuracy'])}. "
            f"Joint upper bound (average over the five test sets): **{j:.3f}**.",
            "",
            "| method | final avg acc | fraction of joint | avg forgetting | task-aware final avg acc | CPU s per consolidation |",
            "|---|---|---|---|---|---|",
        ]
        for m, x in r["methods"].items():
            cpu = x["cpu_seconds_per_consolidation"][1:] or [0.0]
            lines.append(
                f"| {m} | {x['final_avg_acc']:.3f} | {x['fraction_of_joint']:.3f} | {x['avg_forgetting']:.3f} | "
                f"{x['task_aware']['final_avg_acc']:.3f} | {sum(cpu) / len(cpu):.1f} |"
            )
        if kind == "domain" and "dac" in r["methods"]:
            frac = r["methods"]["dac"]["fraction_of_joint"]
            lines += ["", f"Target DAC >= 0.90 of joint: **{'met' if frac >= 0.9 else 'missed'}** ({frac:.3f})."]
        for m, x in r["methods"].items():
            lines += ["", f"{m} accuracy matrix (row: after device t; column: test speakers of device j):", ""]
            lines.append("| | " + " | ".join(f"dev{j + 1}" for j in range(len(x["matrix"]))) + " |")
            lines.append("|---" * (len(x["matrix"]) + 1) + "|")
            for t, row in enumerate(x["matrix"]):
                lines.append(f"| after dev{t + 1} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    if report.get("attempts"):
        lines += [
            "",
            "## Attempts at the domain target (same devices and joint model, `--reuse`)",
            "",
            "| attempt | command | method | final avg acc | fraction of joint | avg forgetting |",
            "|---|---|---|---|---|---|",
        ]
        for at in report["attempts"]:
            for m, x in at["methods"].items():
                lines.append(
                    f"| {at['tag']} | `{at['command']}` | {m} | {x['final_avg_acc']:.3f} | "
                    f"{x['fraction_of_joint']:.3f} | {x['avg_forgetting']:.3f} |"
                )
    c = report.get("device_cost")
    if c:
        lines += [
            "",
            "## Device cost of `edge-agent train` (ds-cnn, one domain device)",
            "",
            f"Measured with `/usr/bin/time -v` on the installed CLI (code: {c.get('code', '?')}), "
            f"{c['n_train_clips']} training clips in batches of {c.get('batch_size', 32)}.",
            "",
            "| what | peak RSS (MB) | wall s | CPU s | load avg |",
            "|---|---|---|---|---|",
            f"| `python -c 'import torch'` | {c['import_torch']['peak_rss_mb']} | {c['import_torch']['wall_seconds']} | "
            f"{c['import_torch']['cpu_seconds']} | {c['import_torch']['load_average']} |",
            f"| `edge-agent --help` | {c['import_cli']['peak_rss_mb']} | {c['import_cli']['wall_seconds']} | "
            f"{c['import_cli']['cpu_seconds']} | {c['import_cli']['load_average']} |",
        ]
        for r in c["train_runs"]:
            lines.append(
                f"| `edge-agent train --epochs {r['epochs']}` | {r['peak_rss_mb']} | {r['wall_seconds']} | "
                f"{r['cpu_seconds']} | {r['load_average']} |"
            )
        lines += [
            "",
            f"Peak RSS {c['peak_rss_mb']} MB against the 400 MB target: **{'met' if c['peak_rss_target_met'] else 'missed'}**. "
            f"Training throughput (difference of the two runs): {c['train_clips_per_second_wall']} clips/s wall, "
            f"{c['train_clips_per_cpu_second']} clips per CPU second." + (f" {c['note']}" if c.get("note") else ""),
        ]
    if report.get("device_cost_earlier"):
        lines += [
            "",
            "Earlier runs of the same measurement (newest first):",
            "",
            "| code | batch | peak RSS (MB) | clips/s wall | clips per CPU s | load avg | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in report["device_cost_earlier"]:
            lines.append(
                f"| {e.get('code', '?')} | {e.get('batch_size', 32)} | {e['peak_rss_mb']} | "
                f"{e['train_clips_per_second_wall']} | {e['train_clips_per_cpu_second']} | "
                f"{max(r['load_average'] for r in e['train_runs'])} | {e.get('note', '')} |"
            )
    lines.append("")
    return "\n".join(lines)


def parse_aug(items: list[str]) -> dict:
    """``key=value`` pairs for :class:`edge_agent.data.ood_audio.AudioAugment` (values are JSON)."""
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        v = json.loads(v)
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["streams", "test-voices"], default="streams")
    ap.add_argument("--work", type=Path, default=Path("kws-work"), help="data, streams and bundles (reused)")
    ap.add_argument(
        "--data", type=Path, default=None, help="synthetic dataset folder, made there once [default: WORK/data]"
    )
    ap.add_argument("--grid", default="30:3e-3", help="test-voices: comma-separated epochs:lr settings to choose from")
    ap.add_argument("--streams", default="domain,class")
    ap.add_argument("--methods", default="naive,kd,dac")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ood", default=None, help="audio clip or folder, or 'multilingual' [default: the bundled German sentence]"
    )
    ap.add_argument("--aug", nargs="*", default=[], help="AudioAugment overrides, e.g. rate=[0.8,1.25] noise_p=0")
    ap.add_argument("--reuse", action="store_true", help="reuse central-0, device and joint bundles found in --work")
    ap.add_argument("--only", choices=["accuracy", "device-cost"], default=None)
    ap.add_argument("--cost-epochs", type=int, default=4, help="extra epochs of the second timed train run")
    ap.add_argument("--tag", default="", help="suffix of the result files (side experiments)")
    ap.add_argument(
        "--merge",
        nargs="*",
        type=Path,
        help="combine result JSONs of separate runs into kws.json/.md (a merged kws.json first: add to it)",
    )
    args = ap.parse_args()
    if args.merge:
        merged: dict = {"parts": []}
        for path in args.merge:
            part = json.loads(path.read_text())
            if "parts" in part:  # an earlier merge (e.g. the committed kws.json): the base to add new parts to
                earlier = part.get("device_cost_earlier", [])
                merged = {**part, "device_cost_earlier": earlier if isinstance(earlier, list) else [earlier]}
                continue
            merged["parts"].append({"command": part["command"], "wall_seconds": part["wall_seconds"]})
            if part["args"].get("tag", "").startswith("fix-"):
                # An attempt at the domain target: listed, not mixed into the main results.
                for kind, r in part["streams"].items():
                    merged.setdefault("attempts", []).append(
                        {"tag": part["args"]["tag"], "stream": kind, "command": part["command"], **r}
                    )
                continue
            merged.setdefault("streams", {}).update(part.get("streams", {}))
            if "device_cost" in part and "device_cost" in merged:  # a newer measurement: the older one is kept
                merged.setdefault("device_cost_earlier", []).insert(0, merged["device_cost"])
            for key in ("machine", "torch", "args", "device_cost"):
                if key in part and (key not in merged or key == "device_cost"):
                    merged[key] = part[key]
        merged["command"] = " ; ".join(p["command"] for p in merged["parts"])
        write_json(RESULTS / "kws.json", merged)
        (RESULTS / "kws.md").write_text(markdown(merged))
        return
    args.methods = [m for m in args.methods.split(",") if m]
    args.aug = parse_aug(args.aug)
    set_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.mode == "test-voices":
        report = {
            "command": "python benchmarks/kws.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "torch": torch.__version__,
            "result": test_voices(args),
        }
        report["wall_seconds"] = round(time.perf_counter() - t0, 1)
        name = "test-voices" + (f"-{args.tag}" if args.tag else "")
        write_json(RESULTS / f"{name}.json", report)
        (RESULTS / f"{name}.md").write_text(test_voices_markdown(report))
        print(test_voices_markdown(report))
        return
    data = synthetic_speech(args.data or args.work / "data", seed=args.seed)
    report: dict = {
        "command": "python benchmarks/kws.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if args.only != "device-cost":
        report["streams"] = {}
        for kind in [s for s in args.streams.split(",") if s]:
            report["streams"][kind] = run_stream(kind, args.work, data, args)
    if args.only != "accuracy":
        report["device_cost"] = device_cost(args.work, data, args)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["load_average_end"] = load()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "kws" + (f"-{args.tag}" if args.tag else "")
    write_json(RESULTS / f"{name}.json", report)
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
