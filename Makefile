# DataAwarePrune: one-command set-up, tests and benchmarks.
#   make bench   -> installs on first use, then runs the benchmark (PROFILE=quick by default)
#   make test    -> installs on first use, then runs the fast test set plus the end-to-end tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick
SEEDS ?=
EPISODES ?=
WORKERS ?= 1
PYTEST_ARGS ?= -m "not slow or e2e"

.PHONY: install test test-all bench lint clean

install: $(STAMP)

# Re-runs only when the dependency list changes; a second `make install` is a no-op.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.run --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(EPISODES),--episodes $(EPISODES)) --workers $(WORKERS)

lint: $(STAMP)
	$(PY) -m ruff check pruning_env agents benchmarks tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
