"""The one audio frontend: 1 s of 16 kHz audio to a normalized log-mel image.

Training, evaluation, consolidation, int8 calibration and on-device inference
all call the same :class:`AudioFrontend`, and its parameters travel with every
bundle and artifact kit (``InputSpec.frontend``), so features cannot drift
between the place a model is trained and the place it runs.

It is written in NumPy only: a device that runs an int8 kit may not have torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

# Mean and standard deviation of log-mel values (natural log of power,
# default parameters) over the training split of the default synthetic
# dataset (edge_agent.data.speech_synth, seed 0), measured per mel band
# (low band first).  They only need to be roughly right: they put the
# features near zero mean and unit scale, which keeps int8 input
# quantization and the first layer well conditioned.
_DEFAULT_BAND_MEAN: tuple[float, ...] = (-3.49, -4.23, -4.55, -4.84, -5.15, -5.51, -6.08, -6.29, -6.58, -6.79, -6.89, -7.09, -7.22, -7.29, -7.48, -7.58, -7.68, -7.77, -7.89, -7.95, -8.00, -8.13, -8.23, -8.30, -8.31, -8.22, -8.24, -8.33, -8.34, -8.38, -8.46, -8.56, -8.69, -8.82, -8.93, -9.05, -9.19, -9.25, -9.24, -9.27)  # fmt: skip
_DEFAULT_BAND_STD: tuple[float, ...] = (2.75, 2.77, 2.92, 3.01, 3.13, 3.35, 3.89, 3.91, 3.82, 3.72, 3.66, 3.62, 3.54, 3.47, 3.40, 3.34, 3.26, 3.21, 3.16, 3.12, 3.10, 3.08, 3.05, 3.01, 2.99, 3.05, 3.07, 3.03, 3.06, 3.09, 3.07, 3.04, 3.08, 3.08, 3.08, 3.05, 3.00, 3.00, 3.00, 2.98)  # fmt: skip
# The same measurement over all bands at once, used when the mel
# parameters differ from the defaults (the per-band table would not fit).
_DEFAULT_MEAN = -7.51
_DEFAULT_STD = 3.53


class FrontendConfigError(ValueError):
    """Frontend parameters that are malformed or inconsistent."""


@dataclass(frozen=True)
class AudioFrontend:
    """Log-mel frontend: wave ``[..., clip_samples]`` to ``[..., 1, frames, n_mels]``.

    Frames are ``n_fft`` samples long (the ``win_length``-sample periodic Hann
    window is centred in it, zeros around) and ``hop_length`` samples apart,
    without padding at the clip edges: with the defaults (30 ms window, 20 ms
    hop, 1 s clip at 16 kHz) that is 49 frames.  Mel filters are Slaney-style
    (Slaney mel scale, area-normalized), the same as ``librosa.filters.mel``
    with its defaults.  Features are ``(log(mel_power + log_floor) - norm_mean)
    / norm_std`` where ``norm_mean``/``norm_std`` hold one value per mel band or
    one for all; they are fixed constants, never estimated at run time.

    Units: ``sample_rate`` in Hz, ``clip_samples``/``win_length``/``hop_length``/
    ``n_fft`` in samples, ``f_min``/``f_max`` in Hz; ``log_floor`` is added to
    the mel power (wave amplitude in [-1, 1], so power of a full-scale sine in
    one frame is about ``(win_length / 4) ** 2``).
    """

    sample_rate: int = 16000
    clip_samples: int = 16000
    win_length: int = 480
    hop_length: int = 320
    n_fft: int = 512
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 7600.0
    log_floor: float = 1e-6
    norm_mean: tuple[float, ...] | None = None
    norm_std: tuple[float, ...] | None = None

    def __post_init__(self):
        for name in ("sample_rate", "clip_samples", "win_length", "hop_length", "n_fft", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise FrontendConfigError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("f_min", "f_max", "log_floor"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.win_length > self.n_fft:
            raise FrontendConfigError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.clip_samples < self.n_fft:
            raise FrontendConfigError(f"clip_samples ({self.clip_samples}) is shorter than one frame (n_fft={self.n_fft})")
        if not 0.0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise FrontendConfigError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={self.f_max}, "
                f"sample_rate={self.sample_rate}"
            )
        if self.log_floor <= 0:
            raise FrontendConfigError(f"log_floor must be positive, got {self.log_floor}")
        mean, std = self.norm_mean, self.norm_std
        if mean is None or std is None:
            default_mean, default_std = self._default_normalization()
            mean = default_mean if mean is None else mean
            std = default_std if std is None else std
        mean = tuple(float(v) for v in np.atleast_1d(np.asarray(mean, dtype=np.float64)))
        std = tuple(float(v) for v in np.atleast_1d(np.asarray(std, dtype=np.float64)))
        for name, values in (("norm_mean", mean), ("norm_std", std)):
            if len(values) not in (1, self.n_mels):
                raise FrontendConfigError(f"{name} needs 1 or n_mels={self.n_mels} values, got {len(values)}")
            if not all(np.isfinite(values)):
                raise FrontendConfigError(f"{name} must be finite")
        if min(std) <= 0:
            raise FrontendConfigError("norm_std values must be positive")
        object.__setattr__(self, "norm_mean", mean)
        object.__setattr__(self, "norm_std", std)

    def _default_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mel_params = ("sample_rate", "win_length", "n_fft", "n_mels", "f_min", "f_max", "log_floor")
        defaults = {f.name: f.default for f in fields(AudioFrontend)}
        if _DEFAULT_BAND_MEAN and all(getattr(self, p) == defaults[p] for p in mel_params):
            return _DEFAULT_BAND_MEAN, _DEFAULT_BAND_STD
        return (_DEFAULT_MEAN,), (_DEFAULT_STD,)

    # -- shape -------------------------------------------------------------

    @property
    def frames(self) -> int:
        """Number of frames in one clip."""
        return 1 + (self.clip_samples - self.n_fft) // self.hop_length

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Model input without the batch dimension: ``(1, frames, n_mels)``."""
        return (1, self.frames, self.n_mels)

    # -- features ----------------------------------------------------------

    def mel_filters(self) -> np.ndarray:
        """The mel filterbank, float32 ``[n_mels, n_fft // 2 + 1]`` (cached, read-only)."""
        return _mel_filters(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)

    def fit_length(self, wave: np.ndarray) -> np.ndarray:
        """Centre-pad with zeros or centre-crop the last axis to ``clip_samples``."""
        return fit_length(wave, self.clip_samples)

    def mel_power(self, wave: np.ndarray) -> np.ndarray:
        """Mel power ``[..., frames, n_mels]`` (float32) of waves ``[..., clip_samples]``."""
        wave = _as_float_wave(wave)
        wave = self.fit_length(wave)
        # A strided view, not a copy: all frames of all clips in one array.
        frames = np.lib.stride_tricks.sliding_window_view(wave, self.n_fft, axis=-1)[..., :: self.hop_length, :]
        spectrum = np.fft.rfft(frames * _window(self.win_length, self.n_fft), axis=-1)
        power = spectrum.real**2 + spectrum.imag**2
        return (power @ self.mel_filters().T).astype(np.float32, copy=False)

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """Unnormalized log-mel ``[..., frames, n_mels]`` (natural log of power)."""
        return np.log(self.mel_power(wave) + np.float32(self.log_floor))

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """Features ``[..., 1, frames, n_mels]`` float32 of waves ``[..., N]``.

        ``wave`` is float in [-1, 1] (integer PCM is scaled by its full range);
        a length ``N`` other than ``clip_samples`` is centre-padded or cropped.
        """
        feats = self.log_mel(wave)
        mean = np.asarray(self.norm_mean, dtype=np.float32)
        inv_std = np.float32(1.0) / np.asarray(self.norm_std, dtype=np.float32)
        return ((feats - mean) * inv_std)[..., None, :, :]

    def with_normalization_from(self, waves: np.ndarray, per_band: bool = True) -> AudioFrontend:
        """A copy whose ``norm_mean``/``norm_std`` are measured on ``waves`` ``[N, samples]``.

        Use it once when preparing a new dataset; the constants are then fixed
        and travel with the model.
        """
        feats = self.log_mel(waves).reshape(-1, self.n_mels).astype(np.float64)
        axis = 0 if per_band else None
        mean = np.atleast_1d(feats.mean(axis=axis))
        std = np.atleast_1d(feats.std(axis=axis))
        return AudioFrontend.from_dict(
            {**self.to_dict(), "norm_mean": [round(float(v), 4) for v in mean],
             "norm_std": [round(max(float(v), 1e-3), 4) for v in std]}
        )

    # -- serialization -----------------------------------------------------

    def to_dict(self) -> dict:
        """Plain JSON data (what ``InputSpec.frontend`` stores)."""
        d = asdict(self)
        d["norm_mean"] = list(self.norm_mean)
        d["norm_std"] = list(self.norm_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AudioFrontend:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys are an error."""
        if not isinstance(d, dict):
            raise FrontendConfigError(f"audio frontend parameters must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FrontendConfigError(
                f"unknown audio frontend parameter(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        kwargs = dict(d)
        for name in ("norm_mean", "norm_std"):
            if kwargs.get(name) is not None:
                kwargs[name] = tuple(kwargs[name])
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            if isinstance(e, FrontendConfigError):
                raise
            raise FrontendConfigError(f"malformed audio frontend parameters: {e}") from None


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """Centre-pad with zeros or centre-crop the last axis of ``wave`` to ``samples``."""
    n = wave.shape[-1]
    if n == samples:
        return wave
    if n > samples:
        start = (n - samples) // 2
        return wave[..., start : start + samples]
    before = (samples - n) // 2
    pad = [(0, 0)] * (wave.ndim - 1) + [(before, samples - n - before)]
    return np.pad(wave, pad)


def _as_float_wave(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave)
    if np.issubdtype(wave.dtype, np.integer):
        # PCM integers: scale by the full range so int16 files and float waves agree.
        return wave.astype(np.float32) / np.float32(np.iinfo(wave.dtype).max + 1)
    return wave.astype(np.float32, copy=False)


@lru_cache(maxsize=16)
def _window(win_length: int, n_fft: int) -> np.ndarray:
    # Periodic Hann (the STFT convention), zero-padded to n_fft and centred,
    # which is what librosa does with win_length < n_fft.
    n = np.arange(win_length)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    window = np.zeros(n_fft, dtype=np.float32)
    window[left : left + win_length] = hann
    window.setflags(write=False)
    return window


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's auditory-toolbox scale: linear below 1 kHz, logarithmic above.
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    mel = hz / f_sp
    high = hz >= min_log_hz
    return np.where(high, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=16)
def _mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    # Area normalization: each filter sums to roughly the same energy, so a
    # band's value does not depend on how wide the band is.
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights
