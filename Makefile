# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's dependencies change.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The demo needs only the demo extra (the three frameworks, langchain-openai, the server),
# not the development tools; --no-compile: modules are compiled as the demo imports them.
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile -e '.[demo]'
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/quota-hooks demo

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy quota_hooks
	$(BIN)/python -m pytest -q --durations=25

# The core and store units only (about a minute): for the edit-test loop, not for CI.
test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q -m "unit and not slow"

# Overhead ratios and throughputs, printed and written to benchmarks/results.json.
# Installs the peers it compares against (the bench extra) first.
$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_OFFLINE_MODE=true $(BIN)/python -m benchmarks
