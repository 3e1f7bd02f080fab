# The two commands a newcomer needs (README): `make train` and `make test`.
# Both work on a stock system: they make and use a project virtualenv (.venv, from
# `python3 -m venv`), so neither needs `python` on PATH nor a writable system site-packages.
# `pip install .` brings only the dependencies: the code runs in place from this checkout.
# PYTHON=/path/to/python uses that interpreter (and its environment) instead of .venv.
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
WORKDIR ?= workdirs/mnist_default
ARGS ?=
# Beside this project's own checkouts lies a copy of MNIST; elsewhere train.py downloads it once.
SHARED_MNIST := ../shared/mnist
DATA_ARG := $(if $(wildcard $(SHARED_MNIST)/train-images-idx3-ubyte.gz),--config.data_dir=$(SHARED_MNIST))

.PHONY: install install-test train test quick lint

$(VENV)/bin/python:
	python3 -m venv $(VENV) || { echo "error: 'python3 -m venv' failed: install Python >= 3.10 with venv (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }

install: $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/bin/python)
	$(PYTHON) -m pip install -q .

install-test: $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/bin/python)
	$(PYTHON) -m pip install -q '.[test]'

train: install
	$(PYTHON) train.py --config=configs/mnist.py --workdir=$(WORKDIR) $(DATA_ARG) $(ARGS)

# -n auto: pytest-xdist runs the tests on a worker per core (at most 4, tests/conftest.py);
# --dist loadscope keeps each test class on one worker, so its setUpClass runs once.
XDIST := -n auto --dist loadscope

test: install-test
	$(PYTHON) -m pytest $(XDIST) $(ARGS)

# The unit tier, for the edit-run loop: no training, no subprocesses (tests/conftest.py).
quick: install-test
	$(PYTHON) -m pytest $(XDIST) -m 'not slow' -q $(ARGS)

lint:
	$(PYTHON) -m ruff format --check . && $(PYTHON) -m ruff check .
