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
    last = p.stderr.strip().splitlines()[-1]  # after the data summary: one error line
    assert last.startswith("error:") and "--fresh" in last and "--epochs" in last
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
    # The ranks that --nproc starts run the same command without --force: the launcher checked for them.
    p = run(*consolidate, "--nproc", "2", "--force", "--json")
    assert p.returncode == 0, p.stderr
    assert one_json_object(p.stdout)["out"] == str(c1)


def test_export_json_eval_log_and_the_parity_gate(tmp_path, device_bundle, split_digits):
    kit = tmp_path / "kit"
    export = ("central", "export", "--model", str(device_bundle), "--format", "onnx", "--quantize", "int8", "--out", str(kit))
    p = run(*export, "--eval-data", str(split_digits / "test"), "--json")
    assert p.returncode == 0, p.stderr
    r = one_json_object(p.stdout)  # the converters' warnings did not land on stdout
    log = tmp_path / "kit.export.log"
    assert r["kit"] == str(kit) and r["log"] == str(log)
    (art,) = r["artifacts"]
    assert art["file"] == "model.int8.onnx" and art["bytes"] == (kit / "model.int8.onnx").stat().st_size
    # The default gate: 0.97 of the held-out calibration inputs keep torch's top-1.
    assert art["parity"]["min_agreement"] == 0.97 and art["parity"]["passed"]
    assert art["parity"]["top1_agreement"] >= 0.97 and art["parity"]["samples"] == 128
    # The decision is the argmax over the classes the device trained (0 and 1), as accuracy is.
    assert art["parity"]["decision_classes"] == 2 and 0 <= art["parity"]["top1_agreement_all_labels"] <= 1
    ev = r["eval"]
    assert ev["data"] == str(split_digits / "test") and ev["n"] > 300
    got = ev["artifacts"]["model.int8.onnx"]
    assert got["n"] == ev["n"] and 0 < got["accuracy"] <= 1
    assert got["drop_points"] == pytest.approx(100 * (ev["bundle"]["accuracy"] - got["accuracy"]))
    # The same figures as `central evaluate` gives for the bundle on that folder.
    q = run("central", "evaluate", "--model", str(device_bundle), "--data", str(split_digits / "test"), "--json")
    assert one_json_object(q.stdout)["accuracy"] == pytest.approx(ev["bundle"]["accuracy"])
    # Converter noise went to the log, and one line on stderr says where.
    text = log.read_text()
    assert "WARNING" in text or "Warning" in text, text[:500]
    assert f"converter output: {log}" in p.stderr and "WARNING" not in p.stderr
    assert sorted(f.name for f in kit.iterdir()) == ["manifest.json", "model.int8.onnx"]

    # An existing kit needs --force.
    manifest = (kit / "manifest.json").read_bytes()
    p = run(*export)
    assert p.returncode == 2 and "--force" in p.stderr

    # A kit below the required agreement is refused (exit 1) naming the measured agreement; the old kit stays.
    p = run(*export, "--force", "--min-agreement", "1.01", "--json")
    assert p.returncode == 1 and p.stdout == "", p.stderr
    err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"top-1 agreement with torch {art['parity']['top1_agreement']:.3f}" in err[0]
    assert "below the required 1.01" in err[0] and "--min-agreement" in err[0]
    assert (kit / "manifest.json").read_bytes() == manifest
    assert sorted(f.name for f in tmp_path.iterdir()) == ["kit", "kit.export.log"]  # no half-built kit left


def test_export_verbose_shows_converters_on_stderr_and_quiet_says_nothing(tmp_path, device_bundle):
    p = run("central", "--verbose", "export", "--model", str(device_bundle), "--quantize", "int8",
            "--out", str(tmp_path / "kit"), "--json")
    assert p.returncode == 0, p.stderr
    r = one_json_object(p.stdout)
    assert r["log"] is None and not (tmp_path / "kit.export.log").exists()
    assert "WARNING" in p.stderr or "Warning" in p.stderr
    p = run("central", "--quiet", "export", "--model", str(device_bundle), "--out", str(tmp_path / "fp32"))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "model.onnx: max|dlogit|=" in p.stdout and f"kit: {tmp_path / 'fp32'}" in p.stdout
    assert (tmp_path / "fp32.export.log").is_file()
    p = run("central", "--quiet", "--verbose", "init", "--labels", "x.txt")
    assert p.returncode == 2 and "exclude each other" in p.stderr


def test_central0_has_no_decision_to_keep_and_gets_the_loose_floor(tmp_path, central0):
    from export.kit import export_bundle
    from export.parity import UNTRAINED_MIN_TOP1

    (report,) = export_bundle(central0, "onnx", "int8", tmp_path / "kit").parity
    assert report.min_agreement == UNTRAINED_MIN_TOP1 and report.decision_classes == 10 and report.passed


def test_a_clipped_calibration_is_refused_by_the_default_gate(tmp_path, device_bundle):
    """Calibration ranges 15 % too narrow clip activations: the kit changes decisions, and the export stops."""
    from edge_agent.bundle import load_bundle
    from export.calibration import ood_batches
    from export.kit import write_kit
    from export.parity import INT8_MIN_TOP1, ParityError

    b = load_bundle(device_bundle)
    pool = np.concatenate(list(ood_batches(None, b.input_spec, 384)))
    calib, held = pool[:256], pool[256:]
    args = (b.model, b.input_spec, b.labels, b.id)
    good = write_kit(*args, tmp_path / "good", ("onnx",), "int8", [calib], parity_inputs=held)
    assert good.parity[0].top1_agreement >= INT8_MIN_TOP1
    with pytest.raises(ParityError) as e:
        write_kit(*args, tmp_path / "clipped", ("onnx",), "int8", [calib * 0.85], parity_inputs=held)
    msg = str(e.value)
    assert "model.int8.onnx (int8): top-1 agreement with torch 0." in msg and "below the required 0.97" in msg
    measured = float(msg.split("top-1 agreement with torch ")[1].split()[0])
    assert measured < INT8_MIN_TOP1
    assert not (tmp_path / "clipped" / "manifest.json").exists()


def test_agent_verbs_print_one_json_object(tmp_path, split_digits):
    """pull, pull-kit, status, upload, sync and run against a real central on 127.0.0.1."""
    from test_server_support import ServerProc, agent, central, enrol, make_central

    server = ServerProc(tmp_path / "central-data", args=["--kit-formats", "onnx-fp32"])
    server.start()
    try:
        c0 = tmp_path / "central-0.safetensors"
        make_central(c0)
        assert central(server, "publish", str(c0)).returncode == 0
        home = tmp_path / "agent"
        enrol(server, home, "json-pi")

        p = agent(home, "pull", "--json")
        assert p.returncode == 0, p.stderr
        pulled = one_json_object(p.stdout)
        assert pulled["updated"] is True and pulled["version"] >= 1 and Path(pulled["path"]).is_file()
        p = agent(home, "pull-kit", "--format", "onnx-fp32", "--wait", "120", "--json")
        assert p.returncode == 0, p.stderr
        k = one_json_object(p.stdout)
        assert k["format"] == "onnx-fp32" and k["updated"] and (Path(k["path"]) / "manifest.json").is_file()
        assert k["smoke"]

        p = agent(home, "run", "--data", str(split_digits / "dev1"), "--epochs", "1", "--json")
        assert p.returncode == 0, p.stderr
        r = one_json_object(p.stdout)  # the "delivered" and "trained on" lines went to stderr
        assert r["model"]["version"] == pulled["version"] and r["trained"]["classes"] == ["0", "1"]
        assert [d["status"] for d in r["deliveries"]] == ["stored"] and "delivered" in p.stderr

        p = agent(home, "upload", r["trained"]["out"], "--json")
        assert p.returncode == 0, p.stderr
        u = one_json_object(p.stdout)
        assert u["bundle_id"] == r["trained"]["id"] and [d["status"] for d in u["deliveries"]] == ["duplicate"]

        p = agent(home, "sync", "--json")
        assert p.returncode == 0 and one_json_object(p.stdout) == {
            "deliveries": [], "model": {"updated": False, "version": pulled["version"], "path": pulled["path"]}}
        st = one_json_object(agent(home, "status", "--json").stdout)
        assert st["device"] == "json-pi" and st["kits"]["onnx-fp32"]["version"] == k["version"] and st["outbox"] == []
    finally:
        server.stop()
