# Quick start: `make demo` and `make test`. Both set everything up themselves.
#   make demo: the Debian package dataset-fashion-mnist (when the data is missing), then a venv with the
#              runtime extras (pip install -e '.[demo]'). Nothing else.
#   make test: the same, plus the dev extra (pytest, ruff, mypy; '.[all]'), NNCF's compiled extension,
#              openssh-server (the ssh-target tests start one on 127.0.0.1) and the arm64 root.
# System packages are installed as root, with sudo when not root, or make stops first with the command to run.
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

.PHONY: help setup setup-demo data ssh-server arm-rootfs demo search-demo test lint compress bench report release verify clean

help:
	@echo "make demo | search-demo [WORKERS=N] | test | lint | arm-rootfs | compress RECIPE=... [DATA=dir] [MODEL=...] | bench | report RUN=... | clean"
	@echo "make release RECIPE=... VERSION=... [BASELINE=bundle] [OUT=dir] | verify BUNDLE=dir"

# Reinstall only when pyproject.toml's content changes (not its mtime: a checkout touches that).
# Two stamps: the demo's extras, and everything (demo + dev); the full install satisfies the demo.
PYPROJECT_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.installed-all-$(PYPROJECT_HASH)
DEMO_STAMP := $(VENV)/.installed-demo-$(PYPROJECT_HASH)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all]'
	$(PY) -m pip check
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[demo]'
	$(PY) -m pip check
	@rm -f $(VENV)/.installed-demo-*
	@touch $(DEMO_STAMP)

# Everything a recipe may use (no test tools' system packages).
setup: data $(STAMP) $(NNCF_EXT_STAMP)

setup-demo: data $(DEMO_STAMP)

# The OpenSSH server the ssh-target tests start on 127.0.0.1 (only the test suite needs it).
ssh-server:
	@if [ -x /usr/sbin/sshd ]; then :; else \
	  echo "installing openssh-server (for the ssh benchmark-target tests)"; \
	  scripts/system_packages.sh openssh-server; fi
	@test -d /run/sshd || mkdir -p /run/sshd 2>/dev/null || \
	  { echo "error: sshd needs /run/sshd; run: sudo mkdir -p /run/sshd" >&2; exit 2; }

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
	  scripts/system_packages.sh dataset-fashion-mnist; fi

demo: setup-demo
	$(VENV)/bin/compressor run recipes/demo.yaml

# compressor search on the embedded data: under an hour on 2 cores (budget: 40 trials or 45 minutes of trial starts).
search-demo: setup
	$(VENV)/bin/compressor search recipes/search_demo.yaml $(if $(WORKERS),--workers $(WORKERS))

lint: $(STAMP)
	$(VENV)/bin/ruff check compressor tests benchmarks
	$(VENV)/bin/mypy compressor

# System packages first, so a machine that cannot install them stops before the long pip install.
test: data ssh-server setup lint arm-rootfs
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
