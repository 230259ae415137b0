# Payment Service — the two commands a newcomer needs are `make run` and `make test`.
# Everything runs from a local virtual environment that these targets create.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8082

.DEFAULT_GOAL := help

.PHONY: help venv run test test-fast lint format

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the project with its dev tools

run: $(STAMP) ## Run everything locally: embedded PostgreSQL, migrations, seed, sandbox peers, API on :8082
	$(BIN)/payment-service dev --port $(PORT)

test: $(STAMP) ## Run the whole test suite (TEST_DATABASE_URL, else an embedded PostgreSQL)
	$(BIN)/ruff check .
	$(BIN)/pytest

test-fast: $(STAMP) ## Unit and integration tests only (no end-to-end servers)
	$(BIN)/pytest tests/unit tests/integration

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check .

format: $(STAMP) ## ruff format + fix imports
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
