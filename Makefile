# Two commands on a fresh machine (Python 3.11 + Debian packages):
#   make dev    run the broker wired to its embedded Entra emulator
#               (options: make dev ARGS="--listen 127.0.0.1:5001", or Broker__Listen=127.0.0.1:5001 make dev)
#   make test   run the whole test suite (lint, types, tests)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/agent-token-broker dev $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check agent_token_broker entra_emulator tests loadtests
	$(BIN)/mypy

test: lint
	./scripts/ensure-system-packages
	./scripts/run-tests $(BIN)/python

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache
