# One task runner: the README and .ci/run call these targets verbatim.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_VERSION = 2.13.0

.PHONY: setup demo test lint typecheck bench clean

# A virtualenv with the pinned CPU build of torch installed *first*, so that resolving
# pacbound's own "torch" requirement never pulls the multi-GB CUDA wheels.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" || \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	bash examples/demo.sh

lint: setup
	$(BIN)/ruff format --check pacbound tests examples benchmarks
	$(BIN)/ruff check pacbound tests examples benchmarks

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/bench_kl_inverse.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
