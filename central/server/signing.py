"""The central's Ed25519 release key: created once, kept 0600 in the data dir."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.atomic import write_atomic
from edge_agent.client.trust import Statement, b64

KEY_FILE = "release-key.pem"
DEFAULT_TTL_DAYS = 30.0


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (mkstemp's temp file is never world-readable)."""
    write_atomic(path, data, mode=0o600)


class ReleaseSigner:
    """Signs release statements with the key in ``<data_dir>/release-key.pem``."""

    def __init__(self, data_dir: str | os.PathLike, ttl_days: float = DEFAULT_TTL_DAYS):
        if not ttl_days > 0:
            raise ValueError(f"the statement lifetime must be positive, not {ttl_days} days")
        self.ttl = timedelta(days=ttl_days)
        path = Path(data_dir) / KEY_FILE
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key")
        else:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _write_secret(path, pem)
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key_b64 = b64(raw)

    def sign(
        self, kind: str, version: int, sha256: str, fmt: str, size: int, created_at: str | None = None
    ) -> tuple[dict, str]:
        """Return ``(statement dict, base64 signature)`` for one release of ``size`` bytes, valid for the TTL from now."""
        now = datetime.now(UTC)
        st = Statement(
            kind=kind,
            version=int(version),
            sha256=sha256,
            format=fmt,
            created_at=created_at or now.isoformat(timespec="seconds"),
            size=int(size),
            expires_at=(now + self.ttl).isoformat(timespec="seconds"),
        )
        return st.__dict__.copy(), b64(self._key.sign(st.canonical()))


def write_secret(path: str | os.PathLike, data: bytes) -> None:
    """Public wrapper: write a secret file with mode 0600, atomically."""
    _write_secret(Path(path), data)
