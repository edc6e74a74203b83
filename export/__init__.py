"""torch -> ONNX / TFLite artifact kits: export, int8 calibration, parity (heavy imports live in the submodules)."""
