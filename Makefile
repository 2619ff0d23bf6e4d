# SCNS Conductor — developer entry points. `make test` works on a fresh clone of a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# checkov (the manifests' policy check, tests/deploy/test_checkov.py) lives in a venv of its own:
# checkov 3.3.30 wants packaging<24 and pytest 9.2 packaging>=24, so one venv cannot hold both.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV    ?= .venv-checkov
CHECKOV         := $(CHECKOV_VENV)/bin/checkov

.PHONY: help install browser checkov test test-fast lint lock up bench clean

help:
	@echo "make up      run the whole system on this machine"
	@echo "make test    install everything and run the whole test suite"
	@echo "make lint    ruff + mypy (strict on shared/ and services/)"
	@echo "make lock    regenerate requirements.lock (the image's hashed runtime dependencies)"

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
$(CHECKOV): | $(BIN)/python
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'

checkov: $(CHECKOV)

# SCNS_CHECKOV: the test runs this checkov and fails (rather than skips) if it cannot.
test: $(STAMP) browser $(CHECKOV)
	SCNS_CHECKOV=$(abspath $(CHECKOV)) $(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# requirements.lock: the runtime dependencies ([project].dependencies) and everything they pull
# in, each pinned == with the sha256 of every file PyPI has for that version; the Dockerfile
# installs from it with --require-hashes. --universal: one lock for every platform, markers kept
# (so it installs on linux/arm64 and linux/amd64 alike); --no-build: wheels only, as the image
# installs them; --no-config: no uv.toml (uv reads no pip.conf either), so the index is uv's
# default, PyPI, and the hashes are PyPI's.
# Rerun after changing [project].dependencies (tests/deploy/test_lockfile.py tells). uv keeps the
# lock's other pins where it can: delete requirements.lock first to take the newest releases.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	    --no-build --no-config --custom-compile-command 'make lock' --quiet \
	    --output-file requirements.lock

up: $(STAMP)
	$(BIN)/scns up

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
