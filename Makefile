# TimelyFreeze for Megatron-Core. `make demo` runs the main job; `make test` runs the suite.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit lint bench docs clean

setup: $(STAMP)

# The venv is rebuilt only when the project's dependencies change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $$(scripts/find_python.sh) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/timelyfreeze demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check megatron_tf tests scripts
	$(VENV)/bin/ruff format --check megatron_tf tests scripts

# Regenerate docs/cli.md from the CLI itself (a test fails when it is stale).
docs: setup
	$(PY) scripts/gen_cli_reference.py

bench: setup
	@for s in scripts/bench/*.py; do echo "== $$s"; $(PY) $$s || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
