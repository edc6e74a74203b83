"""Reading audio files, once: used by training, evaluation and the torch-free device runtime.

WAV is parsed here (NumPy and the standard library only): PCM 8 (unsigned), 16, 24
and 32-bit, IEEE float 32 and 64-bit, plain or ``WAVE_FORMAT_EXTENSIBLE``, any rate
and channel count.  FLAC (and other libsndfile formats) go through ``soundfile``
when it is installed (the base install has it).  Channels are averaged and other
rates resampled with a deterministic polyphase windowed-sinc filter, the same
filter as ``scipy.signal.resample_poly`` with its defaults, in NumPy.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np

AUDIO_SUFFIXES = (".wav", ".flac")
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class AudioReadError(ValueError):
    """A file that is not readable audio; the message is one line and names the file."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: ``rate`` in Hz, ``channels``, ``encoding`` such as ``int16``, ``float32``, ``flac``."""

    rate: int
    channels: int
    encoding: str
    frames: int


def read_audio_file(path: str | os.PathLike) -> tuple[np.ndarray, AudioInfo]:
    """Samples float32 ``[frames, channels]`` in [-1, 1] and what the file held.

    Raises :class:`AudioReadError` for a file that is missing, truncated, empty or
    in an encoding this reader does not take.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise AudioReadError(f"cannot read audio file {p}: {e.strerror or e}") from None
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        data, info = _read_wav(p)
    elif p.suffix.lower() == ".wav":
        raise AudioReadError(f"cannot read audio file {p}: not a RIFF/WAVE file")
    else:
        data, info = _read_soundfile(p)
    if data.shape[0] == 0:
        raise AudioReadError(f"audio file {p} has no samples")
    return data, info


def info(path: str | os.PathLike) -> AudioInfo:
    """The rate, channels and encoding of a file (reads it whole; clips are small)."""
    return read_audio_file(path)[1]


def to_mono(samples: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` to float32 ``[frames]``: the mean of the channels."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """A whole file as float32 mono at ``sample_rate`` Hz."""
    samples, meta = read_audio_file(path)
    return resample(to_mono(samples), meta.rate, sample_rate)


def load_audio_with_info(path: str | os.PathLike, sample_rate: int) -> tuple[np.ndarray, AudioInfo]:
    """:func:`load_audio` and the file's :class:`AudioInfo` (what was converted)."""
    samples, meta = read_audio_file(path)
    return resample(to_mono(samples), meta.rate, sample_rate), meta


# ---------------------------------------------------------------------------
# Resampling.


@lru_cache(maxsize=16)
def _polyphase(up: int, down: int) -> tuple[np.ndarray, int]:
    """The filter bank ``[up, taps]`` and ``half_len`` of ``resample_poly(x, up, down)`` (Kaiser beta 5)."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    n = 2 * half_len + 1
    cutoff = 1.0 / max_rate
    m = np.arange(n) - half_len
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(n, 5.0)
    h = h / h.sum() * up
    taps = -(-n // up)
    bank = np.zeros((up, taps))
    for r in range(up):
        phase = h[r::up]
        bank[r, : len(phase)] = phase
    return bank, half_len


def resample(wave: np.ndarray, rate_in: int, rate_out: int, chunk: int = 4096) -> np.ndarray:
    """Resample the last axis of ``wave`` from ``rate_in`` to ``rate_out`` Hz; float32.

    Output ``m`` is ``sum_j h[j] * x_up[m * down + half_len - j]`` with ``x_up`` the
    input with ``up - 1`` zeros between samples and zeros beyond both ends, ``h`` a
    Kaiser-windowed (beta 5) sinc low-pass at ``1 / max(up, down)`` of Nyquist with
    ``20 * max(up, down) + 1`` taps: ``scipy.signal.resample_poly``'s defaults.
    ``chunk`` outputs are computed at a time, so long recordings need little memory.
    """
    rate_in, rate_out = int(rate_in), int(rate_out)
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} and {rate_out}")
    x = np.asarray(wave, dtype=np.float32)
    if rate_in == rate_out:
        return x.copy()
    g = gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    bank, half_len = _polyphase(up, down)
    taps = bank.shape[1]
    lead = x.reshape(-1, x.shape[-1]).astype(np.float64)
    n_in = lead.shape[1]
    n_out = -(-n_in * up // down)
    padded = np.zeros((lead.shape[0], n_in + 2 * taps + 2))
    padded[:, taps : taps + n_in] = lead  # index i + taps holds x[i]; zeros stand in for both ends
    out = np.empty((lead.shape[0], n_out))
    back = np.arange(taps)
    for start in range(0, n_out, chunk):
        pos = np.arange(start, min(start + chunk, n_out)) * down + half_len
        r, n0 = pos % up, pos // up
        idx = np.clip(n0[:, None] - back[None, :], -taps, n_in + taps) + taps
        out[:, start : start + len(pos)] = np.einsum("cmt,mt->cm", padded[:, idx], bank[r])
    return out.reshape(*x.shape[:-1], n_out).astype(np.float32)


# ---------------------------------------------------------------------------
# WAV.


def _read_wav(p: Path) -> tuple[np.ndarray, AudioInfo]:
    raw = p.read_bytes()
    endian = ">" if raw[:4] == b"RIFX" else "<"
    if raw[:4] == b"RF64":
        raise AudioReadError(f"cannot read audio file {p}: RF64 (over 4 GB) WAV is not supported")
    fmt = None
    data = None
    pos = 12
    while pos + 8 <= len(raw):
        cid = raw[pos : pos + 4]
        (size,) = struct.unpack(endian + "I", raw[pos + 4 : pos + 8])
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + size > len(raw):
                raise AudioReadError(f"cannot read audio file {p}: truncated fmt chunk")
            fmt = raw[body : body + size]
        elif cid == b"data":
            if fmt is None:
                raise AudioReadError(f"cannot read audio file {p}: data chunk before the fmt chunk")
            end = body + size
            if size == 0xFFFFFFFF:  # written by a stream that never knew its length
                end = len(raw)
            elif end > len(raw):
                raise AudioReadError(
                    f"cannot read audio file {p}: truncated (header says {size} bytes of samples, file has {len(raw) - body})"
                )
            data = raw[body:end]
            break
        pos = body + size + (size & 1)  # chunks are padded to an even length
    if fmt is None:
        raise AudioReadError(f"cannot read audio file {p}: no fmt chunk")
    if data is None:
        raise AudioReadError(f"cannot read audio file {p}: no data chunk")
    tag, channels, rate, _, block, bits = struct.unpack(endian + "HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE:
        if len(fmt) < 40:
            raise AudioReadError(f"cannot read audio file {p}: WAVE_FORMAT_EXTENSIBLE without its sub-format")
        (tag,) = struct.unpack(endian + "H", fmt[24:26])
    if channels == 0 or rate == 0:
        raise AudioReadError(f"cannot read audio file {p}: {channels} channels at {rate} Hz")
    width = block // channels if block else bits // 8
    if width * channels != block or width not in (1, 2, 3, 4, 8):
        raise AudioReadError(f"cannot read audio file {p}: {bits}-bit samples in {block}-byte frames are not supported")
    usable = len(data) - len(data) % block
    buf = np.frombuffer(data, dtype=np.uint8, count=usable)
    if tag == _PCM:
        encoding = f"int{8 * width}" if width > 1 else "uint8"
        x = _pcm_to_float(buf, width, endian)
    elif tag == _FLOAT and width in (4, 8):
        encoding = f"float{8 * width}"
        x = np.frombuffer(buf.tobytes(), dtype=f"{endian}f{width}").astype(np.float32)
        if not np.isfinite(x).all():
            raise AudioReadError(f"cannot read audio file {p}: NaN or infinite samples")
    else:
        name = {6: "A-law", 7: "mu-law", 2: "ADPCM", 0x11: "IMA ADPCM"}.get(tag, f"format tag {tag}")
        raise AudioReadError(
            f"cannot read audio file {p}: {name} WAV is not supported (use 8/16/24/32-bit PCM or 32/64-bit float)"
        )
    return x.reshape(-1, channels), AudioInfo(int(rate), int(channels), encoding, usable // block)


def _pcm_to_float(buf: np.ndarray, width: int, endian: str) -> np.ndarray:
    if width == 1:
        return (buf.astype(np.float32) - 128.0) / 128.0
    if width == 3:
        b = buf.reshape(-1, 3).astype(np.int32)
        lo, hi = (b[:, 0], b[:, 2]) if endian == "<" else (b[:, 2], b[:, 0])
        v = lo | (b[:, 1] << 8) | (hi << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    v = np.frombuffer(buf.tobytes(), dtype=f"{endian}i{width}")
    return (v.astype(np.float64) / float(1 << (8 * width - 1))).astype(np.float32)


# ---------------------------------------------------------------------------
# FLAC and the rest: libsndfile.


def _read_soundfile(p: Path) -> tuple[np.ndarray, AudioInfo]:
    try:
        import soundfile
    except ImportError:  # pragma: no cover - the base install has it
        raise AudioReadError(f"reading {p.suffix or 'this'} audio needs soundfile: pip install soundfile") from None
    try:
        with soundfile.SoundFile(str(p)) as f:
            data = f.read(dtype="float32", always_2d=True)
            meta = AudioInfo(int(f.samplerate), int(f.channels), f"{f.format.lower()}/{f.subtype.lower()}", len(data))
    except Exception as e:  # libsndfile's errors vary by format and version
        reason = " ".join(str(e).split()) or type(e).__name__
        raise AudioReadError(f"cannot read audio file {p}: {reason}") from None
    return data, meta
