# Two entry points: `make demo` (install + the main job on bundled data) and `make test`.
# Both create .venv when missing and are idempotent: the install re-runs only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean tflite-runtime-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned: pip takes the CPU build from the local wheel folder where one is configured.
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The stream report (DAC vs naive, in one process), then the same loop through a real server on
# 127.0.0.1 with each device's agent as its own process.
demo: $(STAMP)
	$(BIN)/central demo --out demo-out
	$(BIN)/central demo --via-server --out demo-out/server-loop

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# tflite-runtime 2.14 (32-bit Raspberry Pi OS) needs numpy<2: it gets its own venv.
tflite-runtime-venv:
	test -x .venv-tflrt/bin/python || $(PYTHON) -m venv .venv-tflrt
	.venv-tflrt/bin/python -m pip install -q "tflite-runtime==2.14.0" "numpy<2" pillow

clean:
	rm -rf demo-out .pytest_cache
