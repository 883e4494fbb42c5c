# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export CARGO_TERM_COLOR := never
# Cargo profile of the extension: release (default, used by CI and benchmarks) or fastbuild.
PROFILE ?= release

.PHONY: all venv build demo test test-rust test-python bench-deps bench-formats clean torch-deps torch-ext

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

$(VENV)/.demo-stamp: requirements-demo.txt | venv
	$(PIP) install --quiet -r requirements-demo.txt
	touch $@

demo: build $(VENV)/.demo-stamp
	$(PY) scripts/demo.py

# Peers for benches/ (gensim, finalfusion-python, ...): `make bench-deps`, then run a script,
# e.g. `.venv/bin/python benches/bench_lookup.py`.
bench-deps: build
	$(PIP) install --quiet cython wheel setuptools
	$(PIP) install --quiet --no-build-isolation -r requirements-bench.txt

test-rust:
	cargo test --quiet

# torch, nvcc wheels and the cuda/ extension (vecfusion_ops) for vecfusion.torch. The extension is
# rebuilt only when its sources change (the stamp); a clean build compiles the CUDA kernels with the
# nvcc wheels (sm_80 + sm_90), GPU or not.
# --no-cache-dir: the CUDA wheels are ~3 GB; a second copy in pip's cache can fill a small CI disk.
$(VENV)/.torch-deps-stamp: $(VENV)/.deps-stamp requirements-torch.txt
	@df -h . | awk 'NR==2 {print "torch-deps: " $$4 " free on " $$6 " (torch + CUDA wheels need ~7 GB)"}'
	$(PIP) install --quiet --no-cache-dir -r requirements-torch.txt
	touch $@

torch-deps: $(VENV)/.torch-deps-stamp

TORCH_EXT_SRC := cuda/setup.py cuda/build.sh $(wildcard cuda/csrc/*.cpp cuda/csrc/*.h cuda/csrc/cuda/*.cu cuda/vecfusion_ops/*.py)
$(VENV)/.torch-ext-stamp: $(VENV)/.torch-deps-stamp $(TORCH_EXT_SRC)
	bash cuda/build.sh $(PY)
	touch $@

torch-ext: $(VENV)/.torch-ext-stamp

test-python: build torch-ext
	VECFUSION_REQUIRE_TORCH=1 $(PY) -m pytest -q

test: build test-rust test-python

# word2vec / text / fastText loading beside gensim and fastText (1M x 300 files in benches/_data/).
bench-formats: build bench-deps
	$(PY) benches/bench_formats.py

clean:
	rm -rf $(VENV) target

