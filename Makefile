# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   install, then run training_job on embedded defaults
#   make test   install (incl. test tools and system packages when root), then run the tests
# Everything local goes under ML_PLATFORM_HOME (default .ml_platform/).

PYTHON ?= python3
VENV ?= .venv
TOOLS_VENV ?= .venv-tools
BIN := $(VENV)/bin
export ML_PLATFORM_HOME ?= $(CURDIR)/.ml_platform
export DAGSTER_HOME ?= $(ML_PLATFORM_HOME)/dagster
export MLFLOW_DISABLE_TELEMETRY ?= true
export GX_ANALYTICS_ENABLED ?= False
export DAGSTER_DISABLE_TELEMETRY ?= true
SYSTEM_PACKAGES := nginx prometheus prometheus-pushgateway chromium postgresql
PYTEST_ARGS ?=

.PHONY: demo dev test install install-dev system-deps tools lint typecheck benchmarks clean-home

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## Debian packages the tests drive for real (nginx, Prometheus, Pushgateway, Chromium, PostgreSQL).
system-deps:
	@missing=""; \
	for cmd in nginx prometheus prometheus-pushgateway chromium; do \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$cmd"; \
	done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "warning: missing$$missing (install them, or tests that need them are skipped)"; \
	  fi; \
	fi

## checkov pins many libraries of its own, so it lives in a separate venv.
tools: $(TOOLS_VENV)/bin/checkov
$(TOOLS_VENV)/bin/checkov:
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/pip install --quiet checkov

demo: install
	$(BIN)/python -m ml_platform.bootstrap
	$(BIN)/dagster job execute -m ml_platform -j training_job
	@echo ""
	@echo "training_job finished: the model is registered in $(ML_PLATFORM_HOME)/mlflow (alias 'challenger')."
	@echo "Open the Dagster UI:   make dev    then browse http://127.0.0.1:3000"

## Dagster's UI on :3000 and, for a local MLflow store, an MLflow UI on :$(MLFLOW_UI_PORT) beside it (stopped
## when dagster dev exits), so the MLflow links in asset metadata (drift reports, versions) open locally.
MLFLOW_UI_PORT ?= 5000
DAGSTER_DEV ?= $(BIN)/dagster dev -h 127.0.0.1 -p 3000
dev: install
	$(BIN)/python -m ml_platform.bootstrap
	@uri="$${MLFLOW_TRACKING_URI:-$$($(BIN)/python -c 'from ml_platform import settings; print(settings.mlflow_tracking_uri())')}"; \
	pid=""; \
	case "$$uri" in \
	  http://*|https://*) ui="$${MLFLOW_UI_URL:-$$uri}";; \
	  *) ui="http://127.0.0.1:$(MLFLOW_UI_PORT)"; \
	     setsid $(BIN)/mlflow ui --backend-store-uri "$$uri" -h 127.0.0.1 -p $(MLFLOW_UI_PORT) \
	       >"$(ML_PLATFORM_HOME)/mlflow-ui.log" 2>&1 & pid=$$!; \
	     echo "MLflow UI: $$ui (log: $(ML_PLATFORM_HOME)/mlflow-ui.log)";; \
	esac; \
	trap 'if [ -n "$$pid" ]; then kill -TERM -$$pid 2>/dev/null; fi' EXIT INT TERM; \
	MLFLOW_UI_URL="$$ui" $(DAGSTER_DEV)

test: install-dev system-deps tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check ml_platform serving ml_platform_tests benchmarks
	$(BIN)/mypy ml_platform serving
	$(BIN)/lint-imports

benchmarks: install-dev
	$(BIN)/python benchmarks/load_time.py

clean-home:
	rm -rf $(ML_PLATFORM_HOME)
