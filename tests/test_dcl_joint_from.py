"""`benchmarks.dcl --joint-from`: an earlier report's joint bound is taken only when it was trained the same way,
and the check runs before any training."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

from benchmarks.dcl import joint_from_error
from edge_agent.train import TrainConfig

TRAINING = asdict(TrainConfig(loss="ce", batch_size=16)) | {"seed": "per seed"}


def report(**over) -> dict:
    return {"stream": "split-digits", "split": "test", "seeds": 1, "device_training": dict(TRAINING)} | over


def test_same_training_is_accepted():
    assert joint_from_error(report(), "split-digits", "test", 1, TRAINING) is None


def test_field_added_since_is_accepted_at_its_default_only():
    older = report()
    del older["device_training"]["step_memory_mb"]
    assert joint_from_error(older, "split-digits", "test", 1, TRAINING) is None
    changed = TRAINING | {"step_memory_mb": 10.0}
    why = joint_from_error(older, "split-digits", "test", 1, changed)
    assert why is not None and "step_memory_mb" in why


def test_other_training_stream_split_or_seeds_are_refused():
    assert "lr" in joint_from_error(report(), "split-digits", "test", 1, TRAINING | {"lr": 0.01})
    assert "kws-domain" in joint_from_error(report(stream="kws-domain"), "split-digits", "test", 1, TRAINING)
    assert joint_from_error(report(split="val"), "split-digits", "test", 1, TRAINING) is not None
    assert joint_from_error(report(seeds=3), "split-digits", "test", 1, TRAINING) is not None


def test_cli_refuses_a_mismatched_report_before_training(tmp_path):
    bad = tmp_path / "earlier.json"
    bad.write_text(json.dumps(report(stream="split-fashion")))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.dcl", "--stream", "split-digits", "--seeds", "1", "--methods", "dac",
         "--work", str(tmp_path / "work"), "--out", str(out), "--joint-from", str(bad)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "--joint-from" in r.stderr and "split-fashion" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert not list((tmp_path / "work").glob("devices-seed*"))  # refused before any device was trained


def test_cli_refuses_an_unreadable_report(tmp_path):
    bad = tmp_path / "earlier.json"
    bad.write_text("{not json")
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.dcl", "--stream", "split-digits", "--seeds", "1", "--methods", "dac",
         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--joint-from", str(bad)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "cannot read it as a report" in r.stderr, r.stderr
