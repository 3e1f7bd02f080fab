# The two commands a newcomer needs (README): `make train` and `make test`.
PYTHON ?= python
MNIST ?= ../shared/mnist
WORKDIR ?= workdirs/mnist_default

.PHONY: install install-test train test lint

install:
	$(PYTHON) -m pip install -q -e .

# LibreOffice recomputes the backprop workbook in the tests (Debian package; root or sudo).
install-test: install
	command -v soffice >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libreoffice-calc-nogui; }
	$(PYTHON) -m pip install -q -e '.[test]'

train: install
	$(PYTHON) train.py --config=configs/mnist.py --workdir=$(WORKDIR) --config.data_dir=$(MNIST)

test: install-test
	$(PYTHON) -m pytest

lint:
	ruff format --check . && ruff check .
