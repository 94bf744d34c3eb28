# The Makefile is the interface: README documents every target.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lint format test test-unit test-integration run bench schemas docs clean

install: $(STAMP)

# Reinstall only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/mypy bridge

format: install
	$(BIN)/ruff format bridge tests bench
	$(BIN)/ruff check --fix bridge tests bench

test: install lint
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

# Regenerate schemas/ from the catalog (the test suite proves files and catalog agree).
schemas: install
	$(BIN)/apizee-bridge schemas schemas --write

# Regenerate the README's generated blocks (config variables, event catalog).
docs: install
	$(BIN)/python -m bridge.docs README.md

run: install
	$(BIN)/apizee-bridge dev

bench: install
	$(BIN)/python bench/codec.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
