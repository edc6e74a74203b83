"""What the registry race tests run in other processes; imports only the registry, so a spawned process starts fast."""

from __future__ import annotations

import time

from central.server.registry import Registry, RegistryError


def fake_sign(n: int, sha: str) -> tuple[dict, str]:
    return {"version": n, "sha256": sha, "created_at": "2026-01-01T00:00:00+00:00"}, "sig"


def at(start: float) -> None:
    """Wait until wall-clock ``start``, so that every process begins its writes at the same moment."""
    time.sleep(max(0.0, start - time.time()))


def publish_many(i: int, start: float, data_dir: str, url: str | None, n: int) -> list[tuple[int, str]]:
    r = Registry(data_dir, url)
    at(start)
    out = []
    for k in range(n):
        v = r.publish(f"proc {i} bundle {k}".encode(), fake_sign, ["onnx-int8"])
        out.append((v["version"], v["bundle_id"]))
    r.close()
    return out


def consume_front(i: int, start: float, data_dir: str, url: str | None, take: int) -> list[list[int]]:
    """Consolidate from the front of the queue until it is empty, as racing admins would."""
    r = Registry(data_dir, url)
    at(start)
    won, k = [], 0
    while front := [u["id"] for u in r.queue()[:take]]:
        k += 1
        cur = r.current_version()["version"]
        try:
            r.publish(f"proc {i} consolidation {k}".encode(), fake_sign, [], consolidates=front, expected_current=cur)
            won.append(front)
        except RegistryError as e:
            assert e.status == 409, e
    r.close()
    return won


def claim_all(i: int, start: float, data_dir: str, url: str | None) -> list[tuple[int, str]]:
    r = Registry(data_dir, url)
    at(start)
    got = []
    while (job := r.claim_kit()) is not None:
        got.append(job)
    r.close()
    return got
