# One task file: CI calls `make test` (via .ci/run); `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.DEFAULT_GOAL := help
.PHONY: help run test test-fast test-e2e test-sdk bench venv clean loadtest soak

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

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

test: $(TSTAMP) ## install test deps and run the whole suite: unit (on both cores), integration and e2e (real redis-server, started by fixtures)
	$(BIN)/python -m pytest -q -n 2 tests/unit
	$(BIN)/python -m pytest -q tests/integration tests/e2e

test-fast: $(TSTAMP) ## unit and integration tiers (real Redis; no vicino up, faults, load smoke run or notebooks)
	$(BIN)/python -m pytest -q -n 2 tests/unit
	$(BIN)/python -m pytest -q tests/integration

test-e2e: $(TSTAMP) ## the e2e tier: vicino up, served processes, faults, the load smoke run, notebooks
	$(BIN)/python -m pytest -q tests/e2e

test-sdk: $(TSTAMP) ## the TypeScript SDK (clients/typescript): npm ci, build, its unit tests and its tests against vicino up (needs Node >= 18)
	$(BIN)/python -m pytest -q tests/e2e/test_sdk.py

bench: $(TSTAMP) ## benchmarks: tables on stdout, JSON under bench/results/
	$(BIN)/python -m bench.geo
	$(BIN)/python -m bench.data_layer
	$(BIN)/python -m bench.history
	$(BIN)/python -m bench.customer_import
	$(BIN)/python -m bench.recommender
	$(BIN)/python -m bench.push
	$(BIN)/python -m bench.kpis
	$(BIN)/python -m bench.capacity
	$(BIN)/python -m bench.replica_wait
	$(BIN)/python -m bench.rate_limit
	$(BIN)/python -m bench.front_door
	$(BIN)/python -m bench.campaigns

DURATION ?= 60

loadtest: $(TSTAMP) ## the stack under locust for DURATION s (default 60; FAILOVER_AT=S: on a Redis Cluster whose master dies at S s); report under loadtests/reports/
	$(BIN)/python -m loadtests.run --duration $(DURATION) $(if $(FAILOVER_AT),--failover-at $(FAILOVER_AT))

soak: $(TSTAMP) ## 10 minutes of load, memory sampled every 10 s: growth per process and Redis (not in CI)
	$(BIN)/python -m loadtests.run --duration 600 --memory-every 10

clean: ## remove .venv and var/
	rm -rf $(VENV) var
