# One command each for a fresh machine: `make test` and `make train` create the virtual
# environment, install the pinned dependencies (constraints.txt) and run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Real data: ../shared beside the checkout, or what `make data` fetched into data/shared.
SHARED_DIR := $(if $(wildcard ../shared/data/raccoon),$(abspath ../shared),$(abspath data/shared))
export FRCNN_SHARED_DIR ?= $(SHARED_DIR)
ifeq ($(wildcard ../shared/data/raccoon),)
export FRCNN_MOBILENET_V2_WEIGHTS ?= $(abspath data/shared/weights/mobilenet_v2-b0353104.pth)
endif

.PHONY: install browser-deps data test test-all train lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -c "import torch, torchvision; from torchvision.ops import nms; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

# The browser test drives Debian's Chromium and ChromeDriver (a tool's own browser download cannot
# work offline); set FRCNN_CHROMIUM / FRCNN_CHROMEDRIVER to use other binaries instead.
browser-deps:
	@if [ -z "$$FRCNN_CHROMIUM" ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

# The public raccoon, coco128 and ImageNet MobileNetV2 files, checksummed, into data/shared (needs
# internet; ~300 MB of downloads, kept in data/shared/.downloads for reruns).
data: $(STAMP)
	$(PY) -m frcnn.tools.fetch --dest data/shared

test: $(STAMP) browser-deps
	$(PY) -m pytest -q

test-all: $(STAMP) browser-deps
	$(PY) -m pytest -q -m ""

train: $(STAMP)
	$(PY) src/train.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache
