# leukonet: the two commands are `make demo` and `make test`; both build .venv when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv demo test test-fast bench lint typecheck check clean

all: test

# uv applies overrides.txt (TensorFlow 2.12's typing-extensions<4.6 cap vs pydantic 2); see README.
$(STAMP): pyproject.toml overrides.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 11) else \
		"leukonet needs Python 3.10 or 3.11 (TensorFlow 2.12 + TF-Slim); found %d.%d" % v)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]' --override overrides.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/leukonet demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

bench: $(STAMP)
	mkdir -p var
	LEUKONET_BENCH=1 $(BIN)/python -m pytest tests/benchmarks -s -p no:cacheprovider $(PYTEST_ARGS) 2>&1 | tee var/bench.log
	@grep "^BENCH " var/bench.log || true

lint: $(STAMP)
	$(BIN)/ruff check shared hub agents trainer tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
