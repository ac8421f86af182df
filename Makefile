# Two entry points that work on a fresh machine with Python 3.11 and Java 17:
#   make demo   set up, generate sample data, materialize every sample week, print where things are
#   make test   set up, run the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SAMPLE_RAW := data/sample/raw
SAMPLE_SESSIONS ?= 20000
SAMPLE_WEEKS ?= 4

export DAGSTER_HOME ?= $(CURDIR)/dagster_home
export GX_ANALYTICS_ENABLED := False
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/data/mlflow/mlflow.db

.PHONY: setup demo test bench dev mlflow-ui java clean

java:
	@scripts/check_java.sh

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0] + ": set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,docker]'
	@touch $@

setup: java $(VENV)/.installed
	@scripts/ensure_native_blas.sh

$(SAMPLE_RAW)/.generated: | setup
	$(BIN)/recsys generate --sessions $(SAMPLE_SESSIONS) --weeks $(SAMPLE_WEEKS) --start 2022-08-01 --seed 7 --out $(SAMPLE_RAW)
	@touch $@

demo: setup $(SAMPLE_RAW)/.generated
	@mkdir -p data/mlflow
	$(BIN)/python -m jobs.run_weeks --keep-going
	@$(BIN)/python scripts/demo_report.py

test: setup
	@scripts/ensure_chromium.sh
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/bench.py

dev: setup
	$(BIN)/dagster dev -w workspace.yaml

mlflow-ui: setup
	@mkdir -p data/mlflow
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port 5000

clean:
	rm -rf data/lake data/published $(SAMPLE_RAW)
