# SCNS Conductor — developer entry points. `make test` works on a fresh clone of a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install browser test test-fast lint up bench clean

help:
	@echo "make up      run the whole system on this machine"
	@echo "make test    install everything and run the whole test suite"
	@echo "make lint    ruff + mypy (strict on shared/ and services/)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The dashboard's browser test (tests/e2e/test_dashboard.py) drives Debian's chromium headless
# through Debian's chromedriver, at fixed paths; nothing else downloads a browser.
# SCNS_SKIP_BROWSER=1 skips installing them (and the test).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$${SCNS_SKIP_BROWSER:-}" = 1 ]; then \
	  echo "SCNS_SKIP_BROWSER=1: not installing chromium; the browser test is skipped"; exit 0; fi; \
	echo "Installing Debian's chromium and chromium-driver for the dashboard's browser test..."; \
	sudo=; if [ "$$(id -u)" != 0 ]; then sudo=sudo; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: /usr/bin/chromium or /usr/bin/chromedriver is missing and this machine has no apt-get:" >&2; \
	  echo "  install Chromium and its chromedriver at those paths, or set SCNS_SKIP_BROWSER=1" >&2; \
	  exit 1; fi; \
	if ! { $$sudo apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver; }; then \
	  echo "error: could not install chromium and chromium-driver with apt-get (see above)." >&2; \
	  echo "  Run: sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2; \
	  echo "  or set SCNS_SKIP_BROWSER=1 to skip the dashboard's browser test." >&2; \
	  exit 1; fi; \
	test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { \
	  echo "error: apt-get installed chromium, but /usr/bin/chromium or /usr/bin/chromedriver is still missing" >&2; exit 1; }

# The suite finds or starts Redis and PostgreSQL itself (see tests/infra.py).
test: $(STAMP) browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

up: $(STAMP)
	$(BIN)/scns up

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
