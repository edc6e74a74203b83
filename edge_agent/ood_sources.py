"""OOD sources by name: one registry for consolidation, int8 calibration and every ``--help``.

A source is a registered name (``"noise"``) or a path (a file or a folder). Each
kind says which inputs it serves and names its opener as ``module:function``, so
that listing the choices (``--help``) imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.data.ood import OODSource
    from edge_agent.inputs import InputSpec


@dataclass(frozen=True)
class OODKind:
    name: str
    help: str
    serves: Callable[[str | None, str], bool]  # (source, input kind: "image" or "audio")
    opener: str  # "module:function(source, spec, **augment)"
    named: bool = False  # the source is the kind's name itself, not a path


OOD_KINDS: dict[str, OODKind] = {}


def register_ood(kind: OODKind) -> OODKind:
    OOD_KINDS[kind.name] = kind
    return kind


register_ood(OODKind("noise", "'noise' (Gaussian noise, the baseline)", lambda s, _: s == "noise",
                     "edge_agent.data.ood:open_noise_ood", named=True))
register_ood(OODKind("image", "an image or a folder of images (default: the bundled photo)",
                     lambda s, k: k == "image", "edge_agent.data.ood:open_image_ood"))
register_ood(OODKind("audio", "an audio clip or a folder of clips (default: the bundled speech clip)",
                     lambda s, k: k == "audio", "edge_agent.data.ood_audio:open_audio_ood"))


def ood_help(prefix: str = "OOD data") -> str:
    """One ``--help`` line listing every registered kind."""
    return f"{prefix}: " + "; ".join(k.help for k in OOD_KINDS.values())


def ood_source_error(source: str | None) -> str | None:
    """Why ``source`` can name no OOD source (``None`` when it can), checked before any work starts."""
    if source is None or source in {k.name for k in OOD_KINDS.values() if k.named} or Path(source).exists():
        return None
    names = ", ".join(f"'{k.name}'" for k in OOD_KINDS.values() if k.named)
    return f"OOD source {source}: no such file or folder (or pass one of {names})"


def open_ood(source: str | Path | None, spec: InputSpec, **augment) -> OODSource:
    """Open ``source`` for a model with input ``spec``: ``None`` is the bundled default for its input kind."""
    s = None if source is None else str(source)
    for kind in OOD_KINDS.values():
        if kind.serves(s, spec.kind):
            module, fn = kind.opener.split(":")
            return getattr(import_module(module), fn)(source, spec, **augment)
    from edge_agent.data.labeled import DataError

    raise DataError(f"no OOD source serves {spec.kind} input from {source!r}: {ood_help('use')}")
