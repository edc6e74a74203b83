"""Audio out-of-distribution (OOD) sources: one clip or a folder of clips, augmented.

The central consolidates keyword models without any keyword data, so all it
hears is what this module makes from a few seconds of unrelated speech (by
default a German sentence, :func:`edge_agent.data.speech_synth.default_ood_clip_path`).
Each call of :meth:`AudioOOD.sample` returns ``n`` model-ready log-mel inputs
``[n, 1, frames, n_mels]``, made per batch, without a per-sample Python loop:

1. a random crop of ``clip_samples / rate`` source samples, read at a per-sample
   rate ``rate`` by linear interpolation: speed and pitch change together, like
   playing a tape faster or slower (one gather for the whole batch);
2. mixing with the reversed batch (a second crop under the first one); optionally
   (``word_p``) cutting a crop down to one word-length segment with silence around it;
3. a random peak gain, and coloured noise (white to brown) at a random SNR;
4. the :class:`edge_agent.audio.frontend.AudioFrontend` of the model's input
   spec (the same code as training and inference: features cannot drift);
5. SpecAugment time and frequency masks on the normalized features.

The same interface serves consolidation and int8 calibration
(:class:`edge_agent.data.ood.OODSource`).

Cost, measured on one thread: 63 ms CPU per batch of 128 (34 ms for 64),
against 530 ms (310 ms) for one ds-cnn consolidation step on that batch:
consolidation is bound by the model, not by this recipe.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge_agent.audio.frontend import AudioFrontend
from edge_agent.data.labeled import DataError
from edge_agent.data.speech import read_audio
from edge_agent.inputs import InputSpec

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclass
class AudioAugment:
    """Knobs of the audio recipe.

    Units: ``rate`` is the playback-speed factor (1.2 = 20 % faster and 20 %
    higher pitched); ``peak`` the absolute peak amplitude of a crop in
    [-1, 1] full scale (log-uniform); ``snr_db`` the speech-to-noise ratio in
    dB; ``mix_gain`` the amplitude of the second crop relative to the first;
    mask widths are in frames (``time_mask``) and mel bands (``freq_mask``);
    the ``*_p`` fields are probabilities per sample. ``word_p`` cuts a crop down to
    one ``word_len`` fraction of the clip (faded in and out, silence around it) at a
    random place, like a keyword clip: an isolated word rather than running speech.
    """

    rate: tuple[float, float] = (0.7, 1.4)
    word_p: float = 0.0
    word_len: tuple[float, float] = (0.25, 0.9)
    mix_p: float = 0.5
    mix_gain: tuple[float, float] = (0.1, 1.0)
    peak: tuple[float, float] = (0.1, 1.0)
    noise_p: float = 0.8
    snr_db: tuple[float, float] = (0.0, 30.0)
    time_masks: int = 2
    time_mask: int = 10
    freq_masks: int = 2
    freq_mask: int = 8

    def __post_init__(self):
        if not 0 < self.rate[0] <= self.rate[1]:
            raise DataError(f"rate must be (low, high) with 0 < low <= high, got {self.rate}")
        if not 0 < self.peak[0] <= self.peak[1]:
            raise DataError(f"peak must be (low, high) with 0 < low <= high, got {self.peak}")
        if not 0 < self.word_len[0] <= self.word_len[1] <= 1:
            raise DataError(f"word_len must be (low, high) with 0 < low <= high <= 1, got {self.word_len}")
        for name in ("mix_p", "noise_p", "word_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("time_masks", "time_mask", "freq_masks", "freq_mask"):
            if getattr(self, name) < 0:
                raise DataError(f"{name} must not be negative, got {getattr(self, name)}")


def audio_files(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (recursively, sorted), hidden files and folders left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class AudioOOD:
    """Augmented 1 s crops of one recording or of several, as model inputs."""

    def __init__(self, waves: list[np.ndarray], spec: InputSpec, augment: AudioAugment | None = None, name: str = ""):
        if spec.kind != "audio":
            raise DataError("an audio OOD source needs an audio model (its input spec has no frontend)")
        if not waves:
            raise DataError("no OOD clips given")
        self.spec = spec
        self.frontend = AudioFrontend.from_dict(spec.frontend)
        if tuple(self.frontend.input_shape) != tuple(spec.shape):
            raise DataError(f"the frontend makes {self.frontend.input_shape} but the model takes {spec.shape}")
        self.augment = augment or AudioAugment()
        self.name = name
        n = self.frontend.clip_samples
        # All clips in one flat tensor, each followed by enough zeros that the
        # longest read (n samples at the highest rate) never runs into the next
        # clip: one gather then serves a batch drawn from any of them.
        tail = math.ceil(n * self.augment.rate[1]) + 2
        lengths = [int(w.shape[-1]) for w in waves]
        if max(float(np.abs(w).max()) for w in waves) == 0.0:
            raise DataError("the OOD clips are silent")
        self.starts = torch.tensor(np.cumsum([0] + [ln + tail for ln in lengths[:-1]]), dtype=torch.long)
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        flat = np.zeros(sum(lengths) + tail * len(lengths), dtype=np.float32)
        for s, w in zip(self.starts.tolist(), waves, strict=True):
            flat[s : s + w.shape[-1]] = w
        self.flat = torch.from_numpy(flat)
        # Noises white to brown, made once from a fixed seed (so they are the
        # same for every source and run), 4 clips long each.
        self.noise_bank = coloured_noise(16, 4 * n, torch.Generator().manual_seed(1), torch.linspace(0.0, 2.0, 16))
        self.noise_bank /= _rms(self.noise_bank)[:, None]
        # A long recording holds more distinct crops than a short one: draw
        # clips in proportion to their length.
        self.weights = self.lengths.double() / self.lengths.sum()

    @classmethod
    def from_path(cls, path: str | os.PathLike, spec: InputSpec, augment: AudioAugment | None = None) -> AudioOOD:
        """One audio file, or a folder searched recursively for .wav/.flac/.ogg files."""
        path = Path(path)
        rate = AudioFrontend.from_dict(spec.frontend).sample_rate if spec.kind == "audio" else 16000
        if path.is_dir():
            files = audio_files(path)
            if not files:
                raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in OOD folder {path}")
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"no OOD clip at {path}")
        return cls([read_audio(f, rate) for f in files], spec, augment, name=str(path))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` augmented inputs, float32 ``[n, 1, frames, n_mels]``, finite."""
        wave = self.waves(n, generator)
        feats = torch.from_numpy(self.frontend(wave.numpy()))
        return self._spec_augment(feats, generator).contiguous()

    def waves(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The augmented waveforms before the frontend: float32 ``[n, clip_samples]`` in [-1, 1]."""
        a, g = self.augment, generator
        N = self.frontend.clip_samples

        def log_uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=g))

        # 1. Crop and resample in one gather: output sample i of crop k reads
        # the source at start_k + rate_k * i (linear interpolation).  No
        # anti-aliasing filter: above rate 1 a little energy folds back from
        # above clip_rate / (2 * rate); for OOD diversity that is harmless.
        rate = log_uniform(*a.rate)
        clip = torch.multinomial(self.weights, n, replacement=True, generator=g)
        span = (rate * N).ceil().long()
        room = (self.lengths[clip] - span).clamp(min=0)
        start = self.starts[clip] + (torch.rand(n, generator=g) * (room + 1)).floor().long()
        # Positions relative to the crop start stay small (< rate * N), so
        # float32 is exact enough however long the source recordings are.
        rel = rate[:, None] * torch.arange(N, dtype=torch.float32)
        i0 = rel.floor()
        frac = rel - i0
        i0 = (i0.long() + start[:, None]).view(-1)
        # index_select on flat indices: 2-3x faster than advanced indexing.
        x = torch.lerp(self.flat.index_select(0, i0), self.flat.index_select(0, i0 + 1), frac.view(-1)).view(n, N)
        # 2. A second speaker: the reversed batch, quieter, under the first.
        if a.mix_p > 0 and n > 1:
            mix = (torch.rand(n, generator=g) < a.mix_p).float() * (
                a.mix_gain[0] + (a.mix_gain[1] - a.mix_gain[0]) * torch.rand(n, generator=g)
            )
            peak = _peak(x)
            x = x + x.flip(0) * (mix * peak / peak.flip(0))[:, None]
        # 2b. An isolated word: keep one segment of the crop, 10 ms fades, silence around it.
        if a.word_p > 0:
            length = (a.word_len[0] + (a.word_len[1] - a.word_len[0]) * torch.rand(n, generator=g)) * N
            begin = torch.rand(n, generator=g) * (N - length)
            pos = torch.arange(N, dtype=torch.float32)
            ramp = max(1.0, 0.01 * self.frontend.sample_rate)
            env = ((pos - begin[:, None]) / ramp).clamp(0, 1) * ((begin + length)[:, None] - pos).div(ramp).clamp(0, 1)
            word = torch.rand(n, generator=g) < a.word_p
            x = torch.where(word[:, None], x * env, x)
        # 3. Gain to a random peak, then coloured noise at a random SNR.
        x *= (log_uniform(*a.peak) / _peak(x))[:, None]
        if a.noise_p > 0:
            # A random window of a random noise of the bank: a gather instead
            # of an FFT per batch (the FFT cost a fifth of the whole recipe).
            k = torch.randint(len(self.noise_bank), (n,), generator=g)
            off = torch.randint(self.noise_bank.shape[1] - N + 1, (n,), generator=g)
            flat_idx = (k * self.noise_bank.shape[1] + off)[:, None] + torch.arange(N)
            noise = self.noise_bank.view(-1).index_select(0, flat_idx.view(-1)).view(n, N)
            snr = a.snr_db[0] + (a.snr_db[1] - a.snr_db[0]) * torch.rand(n, generator=g)
            scale = _rms(x) * torch.pow(10.0, -snr / 20)  # the bank's noises have unit RMS
            scale = scale * (torch.rand(n, generator=g) < a.noise_p).float()
            x += noise * scale[:, None]
        return x.clamp_(-1.0, 1.0)

    def _spec_augment(self, feats: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # Masked cells take 0: the normalized features' mean, as in SpecAugment.
        a = self.augment
        n, _, frames, bands = feats.shape
        keep = torch.ones(n, frames, bands, dtype=torch.bool)
        for count, width, size, axis in ((a.time_masks, a.time_mask, frames, 1), (a.freq_masks, a.freq_mask, bands, 2)):
            if count == 0 or width == 0:
                continue
            w = torch.randint(0, width + 1, (n, count), generator=g)
            s = (torch.rand(n, count, generator=g) * (size - w + 1)).floor().long()
            idx = torch.arange(size).view(1, 1, size)
            hit = ((idx >= s[..., None]) & (idx < (s + w)[..., None])).any(1)  # [n, size]
            keep &= ~hit.unsqueeze(3 - axis)
        return feats * keep.unsqueeze(1)


def _peak(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=1).clamp(min=1e-4)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=1).sqrt().clamp(min=1e-6)


def coloured_noise(n: int, samples: int, generator: torch.Generator, beta: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` noises ``[n, samples]`` with power spectra ~ 1/f^beta (0: white, 1: pink, 2: brown).

    ``beta`` ``[n]`` defaults to uniform draws in [0, 2].
    """
    beta = 2.0 * torch.rand(n, generator=generator) if beta is None else beta
    beta = beta.view(n, 1)
    spectrum = torch.fft.rfft(torch.randn(n, samples, generator=generator), dim=1)
    f = torch.arange(spectrum.shape[1], dtype=torch.float32).clamp(min=1.0)
    return torch.fft.irfft(spectrum * f.pow(-beta / 2), n=samples, dim=1)


def open_audio_ood(source: str | os.PathLike | None, spec: InputSpec, **augment) -> AudioOOD:
    """An audio OOD source: ``None`` (the bundled German sentence), a clip, or a folder of clips.

    ``augment`` overrides :class:`AudioAugment` fields, e.g. ``rate=(0.8, 1.25)``.
    """
    if source is None:
        from edge_agent.data.speech_synth import default_ood_clip_path

        source = default_ood_clip_path()
    try:
        aug = AudioAugment(**augment)
    except TypeError as e:
        raise DataError(f"unknown audio augmentation option: {e}") from None
    return AudioOOD.from_path(source, spec, aug)
