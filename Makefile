# One command to try it, one to test it. Needs Python 3.11 (and Node.js 20 + npm for the Azurite tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
START ?= 2026-11-26T00:00:00Z
END ?= 2026-11-27T00:00:00Z

.PHONY: setup demo test lint

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

# Lint, type-check and run every test (pytest).
test: lint
	$(BIN)/python -m pytest -q
