# Keydesk developer commands. `make run` serves the portal and API; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml clients/python/pyproject.toml | cksum | cut -d' ' -f1)
export KEYDESK_TEST_PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
export KEYDESK_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
# pytest-xdist workers for `make test` (0: one process). Measured on 2 cores with 2,100 tests:
# one process ~45 min, three workers 15 min (most tests wait on gunicorn, browsers and
# databases, not on the CPU); each xdist worker gets its own PostgreSQL database.
PYTEST_WORKERS ?= 3
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test lint format clean browser e2e bench screenshots
.PHONY: prometheus

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed; on Debian: apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install --quiet -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install --quiet -e ./clients/python 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import flask, flask_login, flask_wtf, flask_sqlalchemy, flask_migrate, argon2, flask_limiter, psycopg, pytest, keydesk_client"
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/flask --app app db upgrade
	@echo
	@echo "  Keydesk is starting at http://$(HOST):$(PORT)"
	@echo "  Sign in: open http://$(HOST):$(PORT)/register and create your organization"
	@echo "  (you become its admin), or create a user from the command line:"
	@echo "    $(BIN)/flask --app app users create you@example.com --password '...' --tenant acme --admin"
	@echo
	$(BIN)/flask --app app run --host $(HOST) --port $(PORT)

# The e2e tests drive Debian's Chromium (never `playwright install`) and inject axe-core.
CHROMIUM := /usr/bin/chromium
AXE := node_modules/axe-core/axe.min.js

browser: $(CHROMIUM) $(AXE)

# apt-get as root, or through passwordless sudo; otherwise say what to run.
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
	else echo "missing $(1): run 'apt-get install -y $(1)' as root (and no sudo here)"; exit 1; fi; \
	$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1)

$(CHROMIUM):
	@$(call APT_INSTALL,chromium)

# tests/test_operations_servers.py scrapes /metrics with Debian's Prometheus.
PROMETHEUS := /usr/bin/prometheus

prometheus: $(PROMETHEUS)

$(PROMETHEUS):
	@$(call APT_INSTALL,prometheus)

test: prometheus

$(AXE): package.json package-lock.json
	@command -v npm >/dev/null || { $(call APT_INSTALL,npm); }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

e2e: $(STAMP) browser
	$(BIN)/pytest tests/e2e

# Refresh the README's pictures in docs/screenshots/ (make test takes them into a temporary folder).
screenshots: $(STAMP) browser
	KEYDESK_SCREENSHOTS=1 $(BIN)/pytest tests/e2e/test_screenshots.py tests/e2e/test_account_security.py

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n $(PYTEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Load benchmark (bench/run.py): seeds fresh databases, serves with gunicorn, drives with wrk.
# Options: make bench BENCH_ARGS="--keys 1000,1000000 --db postgresql+psycopg://postgres@127.0.0.1/postgres"
# or BENCH_KEYS / BENCH_DB / BENCH_WORKERS / BENCH_DURATION / BENCH_ROUNDS / BENCH_MEMORY=1 /
# BENCH_LEAN=1 (also bench/lean_app.py: the lookup alone, as a reference).
# BENCH_METRICS=1: also Keydesk with metrics on (KEYDESK_METRICS_TOKEN), side by side.
bench: $(STAMP)
	@command -v wrk >/dev/null || { \
	  echo "Installing wrk (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache node_modules
