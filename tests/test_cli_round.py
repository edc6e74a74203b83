"""One full round through the command line, as a user types it (subprocesses, real files)."""

from __future__ import annotations

import json
import subprocess

from conftest import cli


def run(*args: str, cwd=None, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def test_round_dac_keeps_old_classes_better_than_naive(tmp_path):
    ea, central = cli("edge-agent"), cli("central")
    run(ea, "data", "digits", "--out", "sd", cwd=tmp_path)
    run(central, "init", "--arch", "cnn-s", "--labels", "sd/labels.txt", "--input-shape", "1x16x16", "--out", "c0.safetensors", cwd=tmp_path)
    for dev in ("dev1", "dev2"):
        run(ea, "train", "--model", "c0.safetensors", "--data", f"sd/{dev}", "--out", f"{dev}.safetensors", "--epochs", "6", "--seed", "1", cwd=tmp_path)
    common = ["--base", "c0.safetensors", "--incoming", "dev1.safetensors", "--incoming", "dev2.safetensors", "--steps", "100", "--batch-size", "64"]
    done = run(central, "consolidate", *common, "--out", "dac.safetensors", cwd=tmp_path)
    run(central, "consolidate", *common, "--method", "naive", "--out", "naive.safetensors", cwd=tmp_path)

    reports = {}
    for m in ("dac", "naive"):
        p = run(central, "evaluate", "--model", f"{m}.safetensors", "--data", "sd/test", "--json", cwd=tmp_path)
        reports[m] = json.loads(p.stdout)
    dac, naive = reports["dac"], reports["naive"]
    assert 0 <= dac["accuracy"] <= 1 and dac["n"] == naive["n"] > 300
    assert set(dac["per_class"]) == {str(i) for i in range(10)}
    old_dac = dac["per_experience"]["dev1"]["accuracy"]
    old_naive = naive["per_experience"]["dev1"]["accuracy"]
    # The naive central has replaced dev1's knowledge by dev2's; DAC keeps it.
    assert old_dac > old_naive + 0.3, (old_dac, old_naive)
    assert dac["per_experience"]["dev2"]["task_aware_accuracy"] > 0.6

    from edge_agent.bundle import load_bundle

    b = load_bundle(tmp_path / "dac.safetensors")
    assert b.manifest.method == "dac" and b.manifest.trained_classes == ["0", "1", "2", "3"]
    assert b.manifest.parents == [load_bundle(tmp_path / f).id for f in ("c0.safetensors", "dev1.safetensors", "dev2.safetensors")]
    # The first step copies dev1; the second chose where its student started (student_init=auto) and says so.
    first, second = b.manifest.extra["stream"]
    assert "student_init" not in first
    chosen = second["student_init"]["chosen"]
    assert chosen in ("previous", "average") and set(second["student_init"]["target_mse"]) == {"previous", "average"}
    assert f"student started from {chosen}" in done.stdout
    # The lineage records the settings actually used: an image model's defaults, not the unset fields.
    used = b.manifest.extra["consolidation"]
    assert used["lr"] == 3e-3 and used["student_init"] == "auto"


def test_bad_inputs_give_one_line_errors(tmp_path):
    central, ea = cli("central"), cli("edge-agent")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    p = run(central, "init", "--labels", "labels.txt", "--input-shape", "1x16", "--out", "c.safetensors", cwd=tmp_path, check=False)
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0 and "CxHxW" in p.stderr
    run(central, "init", "--labels", "labels.txt", "--out", "c.safetensors", cwd=tmp_path)
    (tmp_path / "broken.safetensors").write_bytes((tmp_path / "c.safetensors").read_bytes()[:300])
    p = run(central, "evaluate", "--model", "broken.safetensors", "--data", ".", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "truncated" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "x.png").write_bytes(b"not a png")
    p = run(ea, "train", "--model", "c.safetensors", "--data", "d", "--out", "o.safetensors", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "cannot read image" in p.stderr and "x.png" in p.stderr
    p = run(central, "consolidate", "--base", "c.safetensors", "--incoming", "c.safetensors", "--out", "o.safetensors", "--method", "magic", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "unknown consolidation method" in p.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_a_device_brings_two_classes_the_central_never_saw(tmp_path):
    import shutil

    import torch

    from edge_agent.bundle import load_bundle

    ea, central = cli("edge-agent"), cli("central")
    run(ea, "data", "digits", "--out", "sd", cwd=tmp_path)
    (tmp_path / "labels.txt").write_text("0\n1\n2\n3\n")
    run(central, "init", "--labels", "labels.txt", "--input-shape", "1x16x16", "--out", "c0.safetensors", cwd=tmp_path)
    train = ["--epochs", "6", "--seed", "1"]
    steps = ["--steps", "150", "--batch-size", "64"]
    run(ea, "train", "--model", "c0.safetensors", "--data", "sd/dev1", "--out", "dev1.safetensors", *train, cwd=tmp_path)
    run(central, "consolidate", "--base", "c0.safetensors", "--incoming", "dev1.safetensors", "--out", "c1.safetensors", cwd=tmp_path)

    # The next device holds digits 4 and 5, which the central's label list does not have.
    p = run(ea, "train", "--model", "c1.safetensors", "--data", "sd/dev3", "--out", "dev3.safetensors", *train, cwd=tmp_path)
    assert "new classes the central did not know, added to the label list: 4, 5" in p.stdout
    dev3 = load_bundle(tmp_path / "dev3.safetensors")
    assert dev3.labels == ["0", "1", "2", "3", "4", "5"] and dev3.manifest.trained_classes == ["4", "5"]
    assert dev3.manifest.extra["added_labels"] == ["4", "5"] and dev3.manifest.parents == [load_bundle(tmp_path / "c1.safetensors").id]

    p = run(central, "consolidate", "--base", "c1.safetensors", "--incoming", "dev3.safetensors", *steps,
            "--out", "c2.safetensors", "--json", cwd=tmp_path)
    r = json.loads(p.stdout)
    assert r["labels"] == ["0", "1", "2", "3", "4", "5"] and r["trained_classes"] == ["0", "1", "4", "5"]
    c2 = load_bundle(tmp_path / "c2.safetensors")
    assert c2.manifest.extra["stream"][0]["new_labels"] == ["4", "5"]
    assert c2.manifest.extra["class_support"] == {c: 1 for c in r["trained_classes"]}

    test = tmp_path / "test"
    for c in r["trained_classes"]:
        shutil.copytree(tmp_path / "sd" / "test" / c, test / c)
    rep = json.loads(run(central, "evaluate", "--model", "c2.safetensors", "--data", str(test), "--json", cwd=tmp_path).stdout)
    per = {c: v["accuracy"] for c, v in rep["per_class"].items()}
    assert (per["4"] + per["5"]) / 2 > 0.5 and (per["0"] + per["1"]) / 2 > 0.5, per  # chance is 1/4

    # Growing by hand keeps every existing output as it was.
    run(central, "labels", "add", "--model", "c2.safetensors", "--label", "6", "--label", "7", "--out", "c2b.safetensors", cwd=tmp_path)
    grown = load_bundle(tmp_path / "c2b.safetensors")
    assert grown.labels == [*r["labels"], "6", "7"] and grown.manifest.trained_classes == r["trained_classes"]
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        before, after = c2.model.eval()(x), grown.model.eval()(x)
    assert after.shape == (8, 8) and torch.allclose(after[:, :6], before, atol=1e-6)  # same rows; GEMM blocking may differ
    p = run(central, "labels", "add", "--model", "c2b.safetensors", "--label", "4", "--out", "x.safetensors", cwd=tmp_path, check=False)
    assert p.returncode != 0 and "already in the label list: 4" in p.stderr
