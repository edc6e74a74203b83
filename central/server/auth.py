"""Tokens: random, stored as sha256 hashes, compared in constant time.

Tokens are 256-bit random strings, so a fast unsalted hash is enough (there is
nothing to brute-force, unlike passwords) and lets us look a device up by hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from central.server.signing import write_secret

ADMIN_TOKEN_FILE = "admin-token"
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch: "$" would accept a trailing newline


def new_token(prefix: str) -> str:
    """A fresh random token; the prefix only tells a human what it is for."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_token(presented: str, expected_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return hmac.compare_digest(token_hash(presented), expected_hash)


def bearer(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer ...`` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def check_device_name(name: str) -> str:
    """Device names end up in logs and URLs, never in paths; still keep them boring."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid device name {name!r:.80}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def load_or_create_admin_token(data_dir: str | os.PathLike) -> str:
    """Read ``<data_dir>/admin-token``; create it (mode 0600) on first start."""
    path = Path(data_dir) / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = new_token("adm")
    write_secret(path, (token + "\n").encode())
    return token
