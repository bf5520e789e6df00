# FLOps: `make demo` runs the main job on this machine; `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup test test-fast lint demo bench clean

setup: $(STAMP)

# torch is pinned to the CPU build that lies on disk here; a looser pin pulls CUDA wheels.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check flops flops_utils flops_manager image_builder aggregator learner observatory tests bench
	$(VENV)/bin/mypy

# Starts the embedded stack (left running for the MLflow UI and the served model;
# `.venv/bin/flops down` stops it), partitions digits over 2 nodes, trains and serves.
demo: setup
	$(VENV)/bin/flops demo

# The quick benchmark set (e2e, overhead, api_load, scale, images and gpu, which skip themselves
# without buildah / a CUDA device), then plots and tables in docs/performance.md. About 15 min on
# 2 cores; results in bench/results/. Sizes and flags: docs/performance.md.
bench: setup
	$(PY) bench/run_all.py --quick

clean:
	rm -rf .flops .pytest_cache .mypy_cache .ruff_cache
