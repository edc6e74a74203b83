"""Load keyword clips laid out like Google Speech Commands.

The layout (``ROOT`` is the dataset folder)::

    ROOT/<word>/<speaker>_nohash_<n>.wav     one folder per word, 16 kHz mono WAV
    ROOT/validation_list.txt                 optional: paths relative to ROOT
    ROOT/testing_list.txt                    optional: paths relative to ROOT
    ROOT/_background_noise_/*.wav            optional, not a class

Splits follow the dataset's convention: ``validation`` and ``testing`` are
the files in their list, ``train`` is every file in neither list, ``all`` is
every file.  A dataset without ``testing_list.txt`` has no held-out
speakers: ``split="testing"`` then means all files (and likewise for
``validation``), which is what a device folder holding only its own data
needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from edge_agent.audio.frontend import AudioFrontend, fit_length
from edge_agent.data.labeled import DataError, LabeledSet

SPLITS = ("train", "validation", "testing", "all")
BACKGROUND_NOISE_DIR = "_background_noise_"
_LAYOUT = (
    "expected the Speech Commands layout: ROOT/<word>/*.wav (one folder per word), "
    "optional ROOT/validation_list.txt and ROOT/testing_list.txt, optional ROOT/_background_noise_/"
)


def read_clip(path: str | os.PathLike, sample_rate: int = 16000, clip_samples: int | None = None) -> np.ndarray:
    """Read a WAV (or any libsndfile format) as float32 mono ``[clip_samples]`` in [-1, 1].

    Channels are averaged; another sample rate is resampled to ``sample_rate``
    (Hz) with a polyphase filter; the clip is centre-padded with zeros or
    centre-cropped to ``clip_samples`` (default: one second, ``sample_rate``).
    A file that cannot be decoded raises :class:`DataError` naming it.
    """
    wave, rate = _read_mono(path)
    if rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    return fit_length(wave, sample_rate if clip_samples is None else int(clip_samples))


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Read a whole recording as float32 mono at ``sample_rate`` Hz (no pad or crop)."""
    wave, rate = _read_mono(path)
    return resample(wave, rate, sample_rate) if rate != sample_rate else wave


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample the last axis from ``rate_in`` to ``rate_out`` Hz (polyphase, float32)."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(rate_in), int(rate_out))
    return resample_poly(wave, rate_out // g, rate_in // g, axis=-1).astype(np.float32)


def _read_mono(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's errors vary by format and version
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"cannot read audio file {path}: {reason}") from None
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} has no samples")
    return data.mean(axis=1).astype(np.float32), int(rate)


def list_words(root: str | os.PathLike) -> list[str]:
    """The class folders of a Speech Commands root (sorted); ``_background_noise_`` is not one."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; {_LAYOUT}")
    words = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and any(p.glob("*.wav"))
    )
    if not words:
        raise DataError(f"{root} has no word folders with .wav files; {_LAYOUT}")
    return words


def _read_list(root: Path, split: str) -> set[str] | None:
    path = root / f"{split}_list.txt"
    if not path.is_file():
        return None
    return {line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()}


def list_clips(
    root: str | os.PathLike, split: str = "train", words: list[str] | tuple[str, ...] | None = None
) -> list[tuple[str, str]]:
    """``(relative path, word)`` of every clip in ``split``, sorted by path."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    root = Path(root)
    available = list_words(root)
    if words is None:
        words = available
    else:
        missing = sorted(set(words) - set(available))
        if missing:
            raise DataError(f"no folder for word(s) {', '.join(missing)} in {root} (it has: {', '.join(available)})")
    clips = sorted((f"{w}/{p.name}", w) for w in words for p in (root / w).glob("*.wav"))
    if split == "all":
        return clips
    lists = {name: _read_list(root, name) for name in ("validation", "testing")}
    if split in lists:
        listed = lists[split]
        # No list: a folder without held-out speakers; every file is in the split.
        return clips if listed is None else [c for c in clips if c[0] in listed]
    held_out = set().union(*(s for s in lists.values() if s is not None))
    return [c for c in clips if c[0] not in held_out]


def load_waves(
    root: str | os.PathLike,
    split: str = "train",
    words: list[str] | tuple[str, ...] | None = None,
    sample_rate: int = 16000,
    clip_samples: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Waves float32 ``[N, clip_samples]`` at ``sample_rate`` Hz and their words, for ``split``.

    See the module docstring for what each split means.  An empty split
    raises :class:`DataError`.
    """
    clips = list_clips(root, split, words)
    if not clips:
        raise DataError(f"split {split!r} of {root} has no clips")
    n = sample_rate if clip_samples is None else int(clip_samples)
    waves = np.empty((len(clips), n), dtype=np.float32)
    for i, (rel, _) in enumerate(clips):
        waves[i] = read_clip(Path(root) / rel, sample_rate, n)
    return waves, [w for _, w in clips]


def load_speech_commands(
    root: str | os.PathLike,
    frontend: AudioFrontend | None = None,
    split: str = "train",
    words: list[str] | tuple[str, ...] | None = None,
) -> LabeledSet:
    """Load a Speech Commands split as frontend features: ``x`` ``[N, 1, frames, n_mels]``.

    ``frontend`` defaults to ``AudioFrontend()``; clips are read at its sample
    rate and length.  ``words`` restricts the classes (default: every word
    folder).  Labels are the word folder names.
    """
    frontend = frontend or AudioFrontend()
    clips = list_clips(root, split, words)
    if not clips:
        raise DataError(f"split {split!r} of {root} has no clips")
    feats = np.empty((len(clips), *frontend.input_shape), dtype=np.float32)
    # Read and featurize 64 clips at a time: only the features (8 KB a clip) are kept, never all the waves
    # (64 KB a clip); the STFT intermediates are ~0.4 MB per clip, and devices have little memory.
    chunk = 64
    waves = np.empty((chunk, frontend.clip_samples), dtype=np.float32)
    for start in range(0, len(clips), chunk):
        part = clips[start : start + chunk]
        for i, (rel, _) in enumerate(part):
            waves[i] = read_clip(Path(root) / rel, frontend.sample_rate, frontend.clip_samples)
        feats[start : start + len(part)] = frontend(waves[: len(part)])
    return LabeledSet(torch.from_numpy(feats), [w for _, w in clips])


def load_background_noise(root: str | os.PathLike, sample_rate: int = 16000) -> list[np.ndarray]:
    """The recordings in ``ROOT/_background_noise_/`` (float32 mono, whole length); [] if none."""
    folder = Path(root) / BACKGROUND_NOISE_DIR
    if not folder.is_dir():
        return []
    return [read_audio(p, sample_rate) for p in sorted(folder.glob("*.wav"))]
