"""The model bundle: one safetensors file, a JSON manifest in its metadata.

A bundle's id is the sha256 of its bytes. Loading validates everything at the
boundary (header, manifest, architecture, tensor names, shapes, dtypes, finite
and bounded values, see :mod:`edge_agent.compat`) and never unpickles; every failure is a :class:`BundleError` whose
message is one line naming the problem.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import struct
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from edge_agent.atomic import write_atomic
from edge_agent.inputs import InputSpec, InputSpecError
from edge_agent.models import EdgeModel, UnknownArchitectureError, create_model

FORMAT = "edge-dcl-bundle"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024


class BundleError(ValueError):
    """A bundle that cannot be trusted or used; the message is one line."""


@dataclass
class Manifest:
    """Everything a bundle says about itself besides its weights."""

    arch: str
    arch_config: dict
    labels: list[str]
    trained_classes: list[str]
    input: dict
    parents: list[str] = field(default_factory=list)
    method: str = "init"
    creator: str = ""
    created_at: str = ""
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    weights_sha256: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.input)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        if not isinstance(text, str):
            raise BundleError(f"bundle manifest must be JSON text, not {type(text).__name__}")
        raw = _json(text, "bundle manifest")
        if not isinstance(raw, dict):
            raise BundleError("bundle manifest is not a JSON object")
        if raw.get("format") != FORMAT:
            raise BundleError(f"not a model bundle (format {raw.get('format')!r}, expected {FORMAT!r})")
        if raw.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {raw.get('format_version')!r} is not supported (this tool reads {FORMAT_VERSION})"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BundleError(f"bundle manifest has unknown fields: {', '.join(unknown)}")
        missing = [k for k in ("arch", "arch_config", "labels", "trained_classes", "input") if k not in raw]
        if missing:
            raise BundleError(f"bundle manifest lacks: {', '.join(missing)}")
        m = cls(**raw)
        m.validate()
        return m

    def validate(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise BundleError("bundle arch must be a non-empty string")
        if not isinstance(self.labels, list) or not all(isinstance(x, str) and x for x in self.labels):
            raise BundleError("bundle labels must be a list of non-empty strings")
        if len(set(self.labels)) != len(self.labels):
            raise BundleError("bundle labels contain duplicates")
        if not self.labels:
            raise BundleError("bundle has an empty label list")
        if not isinstance(self.trained_classes, list) or not all(isinstance(x, str) for x in self.trained_classes):
            raise BundleError("bundle trained_classes must be a list of labels")
        if not isinstance(self.parents, list) or not all(isinstance(x, str) for x in self.parents):
            raise BundleError("bundle parents must be a list of bundle ids")
        stray = sorted(set(self.trained_classes) - set(self.labels))
        if stray:
            raise BundleError(f"trained classes not in the label list: {', '.join(stray)}")
        if not isinstance(self.arch_config, dict):
            raise BundleError("bundle arch_config must be a JSON object")
        try:
            self.input_spec  # noqa: B018 - validates
        except InputSpecError as e:
            raise BundleError(f"bundle input spec: {e}") from None


@dataclass
class Bundle:
    model: EdgeModel
    manifest: Manifest
    id: str
    path: Path | None = None

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def input_spec(self) -> InputSpec:
        return self.manifest.input_spec

    def with_labels(self, labels: list[str]) -> Bundle:
        """This bundle in memory over ``labels`` (an extension of its own list): the head grows, old outputs unchanged.

        The result keeps this bundle's id (where its weights came from) and has no path: it
        is saved as a new bundle, whose parent is this one.
        """
        from dataclasses import replace

        from edge_agent.compat import IncompatibleBundle, check_labels
        from edge_agent.models import remap_head

        if labels[: len(self.labels)] != self.labels:
            raise BundleError("a label list can only grow: existing labels keep their place")
        try:
            check_labels(self.labels, labels)
        except IncompatibleBundle as e:
            raise BundleError(str(e)) from None
        return Bundle(remap_head(self.model, self.labels, labels), replace(self.manifest, labels=list(labels)), self.id)


def new_manifest(
    model: EdgeModel,
    labels: list[str],
    input_spec: InputSpec,
    trained_classes: list[str] | None = None,
    parents: list[str] | None = None,
    method: str = "init",
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Manifest:
    """A manifest for ``model``, stamped with the creator and the UTC time."""
    try:
        creator = f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # getpass fails in some containers without a passwd entry
        creator = socket.gethostname()
    m = Manifest(
        arch=model.arch,
        arch_config=dict(model.config),
        labels=list(labels),
        trained_classes=sorted(trained_classes or [], key=list(labels).index),
        input=input_spec.to_dict(),
        parents=list(parents or []),
        method=method,
        creator=creator,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        metrics=dict(metrics or {}),
        extra=dict(extra or {}),
    )
    m.validate()
    if model.num_classes != len(labels):
        raise BundleError(f"model has {model.num_classes} outputs but {len(labels)} labels")
    return m


def _json(text: str | bytes, what: str):
    """Parse JSON from a file we do not trust: any failure, deep nesting included, is one BundleError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{what} is not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise BundleError(f"{what} is not valid UTF-8") from None
    except RecursionError:
        raise BundleError(f"{what} nests too deeply") from None


def _tensor_end(name: str, entry: object) -> int:
    """The end offset of one tensor entry of the safetensors header, checking its form."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and 0 <= o < 2**63 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise BundleError(f"corrupt bundle: tensor {name[:80]!r} has malformed data_offsets")
    return offsets[1]


def _data_section(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 + n :]


def bundle_bytes(model: EdgeModel, manifest: Manifest) -> bytes:
    """Serialize ``model`` with ``manifest``; refuses non-finite weights.

    The manifest records the sha256 of the tensor data section, so an edited
    byte anywhere in the file is caught on load, not only in the header.
    """
    from edge_agent.compat import check_weights  # compat builds on this module

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    try:
        check_weights(tensors)
    except BundleError as e:
        raise BundleError(f"refusing to save: {e}") from None
    # The data layout does not depend on the metadata, so hash it from a first pass.
    manifest.weights_sha256 = hashlib.sha256(_data_section(st_save(tensors))).hexdigest()
    return st_save(tensors, metadata={"manifest": manifest.to_json()})


def save_bundle(model: EdgeModel, manifest: Manifest, path: str | os.PathLike) -> str:
    """Write a bundle atomically; returns its id (sha256 hex of the bytes)."""
    data = bundle_bytes(model, manifest)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_manifest(data: bytes) -> Manifest:
    """Parse and check the safetensors header and the manifest, without building the model."""
    if len(data) < 8:
        raise BundleError(f"file too short to be a bundle ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise BundleError(f"corrupt or truncated bundle: header says {n} bytes, file has {len(data) - 8}")
    header = _json(bytes(data[8 : 8 + n]), "corrupt bundle: the safetensors header")
    if not isinstance(header, dict):
        raise BundleError("corrupt bundle: the safetensors header is not a JSON object")
    ends = [_tensor_end(k, v) for k, v in header.items() if k != "__metadata__"]
    if ends and max(ends) != len(data) - 8 - n:
        raise BundleError(
            f"corrupt or truncated bundle: tensors need {max(ends)} bytes of data, file has {len(data) - 8 - n}"
        )
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or "manifest" not in meta:
        raise BundleError("not a model bundle: the safetensors file has no manifest in its metadata")
    return Manifest.from_json(meta["manifest"])


def load_bundle_bytes(data: bytes, path: Path | None = None, expect: Manifest | None = None) -> Bundle:
    """Validate and load a bundle from its bytes (see module docstring).

    With ``expect`` (a central's manifest) the bundle must also fit it
    (:func:`edge_agent.compat.check_compatible`), checked before the model is built:
    a manifest asking for a huge architecture costs nothing when it does not match.
    """
    from edge_agent.compat import check_compatible, check_weights  # compat builds on this module

    manifest = read_manifest(data)
    if hashlib.sha256(_data_section(data)).hexdigest() != manifest.weights_sha256:
        raise BundleError("corrupt bundle: the weights do not match the checksum in its manifest")
    if expect is not None:
        check_compatible(expect, manifest)
    try:
        tensors = st_load(data)
    except SafetensorError as e:
        raise BundleError(f"corrupt or truncated bundle: {str(e).splitlines()[0]}") from None
    check_weights(tensors)
    # First on the meta device (no memory): names and shapes are compared before any real weights
    # exist, so a manifest claiming a huge model costs nothing; the real model is then as big as the file.
    expected = _build(manifest, device="meta").state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise BundleError(f"bundle lacks tensors for {manifest.arch}: {', '.join(missing[:5])}")
    if unexpected:
        raise BundleError(f"bundle has tensors {manifest.arch} does not have: {', '.join(unexpected[:5])}")
    for name, ref in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise BundleError(f"tensor {name!r} has shape {list(t.shape)}, {manifest.arch} needs {list(ref.shape)}")
        if t.dtype != ref.dtype:
            raise BundleError(f"tensor {name!r} has dtype {t.dtype}, expected {ref.dtype}")
    model = _build(manifest)
    model.load_state_dict(tensors, strict=True)
    spec = manifest.input_spec
    if manifest.arch_config.get("in_chans", spec.shape[0]) != spec.shape[0]:
        raise BundleError(f"model takes {manifest.arch_config['in_chans']} channels but the input spec has {spec.shape[0]}")
    model.eval()
    return Bundle(model=model, manifest=manifest, id=hashlib.sha256(data).hexdigest(), path=path)


def _build(manifest: Manifest, device: str | None = None) -> EdgeModel:
    """The manifest's model; any way its arch_config does not fit the architecture is one BundleError."""
    import torch

    try:
        with torch.device(device) if device else contextlib.nullcontext():
            return create_model(manifest.arch, num_classes=manifest.num_classes, **manifest.arch_config)
    except UnknownArchitectureError as e:
        raise BundleError(str(e)) from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise BundleError(f"arch_config does not fit {manifest.arch!r}: {msg}") from None


def load_bundle(path: str | os.PathLike, expect: Manifest | None = None) -> Bundle:
    """Load and validate the bundle at ``path`` (and check it fits ``expect``, see :func:`load_bundle_bytes`)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no bundle at {path}")
    return load_bundle_bytes(path.read_bytes(), path=path, expect=expect)


def bundle_id(path: str | os.PathLike) -> str:
    """sha256 hex of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
