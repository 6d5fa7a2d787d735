# TimelyFreeze for Megatron-Core. `make demo` runs the main job; `make test` runs the suite.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit lint bench docs gpu-wheels clean

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

# The wheels scripts/gpu/acceptance.sh needs on a GPU machine without network (docs/gpu.md),
# gathered into the ignored folder .whl/ that travels with the tree.
GPU_WHEELS := megatron-core==0.19.2
gpu-wheels: setup
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@ls -1 .whl && du -ch .whl/*.whl | tail -n 1

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
