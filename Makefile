# Payment Service — the two commands a newcomer needs are `make run` and `make test`.
# Everything runs from a local virtual environment that these targets create.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv installs .venv from the committed uv.lock (`make lock` refreshes it). The version
# `make venv` bootstraps with pip is the one uv.lock pins, so the sync keeps it.
UV := $(BIN)/uv
UV_VERSION := $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"/\1/p;}' uv.lock 2>/dev/null)
# uv reads no pip.conf: it uses PyPI, the index uv.lock records, unless UV_DEFAULT_INDEX
# (or UV_INDEX_URL) names a mirror of it.
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON_DOWNLOADS := never
PORT ?= 8082
# Ports of `make run`'s sandbox peers (payment-service dev --trip-port ... --control-port).
TRIP_PORT ?= 8081
NOTIFICATION_PORT ?= 8084
CONTROL_PORT ?= 8085

.DEFAULT_GOAL := help

.PHONY: help venv run test test-fast lint format lock check-lock migration

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(UV):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv$(if $(UV_VERSION),==$(UV_VERSION))'

# The sandbox extra (sandbox/, a workspace member) is what `run`, `test` and `bench` use.
$(STAMP): pyproject.toml sandbox/pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --extra sandbox --python $(BIN)/python
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the project with its dev tools and the sandbox

run: $(STAMP) ## Run everything locally: embedded PostgreSQL, seed, sandbox peers, API on :8082 (PORT, TRIP_PORT, NOTIFICATION_PORT, CONTROL_PORT)
	$(BIN)/payment-service dev --port $(PORT) --trip-port $(TRIP_PORT) \
		--notification-port $(NOTIFICATION_PORT) --control-port $(CONTROL_PORT)

lock: | $(UV) ## Refresh uv.lock after editing pyproject.toml's dependencies (then commit it)
	$(UV) lock

check-lock: | $(UV) ## Fail when uv.lock is out of date with pyproject.toml
	@$(UV) lock --check --quiet 2>/dev/null || { echo "error: uv.lock is out of date with pyproject.toml: run 'make lock' and commit uv.lock" >&2; exit 1; }

test: check-lock $(STAMP) ## Run the whole test suite (TEST_DATABASE_URL, else an embedded PostgreSQL)
	@bash scripts/ci-tools.sh || echo "warning: kubectl/promtool could not be installed; their checks skip here (CI installs them)" >&2
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

test-fast: $(STAMP) ## Unit and integration tests only (no end-to-end servers)
	$(BIN)/pytest tests/unit tests/integration

# Migrations live in the package (the wheel ships them): src/payment_service/migrations/versions/.
migration: $(STAMP) ## New Alembic migration in src/payment_service/migrations/versions/ (MSG="what it does")
	@test -n "$(MSG)" || { echo "error: name the migration: make migration MSG=\"add a column\"" >&2; exit 1; }
	$(BIN)/alembic revision -m "$(MSG)"

lint: $(STAMP) ## ruff check and format check, mypy --strict on src/ and sandbox/src/ ([tool.mypy])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## ruff format + fix imports
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# ---------------------------------------------------------------------------------
# Deploy and operations: Docker Compose (compose.yaml), Kubernetes (k8s/), backups.
# Targets that need Docker or kubectl check for them first and stop with one line.

COMPOSE ?= docker compose
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo $(BIN)/kubectl)
VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
IMAGE ?= payment-service:$(VERSION)
SERVICE ?= api
PROFILES ?=
COMPOSE_PROFILES_ARGS := $(foreach p,$(PROFILES),--profile $(p))
BACKUP_DIR ?= backups
BACKUP ?= $(shell ls -1t $(BACKUP_DIR)/*.dump 2>/dev/null | head -n 1)
K8S_OVERLAY ?= minikube
K8S_NAMESPACE ?= payments
HEALTH_URL ?= http://localhost:$(PORT)/health
# True when the overlay's secretGenerator reads secret.env itself (production); otherwise
# (minikube) k8s-deploy creates the Secret from secret.env before applying.
SECRET_ENV_GENERATED = grep -qE '^[[:space:]]*- secret\.env[[:space:]]*$$' k8s/overlays/$(K8S_OVERLAY)/kustomization.yaml

define HEALTH_PY
import sys, urllib.error, urllib.request
url = sys.argv[1]
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        print(response.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.read().decode())
    sys.exit(1)
except OSError as exc:
    sys.exit(f"error: {url} is not answering: {getattr(exc, 'reason', exc)}")
endef
export HEALTH_PY

.PHONY: setup build up down restart logs shell db-shell db-backup db-restore health test-api \
	k8s-image k8s-deploy k8s-delete clean bench ci-tools require-docker require-env require-kubectl

require-docker:
	@command -v docker >/dev/null 2>&1 || { echo "error: docker not found: install Docker (Engine or Desktop) to use '$(MAKECMDGOALS)'" >&2; exit 1; }
	@$(COMPOSE) version >/dev/null 2>&1 || { echo "error: '$(COMPOSE)' not available: install the Docker Compose v2 plugin (or set COMPOSE=...)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "error: the Docker daemon is not reachable: start Docker and retry '$(MAKECMDGOALS)'" >&2; exit 1; }

require-env:
	@test -f .env || { echo "error: no .env: run 'make setup' (copies .env.example), then set DB_PASS in .env" >&2; exit 1; }

require-kubectl:
	@command -v $(KUBECTL) >/dev/null 2>&1 || { echo "error: kubectl not found: install kubectl (or run 'make ci-tools') to use '$(MAKECMDGOALS)'" >&2; exit 1; }

setup: $(STAMP) ## Virtual environment + .env from .env.example (then set DB_PASS in .env)
	@if [ -f .env ]; then echo ".env exists: left as it is"; \
	elif [ -f .env.example ]; then cp .env.example .env && echo "created .env from .env.example: set DB_PASS before 'make up'"; \
	else echo "error: .env.example is missing" >&2; exit 1; fi

build: require-docker ## Build the image payment-service:<version> with Docker Compose
	$(COMPOSE) build

up: require-docker require-env ## Start PostgreSQL, migrate+seed, API on :8082 (PROFILES=monitoring adds Prometheus/Grafana)
	$(COMPOSE) $(COMPOSE_PROFILES_ARGS) up -d --build
	@echo "API: http://localhost:$(PORT)  (make health, make logs)"
	@if [ -n "$(filter monitoring,$(PROFILES))" ]; then echo "Prometheus: http://localhost:9090  Grafana: http://localhost:3000"; fi

down: require-docker ## Stop and remove the containers (the database volume is kept)
	$(COMPOSE) --profile monitoring down --remove-orphans

restart: require-docker ## Restart the API container
	$(COMPOSE) restart api

logs: require-docker ## Follow the logs of a service (SERVICE=api|migrate|db|prometheus|grafana)
	$(COMPOSE) logs -f --tail=200 $(SERVICE)

shell: require-docker ## A shell inside the running API container
	$(COMPOSE) exec api /bin/sh

db-shell: require-docker ## psql on the compose database
	$(COMPOSE) exec db sh -c 'exec psql -U "$$POSTGRES_USER" -d "$$POSTGRES_DB"'

db-backup: require-docker ## pg_dump the compose database to backups/payment_db-<UTC time>.dump
	@mkdir -p $(BACKUP_DIR)
	@file=$(BACKUP_DIR)/payment_db-$$(date -u +%Y%m%dT%H%M%SZ).dump; \
	if $(COMPOSE) exec -T db sh -c 'exec pg_dump -U "$$POSTGRES_USER" -d "$$POSTGRES_DB" --format=custom --no-owner' > "$$file.partial"; \
	then mv "$$file.partial" "$$file" && echo "backup written to $$file"; \
	else rm -f "$$file.partial"; echo "error: pg_dump failed, no backup written" >&2; exit 1; fi

db-restore: require-docker ## Restore BACKUP=<file> (default: newest in backups/); stops the API meanwhile
	@test -n "$(BACKUP)" && test -f "$(BACKUP)" || { echo "error: no backup to restore: pass BACKUP=$(BACKUP_DIR)/<file>.dump" >&2; exit 1; }
	@echo "restoring $(BACKUP) into the compose database (existing objects are replaced)"
	$(COMPOSE) stop api
	$(COMPOSE) exec -T db sh -c 'exec pg_restore -U "$$POSTGRES_USER" -d "$$POSTGRES_DB" --clean --if-exists --no-owner --single-transaction' < "$(BACKUP)"
	$(COMPOSE) start api

health: ## GET /health of the running service (HEALTH_URL=..., default localhost:8082)
	@$(PYTHON) -c "$$HEALTH_PY" "$(HEALTH_URL)"

test-api: ## Run the seed's curl checks against the running service (scripts/test_payment_api.sh)
	bash scripts/test_payment_api.sh

k8s-image: ## Build the image inside minikube (no local Docker needed)
	@command -v minikube >/dev/null 2>&1 || { echo "error: minikube not found: install it, or push $(IMAGE) to your cluster's registry" >&2; exit 1; }
	minikube image build -t $(IMAGE) .

k8s-deploy: require-kubectl ## kubectl apply -k k8s/overlays/<K8S_OVERLAY=minikube>; waits for the Job and the rollout
	@secret=k8s/overlays/$(K8S_OVERLAY)/secret.env; \
	if [ ! -f $$secret ]; then \
	  if [ "$(K8S_OVERLAY)" = minikube ]; then \
	    umask 077; echo "DB_PASS=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))')" > $$secret; \
	    echo "wrote $$secret with a random DB_PASS (git-ignored)"; \
	  elif $(SECRET_ENV_GENERATED); then \
	    echo "error: $$secret is missing: copy secret.env.example and set DB_PASS" >&2; exit 1; \
	  fi; \
	fi; \
	if [ -f $$secret ] && ! $(SECRET_ENV_GENERATED); then \
	  echo "creating Secret payment-service-db in namespace $(K8S_NAMESPACE) from $$secret"; \
	  $(KUBECTL) create namespace $(K8S_NAMESPACE) --dry-run=client -o yaml | $(KUBECTL) apply -f - >/dev/null; \
	  $(KUBECTL) -n $(K8S_NAMESPACE) create secret generic payment-service-db --from-env-file=$$secret \
	    --dry-run=client -o yaml | $(KUBECTL) apply -f -; \
	fi
	$(KUBECTL) -n $(K8S_NAMESPACE) delete job payment-service-migrate --ignore-not-found
	$(KUBECTL) apply -k k8s/overlays/$(K8S_OVERLAY)
	$(KUBECTL) -n $(K8S_NAMESPACE) wait --for=condition=complete job/payment-service-migrate --timeout=300s
	$(KUBECTL) -n $(K8S_NAMESPACE) rollout status deployment/payment-service --timeout=300s

k8s-delete: require-kubectl ## Delete everything k8s-deploy created (namespace payments, its database too)
	$(KUBECTL) delete -k k8s/overlays/$(K8S_OVERLAY) --ignore-not-found

clean: ## Remove build outputs and caches (keeps .venv, .env, .data and backups)
	rm -rf build dist .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +

bench: $(STAMP) ## Load benchmark of the service (python -m bench)
	$(BIN)/python -m bench $(BENCH_ARGS)

ci-tools: ## Install kubectl and promtool for tests/deploy when missing (scripts/ci-tools.sh)
	bash scripts/ci-tools.sh
