# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup system-deps demo test unit down lint typecheck bench bench-triggers bench-attribution bench-analytics bench-history bench-latency bench-scale bench-scale-cluster clean

WEB    := services/analytics/web

setup: system-deps $(VENV)/.installed $(WEB)/node_modules/.installed

system-deps:
	@bash deploy/local/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## The analytics page's chart library, pinned in its package-lock.json (no build step).
$(WEB)/node_modules/.installed: $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## The whole pipeline on a demo stream, on the local stack (Kafka + Redis on loopback).
demo: setup
	$(BIN)/crm demo

## Lint, types, and every test: unit, integration and end-to-end; the real Kafka and Redis are
## started by the suite.
test: setup
	$(BIN)/ruff check services crm bench tests && $(BIN)/ruff format --check services crm bench tests
	$(BIN)/mypy
	$(BIN)/pytest -q

unit: setup
	$(BIN)/pytest -q tests/unit

down:
	$(BIN)/crm stack down

lint: setup
	$(BIN)/ruff check services crm bench tests && $(BIN)/ruff format --check services crm bench tests

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.attribution
	$(BIN)/python -m bench.analytics
	$(BIN)/python -m bench.history
	$(BIN)/python -m bench.latency --tick 0.05 --batch-within 0.02
	$(BIN)/python -m bench.scale
	CRM_BENCH_CLUSTER=1 $(BIN)/python -m bench.scale

bench-attribution: setup
	$(BIN)/python -m bench.attribution

bench-analytics: setup
	$(BIN)/python -m bench.analytics

bench-history: setup
	$(BIN)/python -m bench.history

bench-latency: setup
	$(BIN)/python -m bench.latency --tick 0.05 --batch-within 0.02

bench-scale: setup
	$(BIN)/python -m bench.scale

bench-scale-cluster: setup
	CRM_BENCH_CLUSTER=1 $(BIN)/python -m bench.scale

bench-triggers: setup
	$(BIN)/python -m bench.triggers

clean: down
	rm -rf .run
