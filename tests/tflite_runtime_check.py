"""Run a kit's .tflite artifacts with tflite-runtime (no torch, numpy<2); print one JSON line.

Usage (from the repo root, under .venv-tflrt): ``python tests/tflite_runtime_check.py KIT INPUTS.npy EXPECTED.npy``.
``INPUTS.npy`` is NCHW float32 ``[N, C, H, W]``; ``EXPECTED.npy`` holds ``[A, N, K]`` logits from
ai-edge-litert for the kit's A tflite artifacts (in manifest order). Exit 0 when every artifact
loads, runs and matches within 1e-4 * max(1, |logits|) (fp32) or 2 output quantization steps (int8).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.runtime import KitError, TfliteRunner, load_kit  # noqa: E402


def main(argv: list[str]) -> int:
    kit = load_kit(argv[0])
    x = np.load(argv[1], allow_pickle=False)
    expected = np.load(argv[2], allow_pickle=False)
    import tflite_runtime

    out: dict = {"tflite_runtime": tflite_runtime.__version__, "numpy": np.__version__, "torch_imported": "torch" in sys.modules, "artifacts": {}}
    ok = not out["torch_imported"]
    arts = [a for a in kit.artifacts if a.format == "tflite"]
    for art, want in zip(arts, expected, strict=True):
        try:
            runner = TfliteRunner(kit.path / art.file, art)
            got = runner.run(x)
        except KitError as e:
            out["artifacts"][art.file] = {"error": str(e)}
            ok = False
            continue
        diff = float(np.abs(got - want).max())
        tol = 1e-4 * max(1.0, float(np.abs(want).max()))
        if art.precision == "int8":
            # int8 kernels of 2.14 and LiteRT may round differently: allow 2 output quantization steps
            # (dequantized in float32, so two steps can read a few ulps above 2 * scale).
            tol = max(tol, 2.0 * float(runner.out["quantization"][0]) * (1 + 1e-5))
        passed = diff <= tol
        out["artifacts"][art.file] = {"max_abs_diff_vs_litert": diff, "tolerance": tol, "passed": passed}
        ok = ok and passed
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
