"""A synthetic keyword dataset in the Google Speech Commands layout, made offline.

Words are spoken by eSpeak NG (the ``espeakng-loader`` wheel ships the library
and its voice data).  A *speaker* is an English accent (``en-us``,
``en-gb-scotland``, ...) with an eSpeak voice variant (``m3``, ``f2``,
``klatt4``, ...) and its own speaking rate, pitch and pitch range.  Each clip
jitters rate and pitch, is shifted at random inside the 1 s window, gets a
random level, and may pass through a room (reverb from a synthetic
impulse response) and a cheap microphone (a random band-pass); then it is
mixed with background noise (white, pink, brown, blue or mains hum, also
written to ``_background_noise_/`` for the ``_silence_`` class) at a random
SNR.

Besides the keywords the set has :data:`UNKNOWN_WORDS` (the other words of
the real dataset), which the 12-label loader reads as ``_unknown_``.

Splits are by voice, so accuracy on ``testing`` is accuracy on voices never
heard in training: the voice variants are dealt into three disjoint pools
(test, validation, train), a speaker's variant comes from its split's pool,
and every accent has speakers in each split (so a per-accent device stream
has its own test speakers).

Determinism: same arguments and seed give byte-identical files.  eSpeak NG
keeps hidden synthesis state across calls in one process (the same text
twice gives slightly different samples), so each accent is synthesized in a
fresh child process that runs this file as a script and hears a fixed list
of utterances; everything random is drawn in the parent from one seeded
generator.

This module does not import the rest of ``edge_agent`` so that the child
process starts quickly.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # Hz, the Speech Commands rate
CLIP_SAMPLES = 16000  # 1 s
ESPEAK_RATE = 22050  # Hz, what eSpeak NG synthesizes

CORE_WORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# The auxiliary words of Speech Commands v2: what the 12-label task calls _unknown_.
UNKNOWN_WORDS: tuple[str, ...] = (
    "backward", "bed", "bird", "cat", "dog", "eight", "five", "follow", "forward", "four", "happy", "house",
    "learn", "marvin", "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "visual", "wow", "zero",
)  # fmt: skip

# eSpeak NG English voices (file names under espeak-ng-data/lang/gmw), in an
# order where neighbours are related accents: a contiguous split into device
# groups keeps US, southern British, northern British and Caribbean apart.
ACCENTS: tuple[str, ...] = (
    "en-us",
    "en-us-nyc",
    "en",  # British English (eSpeak's default English)
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",  # Lancashire
    "en-gb-x-gbcwmd",  # West Midlands
    "en-029",  # Caribbean
)

# Voice variants (espeak-ng-data/voices/!v) that sound like people; the
# robotic, whispering and effect variants are left out.
VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4",
    "Alex", "Andy", "Annie", "Denis", "Lee", "Michael", "Mike", "Reed",
    "adam", "anika", "aunty", "belinda", "benjamin", "boris", "david", "ed", "edward",
    "grandma", "grandpa", "ian", "john", "linda", "max", "michel", "norbert", "paul",
    "quincy", "rob", "robert", "shelby", "steph", "travis", "victor", "zac",
)  # fmt: skip

NOISE_TYPES: tuple[str, ...] = ("white", "pink", "brown", "blue", "hum")
NOISE_SECONDS = 60  # length of each _background_noise_ file, as the real dataset's (about a minute each)

# A German sentence (none of the keywords, not English): the default
# out-of-distribution clip for data-free audio consolidation.
OOD_TEXT = (
    "Am frühen Morgen zieht der Nebel langsam über die Felder, und die Kinder "
    "laufen mit ihren Hunden bis hinunter zum alten Fluss."
)
OOD_VOICE = "de"


class SynthesisError(RuntimeError):
    """eSpeak NG could not be loaded or failed to synthesize."""


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: accent, voice variant and prosody offsets.

    ``rate`` is in words per minute, ``pitch`` and ``pitch_range`` on eSpeak's
    0-100 scale; ``split`` is ``train``, ``validation`` or ``testing``.
    """

    speaker_id: str
    accent: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int
    split: str


# -- eSpeak NG through ctypes -----------------------------------------------


class _Espeak:
    """Minimal ctypes binding of the eSpeak NG C API (synchronous mode)."""

    _AUDIO_OUTPUT_SYNCHRONOUS = 2
    _POS_CHARACTER = 1
    _CHARS_UTF8 = 1
    _RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER values

    def __init__(self):
        import ctypes

        try:
            import espeakng_loader
        except ImportError:
            raise SynthesisError(
                "speech synthesis needs the espeakng-loader package (pip install espeakng-loader)"
            ) from None
        self._data_path = Path(espeakng_loader.get_data_path())
        self._lib = lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(self._AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise SynthesisError(f"eSpeak NG failed to initialize (returned {rate})")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(samples, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(samples, shape=(n,)).copy())
            return 0  # 0 = go on

        self._callback = callback_type(collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        """int16 samples at 22050 Hz of ``text`` spoken by ``voice`` (``lang+variant``)."""
        variant = voice.partition("+")[2]
        # eSpeak silently ignores an unknown variant; a dataset must not.
        if variant and not (self._data_path / "voices" / "!v" / variant).is_file():
            raise SynthesisError(f"eSpeak NG has no voice variant {variant!r}")
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SynthesisError(f"eSpeak NG has no voice {voice!r}")
        self._lib.espeak_SetParameter(self._RATE, int(rate), 0)
        self._lib.espeak_SetParameter(self._PITCH, int(pitch), 0)
        self._lib.espeak_SetParameter(self._RANGE, int(pitch_range), 0)
        self._lib.espeak_ng_SetRandSeed(0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        err = self._lib.espeak_Synth(data, len(data), 0, self._POS_CHARACTER, 0, self._CHARS_UTF8, None, None)
        if err != 0:
            raise SynthesisError(f"eSpeak NG failed on {text!r} with voice {voice!r} (error {err})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _worker_main() -> None:
    """Child process: JSON list of utterances on stdin, length-prefixed int16 on stdout."""
    jobs = json.load(sys.stdin)
    espeak = _Espeak()
    out = sys.stdout.buffer
    for job in jobs:
        samples = espeak.say(job["text"], job["voice"], job["rate"], job["pitch"], job["range"]).astype("<i2")
        out.write(struct.pack("<I", samples.size))
        out.write(samples.tobytes())
    out.flush()


def _start_worker(jobs: list[dict]) -> subprocess.Popen:
    proc = subprocess.Popen(
        # -I: the script's folder is not put on sys.path, so sibling modules
        # cannot shadow the standard library in the child.
        [sys.executable, "-I", os.path.abspath(__file__), "--espeak-worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(jobs).encode())
    proc.stdin.close()
    return proc


def _finish_worker(proc: subprocess.Popen, n_jobs: int) -> list[np.ndarray]:
    assert proc.stdout is not None and proc.stderr is not None
    data = proc.stdout.read()
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        last = err.splitlines()[-1] if err else f"exit code {proc.returncode}"
        raise SynthesisError(f"speech synthesis process failed: {last}")
    waves, pos = [], 0
    for _ in range(n_jobs):
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        waves.append(np.frombuffer(data, dtype="<i2", count=n, offset=pos).astype(np.int16))
        pos += 2 * n
    return waves


def synthesize(jobs_per_process: list[list[dict]], workers: int | None = None) -> list[list[np.ndarray]]:
    """Speak utterances in fresh eSpeak processes, ``workers`` at a time.

    Each job is ``{"text", "voice", "rate", "pitch", "range"}`` (rate in words
    per minute, pitch and range 0-100).  Returns int16 waves at 22050 Hz in the
    same nesting.  The output does not depend on ``workers``.
    """
    workers = max(1, workers or min(2, os.cpu_count() or 1))
    results: list[list[np.ndarray] | None] = [None] * len(jobs_per_process)
    running: list[tuple[int, subprocess.Popen]] = []
    queue = list(enumerate(jobs_per_process))
    while queue or running:
        while queue and len(running) < workers:
            i, jobs = queue.pop(0)
            running.append((i, _start_worker(jobs)))
        i, proc = running.pop(0)
        results[i] = _finish_worker(proc, len(jobs_per_process[i]))
    return results  # type: ignore[return-value]


# -- signal helpers ----------------------------------------------------------


def _to_16k(samples: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    # 16000/22050 = 320/441 exactly.
    return resample_poly(samples.astype(np.float32) / 32768.0, 320, 441).astype(np.float32)


def _trim(wave_: np.ndarray, threshold: float = 0.02, margin: int = 320) -> np.ndarray:
    # eSpeak pads with silence; trimming first lets the random shift place
    # the word anywhere in the window, as people do in the real dataset.
    loud = np.flatnonzero(np.abs(wave_) > threshold * np.abs(wave_).max()) if wave_.size else []
    if len(loud) == 0:
        return wave_
    return wave_[max(0, loud[0] - margin) : loud[-1] + margin]


def make_noise(kind: str, samples: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Background noise, float32 with RMS 0.1: ``white``, ``pink`` (1/f), ``brown`` (1/f^2), ``blue`` (f) or ``hum``.

    ``hum`` is 50 or 60 Hz mains hum with harmonics over a little white noise.
    """
    if kind == "white":
        noise = rng.standard_normal(samples)
    elif kind in ("pink", "brown", "blue"):
        spectrum = np.fft.rfft(rng.standard_normal(samples))
        freqs = np.fft.rfftfreq(samples, 1.0 / sample_rate)
        # Power 1/f (pink), 1/f^2 (brown) or f (blue); below 20 Hz flat, so no DC drift.
        power = {"pink": 1.0, "brown": 2.0, "blue": -1.0}[kind]
        spectrum /= np.maximum(freqs, 20.0) ** (power / 2)
        noise = np.fft.irfft(spectrum, n=samples)
    elif kind == "hum":
        t = np.arange(samples) / sample_rate
        base = rng.choice([50.0, 60.0])
        noise = sum(
            rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi))
            for k in range(1, 8)
        )
        noise = noise + 0.05 * rng.standard_normal(samples)
    else:
        raise ValueError(f"unknown noise type {kind!r} (known: {', '.join(NOISE_TYPES)})")
    noise = noise - noise.mean()
    return (0.1 * noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def write_wav(path: str | os.PathLike, wave_: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono float wave in [-1, 1] as 16-bit PCM WAV (values beyond are clipped)."""
    pcm = np.clip(np.round(np.asarray(wave_, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def _place(word: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    clip = np.zeros(CLIP_SAMPLES, np.float32)
    if word.size >= CLIP_SAMPLES:
        start = (word.size - CLIP_SAMPLES) // 2
        return word[start : start + CLIP_SAMPLES].copy()
    offset = int(rng.integers(0, CLIP_SAMPLES - word.size + 1))
    clip[offset : offset + word.size] = word
    return clip


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


# -- the dataset -------------------------------------------------------------


def room_and_microphone(
    speech: np.ndarray, rng: np.random.Generator, reverb_p: float = 0.5, band_p: float = 0.5
) -> np.ndarray:
    """A room and a cheap microphone, each with its probability.

    Room: convolution with a synthetic impulse response (a direct path, then
    exponentially decaying noise with RT60 0.1-0.7 s, wet level 0.2-0.8).
    Microphone: a Butterworth band-pass, low edge 100-500 Hz, high edge
    2.5-7 kHz, order 1-4, as small MEMS and phone microphones roll off.
    """
    from scipy.signal import butter, fftconvolve, sosfilt

    out = speech
    if rng.uniform() < reverb_p:
        rt60 = rng.uniform(0.1, 0.7)
        n = int(rt60 * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
        tail[: int(0.003 * SAMPLE_RATE)] = 0.0  # first reflections arrive after a few ms
        ir = rng.uniform(0.2, 0.8) * tail / np.sqrt(np.sum(tail**2))
        ir[0] = 1.0
        out = fftconvolve(out, ir)[: out.size + n // 2].astype(np.float32)
    if rng.uniform() < band_p:
        sos = butter(
            int(rng.integers(1, 5)),
            [rng.uniform(100, 500), rng.uniform(2500, 7000)],
            "bandpass",
            fs=SAMPLE_RATE,
            output="sos",
        )
        out = sosfilt(sos, out).astype(np.float32)
    return out


def _make_speakers(
    rng: np.random.Generator,
    accents: tuple[str, ...],
    speakers_per_accent: int,
    validation_fraction: float,
    testing_fraction: float,
) -> list[Speaker]:
    # Disjoint variant pools: a test (or validation) voice is never heard in training, in any accent.
    order = [VARIANTS[int(i)] for i in rng.permutation(len(VARIANTS))]
    held = speakers_per_accent >= 3
    n_test_v = max(1, round(testing_fraction * len(order))) if held else 0
    n_val_v = max(1, round(validation_fraction * len(order))) if held else 0
    pools = {
        "testing": order[:n_test_v],
        "validation": order[n_test_v : n_test_v + n_val_v],
        "train": order[n_test_v + n_val_v :],
    }
    taken = dict.fromkeys(pools, 0)
    speakers: list[Speaker] = []
    used_ids: set[str] = set()
    for accent in accents:
        n_test = max(1, round(testing_fraction * speakers_per_accent)) if held else 0
        n_val = max(1, round(validation_fraction * speakers_per_accent)) if held else 0
        splits = ["testing"] * n_test + ["validation"] * n_val
        splits += ["train"] * (speakers_per_accent - len(splits))
        for k in range(speakers_per_accent):
            speaker_id = f"{int(rng.integers(0, 2**32)):08x}"
            while speaker_id in used_ids:
                speaker_id = f"{int(rng.integers(0, 2**32)):08x}"
            used_ids.add(speaker_id)
            pool = pools[splits[k]]
            variant = pool[taken[splits[k]] % len(pool)]  # dealt in turn: every variant of a pool is used
            taken[splits[k]] += 1
            speakers.append(
                Speaker(
                    speaker_id=speaker_id,
                    accent=accent,
                    variant=variant,
                    rate=int(rng.integers(120, 221)),
                    pitch=int(rng.integers(20, 81)),
                    pitch_range=int(rng.integers(20, 91)),
                    split=splits[k],
                )
            )
    return speakers


def write_speech_dataset(
    out: str | os.PathLike,
    words: tuple[str, ...] | list[str] = CORE_WORDS,
    speakers_per_accent: int = 10,
    clips_per_speaker: int = 4,
    unknown_words: tuple[str, ...] | list[str] = UNKNOWN_WORDS,
    unknown_clips_per_speaker: int = 1,
    seed: int = 0,
    accents: tuple[str, ...] | list[str] = ACCENTS,
    snr_db: tuple[float, float] = (0.0, 30.0),
    validation_fraction: float = 0.1,
    testing_fraction: float = 0.2,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    reverb_p: float = 0.5,
    band_p: float = 0.5,
) -> dict:
    """Synthesize a keyword dataset in the Speech Commands layout under ``out``.

    Writes ``<word>/<speakerid>_nohash_<n>.wav`` (16 kHz mono 16-bit PCM, 1 s),
    ``validation_list.txt`` and ``testing_list.txt`` (paths relative to
    ``out``, split by voice, see the module docstring), ``_background_noise_/*.wav``
    (60 s of each noise type) and ``speakers.json`` (speaker id -> accent,
    variant, rate, pitch, pitch_range, split).

    ``clips_per_speaker`` clips of each word per speaker, and
    ``unknown_clips_per_speaker`` of each of ``unknown_words`` (the 12-label
    loader uses only some of them: see :mod:`edge_agent.data.speech`);
    ``reverb_p`` and ``band_p`` are the probabilities of a room and of a
    cheap microphone per clip (:func:`room_and_microphone`); ``snr_db`` is the
    (low, high) range in dB of the uniform speech-to-noise ratio of each clip;
    ``workers`` is the number of synthesis processes (default: up to 2).
    ``progress(done, total)`` is called after each accent.  Returns a summary
    dict (counts per split, speakers, seconds taken).  Same arguments give
    byte-identical files.
    """
    t0 = time.perf_counter()
    words = tuple(words)
    unknown_words = tuple(w for w in unknown_words if w not in words)
    accents = tuple(accents)
    if not words:
        raise ValueError("words is empty")
    if len(set(words)) != len(words) or len(set(unknown_words)) != len(unknown_words):
        raise ValueError("words has duplicates")
    unknown = sorted(set(accents) - set(ACCENTS))
    if unknown:
        raise ValueError(f"unknown accent(s) {', '.join(unknown)} (known: {', '.join(ACCENTS)})")
    if speakers_per_accent < 1 or clips_per_speaker < 1:
        raise ValueError("speakers_per_accent and clips_per_speaker must be at least 1")
    low_snr, high_snr = snr_db
    if low_snr > high_snr:
        raise ValueError(f"snr_db must be (low, high), got {snr_db}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    speakers = _make_speakers(rng, accents, speakers_per_accent, validation_fraction, testing_fraction)

    noise_dir = out / "_background_noise_"
    noise_dir.mkdir(exist_ok=True)
    noises = {}
    for kind in NOISE_TYPES:
        noises[kind] = make_noise(kind, NOISE_SECONDS * SAMPLE_RATE, rng)
        write_wav(noise_dir / f"{kind}_noise.wav", noises[kind])

    # Every random draw for a clip happens here, in a fixed order, so the
    # files do not depend on how synthesis is spread over processes.
    clips = []  # (speaker, word, n, job) in synthesis order
    jobs_per_accent: list[list[dict]] = []
    for accent in accents:
        jobs = []
        for speaker in (s for s in speakers if s.accent == accent):
            for word, n_clips in [(w, clips_per_speaker) for w in words] + [
                (w, unknown_clips_per_speaker) for w in unknown_words
            ]:
                for n in range(n_clips):
                    job = {
                        "text": word,
                        "voice": f"{speaker.accent}+{speaker.variant}",
                        "rate": int(np.clip(speaker.rate * rng.uniform(0.85, 1.15), 80, 450)),
                        "pitch": int(np.clip(speaker.pitch + rng.integers(-8, 9), 0, 100)),
                        "range": int(np.clip(speaker.pitch_range + rng.integers(-10, 11), 0, 100)),
                    }
                    jobs.append(job)
                    clips.append((speaker, word, n))
        jobs_per_accent.append(jobs)

    for word in words + unknown_words:
        (out / word).mkdir(exist_ok=True)
    lists: dict[str, list[str]] = {"validation": [], "testing": []}
    counts = {"train": 0, "validation": 0, "testing": 0}
    done = 0
    raw_groups = synthesize(jobs_per_accent, workers=workers)
    raw = [w for group in raw_groups for w in group]
    for (speaker, word, n), samples in zip(clips, raw, strict=True):
        speech = room_and_microphone(_trim(_to_16k(samples)), rng, reverb_p, band_p)
        speech *= float(np.exp(rng.uniform(np.log(0.05), np.log(0.95)))) / max(float(np.abs(speech).max()), 1e-6)
        clip = _place(speech, rng)
        kind = NOISE_TYPES[int(rng.integers(len(NOISE_TYPES)))]
        start = int(rng.integers(0, noises[kind].size - CLIP_SAMPLES + 1))
        noise = noises[kind][start : start + CLIP_SAMPLES]
        snr = rng.uniform(low_snr, high_snr)
        clip += noise * (_rms(speech) / _rms(noise) * 10 ** (-snr / 20))
        rel = f"{word}/{speaker.speaker_id}_nohash_{n}.wav"
        write_wav(out / rel, clip)
        counts[speaker.split] += 1
        if speaker.split in lists:
            lists[speaker.split].append(rel)
        done += 1
        if progress is not None and done % max(1, len(jobs_per_accent[0])) == 0:
            progress(done, len(clips))

    for split, paths in lists.items():
        (out / f"{split}_list.txt").write_text("".join(p + "\n" for p in sorted(paths)))
    (out / "speakers.json").write_text(
        json.dumps(
            {s.speaker_id: {k: v for k, v in asdict(s).items() if k != "speaker_id"} for s in speakers}, indent=1
        )
        + "\n"
    )
    summary = {
        "words": list(words),
        "unknown_words": list(unknown_words),
        "accents": list(accents),
        "speakers": len(speakers),
        "clips": len(clips),
        "splits": counts,
        "seed": seed,
        "speakers_per_accent": speakers_per_accent,
        "clips_per_speaker": clips_per_speaker,
        "unknown_clips_per_speaker": unknown_clips_per_speaker,
        "snr_db": [low_snr, high_snr],
        "reverb_p": reverb_p,
        "band_p": band_p,
        "split_by": "voice",
    }
    # synth.json records how the data was made (and the word order that
    # class-incremental streams follow); no timings, so files stay identical.
    (out / "synth.json").write_text(json.dumps(summary, indent=1) + "\n")
    return {"root": str(out), **summary, "seconds": round(time.perf_counter() - t0, 2)}


# -- the default out-of-distribution clip -------------------------------------


def default_ood_clip_path() -> Path:
    """The bundled OOD clip: a German sentence, 16 kHz mono 16-bit WAV."""
    return Path(__file__).resolve().parent.parent / "assets" / "ood-speech.wav"


def synthesize_ood_clip(
    path: str | os.PathLike | None = None,
    text: str = OOD_TEXT,
    voice: str = OOD_VOICE,
    rate: int = 150,
) -> np.ndarray:
    """Speak ``text`` (German by default) with eSpeak NG; float32 at 16 kHz.

    Writes a 16-bit WAV to ``path`` when given.  ``rate`` is in words per
    minute.  This is how ``edge_agent/assets/ood-speech.wav`` was made.
    """
    samples = synthesize([[{"text": text, "voice": voice, "rate": rate, "pitch": 50, "range": 50}]])[0][0]
    speech = _trim(_to_16k(samples))
    speech *= 0.8 / max(float(np.abs(speech).max()), 1e-6)
    if path is not None:
        write_wav(path, speech)
    return speech


if __name__ == "__main__" and sys.argv[1:] == ["--espeak-worker"]:
    _worker_main()
