# Quick start: `make demo` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
RECIPE ?= recipes/demo.yaml
PYTEST_ARGS ?=
ARM_ROOTFS ?= .cache/arm64-rootfs

.PHONY: help setup data ssh-server arm-rootfs demo test lint compress bench report clean

help:
	@echo "make demo | test | lint | arm-rootfs | compress RECIPE=... [DATA=dir] [MODEL=...] | bench | report RUN=... | clean"

# Reinstall only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all]'
	$(PY) -m pip check
	@touch $(STAMP)

setup: $(STAMP) data ssh-server

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

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; else \
	  echo "installing the embedded data set (dataset-fashion-mnist)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; fi

demo: setup
	$(VENV)/bin/compressor run recipes/demo.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check compressor tests benchmarks
	$(VENV)/bin/mypy compressor

test: setup lint arm-rootfs
	$(PY) -m pytest -q $(PYTEST_ARGS)

compress: setup
	$(VENV)/bin/compressor run $(RECIPE) $(if $(DATA),--data $(DATA)) $(if $(MODEL),--model $(MODEL))

bench: setup
	$(PY) benchmarks/bench_runtimes.py

report: setup
	$(VENV)/bin/compressor report $(or $(RUN),runs/demo)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
	@echo "(the arm64 root in $(ARM_ROOTFS) is kept; rm -rf it to rebuild)"
