# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export CARGO_TERM_COLOR := never
# Cargo profile of the extension: release (default, used by CI and benchmarks) or fastbuild.
PROFILE ?= release

.PHONY: all venv build demo test test-rust test-python bench clean bench-deps

all: build

$(VENV)/.deps-stamp: requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps-stamp

# Build the extension in release mode and install it into the venv.
build: venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --profile $(PROFILE)

demo: build
	$(PY) -m vecfusion.demo

test-rust:
	cargo test --quiet

test-python: build
	$(PY) -m pytest -q

test: build test-rust test-python

clean:
	rm -rf $(VENV) target

# Benchmark peers (faiss-cpu, data packages...): requirements-bench.txt.
bench-deps: venv
	$(PIP) install --quiet -r requirements-bench.txt
