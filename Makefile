# Every target installs what it needs first (.venv from constraints.txt, Kafka jars via Maven).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo demo-drift test test-fast test-faults lint fmt bench kafka-up clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m stream kafka fetch >/dev/null
	touch $(STAMP)

install: $(STAMP) ## create .venv, install pinned packages and fetch the Kafka jars

demo: $(STAMP) ## the main job end to end on embedded Kafka + chdb
	$(BIN)/python -m stream demo

demo-drift: $(STAMP) ## the monitoring loop: drift detected, challenger retrained, shadowed, promoted
	$(BIN)/python -m stream demo --drift

test: $(STAMP) ## the test suite but the fault suite (starts its own Kafka broker)
	$(BIN)/python -m pytest -m "not fault" $(PYTEST_ARGS)

test-fast: $(STAMP) ## tests that need no Kafka broker
	$(BIN)/python -m pytest -m "not kafka" $(PYTEST_ARGS)

test-faults: $(STAMP) ## the fault suite: broker, worker and ClickHouse failures (about 6 min; CI runs it after make test)
	$(BIN)/python -m pytest -m fault $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint and format check), mypy and the import contracts (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy stream simulator batch_training
	$(BIN)/lint-imports

fmt: $(STAMP) ## apply ruff's fixes and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run every benchmark in bench/ and print its figures
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

kafka-up: $(STAMP) ## run an embedded Kafka broker in the foreground
	$(BIN)/python -m stream kafka up

clean: ## remove runtime data (var/), keep .venv and the jar cache
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
