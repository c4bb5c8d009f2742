# openqwen: the two commands a fresh machine needs are `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
# Tests run on both cores; slow tests are a separate target that CI also runs.
PYTEST  := $(BIN)/python -m pytest -n 2 --dist loadfile

.PHONY: install demo demo-quick test test-slow test-all bench clean help

help:
	@echo "make demo       install into .venv and run the nano recipe end to end"
	@echo "make test       install into .venv and run the default test suite"
	@echo "make test-slow  run the slow tests (CI runs them too)"
	@echo "make bench      run the benchmarks and rewrite docs/benchmarks/*"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/openqwen demo $(if $(OUT),--out $(OUT),)

demo-quick: install
	$(BIN)/openqwen demo --quick

test: install
	$(PYTEST) -m "not slow" tests

test-slow: install
	$(PYTEST) -m "slow" tests

test-all: install
	$(PYTEST) tests

bench: install
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
