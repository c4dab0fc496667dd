# Two commands do everything on a fresh machine (see README):
#   make quickstart   set up .venv, then run the pipeline on embedded data
#   make test         set up .venv, then run the default test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned, so that pip never resolves a multi-GB CUDA build on CPU machines
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test test-all bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,tracking]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(BIN)/python scripts/quickstart.py

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: setup
	$(BIN)/python scripts/bench_zoo.py

clean:
	rm -rf $(VENV) runs zoos/quickstart*
