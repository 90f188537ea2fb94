# spuraug: the front door. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements/lock.txt pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)

DATASET ?= toy
METHODS ?=
SEEDS ?=
DATA_DIR ?=
export HF_HUB_OFFLINE ?= 1

.PHONY: help setup test lint bench

help: ## list every target with one line
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/lock.txt -e '.[dev,ray]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP) ## create .venv once from the pinned lock (re-installs only when the lock changes)

test: setup ## run the test suite (offline: HF_HUB_OFFLINE=1)
	$(PY) -m pytest -q

lint: setup ## ruff over the whole tree
	$(VENV)/bin/ruff check .

bench: setup ## run the benchmark sweep: make bench DATASET=toy|waterbirds|celeba|metashift [METHODS=..] [SEEDS=..] [DATA_DIR=..]
	$(PY) -m bench.sweep --dataset $(DATASET) $(if $(METHODS),--methods $(METHODS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(DATA_DIR),--data-dir $(DATA_DIR))
