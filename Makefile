# Two entry points, both self-contained on a fresh clone:
#   make workflow   create .venv, install the suite, run the default Snakemake workflow
#   make test       create .venv, install the suite with test extras, lint (make lint), run the test suite
#   make lint       ruff (lint + format check), import contracts (lint-imports), snakefmt --check,
#                   snakemake --lint (justified findings only)
#   make test-fast  the same without the tests marked slow
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install workflow figures lint test test-fast benchmarks benchmarks-quick benchmarks-gpu benchmarks-workflow

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,slurm]'
	touch $(STAMP)

install: $(STAMP)

workflow: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/default

figures: $(STAMP)
	$(BIN)/snakemake --cores 1 --profile workflow/profiles/default figures

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/python workflow/lint.py

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow"

# Timing benchmarks (not tests): CSVs and figures under results/benchmarks/, see benchmarks/README.md
benchmarks: $(STAMP)
	$(BIN)/python benchmarks/scoring.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/workflow.py

benchmarks-quick: $(STAMP)
	$(BIN)/python benchmarks/scoring.py --quick
	$(BIN)/python benchmarks/training.py --quick
	$(BIN)/python benchmarks/workflow.py --quick

benchmarks-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py

benchmarks-workflow: $(STAMP)
	$(BIN)/python benchmarks/workflow.py --run --fresh --cores $(CORES)
