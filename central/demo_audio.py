"""``central demo --modality audio``: keyword spotting, end to end, on synthetic speech.

Read top to bottom: synthesize the keyword dataset (eSpeak NG, 8 English
accents; cached under ``out/data``), split it into a stream of five devices
(``domain``: same ten words, new accents per device; ``class``: two new words
per device; every device also has ``_silence_`` and ``_unknown_``, the
12-label convention of Speech Commands), create central-0 (ds-cnn, the
:data:`KWS_LABELS`), train one model per device (the same
code path as ``edge-agent train``), consolidate after each device with every
method using only the bundled German sentence as data, then report the
accuracy matrices.

Every experience is tested on its own test speakers (``Stream.test_by_exp``):
in a domain stream all devices share the words, so splitting one test set by
class, as the image demo does, could not tell the devices apart.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from central.demo import markdown_summary
from central.init import init_central
from central.methods import ConsolidationConfig
from central.stream import Stream, heatmap, run_methods, set_threads, train_devices, write_json
from edge_agent.audio.frontend import AudioFrontend
from edge_agent.bundle import load_bundle
from edge_agent.data.kws_streams import write_kws_stream
from edge_agent.data.labeled import LabeledSet
from edge_agent.data.ood import open_ood
from edge_agent.data.speech import SILENCE, UNKNOWN, load_speech_commands
from edge_agent.data.speech_synth import CORE_WORDS, UNKNOWN_WORDS, write_speech_dataset
from edge_agent.train import DEVICE_BATCH_SIZE, TrainConfig

N_DEVICES = 5
# Device fine-tuning budget: passes over ~400-500 local training clips and
# Adam's learning rate.  Measured on domain device 1 (480 clips) from a fresh
# central-0: 20 epochs reached 0.61 local validation accuracy at lr 1e-3,
# 0.90 at lr 3e-3, and 30 epochs at lr 3e-3 0.975 (40 CPU s).
DEVICE_EPOCHS = 30
DEVICE_LR = 3e-3
# OOD samples per consolidation step.  ds-cnn is slow on CPU (depthwise
# convolutions, BatchNorm on 24x20x64 maps): one step (two teacher passes,
# student forward and backward) measured 0.53 CPU s at 128 clips and 0.31 at
# 64 on one thread, so the demo uses 64 (benchmarks/kws.py measured about
# 55 CPU s per 200-step consolidation at 64).
BATCH_SIZE = 64
# The 12 labels of the Speech Commands task: ten keywords, then the two classes every device shares.
KWS_LABELS = [*CORE_WORDS, SILENCE, UNKNOWN]


def synthetic_speech(data: Path, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """The default synthetic Speech Commands set under ``data``; reused when a finished one with ``seed`` is there."""
    meta = data / "synth.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        same = info.get("words") == list(CORE_WORDS) and info.get("unknown_words") == list(UNKNOWN_WORDS)
        if info.get("seed") == seed and same and info.get("split_by") == "voice":
            log(f"reusing the synthetic dataset in {data} ({info['clips']} clips)")
            return data
    if data.exists():
        # A dataset of another seed: its speaker ids differ, so files would mix.
        shutil.rmtree(data)
    summary = write_speech_dataset(data, seed=seed)
    log(f"synthesized {summary['clips']} clips of {len(summary['words'])} words in {summary['seconds']:.0f} s")
    return data


def kws_stream(
    data: Path,
    folder: Path,
    kind: str,
    frontend: AudioFrontend,
    n_devices: int = N_DEVICES,
    split: str = "testing",
    write: bool = True,
    labels: list[str] = KWS_LABELS,
) -> Stream:
    """Write the device folders of a ``domain`` or ``class`` stream and load every ``split`` (testing or validation).

    ``write=False`` reads folders an earlier call wrote (parallel readers must not rewrite them).
    ``labels`` is the model's label list: with ``_silence_`` and ``_unknown_`` every experience has them too.
    """
    if write:
        write_kws_stream(data, folder, kind=kind, n_devices=n_devices)
    meta = json.loads((folder / "stream.json").read_text())
    folders = [folder / d["folder"] for d in meta["devices"]]
    experiences = []
    for i, (path, d) in enumerate(zip(folders, meta["devices"], strict=True)):
        words = list(d.get("words", meta["words"])) + [c for c in (SILENCE, UNKNOWN) if c in labels]
        experiences.append(
            {
                "name": f"dev{i + 1}",
                "classes": words,
                "path": path,
                "accents": d.get("accents"),
                "clips": d["clips"],
            }
        )
    test_by_exp = [load_speech_commands(p, frontend, split=split, labels=labels) for p in folders]
    if split == "testing":
        test = load_speech_commands(folder / "test", frontend, split="testing", labels=labels)
    else:
        test = LabeledSet(torch.cat([t.x for t in test_by_exp]), sum((t.labels for t in test_by_exp), []))
    present = {c for e in experiences for c in e["classes"]}
    return Stream(folder, [c for c in labels if c in present], experiences, test, test_by_exp)


def run_audio_demo(
    out: Path,
    methods: tuple[str, ...] = ("naive", "dac"),
    steps: int = 500,
    seed: int = 0,
    log: Callable[[str], None] = print,
    stream: str = "domain",
    epochs: int = DEVICE_EPOCHS,
    batch_size: int = BATCH_SIZE,
    ood: str | None = None,
    progress: bool = True,
) -> dict:
    """Run the keyword-spotting stream; write report.json, accuracy-matrix.png and summary.md in ``out``.

    ``steps`` consolidation steps of ``batch_size`` OOD clips per device,
    ``epochs`` device training passes; ``ood`` is an audio clip or folder
    (default: the bundled German sentence).  Returns the report dict
    (``methods`` -> ``final_avg_acc``, ``avg_forgetting``, matrix, ...; ``wall_seconds``).
    """
    set_threads()
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = synthetic_speech(out / "data", seed=seed, log=log)
    t_data = time.perf_counter() - t0
    central0 = out / "central-0.safetensors"
    init_central("ds-cnn", KWS_LABELS, central0, seed=seed)
    base = load_bundle(central0)
    frontend = AudioFrontend.from_dict(base.input_spec.frontend)
    kws = kws_stream(data, out / f"stream-{stream}", stream, frontend)
    log(
        f"{stream} stream: {len(kws.experiences)} devices, {len(kws.test)} test clips; "
        f"central-0 {base.id[:12]} (ds-cnn)"
    )
    t1 = time.perf_counter()
    train_cfg = TrainConfig(
        epochs=epochs, lr=DEVICE_LR, batch_size=DEVICE_BATCH_SIZE["audio"], seed=seed
    )  # as on a device
    devices = train_devices(kws, central0, out / f"devices-{stream}", train_cfg, progress, log)
    t_devices = time.perf_counter() - t1
    torch.manual_seed(seed)
    source = open_ood(ood, base.input_spec)
    cfg = ConsolidationConfig(steps=steps, batch_size=batch_size, seed=seed)
    results = run_methods(kws, base, devices, source, methods, cfg, progress, log)
    names = [e["name"] for e in kws.experiences]
    report = {
        "stream": f"synthetic keyword spotting, {stream}-incremental",
        "experiences": [
            {k: (str(v) if isinstance(v, Path) else v) for k, v in e.items() if k != "path"} for e in kws.experiences
        ],
        "ood": ood or "bundled German sentence (edge_agent/assets/ood-speech.wav)",
        "consolidation": {"steps": steps, "batch_size": batch_size, "seed": seed},
        "device_training": {
            "epochs": epochs,
            "seed": seed,
            "val_accuracy": [d.manifest.metrics.get("val_accuracy") for d in devices],
        },
        "methods": results,
        "seconds": {"data": round(t_data, 1), "device_training": round(t_devices, 1)},
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(out / "report.json", report)
    title = f"Keyword spotting ({stream}-incremental), accuracy R[t, j]"
    heatmap(results, names, out / "accuracy-matrix.png", title)
    (out / "summary.md").write_text(
        markdown_summary(report, names, title=f"Keyword-spotting demo ({stream}-incremental)")
    )
    return report
