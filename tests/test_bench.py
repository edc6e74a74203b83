"""``edge-agent bench``: well-formed figures on a tiny kit, clear one-line failures. No timing thresholds."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from conftest import cli

from edge_agent.bench import BenchConfig, BenchError, Target, bench, machine_slug, summarize, targets_for

FIELDS = (
    "runtime", "precision", "batch", "threads", "runs", "init_ms", "first_ms", "mean_ms", "std_ms", "min_ms",
    "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "throughput_per_s", "peak_rss_mb", "size_bytes",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny cnn-s bundle (8x8, width 4) and its fp32 ONNX + TFLite kit."""
    from central.init import init_central
    from export.kit import export_bundle

    root = tmp_path_factory.mktemp("bench")
    bundle = root / "tiny.safetensors"
    init_central("cnn-s", ["a", "b", "c"], bundle, (1, 8, 8), seed=0, width=4)
    export_bundle(bundle, "all", "none", root / "kit")
    return bundle, root / "kit"


def _check_row(row: dict) -> None:
    for k in FIELDS:
        assert k in row, k
    for k in FIELDS[2:]:
        assert isinstance(row[k], (int, float)) and math.isfinite(row[k]), k
        # std can be 0 only with identical samples, which a real clock never gives over 20 runs; allow it anyway.
        assert row[k] >= 0 if k == "std_ms" else row[k] > 0, (k, row[k])
    assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]


def test_bench_kit_and_bundle_in_process(tiny):
    bundle, kit = tiny
    targets = targets_for(bundle) + targets_for(kit, "all")
    rows = bench(targets, BenchConfig(runs=20, warmup=2, rounds=2, isolate=False))
    assert [(r.runtime, r.precision) for r in rows] == [("torch", "fp32"), ("onnx", "fp32"), ("tflite", "fp32")]
    for r in rows:
        _check_row(r.to_dict())
        assert r.runs == 40  # two rounds pooled


def test_cli_json_isolated(tiny):
    _, kit = tiny
    p = subprocess.run([cli("edge-agent"), "bench", str(kit), "--runtime", "onnx", "--runs", "20", "--warmup", "2", "--batch", "2", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert isinstance(rows, list) and len(rows) == 1
    _check_row(rows[0])
    assert rows[0]["runtime"] == "onnx" and rows[0]["batch"] == 2 and rows[0]["rss_isolated"] is True


def test_cli_table(tiny):
    from typer.testing import CliRunner

    from edge_agent.cli import app

    _, kit = tiny
    r = CliRunner().invoke(app, ["bench", str(kit), "--runtime", "tflite", "--runs", "10", "--warmup", "1", "--no-isolate"])
    assert r.exit_code == 0, r.stderr
    assert "p99 (ms)" in r.stdout and "tflite fp32" in r.stdout


def _one_line_error(args: list[str], needle: str) -> None:
    # In-process (typer's runner): the error paths need no fresh interpreter, and this keeps the file fast.
    from typer.testing import CliRunner

    from edge_agent.cli import app

    r = CliRunner().invoke(app, ["bench", *args])
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_missing_kit(tmp_path):
    _one_line_error([str(tmp_path / "nope")], "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error([str(tmp_path / "empty")], "not an artifact kit")


def test_corrupt_kit(tiny, tmp_path):
    import shutil

    _, kit = tiny
    bad = tmp_path / "kit"
    shutil.copytree(kit, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    _one_line_error([str(bad)], "checksum mismatch")
    (bad / "manifest.json").write_text("{not json")
    _one_line_error([str(bad)], "not valid JSON")


def test_corrupt_bundle(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    _one_line_error([str(p)], "bundle")


def test_bad_options(tiny):
    _, kit = tiny
    _one_line_error([str(kit), "--runs", "0"], "--runs")
    _one_line_error([str(kit), "--runtime", "torch"], "torch")
    with pytest.raises(BenchError, match="no model file"):
        bench([Target("onnx", "/nonexistent.onnx", "fp32", (1, 8, 8))], BenchConfig(runs=1, isolate=False))


def test_summary_and_slug():
    s = summarize([1_000_000, 2_000_000, 3_000_000, 4_000_000], batch=2)
    assert s["p50_ms"] == pytest.approx(2.5) and s["min_ms"] == 1.0 and s["max_ms"] == 4.0
    assert s["throughput_per_s"] == pytest.approx(2 / 2.5e-3)
    assert machine_slug("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13"
    assert machine_slug("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") == "intel-xeon-platinum-8375c"
