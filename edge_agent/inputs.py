"""What a model eats: the input spec stored in every bundle and artifact kit.

One source of truth for preprocessing: training, evaluation, consolidation,
calibration and on-device inference all read the same :class:`InputSpec`.
"""

from __future__ import annotations

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
        if self.kind not in ("image", "audio"):
            raise InputSpecError(f"input kind must be 'image' or 'audio', not {self.kind!r}")
        if len(self.shape) != 3 or any(int(s) <= 0 for s in self.shape):
            raise InputSpecError(f"input shape must be 3 positive sizes (CxHxW), got {list(self.shape)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
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
        try:
            return cls(
                kind=d["kind"],
                shape=tuple(d["shape"]),
                mean=tuple(d.get("mean", (0.5,))),
                std=tuple(d.get("std", (0.5,))),
                frontend=dict(d.get("frontend") or {}),
            )
        except (KeyError, TypeError) as e:
            raise InputSpecError(f"malformed input spec: {e}") from None


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
