# One task file: CI calls `make test` (via .ci/run); `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.DEFAULT_GOAL := help
.PHONY: help run test bench venv clean loadtest soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(TSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP) $@

venv: $(STAMP) ## create .venv and install the project

run: $(STAMP) ## start the whole stack on 127.0.0.1 with embedded Redis and demo data
	$(BIN)/vicino up

test: $(TSTAMP) ## install test deps and run the whole suite (real redis-server, started by fixtures)
	$(BIN)/python -m pytest -q

bench: $(TSTAMP) ## benchmarks: tables on stdout, JSON under bench/results/
	$(BIN)/python -m bench.geo
	$(BIN)/python -m bench.data_layer
	$(BIN)/python -m bench.history
	$(BIN)/python -m bench.recommender
	$(BIN)/python -m bench.push
	$(BIN)/python -m bench.kpis
	$(BIN)/python -m bench.capacity

DURATION ?= 60

loadtest: $(TSTAMP) ## the stack under locust for DURATION s (default 60); report under loadtests/reports/
	$(BIN)/python -m loadtests.run --duration $(DURATION)

soak: $(TSTAMP) ## 10 minutes of load, memory sampled every 10 s: growth per process and Redis (not in CI)
	$(BIN)/python -m loadtests.run --duration 600 --memory-every 10

clean: ## remove .venv and var/
	rm -rf $(VENV) var
