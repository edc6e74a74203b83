"""HTTP to the central: bounded retries with exponential backoff, resumable verified downloads.

Only ``httpx`` here (no server packages): this runs on the device.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import httpx

# Temporary answers: the request may succeed later, so nothing is given up. RETRY_STATUS is retried
# at once (with backoff); a full disk (507) will not clear in seconds, so it goes straight to the caller.
RETRY_STATUS = {429, 500, 502, 503, 504}
TEMPORARY_STATUS = RETRY_STATUS | {507}
MAX_RETRY_AFTER = 30.0  # seconds: a longer Retry-After is capped (the outbox keeps the work for later anyway)
RETRY_AFTER_JITTER = 0.5  # a Retry-After wait is stretched by a random 0-50%, so devices told the same do not retry in lockstep


class CentralUnreachable(ConnectionError):
    """The central could not be reached or answered only temporary errors (after retries): try again later (exit 75)."""


class CentralError(RuntimeError):
    """The central answered with an error; ``status`` is the HTTP status, the message its one-line detail."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def retry_after(resp: httpx.Response) -> float | None:
    """The ``Retry-After`` delay in seconds (the integer form), capped at ``MAX_RETRY_AFTER``; None if absent."""
    value = resp.headers.get("retry-after", "")
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        return None


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = resp.text
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        # FastAPI's 422: [{"loc": ["query", "base_version"], "msg": ...}, ...] -> "query.base_version: ..."
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}" for d in detail)
    text = detail if isinstance(detail, str) else str(detail)
    return (text.splitlines() or [f"HTTP {resp.status_code}"])[0][:300]


class CentralClient:
    """A small client for the central's API.

    ``retries`` bounds the attempts for connection failures, timeouts and the
    temporary answers of ``RETRY_STATUS`` (5xx, 429): sleep ``backoff * 2**i``
    seconds with jitter, at most ``max_backoff``, or the server's ``Retry-After``
    when it is longer (capped at ``MAX_RETRY_AFTER``, then stretched by a random
    0 to ``RETRY_AFTER_JITTER`` of itself).
    Every call is safe to retry: reads are reads and uploads are idempotent by
    bundle id on the server.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 4.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)  # jitter: many devices must not retry in lockstep

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 206), **kw) -> httpx.Response:
        """Send with bounded retries; raises :class:`CentralUnreachable` or :class:`CentralError`."""
        last, state = "", "unreachable"
        for attempt in range(self.retries + 1):
            wait = self._delay(attempt)
            try:
                resp = self._http.request(method, path, **kw)
            except httpx.TransportError as e:
                last, state = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'}", "unreachable"
            else:
                if resp.status_code in ok:
                    return resp
                if resp.status_code not in TEMPORARY_STATUS:
                    raise CentralError(resp.status_code, _detail(resp))
                last, state = f"HTTP {resp.status_code}: {_detail(resp)}", "unavailable"
                if resp.status_code not in RETRY_STATUS:
                    break
                told = retry_after(resp) or 0.0
                wait = max(wait, told * (1 + random.random() * RETRY_AFTER_JITTER))
            if attempt < self.retries:
                self._sleep(wait)
        n = attempt + 1
        raise CentralUnreachable(f"central {self.base_url} {state} after {n} attempt{'s' if n > 1 else ''} ({last})")

    def get_json(self, path: str, **kw):
        return self.request("GET", path, **kw).json()

    def post_json(self, path: str, body: dict | None = None, **kw):
        return self.request("POST", path, json=body, **kw).json()

    def upload_bundle(self, data: bytes, base_version: int | None = None) -> tuple[dict, bool]:
        """POST a bundle; returns ``(upload row, duplicate)`` once the central acknowledged it."""
        params = {"base_version": base_version} if base_version is not None else None
        resp = self.request("POST", "/v1/uploads", content=data, params=params,
                            headers={"Content-Type": "application/octet-stream"})
        body = resp.json()
        return body["upload"], bool(body.get("duplicate"))

    def download(
        self, blob_id: str, dest: str | os.PathLike, sha256: str, size: int | None = None, chunk: int = 1 << 16
    ) -> Path:
        """Fetch blob ``blob_id`` to ``dest``, resuming ``dest.part`` with HTTP Range.

        The bytes must hash to ``sha256`` and, with ``size`` (both from a verified
        signed statement), be exactly ``size`` long: the download stops as soon as
        more arrive, so a hostile mirror cannot fill the disk. On a mismatch the
        partial file is deleted and :class:`CentralError` raised; on a full disk
        too (an ``OSError`` naming the file). ``dest`` appears only when complete
        and verified (rename).
        """
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            h, have = self._fetch(blob_id, part, size, chunk)
        except OSError as e:
            if isinstance(e, CentralUnreachable):
                raise
            part.unlink(missing_ok=True)
            raise OSError(f"cannot write the download of {blob_id[:12]} to {part.parent}: {e.strerror or e}") from None
        got = h.hexdigest()
        if size is not None and have != size:
            part.unlink(missing_ok=True)
            raise CentralError(0, f"download {blob_id[:12]}… has {have} bytes, its signed statement says {size}")
        if got != sha256:
            part.unlink(missing_ok=True)
            raise CentralError(0, f"download {blob_id[:12]}… does not match its signed sha256 (got {got[:12]}…)")
        os.replace(part, dest)
        return dest

    def _fetch(self, blob_id: str, part: Path, size: int | None, chunk: int):
        """Stream the blob into ``part`` with retries; returns ``(running sha256, bytes in part)``."""
        for attempt in range(self.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            if size is not None and have > size:
                part.unlink(missing_ok=True)
                have = 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with self._http.stream("GET", f"/v1/blobs/{blob_id}", headers=headers) as resp:
                    if resp.status_code == 416:  # already complete (or garbage): start over
                        part.unlink(missing_ok=True)
                        continue
                    if resp.status_code not in (200, 206):
                        if resp.status_code in RETRY_STATUS:
                            raise httpx.TransportError(f"HTTP {resp.status_code}")
                        resp.read()
                        raise CentralError(resp.status_code, _detail(resp))
                    resumed = resp.status_code == 206  # 200: the server ignored Range
                    h = _sha256_file(part) if resumed and have else hashlib.sha256()
                    n = have if resumed else 0
                    with part.open("ab" if resumed else "wb") as f:
                        for data in resp.iter_bytes(chunk):
                            n += len(data)
                            if size is not None and n > size:
                                f.close()
                                part.unlink(missing_ok=True)
                                raise CentralError(
                                    0, f"download {blob_id[:12]}… sends more than the {size} bytes its signed statement says"
                                )
                            h.update(data)
                            f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                return h, n
            except httpx.TransportError as e:
                if attempt >= self.retries:
                    raise CentralUnreachable(f"download of {blob_id[:12]} interrupted: {e}") from None
                self._sleep(self._delay(attempt))
        raise CentralUnreachable(f"download of {blob_id[:12]} did not complete after {self.retries + 1} attempts")


def _sha256_file(path: Path):
    """A sha256 object fed with the bytes of ``path`` (to continue a resumed download's hash)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h
