# Two commands a new user needs: `make run` (set up, then `dvc repro`) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# The vLLM engine's own virtualenv (it pins torch and transformers apart from the project's).
ENGINE_VENV := .venv-engine
# dvc.yaml stages call `mna-tune`; put the venv first so they find it.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup engine run test test-fast lint format clean-outputs

setup: $(VENV)/.installed

# torch first, the build this machine needs (CPU, CUDA or macOS: tools/torch_build.py,
# docs/setup.md), then the rest of the tree pinned by requirements.lock.
$(VENV)/.installed: pyproject.toml requirements.lock tools/torch_build.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python tools/torch_build.py
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

# vLLM in its own virtualenv, the build that matches torch's (docs/engine.md); none on macOS.
engine:
	@if $(PYTHON) tools/torch_build.py --has-engine; then $(MAKE) --no-print-directory $(ENGINE_VENV)/.installed; fi

$(ENGINE_VENV)/.installed: requirements-engine.lock tools/torch_build.py
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ENGINE_VENV)/bin/python tools/torch_build.py --engine
	touch $@

run: setup
	$(BIN)/dvc repro

# Everything, what CI runs: unit, slow, engine and end-to-end tiers; the 15 slowest are listed.
test: setup engine
	$(BIN)/python -m pytest --durations=15

# The edit-test loop: no end-to-end, engine or multi-process tests (under 3 minutes on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest -m "not e2e and not engine and not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Removes what the pipeline generated and git ignores (interim data, splits, the adapter, the
# prediction and leakage reports, caches); tracked files (metrics, plots, eval.md) stay.
clean-outputs:
	git clean -fdX -- data/interim data/processed models reports .cache
