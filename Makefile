# Quick start: `make demo` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
RECIPE ?= recipes/demo.yaml
# NNCF's PyTorch extension (QAT): no load timeout (its build outlasts NNCF's 60 s default on 2 cores)
# and a persistent build folder, built once by `make setup`.
export NNCF_EXTENSION_LOAD_TIMEOUT ?= 0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
NNCF_EXT_STAMP := .cache/torch_extensions/.built
PYTEST_ARGS ?=

.PHONY: help setup data demo test lint compress bench report clean

help:
	@echo "make demo | test | lint | compress RECIPE=... [DATA=dir] [MODEL=...] | bench | report RUN=... | clean"

# Reinstall only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all]'
	$(PY) -m pip check
	@touch $(STAMP)

setup: $(STAMP) data $(NNCF_EXT_STAMP)

$(NNCF_EXT_STAMP): $(STAMP)
	$(PY) -m compressor.quant.qat
	@touch $(NNCF_EXT_STAMP)

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; else \
	  echo "installing the embedded data set (dataset-fashion-mnist)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; fi

demo: setup
	$(VENV)/bin/compressor run recipes/demo.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check compressor tests benchmarks
	$(VENV)/bin/mypy compressor

test: setup lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

compress: setup
	$(VENV)/bin/compressor run $(RECIPE) $(if $(DATA),--data $(DATA)) $(if $(MODEL),--model $(MODEL))

bench: setup
	$(PY) benchmarks/bench_runtimes.py

report: setup
	$(VENV)/bin/compressor report $(or $(RUN),runs/demo)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
