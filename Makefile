# Two commands do all the set-up: `make run` (the default study) and `make test` (the test suite).
# Both create the virtual environment .venv on first use and install the package into it.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

run: setup
	$(BIN)/mixsearch run spaces/mnist.yaml

# Most tests spend their time in one single-threaded process (a CLI run, a training), so the
# suite runs on up to four cores; a module's tests stay together and share its fixtures.
test: setup
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist loadscope

# Every benchmark in turn (bench/chaos.py, a fault run of several minutes, is run on its own).
bench: setup
	$(BIN)/python bench/trainer.py
	$(BIN)/python bench/evaluation.py
	$(BIN)/python bench/search_speed.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/fusion.py
	$(BIN)/python bench/pruning.py

clean:
	rm -rf $(VENV) studies/*.db studies/*.log studies/artifacts exports
