"""Run an artifact kit on a device: ONNX Runtime or LiteRT, numpy only, no torch.

A kit is a folder written by :mod:`export.kit`: model file(s) plus ``manifest.json``
(labels, input spec, per-file sha256, per-artifact format/precision/layout). Loading
checks every file's sha256 against the manifest before anything is run, because a
kit travels over the network and across SD cards. Preprocessing is exactly the one
the manifest describes, so the kit needs no other file.

Expected failures raise :class:`KitError` (or a subclass) with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_agent.inputs import InputSpec, InputSpecError

MANIFEST_NAME = "manifest.json"
KIT_FORMAT = "edge-dcl-kit"
KIT_FORMAT_VERSION = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac"}


class KitError(ValueError):
    """A kit that cannot be used, or an input it cannot take; the message is one line."""


class ChecksumError(KitError):
    """A kit file whose sha256 differs from the manifest."""


class KitInputError(KitError):
    """An input that does not fit the kit (wrong shape, sample rate, unreadable file)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces (default 1 MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One model file of a kit, as the manifest describes it."""

    file: str
    format: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "int8"
    layout: str  # "NCHW" | "NHWC": the data layout the model file's input expects
    extra: dict = field(default_factory=dict)


@dataclass
class Kit:
    """A loaded (and checksum-verified) artifact kit."""

    path: Path
    manifest: dict
    labels: list[str]
    input_spec: InputSpec
    artifacts: list[Artifact]

    @property
    def source_bundle_id(self) -> str:
        return str(self.manifest.get("source_bundle_id", ""))

    def artifact(self, format: str | None = None, precision: str | None = None) -> Artifact:
        """The first artifact matching ``format``/``precision`` (``None`` matches any)."""
        for a in self.artifacts:
            if (format is None or a.format == format) and (precision is None or a.precision == precision):
                return a
        have = ", ".join(f"{a.format}/{a.precision}" for a in self.artifacts) or "none"
        raise KitError(f"kit {self.path} has no {format or 'any'}/{precision or 'any'} artifact (has: {have})")


def load_kit(path: str | Path, verify: bool = True) -> Kit:
    """Read ``path/manifest.json`` and (by default) check every listed file's sha256.

    Raises :class:`KitError` for a missing or malformed manifest or file, and
    :class:`ChecksumError` when a file's bytes differ from the manifest.
    """
    root = Path(path)
    mpath = root / MANIFEST_NAME
    if not root.is_dir():
        raise KitError(f"{root} is not a kit folder")
    if not mpath.is_file():
        raise KitError(f"{root} has no {MANIFEST_NAME}: not an artifact kit")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KitError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != KIT_FORMAT:
        raise KitError(f"{mpath} is not an {KIT_FORMAT} manifest")
    if int(manifest.get("format_version", 0)) > KIT_FORMAT_VERSION:
        raise KitError(f"kit format version {manifest.get('format_version')} is newer than this runtime ({KIT_FORMAT_VERSION})")
    try:
        labels = [str(v) for v in manifest["labels"]]
        spec = InputSpec.from_dict(manifest["input"])
        files: dict[str, dict] = manifest["files"]
        artifacts = [
            Artifact(a["file"], a["format"], a["precision"], a["layout"], {k: v for k, v in a.items() if k not in ("file", "format", "precision", "layout")})
            for a in manifest["artifacts"]
        ]
    except (KeyError, TypeError, InputSpecError) as e:
        raise KitError(f"{mpath} is malformed: missing or bad field {e}") from None
    if not artifacts:
        raise KitError(f"{mpath} lists no artifact")
    for a in artifacts:
        if a.file not in files:
            raise KitError(f"{mpath}: artifact {a.file} has no sha256 in 'files'")
        if a.format not in ("onnx", "tflite") or a.layout not in ("NCHW", "NHWC"):
            raise KitError(f"{mpath}: artifact {a.file} has unknown format/layout {a.format}/{a.layout}")
    for name, info in files.items():
        fpath = root / name
        # Names come from a file we did not write: refuse anything that leaves the kit.
        if Path(name).name != name:
            raise KitError(f"{mpath}: file name {name!r} is not a plain name")
        if not fpath.is_file():
            raise KitError(f"kit file {fpath} is missing")
        if verify:
            got = sha256_file(fpath)
            if got != info.get("sha256"):
                raise ChecksumError(f"checksum mismatch for {fpath}: manifest says {str(info.get('sha256'))[:12]}…, file is {got[:12]}…")
    return Kit(root, manifest, labels, spec, artifacts)


# ---------------------------------------------------------------------------
# Runners: one tiny interface over ONNX Runtime and LiteRT.


class Runner(Protocol):
    artifact: Artifact

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits float32 ``[B, K]`` for model-ready float32 ``x`` ``[B, C, H, W]`` (always NCHW)."""
        ...


class OnnxRunner:
    """ONNX Runtime session on CPU; the model's input is NCHW with a dynamic batch."""

    def __init__(self, path: Path, artifact: Artifact, num_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise KitError("this kit's ONNX artifact needs onnxruntime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types per failure
            raise KitError(f"onnxruntime cannot load {path.name}: {str(e).splitlines()[0]}") from None
        self.artifact = artifact
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.artifact.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)


def _tflite_interpreter_class() -> Any:
    # ai-edge-litert is the maintained package; tflite-runtime is what older
    # devices (32-bit Raspberry Pi OS) can install.
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise KitError("this kit's TFLite artifact needs ai-edge-litert or tflite-runtime: pip install ai-edge-litert") from None
    return Interpreter


class TfliteRunner:
    """LiteRT / tflite-runtime interpreter; batch-1 graph, so batches run one sample at a time.

    int8 inputs and outputs are (de)quantized here with the scale and zero point
    stored in the model file, so callers always pass and get float32.
    """

    def __init__(self, path: Path, artifact: Artifact, num_threads: int | None = None):
        interpreter_cls = _tflite_interpreter_class()
        try:
            self.interpreter = interpreter_cls(model_path=str(path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            # Typically an op or op version the installed runtime does not know.
            raise KitError(f"the TFLite runtime cannot load {path.name}: {str(e).splitlines()[0]}") from None
        self.artifact = artifact
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.artifact.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        rows = []
        for sample in x:
            self.interpreter.set_tensor(self.inp["index"], _quantize(sample[None], self.inp))
            self.interpreter.invoke()
            rows.append(_dequantize(self.interpreter.get_tensor(self.out["index"]), self.out))
        return np.concatenate(rows, axis=0).astype(np.float32)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return np.ascontiguousarray(x, dtype=np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return np.asarray(y, dtype=np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def open_runner(kit: Kit, format: str | None = None, precision: str | None = None, num_threads: int | None = None) -> Runner:
    """A runner for the kit's first artifact matching ``format``/``precision``."""
    art = kit.artifact(format, precision)
    cls = OnnxRunner if art.format == "onnx" else TfliteRunner
    return cls(kit.path / art.file, art, num_threads)


# ---------------------------------------------------------------------------
# Preprocessing: exactly what the manifest's input spec says.


def preprocess_image(path: str | Path, spec: InputSpec) -> np.ndarray:
    """One image file as float32 ``[1, C, H, W]``, by the same code as training (:mod:`edge_agent.preprocess`)."""
    from edge_agent.preprocess import ImageReadError, read_image

    try:
        return read_image(path, spec)[None]
    except ImageReadError as e:
        raise KitInputError(str(e)) from None


def image_input(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A camera frame (uint8 ``H x W``, ``H x W x 3`` RGB or ``x 4`` RGBA, any size) as float32 ``[1, C, H, W]``.

    The same conversion as an image file (:func:`edge_agent.preprocess.image_array`).
    """
    from edge_agent.preprocess import ImageReadError, image_array

    if spec.kind != "image":
        raise KitInputError("this kit takes audio, not images")
    try:
        return image_array(frame, spec)[None]
    except ImageReadError as e:
        raise KitInputError(str(e)) from None


def _frontend(spec: InputSpec):
    # Imported lazily: image-only devices need not ship the audio frontend.
    from edge_agent.audio.frontend import AudioFrontend, FrontendConfigError

    if spec.kind != "audio":
        raise KitInputError("this kit takes images, not audio")
    try:
        return AudioFrontend.from_dict(spec.frontend)
    except FrontendConfigError as e:
        raise KitError(f"kit audio frontend is invalid: {e}") from None


def audio_input(samples: np.ndarray, sample_rate: int, spec: InputSpec) -> np.ndarray:
    """An audio buffer as float32 ``[1, 1, frames, n_mels]`` through the kit's frontend.

    ``samples`` is ``[n]`` or ``[n, channels]``: float in [-1, 1], or int16 (divided
    by 32768) or int32 (by 2**31). Channels are averaged, ``sample_rate`` (Hz) is
    resampled to the frontend's with the polyphase filter training uses, and the
    clip is centre-cut or zero-padded to the frontend's length: what a file gets.
    """
    from edge_agent.audio.io import resample, to_mono

    frontend = _frontend(spec)
    x = np.asarray(samples)
    if x.ndim not in (1, 2) or x.size == 0:
        raise KitInputError(f"an audio buffer is [samples] or [samples, channels], not {list(x.shape)}")
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        x = (x.astype(np.float64) / 2147483648.0).astype(np.float32)
    elif x.dtype.kind != "f":
        raise KitInputError(f"audio samples must be float, int16 or int32, not {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise KitInputError("audio buffer has NaN or infinite samples")
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise KitInputError(f"sample rate must be a positive number of Hz, not {sample_rate!r}")
    return _features(resample(to_mono(x), int(sample_rate), frontend.sample_rate), frontend, spec)


def _features(wave: np.ndarray, frontend, spec: InputSpec) -> np.ndarray:
    from edge_agent.audio.frontend import fit_length

    feats = np.asarray(frontend(fit_length(wave, frontend.clip_samples)), dtype=np.float32)  # [1, frames, n_mels]
    if tuple(feats.shape) != spec.shape:
        raise KitInputError(f"audio features are {list(feats.shape)}, the kit expects {list(spec.shape)}")
    return feats[None]


def preprocess_audio(path: str | Path, spec: InputSpec) -> np.ndarray:
    """One WAV or FLAC clip as float32 ``[1, 1, frames, n_mels]`` through the manifest's audio frontend.

    Any rate, channel count and WAV encoding (8/16/24/32-bit PCM, 32/64-bit float) is
    read by :mod:`edge_agent.audio.io`, mixed to mono and resampled to the frontend's
    rate, exactly as training reads its clips; the clip is cut or zero-padded.
    """
    from edge_agent.audio.io import AudioReadError, load_audio

    frontend = _frontend(spec)
    try:
        wave = load_audio(path, frontend.sample_rate)
    except AudioReadError as e:
        raise KitInputError(str(e)) from None
    return _features(wave, frontend, spec)


def load_input(path: str | Path, spec: InputSpec) -> np.ndarray:
    """A file (image, WAV or FLAC, by suffix and spec kind) as model-ready float32 ``[1, C, H, W]``."""
    p = Path(path)
    if not p.is_file():
        raise KitInputError(f"input {p} does not exist")
    suffix = p.suffix.lower()
    if spec.kind == "image":
        if suffix in AUDIO_SUFFIXES:
            raise KitInputError(f"this kit takes images, not {suffix} files")
        return preprocess_image(p, spec)
    if suffix not in AUDIO_SUFFIXES:
        raise KitInputError(f"this kit takes WAV or FLAC audio clips, not {suffix or 'suffix-less'} files")
    return preprocess_audio(p, spec)


def check_input(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Validate a model-ready batch ``[B, *spec.shape]`` (adds the batch axis to a single sample)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == len(spec.shape):
        x = x[None]
    if tuple(x.shape[1:]) != spec.shape:
        raise KitInputError(f"input shape {list(x.shape[1:])} does not match the kit's {list(spec.shape)}")
    if not np.isfinite(x).all():
        raise KitInputError("input has NaN or infinite values")
    return x


# ---------------------------------------------------------------------------
# Scores.


@dataclass(frozen=True)
class Prediction:
    """One label with its softmax probability (0..1) and raw logit."""

    label: str
    score: float
    logit: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the max for float32 stability."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, labels: list[str], k: int = 5) -> list[Prediction]:
    """The ``k`` best labels of one logit vector ``[K]``, best first."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    if len(labels) != logits.shape[0]:
        raise KitError(f"model gives {logits.shape[0]} logits but the kit has {len(labels)} labels")
    probs = softmax(logits)
    order = np.argsort(-logits, kind="stable")[: max(1, min(k, len(labels)))]
    return [Prediction(labels[i], float(probs[i]), float(logits[i])) for i in order]


def infer(
    kit: Kit | str | Path,
    input_path: str | Path,
    k: int = 5,
    format: str | None = None,
    num_threads: int | None = None,
) -> list[Prediction]:
    """Load (and verify) a kit, preprocess one file, and return its top-``k`` labels."""
    kit = kit if isinstance(kit, Kit) else load_kit(kit)
    x = check_input(load_input(input_path, kit.input_spec), kit.input_spec)
    logits = open_runner(kit, format=format, num_threads=num_threads).run(x)
    if not np.isfinite(logits).all() or math.prod(logits.shape) == 0:
        raise KitError("the model returned no or non-finite logits")
    return top_k(logits[0], kit.labels, k)
