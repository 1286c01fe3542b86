# The README's two commands: `make run` serves the proxy, `make test` checks everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run PORT=8080 DATA_DIR=/tmp/memento` (also HOST, POLICIES): a variable given on make's
# command line becomes the server's flag. Without it the server's own settings apply:
# `MEMENTO_PORT=8080 make run`, else 127.0.0.1:4000 with ./policies and ./data (proxy/settings.py).
serve_flag = $(if $(filter command line,$(origin $(1))),$(2) '$($(1))')
SERVE_FLAGS = $(strip $(call serve_flag,HOST,--host) $(call serve_flag,PORT,--port) \
	$(call serve_flag,POLICIES,--policies) $(call serve_flag,DATA_DIR,--data-dir))

CHROMIUM ?= /usr/bin/chromium

.PHONY: run test lint typecheck pytest bench bench-env install clean chromium postgresql

# pip (not uv/poetry): the CPU build of torch pinned in requirements.lock lies on this disk and
# only pip looks there. The lock pins every package exactly, so an install is reproducible.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/memento-proxy serve $(SERVE_FLAGS)

lint: $(STAMP)
	$(BIN)/ruff check proxy storage tests bench
	$(BIN)/ruff format --check proxy storage tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The trace page test drives Debian's Chromium: install it when missing and we are root.
chromium:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || echo "Chromium is missing and cannot be installed here (not root): the page test will be skipped"

# The PostgreSQL backend's tests start a server of their own from Debian's server binaries
# (initdb, pg_ctl): install them when missing and we are root.
postgresql:
	@{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || echo "PostgreSQL's server binaries are missing and cannot be installed here (not root): its tests will be skipped"

pytest: $(STAMP) chromium postgresql
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck pytest

# LiteLLM Proxy, the overhead benchmark's point of comparison, in an environment of its own.
# 1.106.12 is the newest release whose `proxy` extra resolves from the registries reachable here
# (later ones need litellm-proxy packages that are not published); never 1.82.7 or 1.82.8.
LITELLM_BENCH_VENV := bench/.venv-litellm
LITELLM_PROXY_VERSION ?= 1.106.12
$(LITELLM_BENCH_VENV)/bin/litellm:
	test -x $(LITELLM_BENCH_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_BENCH_VENV)
	$(LITELLM_BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		'litellm[proxy]==$(LITELLM_PROXY_VERSION)'

bench-env: $(LITELLM_BENCH_VENV)/bin/litellm

bench: $(STAMP) bench-env
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
