# Quick start: `make demo` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
RECIPE ?= recipes/demo.yaml
# NNCF's PyTorch extension (QAT): no load timeout (its build outlasts NNCF's 60 s default on 2 cores)
# and a persistent build folder, built once by `make setup`.
export NNCF_EXTENSION_LOAD_TIMEOUT ?= 0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
NNCF_EXT_STAMP := .cache/torch_extensions/.built
PYTEST_ARGS ?=
ARM_ROOTFS ?= .cache/arm64-rootfs

.PHONY: help setup data ssh-server arm-rootfs demo search-demo test lint compress bench report release verify clean

help:
	@echo "make demo | search-demo [WORKERS=N] | test | lint | arm-rootfs | compress RECIPE=... [DATA=dir] [MODEL=...] | bench | report RUN=... | clean"
	@echo "make release RECIPE=... VERSION=... [BASELINE=bundle] [OUT=dir] | verify BUNDLE=dir"

# Reinstall only when pyproject.toml's content changes (not its mtime: a checkout touches that).
PYPROJECT_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.installed-$(PYPROJECT_HASH)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all]'
	$(PY) -m pip check
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

setup: $(STAMP) data ssh-server $(NNCF_EXT_STAMP)

# The OpenSSH server the ssh-target tests start on 127.0.0.1 (they skip without it).
ssh-server:
	@if [ -x /usr/sbin/sshd ]; then :; else \
	  echo "installing openssh-server (for the ssh benchmark-target tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server; fi
	@mkdir -p /run/sshd

# arm64 Debian root for the arm64-emulated target (debootstrap + qemu-user-static; about a minute).
arm-rootfs: $(ARM_ROOTFS)/compressor-rootfs.json

$(ARM_ROOTFS)/compressor-rootfs.json: scripts/build_arm_rootfs.sh
	PIP="$(PY) -m pip" scripts/build_arm_rootfs.sh $(ARM_ROOTFS)

# NNCF's PyTorch extension is compiled once here, so no test or run pays for it.
$(NNCF_EXT_STAMP): $(STAMP)
	$(PY) -m compressor.quant.qat
	@touch $(NNCF_EXT_STAMP)

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; else \
	  echo "installing the embedded data set (dataset-fashion-mnist)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; fi

demo: setup
	$(VENV)/bin/compressor run recipes/demo.yaml

# compressor search on the embedded data: about an hour on 2 cores (budget: 12 trials or 60 minutes).
search-demo: setup
	$(VENV)/bin/compressor search recipes/search_demo.yaml $(if $(WORKERS),--workers $(WORKERS))

lint: $(STAMP)
	$(VENV)/bin/ruff check compressor tests benchmarks
	$(VENV)/bin/mypy compressor

test: setup lint arm-rootfs
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

compress: setup
	$(VENV)/bin/compressor run $(RECIPE) $(if $(DATA),--data $(DATA)) $(if $(MODEL),--model $(MODEL))

bench: setup
	$(PY) benchmarks/bench_runtimes.py

report: setup
	$(VENV)/bin/compressor report $(or $(RUN),runs/demo)

# Exit 0: every gate passed; 1: a gate failed (the bundle holds the evidence, marked not releasable); 2: bad input.
release: setup
	@test -n "$(VERSION)" || { echo "make release needs VERSION=..., e.g. make release VERSION=1.0.0"; exit 2; }
	$(VENV)/bin/compressor release $(RECIPE) --version $(VERSION) $(if $(BASELINE),--baseline $(BASELINE)) $(if $(OUT),--out $(OUT))

verify: $(STAMP)
	@test -n "$(BUNDLE)" || { echo "make verify needs BUNDLE=<bundle folder>"; exit 2; }
	$(VENV)/bin/compressor verify $(BUNDLE)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
	@echo "(the arm64 root in $(ARM_ROOTFS) is kept; rm -rf it to rebuild)"
