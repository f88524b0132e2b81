# U-TAE noise-robustness study. `make test` and `make reproduce` work on a fresh clone:
# the virtual environment is created on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lock lock-tools test test-all test-quick bench bench-quick bench-step bench-models bench-runs bench-study

# The environment (docs/environment.md): requirements.in says what the project asks for; requirements.lock, made
# from it by `make lock`, pins every distribution the venv holds, with hashes. The venv holds exactly the lock:
# it is made anew whenever the lock changes (so that a distribution dropped from the lock leaves it too), each
# distribution installed without its dependencies and checked against its hash, then the project itself
# (editable, built by the lock's setuptools, no build isolation), then pip check.
LOCK := requirements.lock
LOCKED := $(VENV)/.locked

venv: $(STAMP)

$(LOCKED): $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	touch $@

$(STAMP): $(LOCKED) pyproject.toml
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (utae)" >/dev/null
	$(PY) -m pip check
	touch $@

# Regenerate the lock from requirements.in (pins already in the lock are kept while they still fit; upgrade one
# with LOCK_ARGS="--upgrade-package NAME", all with LOCK_ARGS=--upgrade). pip-compile runs in a venv of its own,
# itself installed from the lock requirements-tools.txt, so that the project's venv holds only the lock.
TOOLS_VENV ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed
LOCK_ARGS ?=

$(TOOLS_STAMP): requirements-tools.txt
	$(PYTHON) -m venv --clear $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q --require-hashes --no-deps -r requirements-tools.txt
	touch $@

COMPILE = $(TOOLS_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links

lock: $(TOOLS_STAMP)
	CUSTOM_COMPILE_COMMAND="make lock" $(COMPILE) $(LOCK_ARGS) --output-file $(LOCK) requirements.in

# The tools' own lock, from requirements-tools.in (the next make lock reinstalls .venv-tools from it).
lock-tools: $(TOOLS_STAMP)
	CUSTOM_COMPILE_COMMAND="make lock-tools" $(COMPILE) $(LOCK_ARGS) --output-file requirements-tools.txt \
	  requirements-tools.in

# The suite without its longest checks (the kill-anywhere sweep, the Slurm cluster, Colab, torch.compile): about 5 min.
test: $(STAMP)
	$(PY) -m pytest -q -m "not long"

# Everything, as CI runs it (.ci/run starts a Slurm cluster first): about 11 min on 2 cores.
test-all: $(STAMP)
	$(PY) -m pytest -q

# The edit loop: no notebooks, no DDP, no cluster (under a minute of pytest).
test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m benchmarks.bench --quick $(BENCH_ARGS)

# U-TAE's CPU training step against its convolutions alone, in calibration blocks (docs/benchmarks.md).
bench-step: $(STAMP)
	$(PY) -m benchmarks.bench_step $(BENCH_ARGS)

# Every registered model's training step and eval forward side by side, in calibration blocks (docs/models.md).
bench-models: $(STAMP)
	$(PY) -m benchmarks.bench --models $(BENCH_ARGS)

# One point of SWEEP end to end and the whole study's expected time, also in calibration blocks.
bench-study: $(STAMP)
	$(PY) -m benchmarks.bench_study --sweep $(call quote,$(SWEEP))

# A short training run per precision mode of the device: test mIoU against float32, throughput.
bench-runs: $(STAMP)
	$(PY) -m benchmarks.bench_runs $(BENCH_ARGS)

# The GPU campaign (docs/gpu.md): env check, bench --compile, bench-runs, the default study and
# its export, each step with its own timeout, logged into the folder that comes back ($OUT, or --out).
#   make gpu-wheels                                      the wheels the lent GPU machine lacks -> .whl/ (git-ignored)
#   make gpu-campaign                                    on the GPU machine (python3 there: it has no .venv)
#   make gpu-campaign CAMPAIGN_ARGS="--cpu --out /tmp/c" the dry run on the CPU, tiny settings (about a minute)
#   make gpu-import FROM=<folder that came back> [AS=name] here: its study into RESULTS (make import), its bench
#                                                        table and logs into RESULTS/bench/, then make report
CAMPAIGN_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
CAMPAIGN_ARGS ?=
.PHONY: gpu-wheels gpu-campaign gpu-import

gpu-wheels: $(STAMP)
	$(PY) -m benchmarks.fetch_wheels

gpu-campaign:
	$(CAMPAIGN_PYTHON) -m benchmarks.gpu_campaign $(CAMPAIGN_ARGS)

# --------------------------------------------------------------------------------------------------
# The study: every point of a sweep through one point runner (train_eval.ipynb executed with papermill into
# its run folder, then its HTML report), then compare.html and the index: python -m utae run-all.
#   make reproduce                                            default sweep, synthetic data -> results/
#   make reproduce SWEEP=params/paper.yaml PASTIS_ROOT=/path  real PASTIS -> results/paper/
#   make reproduce GPUS=0,1                                   spread the points over GPUs 0 and 1
#   make reproduce EXECUTOR=slurm SLURM_PARTITION=gpu SLURM_GPUS_PER_POINT=1
#                                                             one Slurm job array of the unfinished points
# RESULTS is results for params/default.yaml and results/<sweep file stem> for any other sweep.
# Local points run in parallel: one per CPU core with one torch thread each (CPU sweeps), or one per GPU of
# GPUS (CUDA sweeps); JOBS=N (or make -jN) sets the number, JOBS=1 runs them one after the other; THREADS=T
# sets the torch threads of every point. A failing point is reported and the others go on (exit status 1).
# Slurm (EXECUTOR=slurm): SLURM_PARTITION, SLURM_GPUS_PER_POINT, SLURM_TIME (minutes, default 240; a point that
# runs out is requeued and resumes), SLURM_CPUS, SLURM_MEM (e.g. 8G), SLURM_TASKS_PER_POINT (training processes
# of a point, torchrun in its one job), SLURM_EXTRA ('--qos=high --account=me'), JOBS (array parallelism);
# NO_WAIT=1 submits, prints the job ids and returns (then make report). Job logs: RESULTS/.slurm/<time>/.
#   make report        re-render the run reports, compare.html and index.html of RESULTS (no training; the last
#                      two when the runs they show changed, RESULTS/reports/.rendered.json); without
#                      RESULTS or SWEEP: of results and of every study folder results/*/ that has runs
#   make export [OUT=file.tar.gz]            pack RESULTS' runs and reports, with a manifest (utae.exchange.export)
#   make import FROM=archive-or-folder [AS=platform-name]   add runs of another machine to RESULTS, checked
#   make verify [POINTS=N or run ids]        rerun points of SWEEP here and compare with RESULTS' committed runs
#   make lab           JupyterLab on the repository
#   make clean-results delete RESULTS/runs, RESULTS/reports and RESULTS/summary.csv (asks; YES=1 does not)
# Finished points (metrics.json and report present) are skipped, interrupted ones resume from their checkpoint;
# a run folder whose config.json differs from the sweep's point, or a platform folder of another machine, stops
# the sweep with an error that says how to proceed.
SWEEP ?= params/default.yaml
RESULTS ?= $(if $(filter params/default.yaml ./params/default.yaml,$(SWEEP)),results,results/$(basename $(notdir $(SWEEP))))
SYNTH_ROOT ?= data/synthetic_pastis
GPUS ?=
PLATFORM ?=
THREADS ?=
JOBS ?=
TIMEOUT ?=
EXECUTOR ?= local
SLURM_PARTITION ?=
SLURM_GPUS_PER_POINT ?=
SLURM_TIME ?=
SLURM_CPUS ?=
SLURM_MEM ?=
SLURM_TASKS_PER_POINT ?=
SLURM_EXTRA ?=
NO_WAIT ?=
# AS (make import / gpu-import) is also make's built-in name of the assembler, "as": unset unless given.
ifeq ($(origin AS),default)
AS :=
endif
VENV_DEP ?= $(STAMP)
# quote: one shell word, whatever the value holds (spaces, quotes, non-ASCII): 'it'\''s'.
quote = '$(subst ','\'',$(1))'
SWEEP_OPTS = --results $(call quote,$(RESULTS)) --synthetic-root $(call quote,$(SYNTH_ROOT)) \
  --executor $(call quote,$(EXECUTOR)) \
  $(if $(JOBS),--jobs $(call quote,$(JOBS))) $(if $(GPUS),--gpus $(call quote,$(GPUS))) \
  $(if $(PLATFORM),--platform $(call quote,$(PLATFORM))) $(if $(TIMEOUT),--timeout $(call quote,$(TIMEOUT))) \
  $(if $(THREADS),--threads $(call quote,$(THREADS))) $(if $(filter 1 yes true,$(NO_WAIT)),--no-wait) \
  $(if $(SLURM_PARTITION),--slurm-partition $(call quote,$(SLURM_PARTITION))) \
  $(if $(SLURM_GPUS_PER_POINT),--slurm-gpus-per-point $(call quote,$(SLURM_GPUS_PER_POINT))) \
  $(if $(SLURM_TIME),--slurm-time $(call quote,$(SLURM_TIME))) \
  $(if $(SLURM_CPUS),--slurm-cpus $(call quote,$(SLURM_CPUS))) \
  $(if $(SLURM_MEM),--slurm-mem $(call quote,$(SLURM_MEM))) \
  $(if $(SLURM_TASKS_PER_POINT),--slurm-tasks-per-point $(call quote,$(SLURM_TASKS_PER_POINT))) \
  $(if $(SLURM_EXTRA),--slurm-extra $(call quote,$(SLURM_EXTRA)))
# make report: one folder when RESULTS or SWEEP is given, else every study under results/.
REPORT_OPTS = $(if $(filter-out undefined default file,$(origin RESULTS) $(origin SWEEP)),--results $(call quote,$(RESULTS)))
ifdef PASTIS_ROOT
export PASTIS_ROOT
endif

.PHONY: reproduce report export import verify lab clean-results bench-sweep

reproduce: $(VENV_DEP)
	$(PY) -m utae run-all $(call quote,$(SWEEP)) $(strip $(SWEEP_OPTS))

report: $(VENV_DEP)
	$(PY) -m utae report $(REPORT_OPTS)

export: $(VENV_DEP)
	$(PY) -m utae export --results $(call quote,$(RESULTS)) $(if $(OUT),-o $(call quote,$(OUT))) \
	  $(if $(or $(filter-out file,$(origin SWEEP)),$(filter file,$(origin RESULTS))),--sweep $(call quote,$(SWEEP)))

import: $(VENV_DEP)
	@if [ -z $(call quote,$(FROM)) ]; then echo "make import needs FROM=<archive or folder>" >&2; exit 2; fi
	$(PY) -m utae import $(call quote,$(FROM)) --results $(call quote,$(RESULTS)) $(if $(AS),--as $(call quote,$(AS)))

# The GPU campaign's folder that came back (see gpu-campaign above).
gpu-import: $(VENV_DEP)
	@if [ -z $(call quote,$(FROM)) ]; then echo "make gpu-import needs FROM=<the campaign's output folder>" >&2; exit 2; fi
	$(PY) -m benchmarks.gpu_campaign --bring-home $(call quote,$(FROM)) --results $(call quote,$(RESULTS)) \
	  $(if $(AS),--as $(call quote,$(AS)))

verify: $(VENV_DEP)
	$(PY) -m utae verify $(call quote,$(SWEEP)) --results $(call quote,$(RESULTS)) \
	  $(if $(POINTS),--points $(call quote,$(POINTS))) $(if $(THREADS),--threads $(call quote,$(THREADS))) \
	  $(if $(PLATFORM),--platform $(call quote,$(PLATFORM)))

# Wall time of a tiny 2-point sweep with the local executor and, where a Slurm cluster answers, through it.
bench-sweep: $(VENV_DEP)
	$(PY) -m benchmarks.bench_sweep $(BENCH_ARGS)

lab: $(VENV_DEP)
	$(PY) -m jupyter lab --notebook-dir=.

clean-results:
	@results=$(call quote,$(RESULTS)); if [ "$(YES)" != 1 ]; then \
	  read -r -p "Delete $$results/runs, $$results/reports and $$results/summary.csv? [y/N] " answer || answer=; \
	  case "$$answer" in y|Y|yes) ;; *) echo "Nothing deleted (make clean-results YES=1 deletes without asking)."; exit 1;; esac; \
	fi
	rm -rf $(call quote,$(RESULTS))/runs $(call quote,$(RESULTS))/reports $(call quote,$(RESULTS))/summary.csv
