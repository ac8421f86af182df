# Two entry points that work on a fresh machine with Python 3.11 and Java 17:
#   make demo   set up, generate sample data, materialize every sample week, print where things are
#   make test   set up, run the whole test suite (what CI runs)
# and, for development:
#   make check  the fast tier: unit and local-Spark tests, no e2e, cluster, Postgres or Docker-stack tests
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

# The fast tier leaves out the tests that start servers, clusters or browsers (markers in pyproject.toml).
CHECK_MARKERS := not e2e and not cluster and not postgres and not docker_stack

.PHONY: setup demo test check bench dev mlflow-ui java clean

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
	@started=$$(date +%s); $(BIN)/python -m pytest; status=$$?; \
	  echo "make test: pytest took $$(( $$(date +%s) - started )) s (wall)"; exit $$status

check: setup
	@started=$$(date +%s); $(BIN)/python -m pytest -m "$(CHECK_MARKERS)"; status=$$?; \
	  echo "make check: pytest took $$(( $$(date +%s) - started )) s (wall)"; exit $$status

# The last of four weeks at 1M sessions through the weekly job; the earlier weeks are kept in
# data/bench-1000000 for reruns.
bench: setup
	$(BIN)/python bench/bench.py --sessions 1000000 --json data/bench-1000000/bench.json

dev: setup
	$(BIN)/dagster dev -w workspace.yaml

mlflow-ui: setup
	@mkdir -p data/mlflow
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port 5000

clean:
	rm -rf data/lake data/published $(SAMPLE_RAW)
