# Two entry points: `make demo` (install + the main job on bundled data) and `make test`.
# Both create .venv when missing and install through the lock (constraints.txt), whatever pip the venv
# starts with: first pip and setuptools at their locked versions, then the package with no build isolation,
# so nothing unlocked is fetched. The install re-runs only when pyproject.toml or the lock changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := constraints.txt
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check -c $(LOCK)

.PHONY: install demo demo-full test lint lock clean device-venv tflite-runtime-venv fashion-mnist

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) pip setuptools
	$(PIP) --no-build-isolation -e '.[dev]'
	touch $(STAMP)

# One short stream through a real server on 127.0.0.1: central-0 published, two rounds of device agents
# (each its own process) pulling, training and uploading, DAC on the queue, an int8 kit pulled and run.
demo: $(STAMP)
	$(BIN)/central demo --via-server --epochs 10 --steps 300 --out demo-out/server-loop

# The long runs: the in-process Split-Digits stream (DAC vs naive, full budgets) and the server loop at
# the default budgets.
demo-full: $(STAMP)
	$(BIN)/central demo --out demo-out
	$(BIN)/central demo --via-server --out demo-out/server-loop-full

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

# Refresh the lock: the newest releases that satisfy pyproject.toml, in a fresh venv, frozen.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip setuptools
	.venv-lock/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '/^#/p' $(LOCK) | sed "s/^# Refreshed .*/# Refreshed $$(date -u +%F) on $$(uname -s) $$(uname -m), CPython $$(.venv-lock\/bin\/python -c 'import platform; print(platform.python_version())'), against PyPI as of that day./"; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | sed 's/+cpu$$//' | sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .venv-lock
	@echo "lock refreshed: re-run python -m benchmarks.export_quality and python -m benchmarks.latency before committing it"

# A device that only runs kits: the base package with both runtimes and no torch (the constraint makes
# any attempt to pull torch fail). tests/test_device_install.py runs the agent from it.
device-venv:
	test -x .venv-device/bin/python || $(PYTHON) -m venv .venv-device
	.venv-device/bin/python -m pip install -q --disable-pip-version-check -c $(LOCK) pip setuptools
	echo 'torch<0' > .venv-device/no-torch.txt
	.venv-device/bin/python -m pip install -q --disable-pip-version-check -c $(LOCK) -c .venv-device/no-torch.txt \
	  --no-build-isolation '.[onnx,litert]'
	rm -rf build

# Split Fashion-MNIST reads the IDX files of Debian's dataset-fashion-mnist; without them its tests skip.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@if [ -d $(FASHION_MNIST) ]; then echo "fashion-mnist: $(FASHION_MNIST) present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "fashion-mnist: skipped (needs apt-get as root: apt-get install dataset-fashion-mnist); its tests will be skipped"; fi

# tflite-runtime 2.14 (32-bit Raspberry Pi OS) needs numpy<2: it gets its own venv.
tflite-runtime-venv:
	test -x .venv-tflrt/bin/python || $(PYTHON) -m venv .venv-tflrt
	.venv-tflrt/bin/python -m pip install -q "tflite-runtime==2.14.0" "numpy<2" pillow

clean:
	rm -rf demo-out .pytest_cache
