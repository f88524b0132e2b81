# U-TAE noise-robustness study. `make test` and `make reproduce` work on a fresh clone:
# the virtual environment is created on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test bench bench-quick

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (utae)" >/dev/null
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m benchmarks.bench --quick $(BENCH_ARGS)
