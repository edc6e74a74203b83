"""Seeded mutation fuzzing of the bundle loader: whatever a hostile file holds, only ``BundleError`` escapes.

A valid bundle's bytes are mutated (header JSON fields replaced by values of other types,
sizes and nesting; the manifest inside the metadata likewise; the length prefix; raw bytes
flipped, cut or inserted) with a fixed seed, so a failure reproduces from its case number.
"""

from __future__ import annotations

import copy
import json
import random
import struct

import pytest
from test_server_support import make_central

from edge_agent.bundle import BundleError, load_bundle_bytes, read_manifest

SEED = 20261202
CASES = 5000

# Values of every JSON type, the edges of integers and floats, and strings a parser may trip on.
ODD_VALUES = [
    None, True, False, 0, -1, 1, 3, 2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**400, 0.5, -0.0, 1e308, 1e-320,
    "", "x", "\ud800", "a\n", "cnn-s", "ds-cnn", "F32", "I64", "BOOL", "x" * 10_000,
    [], [1], [1, 2], [-1, 5], [2**64, 0], ["a", "b"], [[1]], [None], {}, {"a": 1}, {"kind": "image"},
    [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]],
]


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + body


def _paths(obj, prefix=()):
    """Every path to a value inside a JSON object, the containers too."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _odd(rng: random.Random):
    v = rng.choice(ODD_VALUES)
    if rng.random() < 0.1:
        v = "[" * rng.randint(1, 100_000)  # deep nesting once parsed as JSON text
    return copy.deepcopy(v)


def mutate(rng: random.Random, valid: bytes) -> bytes:
    header, body = _split(valid)
    manifest = json.loads(header["__metadata__"]["manifest"])
    kind = rng.randrange(6)
    if kind == 0:  # a manifest field (or a value inside it) replaced, removed or added
        path = rng.choice([p for p in _paths(manifest) if p])
        if rng.random() < 0.15:
            parent = manifest
            for key in path[:-1]:
                parent = parent[key]
            del parent[path[-1]]
        else:
            _set(manifest, path, _odd(rng))
        header["__metadata__"]["manifest"] = json.dumps(manifest, ensure_ascii=False)
        return _join(header, body)
    if kind == 1:  # a safetensors header field: dtype, shape, offsets, the metadata itself
        path = rng.choice([p for p in _paths(header) if p])
        _set(header, path, _odd(rng))
        return _join(header, body)
    if kind == 2:  # the manifest text is not a JSON object at all
        header["__metadata__"]["manifest"] = rng.choice(
            ["", "[", "[" * 50_000 + "]" * 50_000, "null", "1e999", "\"x\"", json.dumps(manifest)[:-1]]
        )
        return _join(header, body)
    if kind == 3:  # the length prefix
        n = rng.choice([0, 1, 7, 2**63, 2**64 - 1, len(valid), rng.randrange(len(valid))])
        return struct.pack("<Q", n) + valid[8:]
    if kind == 4:  # random bytes flipped
        out = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    cut = rng.randrange(len(valid))  # truncated, or bytes inserted
    return valid[:cut] if rng.random() < 0.5 else valid[:cut] + rng.randbytes(rng.randint(1, 64)) + valid[cut:]


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "central.safetensors"
    make_central(path, width=2)
    return path.read_bytes()


def test_only_bundle_errors_escape_the_loader(valid):
    expect = read_manifest(valid)
    rng = random.Random(SEED)
    rejected = 0
    for case in range(CASES):
        data = mutate(rng, valid)
        try:
            load_bundle_bytes(data, expect=expect if case % 2 else None)
        except BundleError as e:
            assert "\n" not in str(e), f"case {case}: a message of several lines: {e!r}"
            rejected += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"case {case}: {type(e).__name__} escaped: {e!s:.300}") from e
    # Most mutations break the file; the rest are harmless (a changed creator string, say).
    assert rejected > CASES // 2
