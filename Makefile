# Two commands for a newcomer:  `make demo`  and  `make test`.
# Everything installs into ./.venv from PyPI; nothing else is needed (no Docker).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit lint type tox bench dist hooks clean

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
	$(BIN)/pytest tests/unit tests/ops

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

type: $(STAMP)
	$(BIN)/mypy

## The full matrix: py311, py312, py313, lint, type, coverage, wheel (TOXENV=py312 for
## one). Interpreters installed by pyenv are put on PATH directly (tox's interpreter
## discovery does not go through shims). One env at a time: each runs the whole suite,
## which wants both cores of a small machine to itself.
tox: $(STAMP)
	PATH="$$(ls -d $$HOME/.pyenv/versions/3.1[123].*/bin 2>/dev/null | tr '\n' ':')$$PATH" \
		$(BIN)/tox run $(if $(TOXENV),-e $(TOXENV))

## The wheel and the sdist, in dist/.
dist: $(STAMP)
	$(BIN)/python -m build --outdir dist

## Run the linters before every commit.
hooks: $(STAMP)
	$(BIN)/pre-commit install

## End to end on embedded services: 1M events x 3 runs, the baseline loop, latency at 5k/s.
bench: $(STAMP)
	$(BIN)/kingest bench

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache .coverage* htmlcov dist build
