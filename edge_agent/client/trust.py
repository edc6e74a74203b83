"""Signed release statements: what the central signs and what the agent checks.

A release (a central model version or an artifact kit) is described by a
canonical JSON statement ``{kind, version, sha256, size, format, created_at,
expires_at}`` signed with the central's Ed25519 key. The agent pins the
central's public key at enrolment and refuses anything unsigned, wrongly
signed, expired, not matching the bytes it downloaded (hash and length: a
download stops as soon as more bytes than ``size`` arrive), or older than what
it already has (rollback protection, as in TUF). The central signs a fresh
statement whenever it serves a release, so ``expires_at`` bounds how long a
captured statement can be replayed (a freeze attack). This module is shared by both sides so the canonical form has one
source of truth; it needs only ``cryptography``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

KINDS = ("model", "kit")
MODEL_FORMAT = "safetensors-bundle"
_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch: "$" would accept a trailing newline


class TrustError(ValueError):
    """A release that must not be used; the message is one line."""


@dataclass(frozen=True)
class Statement:
    """What a signature vouches for. ``version`` is the central model version."""

    kind: str
    version: int
    sha256: str
    format: str
    created_at: str
    size: int  # bytes of the release blob
    expires_at: str  # ISO 8601 UTC; the statement is refused after it

    def canonical(self) -> bytes:
        """The exact bytes that are signed: sorted keys, no spaces, UTF-8."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, raw: object) -> Statement:
        if not isinstance(raw, dict):
            raise TrustError("release statement is not a JSON object")
        for key in ("size", "expires_at"):
            if key not in raw:
                raise TrustError(
                    f"release statement lacks {key!r}: the central runs an older version, upgrade the server"
                )
        try:
            st = cls(**{k: raw[k] for k in cls.__dataclass_fields__})
        except KeyError as e:
            raise TrustError(f"release statement lacks {e.args[0]!r}") from None
        if st.kind not in KINDS:
            raise TrustError(f"release statement has unknown kind {st.kind!r}")
        if not isinstance(st.version, int) or isinstance(st.version, bool) or st.version < 1:
            raise TrustError(f"release statement has a bad version {st.version!r}")
        if not isinstance(st.sha256, str) or not _SHA256.fullmatch(st.sha256):
            raise TrustError("release statement has a malformed sha256")
        if not isinstance(st.format, str) or not isinstance(st.created_at, str):
            raise TrustError("release statement has a malformed format or created_at")
        if not isinstance(st.size, int) or isinstance(st.size, bool) or st.size < 0:
            raise TrustError(f"release statement has a bad size {st.size!r}")
        st.expiry()
        return st

    def expiry(self) -> datetime:
        """``expires_at`` as an aware UTC datetime; :class:`TrustError` if malformed."""
        try:
            t = datetime.fromisoformat(self.expires_at) if isinstance(self.expires_at, str) else None
        except ValueError:
            t = None
        if t is None or t.tzinfo is None:
            raise TrustError(f"release statement has a malformed expires_at {self.expires_at!r}")
        return t


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse a raw 32-byte Ed25519 public key given in base64."""
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise TrustError("the central's public key is malformed") from None


def verify_release(
    release: dict,
    public_key_b64: str,
    kind: str,
    min_version: int = 0,
    fmt: str | None = None,
    now: datetime | None = None,
) -> Statement:
    """Check a release record from the central and return its statement.

    ``release`` must hold ``statement`` (dict) and ``signature`` (base64).
    Raises :class:`TrustError` if the signature is missing or wrong, the
    statement has expired (``now``, default the current time) or lacks its size
    or expiry (a central older than this agent), the kind or format is not the
    one asked for, or ``version < min_version`` (a replayed old release). The
    caller still has to download exactly ``statement.size`` bytes hashing to
    ``statement.sha256`` (:meth:`CentralClient.download` does).
    """
    if not isinstance(release, dict) or not release.get("signature"):
        raise TrustError(f"refusing an unsigned {kind} release")
    st = Statement.from_dict(release.get("statement"))
    try:
        sig = base64.b64decode(release["signature"], validate=True)
    except (ValueError, TypeError):
        raise TrustError(f"the {kind} release signature is not base64") from None
    try:
        public_key_from_b64(public_key_b64).verify(sig, st.canonical())
    except InvalidSignature:
        raise TrustError(f"bad signature on {kind} release v{st.version}: not signed by the pinned central key") from None
    now = now or datetime.now(UTC)
    if st.expiry() <= now:
        raise TrustError(
            f"the signed {kind} release v{st.version} expired at {st.expires_at} (a replayed statement, or a wrong clock)"
        )
    if st.kind != kind:
        raise TrustError(f"expected a {kind} release, got a {st.kind} release")
    if fmt is not None and st.format != fmt:
        raise TrustError(f"expected format {fmt!r}, the signed release says {st.format!r}")
    if st.version < min_version:
        raise TrustError(
            f"refusing {kind} release v{st.version}: older than v{min_version} already installed (rollback)"
        )
    return st
