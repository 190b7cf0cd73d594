# One command to try it, one to test it. Needs Python 3.11 (and Node.js 20 + npm for the Azurite tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
START ?= 2026-11-26T00:00:00Z
END ?= 2026-11-27T00:00:00Z

AZURITE := .tools/azurite/node_modules/.bin/azurite-table
CHECKOV := .tools/checkov/bin/checkov

.PHONY: setup demo test test-fast lint azurite checkov requirements

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Run the detector on the bundled fixture data: a table on stdout and out/findings.jsonl.
demo: setup
	$(BIN)/python -m detector validate
	$(BIN)/python -m detector run --source file:tests/files/w3ciislog.jsonl --start $(START) --end $(END) \
		--sink stdout --sink jsonl:out/findings.jsonl

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Re-pin requirements.txt (what deploys: exact versions with hashes) from requirements.in, with pip-tools.
requirements: setup
	$(BIN)/pip install --quiet --disable-pip-version-check pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-trusted-host --no-emit-find-links --output-file requirements.txt requirements.in

# Azurite 3.35.0 (the last release that runs on Node 20), for the Table Storage state tests; the tests start it.
azurite: $(AZURITE)

$(AZURITE):
	mkdir -p .tools/azurite
	cd .tools/azurite && npm init -y >/dev/null && npm install --no-audit --no-fund --silent azurite@3.35.0

# checkov (Bicep security checks) pins packages that clash with ours: it gets a venv of its own.
checkov: $(CHECKOV)

$(CHECKOV): requirements-infra.txt
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install --quiet --disable-pip-version-check -r requirements-infra.txt
	touch $@

# Lint, type-check and run every test (pytest).
test: lint azurite checkov
	HYPOTHESIS_PROFILE=ci CHECKOV=$(CURDIR)/$(CHECKOV) $(BIN)/python -m pytest -q

# The developer's loop: no npm, no checkov venv, no child processes (markers: pyproject.toml, tests/conftest.py).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not azurite and not checkov and not subprocess"
