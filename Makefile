# Two commands a new user needs: `make run` (set up, then `dvc repro`) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml stages call `mna-tune`; put the venv first so they find it.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test clean-outputs

setup: $(VENV)/.installed

# requirements.lock pins the whole dependency tree (torch==2.13.0 is the CPU build here).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

run: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

# Removes what the pipeline generated and git ignores (interim data, splits, the adapter, the
# prediction and leakage reports, caches); tracked files (metrics, plots, eval.md) stay.
clean-outputs:
	git clean -fdX -- data/interim data/processed models reports .cache
