"""Split one Speech Commands dataset into a stream of devices (experiences).

Each device folder is itself a valid Speech Commands dataset with its own
``validation_list.txt`` and ``testing_list.txt`` (the root's held-out
speakers that fall in the device), so :func:`edge_agent.data.speech.load_speech_commands`
reads a device's train and test splits directly.  ``test/`` holds the test
clips of every device together (its ``testing_list.txt`` lists them all) and
``stream.json`` describes the stream.  Files are hard links when the file
system allows it, copies otherwise.

- ``kind="domain"``: every device has all words; device *i* is one group of
  accents (from ``speakers.json`` when present, as written by
  :mod:`edge_agent.data.speech_synth`), or, for a dataset without it, one
  group of speakers.
- ``kind="class"``: device *i* has its own keywords (contiguous groups of the
  keyword list, in the dataset's order when ``synth.json`` is absent: sorted),
  all speakers.

The 12-label task: the keywords are ``synth.json``'s ``words`` or, for a
real dataset, the ten :data:`edge_agent.data.speech_synth.CORE_WORDS` found
in it; every other word folder is an unknown word.  Every device gets unknown
words (its accents' in a domain stream; in a class stream each unknown clip
goes to one device, by a hash of its path) and the whole
``_background_noise_/`` folder, so each device's data holds ``_unknown_``
and ``_silence_`` besides its own words.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from edge_agent.atomic import write_atomic
from edge_agent.data.labeled import DataError
from edge_agent.data.speech import BACKGROUND_NOISE_DIR, _read_list, list_clips, list_words
from edge_agent.data.speech_synth import CORE_WORDS

STREAM_KINDS = ("domain", "class")


def _speaker(rel: str) -> str:
    # Speech Commands names files <speaker>_nohash_<n>.wav.
    return Path(rel).name.split("_nohash_")[0]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def _write_folder(root: Path, folder: Path, rels: list[str], testing: set[str], validation: set[str]) -> None:
    for rel in rels:
        _link(root / rel, folder / rel)
    noise = root / BACKGROUND_NOISE_DIR
    for p in sorted(noise.glob("*.wav")) if noise.is_dir() else []:
        _link(p, folder / BACKGROUND_NOISE_DIR / p.name)
    for name, held in (("testing", testing), ("validation", validation)):
        (folder / f"{name}_list.txt").write_text("".join(r + "\n" for r in rels if r in held))


def write_kws_stream(
    root: str | os.PathLike, out: str | os.PathLike, kind: str = "domain", n_devices: int = 5
) -> list[Path]:
    """Write ``n_devices`` device folders ``out/device-01`` ... and ``out/test``; return the device folders.

    ``kind`` is ``"domain"`` (same words, new accents or speakers per device)
    or ``"class"`` (new words per device).  See the module docstring.

    A stream already in ``out`` from the same dataset files and settings is kept as
    it is (``stream.json`` records their fingerprint and is written last), so
    several runs can share one work folder without rewriting it under each other.
    """
    if kind not in STREAM_KINDS:
        raise DataError(f"stream kind must be one of {', '.join(STREAM_KINDS)}, not {kind!r}")
    root, out = Path(root), Path(out)
    words = list_words(root)
    clips = list_clips(root, "all")
    testing = _read_list(root, "testing") or set()
    validation = _read_list(root, "validation") or set()
    speakers_file = root / "speakers.json"
    speakers = json.loads(speakers_file.read_text()) if speakers_file.is_file() else {}
    fingerprint = _fingerprint(root, kind, n_devices, clips, testing, validation, speakers)
    meta_file = out / "stream.json"
    if meta_file.is_file():
        try:
            old = json.loads(meta_file.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") == fingerprint:
            return [out / d["folder"] for d in old["devices"]]
        meta_file.unlink()  # from here on the folder is not a finished stream

    synth_words = json.loads((root / "synth.json").read_text())["words"] if (root / "synth.json").is_file() else None
    keywords = [w for w in synth_words if w in words] if synth_words else [w for w in words if w in CORE_WORDS] or words
    if kind == "class":
        if n_devices < 1 or n_devices > len(keywords):
            raise DataError(
                f"a class stream needs 1 to {len(keywords)} devices (one word at least each), got {n_devices}"
            )
        groups = [list(g) for g in np.array_split(keywords, n_devices)]
        others = [rel for rel, w in clips if w not in keywords]
        device_clips = [
            [rel for rel, w in clips if w in g] + [rel for rel in others if zlib.crc32(rel.encode()) % n_devices == i]
            for i, g in enumerate(groups)
        ]
        describe = [{"words": g} for g in groups]
    else:
        if speakers:
            accents = list(dict.fromkeys(info["accent"] for info in speakers.values()))
            if n_devices < 1 or n_devices > len(accents):
                raise DataError(
                    f"a domain stream of {root} needs 1 to {len(accents)} devices (one accent at least each), got {n_devices}"
                )
            groups = [list(g) for g in np.array_split(accents, n_devices)]
            device_clips = [
                [rel for rel, _ in clips if speakers.get(_speaker(rel), {}).get("accent") in g] for g in groups
            ]
            describe = [{"accents": g} for g in groups]
        else:
            if n_devices < 1:
                raise DataError(f"n_devices must be at least 1, got {n_devices}")
            # No accent metadata: a stable hash of the speaker id picks the device.
            device_clips = [[] for _ in range(n_devices)]
            for rel, _ in clips:
                device_clips[zlib.crc32(_speaker(rel).encode()) % n_devices].append(rel)
            describe = [{"speaker_hash_group": i} for i in range(n_devices)]
    for i, rels in enumerate(device_clips):
        if not rels:
            raise DataError(f"device {i + 1} of the {kind} stream would have no clips")

    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for i, rels in enumerate(device_clips):
        folder = out / f"device-{i + 1:02d}"
        if folder.exists():
            shutil.rmtree(folder)
        _write_folder(root, folder, rels, testing, validation)
        describe[i].update(
            folder=folder.name,
            clips=len(rels),
            testing=sum(r in testing for r in rels),
            validation=sum(r in validation for r in rels),
        )
        folders.append(folder)
    test_dir = out / "test"
    if test_dir.exists():
        shutil.rmtree(test_dir)
    all_test = sorted(r for rels in device_clips for r in rels if r in testing)
    if all_test:
        _write_folder(root, test_dir, all_test, set(all_test), set())
    meta = {
        "kind": kind,
        "source": str(root),
        "words": keywords,
        "unknown_words": [w for w in words if w not in keywords],
        "devices": describe,
        "fingerprint": fingerprint,
    }
    write_atomic(meta_file, (json.dumps(meta, indent=1) + "\n").encode())
    return folders


def _fingerprint(root: Path, kind, n_devices, clips, testing, validation, speakers) -> str:
    """Hash of what a stream is made from: the settings, every clip's path and size, the lists, the speakers."""
    h = hashlib.sha256(
        json.dumps(["12-label", kind, n_devices, sorted(testing), sorted(validation), speakers]).encode()
    )
    noise = sorted((root / BACKGROUND_NOISE_DIR).glob("*.wav")) if (root / BACKGROUND_NOISE_DIR).is_dir() else []
    for rel, word in clips + [(f"{BACKGROUND_NOISE_DIR}/{p.name}", "") for p in noise]:
        h.update(f"{rel}\0{word}\0{(root / rel).stat().st_size}\n".encode())
    return h.hexdigest()
