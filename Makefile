# One command to set up and run the quickstart, one to set up and run the tests.
#   make quickstart   -> .venv with the pinned stack, then the quickstart sweep
#   make test         -> .venv with the pinned stack, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup quickstart test test-slow benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml deploy/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c deploy/constraints.txt -e ".[test]"
	$(BIN)/python -c "import tune_prune._torchvision as t; t.import_torchvision(); print('tune_prune installed')"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/tune-prune sweep search_spaces/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

benchmark: $(STAMP)
	$(BIN)/python benchmarks/mask_step.py

clean:
	rm -rf $(VENV) mlflow.db tune_prune_runs .tune_prune_cache
