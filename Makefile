# One command each, on a fresh machine: `make demo` (the main job, offline) and `make test` (the
# tests). Both create .venv and install transferkit with its dev, docs and keras-hub extras first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install test lint docs backbones demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,docs,keras-hub]"
	touch $@

install: $(VENV)/.installed

# two processes (one a core), each taking whole test files: module fixtures are built once
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

docs: install
	$(BIN)/mkdocs build --strict

backbones: install
	$(BIN)/transferkit backbones

demo: install
	$(BIN)/transferkit demo --out transferkit-demo
