# The README's two commands: `make run` serves the proxy, `make test` checks everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 4000
POLICIES ?= ./policies
DATA_DIR ?= ./data

.PHONY: run test lint typecheck pytest bench install clean

# pip (not uv/poetry): the CPU build of torch pinned in requirements.lock lies on this disk and
# only pip looks there. The lock pins every package exactly, so an install is reproducible.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/memento-proxy serve --host $(HOST) --port $(PORT) --policies $(POLICIES) --data-dir $(DATA_DIR)

lint: $(STAMP)
	$(BIN)/ruff check proxy storage tests bench
	$(BIN)/ruff format --check proxy storage tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
