"""torch -> ONNX / TFLite artifact kits: export, int8 calibration, parity (heavy imports live in the submodules)."""

# ONNX int8 activation and weight types, as `--onnx-int8` spells them (u8u8 first: the default, docs/export.md).
ONNX_INT8_TYPES = ("u8u8", "u8s8", "s8s8")
