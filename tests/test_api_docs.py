"""docs/api.md is true: each python block runs, in order, against real kits and prints the text block under it."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from central.init import init_central
from edge_agent.train import TrainConfig, train_bundle
from export.kit import export_bundle

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "api.md"
BLOCK = re.compile(r"```python\n(.*?)```\s*(?:```text\n(.*?)```)?", re.S)


@pytest.fixture(scope="module")
def kits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api-docs")
    central = root / "central-0.safetensors"
    init_central("cnn-s", ["bird", "cat", "dog"], central, (3, 32, 32), seed=0, width=8)
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "data" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / "data" / c / f"{i}.png")
    dev = train_bundle(central, root / "data", root / "dev.safetensors", TrainConfig(epochs=1), progress=False)
    export_bundle(dev["out"], "onnx", "none", root / "image-kit")
    init_central("ds-cnn", ["yes", "no", "up"], root / "kws-0.safetensors", None, seed=0)
    export_bundle(root / "kws-0.safetensors", "onnx", "none", root / "kws-kit")
    return root


def test_the_api_imports_no_torch():
    code = "import sys, edge_agent.api; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_every_example_in_docs_api_runs_and_prints_what_it_says(kits, monkeypatch):
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    monkeypatch.chdir(kits)
    namespace: dict = {"__name__": "docs_api"}
    for code, expected in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), namespace)
        assert out.getvalue() == expected, f"block:\n{code}\nprinted:\n{out.getvalue()}"
