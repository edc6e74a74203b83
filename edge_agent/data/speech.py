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

The 12-label task (TensorFlow's speech_commands recipe, TFLite Micro's
micro_speech, MLPerf Tiny KWS): when the model's labels include
:data:`UNKNOWN`, every word folder that is not one of its labels is
``_unknown_`` (a fixed, hash-chosen subset: :data:`UNKNOWN_FRACTION` of the
keyword clips of the split); when they include :data:`SILENCE`, 1 s windows
of ``_background_noise_/`` recordings at random levels are ``_silence_``
(:data:`SILENCE_FRACTION` of the keyword clips).  Silence windows come from
a split's own stretch of each recording (the first 80 % for train, the next
10 % validation, the last 10 % testing), so no window is in two splits.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import torch

from edge_agent.audio import io as audio_io
from edge_agent.audio.frontend import AudioFrontend, fit_length
from edge_agent.audio.io import AUDIO_SUFFIXES
from edge_agent.data.labeled import CachedSet, DataError, DataReport, LabeledSet, cached_rows, read_lines, source_key

SPLITS = ("train", "validation", "testing", "all")
BACKGROUND_NOISE_DIR = "_background_noise_"
SILENCE, UNKNOWN = "_silence_", "_unknown_"
SILENCE_FRACTION = 0.1  # silence clips per keyword clip of a split, as the TensorFlow recipe's default
UNKNOWN_FRACTION = 0.1  # unknown-word clips per keyword clip of a split
# Where each split's silence windows lie in a background recording (fractions of its length).
_SILENCE_SEGMENTS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "testing": (0.9, 1.0), "all": (0.0, 1.0)}
_LAYOUT = (
    "expected the Speech Commands layout: ROOT/<word>/*.wav or *.flac (one folder per word), "
    "optional ROOT/validation_list.txt and ROOT/testing_list.txt, optional ROOT/_background_noise_/"
)


def read_clip(path: str | os.PathLike, sample_rate: int = 16000, clip_samples: int | None = None) -> np.ndarray:
    """Read a WAV or FLAC file as float32 mono ``[clip_samples]`` in [-1, 1].

    Channels are averaged; another sample rate is resampled to ``sample_rate``
    (Hz) with a polyphase filter (:func:`edge_agent.audio.io.resample`); the clip
    is centre-padded with zeros or centre-cropped to ``clip_samples`` (default:
    one second, ``sample_rate``).  A file that cannot be decoded raises
    :class:`DataError` naming it.
    """
    wave = read_audio(path, sample_rate)
    return fit_length(wave, sample_rate if clip_samples is None else int(clip_samples))


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Read a whole recording as float32 mono at ``sample_rate`` Hz (no pad or crop)."""
    try:
        return audio_io.load_audio(path, sample_rate)
    except audio_io.AudioReadError as e:
        raise DataError(str(e)) from None


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample the last axis from ``rate_in`` to ``rate_out`` Hz (polyphase, float32)."""
    return audio_io.resample(wave, rate_in, rate_out)


def _clip_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def list_words(root: str | os.PathLike) -> list[str]:
    """The class folders of a Speech Commands root (sorted); ``_background_noise_`` is not one."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; {_LAYOUT}")
    words = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and _clip_files(p)
    )
    if not words:
        raise DataError(f"{root} has no word folders with .wav or .flac files; {_LAYOUT}")
    return words


def _read_list(root: Path, split: str) -> set[str] | None:
    path = root / f"{split}_list.txt"
    if not path.is_file():
        return None
    return {line.replace("\\", "/") for line in read_lines(path, f"{split} list")}


def list_clips(
    root: str | os.PathLike,
    split: str = "train",
    words: list[str] | tuple[str, ...] | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
) -> list[tuple[str, str]]:
    """``(relative path, label)`` of every clip in ``split``, sorted by path.

    ``labels`` (a model's label list) turns on the 12-label convention of the
    module docstring: word folders outside ``labels`` become ``_unknown_``
    clips and background windows ``_silence_`` clips, whose path is
    ``_background_noise_/<file>#<start sample>:<gain>``.
    """
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
    clips = _in_split(root, split, sorted((f"{w}/{p.name}", w) for w in words for p in _clip_files(root / w)))
    if labels is None or not {SILENCE, UNKNOWN} & set(labels):
        return clips  # a model without the two shared classes: every folder is its own class
    labels = set(labels)
    known = [c for c in clips if c[1] in labels]
    out = list(known)
    if UNKNOWN in labels:
        others = sorted((c for c in clips if c[1] not in labels), key=lambda c: zlib.crc32(c[0].encode()))
        n = min(len(others), max(1, round(UNKNOWN_FRACTION * len(known)))) if others else 0
        out += [(rel, UNKNOWN) for rel, _ in others[:n]]
    if SILENCE in labels:
        out += [(rel, SILENCE) for rel in _silence_clips(root, split, max(1, round(SILENCE_FRACTION * len(known))))]
    return sorted(out)


def _in_split(root: Path, split: str, clips: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if split == "all":
        return clips
    lists = {name: _read_list(root, name) for name in ("validation", "testing")}
    if split in lists:
        listed = lists[split]
        # No list: a folder without held-out speakers; every file is in the split.
        return clips if listed is None else [c for c in clips if c[0] in listed]
    held_out = set().union(*(s for s in lists.values() if s is not None))
    return [c for c in clips if c[0] not in held_out]


def _silence_clips(root: Path, split: str, n: int, clip_seconds: float = 1.0) -> list[str]:
    """``n`` silence entries spread evenly over the split's stretch of each background recording."""
    import soundfile

    folder = root / BACKGROUND_NOISE_DIR
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        return []
    lo, hi = _SILENCE_SEGMENTS[split]
    rng = np.random.default_rng(zlib.crc32(split.encode()))  # the same windows whatever the folder is called
    out = []
    for k in range(n):
        f = files[k % len(files)]
        try:
            info = soundfile.info(str(f))
        except Exception as e:  # libsndfile's errors vary by format and version
            raise DataError(f"cannot read audio file {f}: {' '.join(str(e).split())}") from None
        length, win = info.frames, int(clip_seconds * info.samplerate)
        first, last = int(lo * length), max(int(lo * length), int(hi * length) - win)
        start = int(rng.integers(first, last + 1))
        gain = float(np.exp(rng.uniform(np.log(0.05), 0.0)))  # quiet room to loud street, log-uniform
        out.append(f"{BACKGROUND_NOISE_DIR}/{f.name}#{start}:{gain:.4f}")
    return out


def _read_entry(root: Path, rel: str, sample_rate: int, n: int) -> np.ndarray:
    """One clip of a :func:`list_clips` entry: a word file, or a silence window of a background recording."""
    name, sep, where = rel.partition("#")
    if not sep:
        return read_clip(root / rel, sample_rate, n)
    import soundfile

    start, _, gain = where.partition(":")
    rate = soundfile.info(str(root / name)).samplerate
    data, _ = soundfile.read(
        str(root / name), start=int(start), frames=rate * n // sample_rate, dtype="float32", always_2d=True
    )
    wave = data.mean(axis=1)
    if rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    return (fit_length(wave, n) * float(gain)).astype(np.float32)


def load_waves(
    root: str | os.PathLike,
    split: str = "train",
    words: list[str] | tuple[str, ...] | None = None,
    sample_rate: int = 16000,
    clip_samples: int | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Waves float32 ``[N, clip_samples]`` at ``sample_rate`` Hz and their words, for ``split``.

    See the module docstring for what each split means.  An empty split
    raises :class:`DataError`.
    """
    clips = list_clips(root, split, words, labels)
    if not clips:
        raise DataError(f"split {split!r} of {root} has no clips")
    n = sample_rate if clip_samples is None else int(clip_samples)
    waves = np.empty((len(clips), n), dtype=np.float32)
    for i, (rel, _) in enumerate(clips):
        waves[i] = _read_entry(Path(root), rel, sample_rate, n)
    return waves, [w for _, w in clips]


def scan_speech_folder(root: str | os.PathLike, frontend: AudioFrontend) -> DataReport:
    """A report of what ``root`` holds besides the clips: empty and nested folders, other files."""
    root = Path(root)
    report = DataReport(
        str(root), "audio", f"{frontend.sample_rate} Hz mono, {frontend.clip_samples / frontend.sample_rate:g} s clips, "
        f"log-mel {'x'.join(map(str, frontend.input_shape))}"
    )
    if not root.is_dir():
        return report
    ignored: dict[str, int] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if not _clip_files(folder):
            report.empty.append(folder.name)
        for p in sorted(folder.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                report.nested.append(f"{folder.name}/{p.name}/")
            elif p.is_file() and p.suffix.lower() not in AUDIO_SUFFIXES and not p.name.startswith("."):
                suffix = p.suffix.lower() or "(no suffix)"
                ignored[suffix] = ignored.get(suffix, 0) + 1
    report.loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    report.ignored = ignored
    return report


def _featurize(root: Path, clips, frontend: AudioFrontend, report: DataReport, skip_bad: bool, keep) -> list[str]:
    # Read and featurize 64 clips at a time: only the features (8 KB a clip) are kept, never all the waves
    # (64 KB a clip); the STFT intermediates are ~0.4 MB per clip, and devices have little memory.
    chunk = 64
    waves = np.empty((chunk, frontend.clip_samples), dtype=np.float32)
    labels: list[str] = []
    sources: dict[str, int] = {}
    adjusted: dict[str, int] = {}
    per_class: dict[str, int] = {}
    n = frontend.clip_samples
    for start in range(0, len(clips), chunk):
        k = 0
        for rel, word in clips[start : start + chunk]:
            try:
                if "#" in rel:  # a _silence_ window of a background recording (list_clips)
                    wave, src = _read_entry(root, rel, frontend.sample_rate, n), "background-noise windows"
                else:
                    wave, meta = audio_io.load_audio_with_info(root / rel, frontend.sample_rate)
                    src = f"{meta.rate} Hz {_channels(meta.channels)} {meta.encoding}"
            except (audio_io.AudioReadError, DataError) as e:
                if not skip_bad:
                    raise DataError(str(e)) from None
                report.skipped.append((str(root / rel), str(e).split(": ", 1)[-1]))
                continue
            sources[src] = sources.get(src, 0) + 1
            if len(wave) != n:
                what = f"zero-padded to {n / frontend.sample_rate:g} s" if len(wave) < n else f"cut to the middle {n / frontend.sample_rate:g} s"
                adjusted[what] = adjusted.get(what, 0) + 1
            waves[k] = fit_length(wave, n)
            labels.append(word)
            per_class[word] = per_class.get(word, 0) + 1
            k += 1
        if k:
            for row in frontend(waves[:k]):
                keep(row)
    if not labels:
        raise DataError(f"no readable clip in {root} ({len(report.skipped)} skipped)")
    report.sources, report.adjusted, report.per_class = sources, adjusted, per_class
    return labels


def _channels(n: int) -> str:
    return {1: "mono", 2: "stereo"}.get(n, f"{n}-channel")


def load_speech_commands(
    root: str | os.PathLike,
    frontend: AudioFrontend | None = None,
    split: str = "train",
    words: list[str] | tuple[str, ...] | None = None,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
) -> LabeledSet | CachedSet:
    """Load a Speech Commands split as frontend features: ``x`` ``[N, 1, frames, n_mels]``.

    ``frontend`` defaults to ``AudioFrontend()``; clips (WAV or FLAC, any rate and
    channel count) are mixed to mono, resampled to its rate and cut or padded to
    its length.  ``words`` restricts the word folders read (default: every
    one).  Labels are the word folder names, or with ``labels`` (a model's
    label list) the 12-label convention of the module docstring.  An unreadable file raises
    :class:`DataError` naming it, or with ``skip_bad`` is left out and listed in
    ``.report.skipped``.  With ``cache_dir`` the features are written once to a
    file there and a :class:`CachedSet` reads them a batch at a time.
    """
    frontend = frontend or AudioFrontend()
    root = Path(root)
    clips = list_clips(root, split, words, labels)
    if not clips:
        raise DataError(f"split {split!r} of {root} has no clips")
    report = scan_speech_folder(root, frontend)
    shape = frontend.input_shape
    if cache_dir is None:
        feats = np.empty((len(clips), *shape), dtype=np.float32)
        n = 0

        def keep(row):
            nonlocal n
            feats[n] = row
            n += 1

        labels = _featurize(root, clips, frontend, report, skip_bad, keep)
        return LabeledSet(torch.from_numpy(feats[:n]), labels, report)
    # Silence windows name their recording and window ("file#start:gain"): the key holds both.
    key = source_key("audio", frontend.to_dict(), split, skip_bad, [c for c in clips if "#" in c[0]],
                     files=sorted({root / rel.partition("#")[0] for rel, _ in clips}))

    def build(write):
        return _featurize(root, clips, frontend, report, skip_bad, write), report

    store, labels, report = cached_rows(cache_dir, key, "float32", shape, build)
    return CachedSet(store, np.arange(len(labels)), labels, lambda rows: rows, key, report)


def load_background_noise(root: str | os.PathLike, sample_rate: int = 16000) -> list[np.ndarray]:
    """The recordings in ``ROOT/_background_noise_/`` (float32 mono, whole length); [] if none."""
    folder = Path(root) / BACKGROUND_NOISE_DIR
    if not folder.is_dir():
        return []
    return [read_audio(p, sample_rate) for p in _clip_files(folder)]
