"""What a model eats: the input spec stored in every bundle and artifact kit.

One source of truth for preprocessing: training, evaluation, consolidation,
calibration and on-device inference all read the same :class:`InputSpec`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field


class InputSpecError(ValueError):
    """An input spec that is malformed or does not fit a model."""


@dataclass(frozen=True)
class InputSpec:
    """Model input without the batch dimension.

    - ``kind="image"``: ``shape`` is ``(C, H, W)``; pixels are scaled to [0, 1]
      then normalized as ``(x - mean) / std`` (one value per channel or one for all).
    - ``kind="audio"``: ``shape`` is ``(1, frames, n_mels)``; ``frontend`` holds
      the :class:`edge_agent.audio.frontend.AudioFrontend` parameters.
    """

    kind: str
    shape: tuple[int, ...]
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    frontend: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.kind, str) or self.kind not in ("image", "audio"):
            raise InputSpecError(f"input kind must be 'image' or 'audio', not {self.kind!r:.80}")
        shape = tuple(self.shape)
        if len(shape) != 3 or not all(_is_int(s) and 0 < s < 2**31 for s in shape):
            raise InputSpecError(f"input shape must be 3 positive sizes (CxHxW), got {list(shape)!r:.80}")
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        for name in ("mean", "std"):
            values = tuple(getattr(self, name))
            if not all(_is_number(v) and abs(v) < 1e30 and math.isfinite(v) for v in values):
                raise InputSpecError(f"input {name} must be finite numbers, got {list(values)!r:.80}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if not isinstance(self.frontend, dict):
            raise InputSpecError("input frontend must be an object")
        if self.kind == "image":
            c = self.shape[0]
            if c not in (1, 3):
                raise InputSpecError(f"image inputs have 1 or 3 channels, not {c}")
            for name, v in (("mean", self.mean), ("std", self.std)):
                if len(v) not in (1, c):
                    raise InputSpecError(f"{name} needs 1 or {c} values, got {len(v)}")
            if any(s <= 0 for s in self.std):
                raise InputSpecError("std values must be positive")

    @property
    def channels(self) -> int:
        return self.shape[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        if not isinstance(d, dict):
            raise InputSpecError(f"malformed input spec: an object is needed, not {type(d).__name__}")
        for key in ("shape", "mean", "std"):
            if key in d and not isinstance(d[key], list | tuple):
                raise InputSpecError(f"malformed input spec: {key} must be a list")
        if not isinstance(d.get("frontend") or {}, dict):
            raise InputSpecError("malformed input spec: frontend must be an object")
        try:
            return cls(
                kind=d["kind"],
                shape=tuple(d["shape"]),
                mean=tuple(d.get("mean", (0.5,))),
                std=tuple(d.get("std", (0.5,))),
                frontend=dict(d.get("frontend") or {}),
            )
        except KeyError as e:
            raise InputSpecError(f"malformed input spec: {e}") from None


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse ``"1x16x16"`` into ``(1, 16, 16)``."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputSpecError(f"--input-shape must look like CxHxW (e.g. 1x16x16), got {text!r}") from None
    if len(dims) != 3 or min(dims) <= 0:
        raise InputSpecError(f"--input-shape must be three positive sizes CxHxW, got {text!r}")
    return dims  # type: ignore[return-value]
