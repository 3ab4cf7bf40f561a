# bnserve: the commands a user types. `make serve` and `make test` do everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
ARTIFACTS := artifacts
MODEL := $(ARTIFACTS)/model.onnx
CHECKPOINT := $(ARTIFACTS)/checkpoint.pt
IMAGE ?= bnserve:latest

.PHONY: help install model serve test browser screenshot report lint fuzz bench profile soak docker docker-test clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install bnserve with its train and dev extras

model: $(STAMP)  ## train and export the default model to artifacts/
	$(BIN)/python -m model.train --out $(ARTIFACTS)
	$(BIN)/python -m export $(CHECKPOINT) --out $(MODEL)

$(MODEL):
	$(MAKE) model

serve: $(STAMP) $(MODEL)  ## install, make the default model if absent, serve on $(HOST):$(PORT)
	$(BIN)/python -m service --model $(MODEL) --host $(HOST) --port $(PORT)

test: $(STAMP)  ## install and run the whole test suite (installs chromium for the /ui tests if it can)
	@(command -v chromium && command -v chromedriver) >/dev/null || $(MAKE) --no-print-directory browser \
		|| echo "make test: no chromium: the /ui browser tests will be skipped (make browser, as root)"
	$(BIN)/python -m pytest

report: $(STAMP)  ## the training report: what BN does on the bundled data, into docs/report/ (under 15 min)
	$(BIN)/python -m model.report --out docs/report

screenshot: $(STAMP)  ## docs/ui.png: the /ui page after shifted samples, taken by the browser test
	mkdir -p docs && BNSERVE_SCREENSHOT=docs/ui.png $(BIN)/python -m pytest -q tests/ui -k drift_panel

browser:  ## Debian's chromium and chromium-driver, which the /ui browser tests drive
	apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

fuzz: $(STAMP)  ## long schemathesis run: at least 1,000 cases per route, totals printed
	BNSERVE_FUZZ_EXAMPLES=1000 $(BIN)/python -m pytest tests/service/test_fuzz.py -s -q

KSERVE_VENV := .bench/kserve

$(KSERVE_VENV)/.installed:
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet kserve onnxruntime
	touch $@

bench: $(STAMP) $(MODEL) $(KSERVE_VENV)/.installed  ## benchmark (wrk + KServe peer); writes benchmarks/results/latest.md
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m benchmarks --out benchmarks/results $(BENCH_ARGS)

profile: $(STAMP) $(MODEL)  ## py-spy samples a loaded server: where a request's time goes (benchmarks/results/profile.md)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	test -x $(BIN)/py-spy || $(BIN)/pip install -q py-spy
	$(BIN)/python -m benchmarks.profile --out benchmarks/results

soak: $(STAMP) $(MODEL)  ## 60 s at 64 connections over mixed routes: errors and memory growth
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m benchmarks.soak --out benchmarks/results

docker: $(MODEL)  ## build the runtime image with podman (offline base image) or docker
	if command -v podman >/dev/null; then podman build --pull=never --format docker -t $(IMAGE) . ; \
	else docker build -t $(IMAGE) . ; fi

docker-test: $(STAMP)  ## build the image from a fresh clone and run it for real (needs podman or docker)
	$(BIN)/python -m pytest tests/deploy -s -ra

clean:  ## remove the venv, artifacts and caches
	rm -rf $(VENV) $(ARTIFACTS) .pytest_cache .mypy_cache .ruff_cache .hypothesis
