"""Both CLIs are scriptable: --json results on a clean stdout, no silent overwrite, --fresh, a parity gate that bites.

Every command here is the real console script (or ``python -m``) on real files; exports run the real converters.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import cli


def run(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([cli(args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def one_json_object(stdout: str) -> dict:
    """stdout holds one JSON object and nothing else."""
    obj, end = json.JSONDecoder().raw_decode(stdout.strip())
    assert isinstance(obj, dict) and end == len(stdout.strip()), stdout
    return obj


@pytest.fixture(scope="module")
def device_bundle(tmp_path_factory, central0, split_digits) -> Path:
    from edge_agent.train import TrainConfig, train_bundle

    out = tmp_path_factory.mktemp("dev") / "dev1.safetensors"
    train_bundle(central0, split_digits / "dev1", out, TrainConfig(epochs=8), progress=False)
    return out


def _checkpoint(central0: Path, data: Path, out: Path, epochs: int) -> Path:
    """A real checkpoint: training stopped after its first epoch, as after a Ctrl-C."""
    from edge_agent.train import Interrupted, TrainConfig, train_bundle

    with pytest.raises(Interrupted):
        train_bundle(central0, data, out, TrainConfig(epochs=epochs), progress=False, stop_after_epoch=1)
    ckpt = out.with_name(out.name + ".ckpt")
    assert ckpt.is_file()
    return ckpt


def test_train_resumes_refuses_changed_settings_and_fresh_starts_over(tmp_path, central0, split_digits):
    out = tmp_path / "dev1.safetensors"
    ckpt = _checkpoint(central0, split_digits / "dev1", out, epochs=3)
    train = ("edge-agent", "train", "--model", str(central0), "--data", str(split_digits / "dev1"), "--out", str(out))

    # Other settings than the checkpoint's: refused with the flag to pass; the checkpoint is kept.
    p = run(*train, "--epochs", "4", "--json")
    assert p.returncode == 2 and p.stdout == "", p.stderr
    assert "--fresh" in p.stderr and "--epochs" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert ckpt.is_file() and not out.exists()

    # The same settings resume it.
    p = run(*train, "--epochs", "3", "--json")
    assert p.returncode == 0, p.stderr
    r = one_json_object(p.stdout)
    assert r["resumed_from_epoch"] == 1 and r["out"] == str(out) and r["classes"] == ["0", "1"]
    assert r["metrics"]["epochs"] == 3 and 0 <= r["metrics"]["val_accuracy"] <= 1 and len(r["id"]) == 64
    assert not ckpt.exists()

    # An existing --out needs --force, and is left as it was without it.
    before = out.read_bytes()
    p = run(*train, "--epochs", "2")
    assert p.returncode == 2 and "--force" in p.stderr and str(out) in p.stderr
    assert out.read_bytes() == before

    # --fresh discards a checkpoint of other settings and trains from epoch 0; --force replaces --out.
    ckpt = _checkpoint(central0, split_digits / "dev1", out.with_name("dev1b.safetensors"), epochs=3)
    p = run("edge-agent", "train", "--model", str(central0), "--data", str(split_digits / "dev1"),
            "--out", str(out.with_name("dev1b.safetensors")), "--epochs", "2", "--fresh", "--json")
    assert p.returncode == 0, p.stderr
    r = one_json_object(p.stdout)
    assert r["resumed_from_epoch"] == 0 and r["metrics"]["epochs"] == 2 and not ckpt.exists()
    p = run(*train, "--epochs", "2", "--force", "--json")
    assert p.returncode == 0, p.stderr
    assert one_json_object(p.stdout)["metrics"]["epochs"] == 2 and out.read_bytes() != before


def test_central_init_and_consolidate_print_json_and_need_force(tmp_path, central0, device_bundle):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(i) for i in range(10)) + "\n")
    c0 = tmp_path / "c0.safetensors"
    init = ("central", "init", "--labels", str(labels), "--input-shape", "1x16x16", "--out", str(c0))
    p = run(*init, "--json")
    assert p.returncode == 0, p.stderr
    r = one_json_object(p.stdout)
    assert r["out"] == str(c0) and r["arch"] == "cnn-s" and r["labels"] == [str(i) for i in range(10)]
    before = c0.read_bytes()
    p = run(*init, "--seed", "3")
    assert p.returncode == 2 and "pass --force" in p.stderr and c0.read_bytes() == before
    p = run(*init, "--seed", "3", "--force", "--json")
    assert p.returncode == 0 and one_json_object(p.stdout)["id"] != r["id"]

    c1 = tmp_path / "c1.safetensors"
    consolidate = ("central", "consolidate", "--base", str(central0), "--incoming", str(device_bundle),
                   "--out", str(c1), "--steps", "10", "--batch-size", "32")
    p = run(*consolidate, "--json")
    assert p.returncode == 0, p.stderr
    r = one_json_object(p.stdout)
    assert r["out"] == str(c1) and r["method"] == "dac" and r["trained_classes"] == ["0", "1"] and r["steps"]
    before = c1.read_bytes()
    p = run(*consolidate, "--seed", "1", "--json")
    assert p.returncode == 2 and p.stdout == "" and "--force" in p.stderr and c1.read_bytes() == before
    p = run(*consolidate, "--seed", "1", "--force", "--json")
    assert p.returncode == 0 and one_json_object(p.stdout)["id"] != r["id"]
