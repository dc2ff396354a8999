# circuit-repro: `make reproduce` runs the whole pipeline, `make test` the test suite.
# The first target you run creates .venv and installs everything; later runs reinstall
# only when pyproject.toml changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# Extra arguments for `python -m venv`; --system-site-packages reuses a torch (e.g. a
# CUDA build) already installed in $(PYTHON)'s environment.
VENV_ARGS ?=
# The CPU build of torch installed when the venv has no torch yet.
TORCH_VERSION ?= 2.13.0
CORES ?= 2
# Extra snakemake arguments, e.g. SMK_ARGS="--configfile config/presets/quick.yaml".
SMK_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SNAKEMAKE := $(BIN)/snakemake

.PHONY: all reproduce report snakemake-report test bench gpu-check lint format clean help install

all: reproduce

help:
	@echo "make reproduce  run the pipeline (default config) and write results/report.html"
	@echo "make test       lint + unit, workflow and real-model tests"
	@echo "make bench      performance benchmarks (results/bench/)"
	@echo "make gpu-check  the quick preset, the bench and CPU/GPU agreement on CUDA (results/bench/gpu.json)"
	@echo "make report     rebuild results/report.html (claims first, then every figure)"
	@echo "make snakemake-report  Snakemake's own report: results/snakemake_report.html"
	@echo "make lint       ruff, snakefmt, snakemake --lint"
	@echo "make clean      remove results/, logs/, benchmarks/ (keeps prepared models)"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# Install torch first, pinned, unless the venv already has one: a bare or open
	@# range would pull a multi-GB CUDA build on a CPU machine.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Through circuit_repro.pipeline.run: one run per checkout, and what an interrupted run
# left (a stale lock, orphaned jobs, temporaries) is cleaned up first; incomplete jobs rerun.
reproduce: $(STAMP)
	$(BIN)/python -m circuit_repro.pipeline.run --cores $(CORES) $(SMK_ARGS)

# results/report.html alone (a rule of the workflow, so it is rebuilt only when a claim,
# figure, caption or model changed).
report: $(STAMP)
	$(BIN)/python -m circuit_repro.pipeline.run --cores $(CORES) $(SMK_ARGS) -- results/report.html

# Snakemake's own report (every figure by category, the DAG, run statistics).
snakemake-report: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) $(SMK_ARGS) --report results/snakemake_report.html

test: $(STAMP) lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m circuit_repro.bench

# On a machine with CUDA: results/bench/gpu.json. Without one it says so and exits 0.
gpu-check: $(STAMP)
	$(BIN)/python -m circuit_repro.bench.gpu

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(SNAKEMAKE) --lint --cores 1 > /dev/null

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt Snakefile workflow/rules

clean:
	rm -rf results logs benchmarks .snakemake
