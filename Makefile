# leukonet: the two commands are `make demo` and `make test`; both build .venv when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
PYTEST_ARGS ?=

.PHONY: all venv lock demo services test test-fast bench lint format typecheck check clean

all: test

# The environment is exactly requirements.lock (hashes checked), then leukonet itself, editable.
# `uv pip sync` removes anything the lock does not list, so two fresh machines get the same set.
$(STAMP): pyproject.toml overrides.txt $(LOCK)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 11) else \
		"leukonet needs Python 3.10 or 3.11 (TensorFlow 2.12 + TF-Slim); found %d.%d" % v)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep -E '^uv==' $(LOCK) | cut -d' ' -f1)"
	$(BIN)/uv pip sync --python $(BIN)/python --require-hashes $(LOCK)
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# Refresh the lock after changing dependencies in pyproject.toml. uv applies overrides.txt
# (TensorFlow 2.12's typing-extensions<4.6 cap vs pydantic 2); see README.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --override overrides.txt --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes --no-header --quiet -o $(LOCK)
	rm -f $(STAMP)
	$(MAKE) venv

# The demo's hub starts its own Mosquitto (per-agent logins); services.sh demo installs the binary.
demo: $(STAMP)
	./services.sh demo
	$(BIN)/leukonet demo

# Mosquitto, PostgreSQL and Chromium for the suite: installed and started as root, else the
# exact commands to run are printed (services.sh).
services:
	./services.sh test

test: $(STAMP) services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

bench: $(STAMP)
	mkdir -p var
	LEUKONET_BENCH=1 $(BIN)/python -m pytest tests/benchmarks -s -p no:cacheprovider $(PYTEST_ARGS) 2>&1 | tee var/bench.log
	@grep "^BENCH " var/bench.log || true

lint: $(STAMP)
	$(BIN)/ruff check shared hub agents trainer tests
	$(BIN)/ruff format --check shared hub agents trainer tests

format: $(STAMP)
	$(BIN)/ruff format shared hub agents trainer tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
