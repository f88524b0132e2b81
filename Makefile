# U-TAE noise-robustness study. `make test` and `make reproduce` work on a fresh clone:
# the virtual environment is created on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test bench bench-quick bench-runs

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

# A short training run per precision mode of the device: test mIoU against float32, throughput.
bench-runs: $(STAMP)
	$(PY) -m benchmarks.bench_runs $(BENCH_ARGS)

# --------------------------------------------------------------------------------------------------
# The study: train_eval.ipynb executed with papermill once per sweep point, HTML reports, index.
#   make reproduce                                            default sweep, synthetic data
#   make reproduce SWEEP=params/paper.yaml PASTIS_ROOT=/path  real PASTIS
#   make reproduce GPUS=0,1                                   spread the points over GPUs 0 and 1
# Points run in parallel: one per CPU core with one torch thread each (CPU sweeps), or one per GPU of
# GPUS (CUDA sweeps); make -jN or JOBS=N sets the number, JOBS=1 runs them one after the other.
#   make report        re-render every report, compare.html and index.html (no training)
#   make lab           JupyterLab on the repository
#   make clean-results delete results/runs, results/reports and results/summary.csv (asks; YES=1 does not)
# Finished points (metrics.json and report present) are skipped; interrupted ones resume from their checkpoint.
SWEEP ?= params/default.yaml
RESULTS ?= results
SYNTH_ROOT ?= data/synthetic_pastis
GPUS ?=
PLATFORM ?=
THREADS ?=
JOBS ?=
TIMEOUT ?=
VENV_DEP ?= $(STAMP)
SWEEP_MK ?= build/sweep/$(subst /,_,$(RESULTS))-$(notdir $(basename $(SWEEP))).mk
SWEEP_OPTS = --results $(RESULTS) --synthetic-root $(SYNTH_ROOT) $(if $(GPUS),--gpus $(GPUS)) \
  $(if $(PLATFORM),--platform $(PLATFORM)) $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(THREADS),--threads $(THREADS))
ifdef PASTIS_ROOT
export PASTIS_ROOT
endif

.PHONY: reproduce report lab clean-results

reproduce: $(VENV_DEP)
	$(PY) -m utae.sweep make-targets $(SWEEP) -o $(SWEEP_MK) $(strip $(SWEEP_OPTS))
	$(MAKE) --no-print-directory -f $(SWEEP_MK) PY=$(PY) \
	  $(if $(JOBS),-j$(JOBS),$(if $(filter -j%,$(MAKEFLAGS)),,AUTO_JOBS=1)) all

report: $(VENV_DEP)
	$(PY) -m utae.sweep report --results $(RESULTS)

lab: $(VENV_DEP)
	$(PY) -m jupyter lab --notebook-dir=.

clean-results:
	@if [ "$(YES)" != 1 ]; then \
	  read -r -p "Delete $(RESULTS)/runs, $(RESULTS)/reports and $(RESULTS)/summary.csv? [y/N] " answer || answer=; \
	  case "$$answer" in y|Y|yes) ;; *) echo "Nothing deleted (make clean-results YES=1 deletes without asking)."; exit 1;; esac; \
	fi
	rm -rf $(RESULTS)/runs $(RESULTS)/reports $(RESULTS)/summary.csv
