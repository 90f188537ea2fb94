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
SET ?=
RUNS_DIR ?=
DATA_DIR ?=
LAUNCHER ?=
export HF_HUB_OFFLINE ?= 1

# Containers (docs/containers.md): DOCKER=1 runs bench/weights/doctor inside the image, GPU=1 the
# GPU image with --gpus all; data, runs, results and the model caches are mounted from the host
# and the container runs as the host's uid:gid, so everything it writes lands here.
DOCKER ?=
GPU ?=
WEIGHTS ?=
DOCKER_ON = $(filter-out 0 no false,$(DOCKER))
GPU_ON = $(filter-out 0 no false,$(GPU))
VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= spuraug
IMAGE_GPU ?= $(IMAGE):$(VERSION)-gpu
IMAGE_CPU ?= $(IMAGE):$(VERSION)-cpu
DOCKER_CLI ?= docker
SHM_SIZE ?= 8g
# rootless Docker/Podman map the container's root to you: use DOCKER_USER=0:0 there;
# Podman with CDI: GPU_FLAGS=--device nvidia.com/gpu=all
DOCKER_USER ?= $(shell id -u):$(shell id -g)
GPU_FLAGS ?= --gpus all
CACHE_HOME = $(or $(XDG_CACHE_HOME),$(HOME)/.cache)
HOST_DATA_DIR = $(abspath $(or $(DATA_DIR),$(SPURAUG_DATA_DIR),data))
HOST_HF_HOME = $(abspath $(or $(HF_HOME),$(CACHE_HOME)/huggingface))
HOST_TORCH_HOME = $(abspath $(or $(TORCH_HOME),$(CACHE_HOME)/torch))
DOCKER_RUN = $(DOCKER_CLI) run --rm --init -i $(shell [ -t 0 ] && echo -t) \
	--user $(DOCKER_USER) $(if $(GPU_ON),$(GPU_FLAGS)) --shm-size $(SHM_SIZE) \
	-v "$(HOST_DATA_DIR)":/data -v "$(CURDIR)/results":/work/results -v "$(CURDIR)/runs":/work/runs \
	-v "$(HOST_HF_HOME)":/cache/huggingface -v "$(HOST_TORCH_HOME)":/cache/torch \
	$(if $(HF_HUB_CACHE),-v "$(abspath $(HF_HUB_CACHE))":/cache/huggingface/hub) \
	-e SPURAUG_DATA_DIR=/data -e HF_HOME=/cache/huggingface -e TORCH_HOME=/cache/torch \
	-e HF_HUB_OFFLINE=$(HF_HUB_OFFLINE) -e SPURAUG_GIT_SHA=$(shell git rev-parse HEAD 2>/dev/null) \
	$(if $(GPU_ON),$(IMAGE_GPU),$(IMAGE_CPU))
RUN_PY = $(if $(DOCKER_ON),$(DOCKER_RUN) python,$(WITH_JEMALLOC)$(PY))

# jemalloc (issue 21): glibc's malloc returns ResNet-50's large CPU buffers to the kernel
# after every step and page-faults them back in (~25 of ~30 s per step at batch 108 on a
# 2-core AMD EPYC); jemalloc keeps them. The bench, train, test and throughput targets
# preload it when the library is installed (Debian/Ubuntu: libjemalloc2), and run without
# it otherwise. JEMALLOC=0 turns it off, JEMALLOC=/path/libjemalloc.so.2 names the file.
# The containers' entrypoint does the same; `spuraug doctor` says whether it is active.
JEMALLOC ?= auto
ifeq ($(JEMALLOC),auto)
JEMALLOC_LIB := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
	/usr/lib/aarch64-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 \
	/usr/local/lib/libjemalloc.so.2) $(shell PATH="$$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null \
	| awk '/libjemalloc\.so\.2 /{print $$NF; exit}'))
else ifneq ($(filter 0 no false off,$(JEMALLOC)),)
JEMALLOC_LIB :=
else
JEMALLOC_LIB := $(wildcard $(JEMALLOC))
endif
WITH_JEMALLOC = $(if $(JEMALLOC_LIB),LD_PRELOAD="$(JEMALLOC_LIB)$(if $(LD_PRELOAD),:$(LD_PRELOAD))" )

.PHONY: help setup test lint bench

help: ## list every target with one line
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

# A dropped connection to the package index (a large wheel cut off mid-download) is retried:
# the upgraded pip resumes partial downloads (--resume-retries; the venv's bundled pip predates
# it), and the whole install is tried PIP_ATTEMPTS times, a minute apart.
PIP_ATTEMPTS ?= 3
PIP_NET = --retries 10 --timeout 60
$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@for i in $$(seq 1 $(PIP_ATTEMPTS)); do \
	  $(PY) -m pip install -q $(PIP_NET) --upgrade pip \
	  && $(PY) -m pip install -q $(PIP_NET) --resume-retries 20 -c requirements/lock.txt -e '.[dev,ray]' && break; \
	  if [ $$i -eq $(PIP_ATTEMPTS) ]; then echo "install failed $$i times; see pip's message above" >&2; exit 1; fi; \
	  echo "install attempt $$i failed; retrying in 60 s" >&2; sleep 60; \
	done
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP) ## create .venv once from the pinned lock (re-installs only when the lock changes)

test: setup ## run the test suite (offline: HF_HUB_OFFLINE=1; jemalloc preloaded when installed)
	$(WITH_JEMALLOC)$(PY) -m pytest -q

lint: setup ## ruff over the whole tree
	$(VENV)/bin/ruff check .

bench: $(if $(DOCKER_ON),docker-volumes,setup) ## run the benchmark sweep: make bench DATASET=toy|waterbirds|celeba|metashift [METHODS=..] [SEEDS=..] [SET="erm.lr=0.01 .." [RUNS_DIR=runs-x]] [DATA_DIR=..] [LAUNCHER=ray] [JOBS=auto|N] [DOCKER=1 [GPU=1]]
	$(if $(and $(DOCKER_ON),$(RUNS_DIR)),$(error RUNS_DIR is for runs on the host; with DOCKER=1 ./runs is the mounted runs folder))
	$(RUN_PY) -m bench.sweep --dataset $(DATASET) $(if $(METHODS),--methods $(METHODS)) $(if $(SEEDS),--seeds $(SEEDS)) $(foreach kv,$(SET),--set $(kv)) $(if $(RUNS_DIR),--runs-dir $(RUNS_DIR)) $(if $(DATA_DIR),--data-dir $(if $(DOCKER_ON),/data,$(DATA_DIR))) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(JOBS),--workers $(JOBS))

# ---- the harness (docs/harness.md)
.PHONY: check mutation leaderboard throughput
CLEAN ?=

check: setup ## accuracy regression gate: CI-sized toy sweep vs results/reference/toy.json (exit 1 on regression)
	$(WITH_JEMALLOC)$(PY) -m bench.check

mutation: setup ## prove the gate: inject a known regression into each method in turn (it must fail) + CLEAN clean runs (they must pass) -> results/check/, docs/harness.md [METHODS=.. SEEDS=.. CLEAN=3 RUNS_DIR=runs/mutation]
	$(WITH_JEMALLOC)$(PY) -m bench.mutation $(if $(METHODS),--methods $(METHODS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(CLEAN),--clean $(CLEAN)) $(if $(RUNS_DIR),--runs-dir $(RUNS_DIR))

leaderboard: setup ## build results/leaderboard.md + results/leaderboard/index.html (screenshot when chromium is installed)
	$(PY) -m bench.leaderboard

throughput: setup ## pytest-benchmark suite of bench/ -> results/throughput/<machine>/<time>.json; images/s + ratio to last run
	$(WITH_JEMALLOC)$(PY) -m bench.throughput

# ---- speed and cost (docs/harness.md: "CPU training speed", "make plan")
.PHONY: train-throughput plan gpu-speed
BATCH ?= 108
STEPS ?= 6
WORKERS ?=
PLAN_DATASETS = $(if $(filter toy,$(DATASET)),waterbirds celeba metashift,$(DATASET))

train-throughput: setup ## real data path (dataset, transforms, loader, engine) vs the bare loop -> results/throughput/ [DATASET=waterbirds DATA_DIR=.. BATCH=108 STEPS=6 WORKERS=auto]
	$(WITH_JEMALLOC)$(PY) -m bench.train_throughput --dataset $(if $(filter toy,$(DATASET)),waterbirds,$(DATASET)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --batch-size $(BATCH) --steps $(STEPS) $(if $(WORKERS),--workers $(WORKERS))

plan: setup ## the real job's projected wall time, device-hours and peak memory per method and DDB stage -> results/plan/ [DATASET=waterbirds|celeba|metashift; default all three]
	$(PY) -m bench.plan $(foreach d,$(PLAN_DATASETS),--dataset $(d))

gpu-speed: setup ## GPU session: DDB reference loop vs our stages, ResNet-50 training and its JPEG loader -> results/gpu/<date>_<device>/reference_loop.json [SMOKE=1: tiny, CPU]
	$(WITH_JEMALLOC)$(PY) -m bench.gpu.reference_loop $(if $(filter-out 0 no false,$(SMOKE)),--smoke --out /tmp/spuraug_reference_loop_smoke.json)

# ---- containers and weights (docs/containers.md)
.PHONY: image image-gpu image-cpu weights doctor docker-volumes

image: image-gpu image-cpu ## build both images, tagged spuraug:<version>-gpu and spuraug:<version>-cpu

image-gpu: ## build the GPU image (CUDA 13 runtime, the pinned lock)
	$(DOCKER_CLI) build -f docker/Dockerfile.gpu -t $(IMAGE_GPU) .

image-cpu: ## build the CPU image (python:3.11-slim, CPU torch)
	$(DOCKER_CLI) build -f docker/Dockerfile.cpu -t $(IMAGE_CPU) .

weights: export HF_HUB_OFFLINE := 0
weights: export SPURAUG_OFFLINE := 0
weights: $(if $(DOCKER_ON),docker-volumes,setup) ## download every model of the real benchmark into the caches, verify, print sizes (needs network) [WEIGHTS=names] [DOCKER=1]
	$(if $(DOCKER_ON),$(DOCKER_RUN) spuraug,HF_HUB_OFFLINE=0 SPURAUG_OFFLINE=0 $(PY) -m spuraug.cli) weights fetch $(WEIGHTS)

doctor: $(if $(DOCKER_ON),docker-volumes,setup) ## check GPU, packages, weights, datasets and toy zoo; say what to do [DOCKER=1 [GPU=1]]
	$(if $(DOCKER_ON),$(DOCKER_RUN) spuraug,$(WITH_JEMALLOC)$(PY) -m spuraug.cli) doctor

# Bind-mount sources must exist, or docker creates them owned by root.
docker-volumes:
	mkdir -p "$(HOST_DATA_DIR)" "$(CURDIR)/results" "$(CURDIR)/runs" "$(HOST_HF_HOME)" "$(HOST_TORCH_HOME)"

.PHONY: toy-zoo toy-zoo-check toy-zoo-time
ZOO_THREADS ?= 2
toy-zoo: setup ## train the toy model zoo (inpainter, segmenter, oracle) on the toy world; skipped when its manifest matches [ZOO_THREADS=2]
	$(PY) -m spuraug.toyworld.zoo train --threads $(ZOO_THREADS)

toy-zoo-time: setup ## project the from-nothing `make toy-zoo` time on this machine from two short builds (~6 min) into results/studies/toy_zoo_time/
	$(PY) -m bench.studies.toy_zoo_time --threads $(ZOO_THREADS) --out results/studies/toy_zoo_time/zoo_time_projection.json

toy-zoo-check: setup ## measure the toy zoo's quality (oracle, segmenter IoU, inpainting identity) into results/studies/toy_zoo_time/
	$(PY) -m spuraug.toyworld.zoo check
	$(PY) -m spuraug.toyworld.check --out results/toyworld/zoo_quality.json --grid results/toyworld/zoo_examples.png
