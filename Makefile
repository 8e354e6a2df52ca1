# tuneloop: `make demo` runs the whole loop on embedded defaults; `make test` runs the tests.
# Both create the virtual environment on first use (about 3 minutes, 2.3 GB) from requirements.lock.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tuneloop-installed
TOOLS  := .venv-infra/.installed
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false
export DO_NOT_TRACK ?= 1
export BENTOML_DO_NOT_TRACK ?= True
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install tools demo test test-fast test-slow lint bench bench-quick lock clean help

help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the locked dependency set into $(VENV) (first run: a few minutes)"
	# torch first and alone, so the CPU build on this machine's wheel path is what gets used.
	$(BIN)/python -m pip install --quiet "torch==2.13.0" 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -m pip install --quiet -r requirements.lock 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -m pip install --quiet --no-deps -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import tuneloop, torch, mlflow, prefect, bentoml, onnxruntime, peft, transformers"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the locked set.

# The programs tests drive (chromium, promtool: .ci/outside-tools.sh installs them from Debian where
# it can) and the infra checkers in their own environment (checkov pins packages the project's lock
# would clash with): infra/check-tools.sh builds .venv-infra from infra/requirements-check.txt.
$(TOOLS): infra/requirements-check.txt
	bash .ci/outside-tools.sh
	bash infra/check-tools.sh

tools: $(TOOLS) ## Outside programs and the infra checkers the tests use.

demo: $(STAMP) ## Run the whole loop end to end on embedded defaults (state in .tuneloop/).
	$(BIN)/tuneloop demo

test: $(STAMP) $(TOOLS) ## Run the test suite (fast tests, the real-model tests and the server-path tests).
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) $(TOOLS) ## Only the fast tests (tiny random BERT; no real model, loop or server tests).
	$(BIN)/python -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

test-slow: $(STAMP) ## Only the real-model and end-to-end tests (e2e modules: tests/conftest.py).
	$(BIN)/python -m pytest -m "slow or e2e" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy.
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/ruff format --check src flows tests benchmarks
	$(BIN)/mypy src

# Every benchmark, full size (the figures in benchmarks/README.md; about 25 minutes on 2 quiet cores:
# ingest seconds, train ~8 min, convert ~4 min plus ~5 min to train its model once, demo minutes).
# `make bench-quick` runs each in its smoke mode. All run even when one fails; the target then
# fails naming them, and each must end with its JSON line (logs in $(BENCH_LOGS)/).
BENCHES       := "ingest.py" "train.py" "convert.py" "demo.py"
BENCHES_QUICK := "ingest.py --repeats 1 --no-mlflow" "train.py --quick" "convert.py --quick" "demo.py --quick"
BENCH_LOGS    ?= .tuneloop/bench/logs

define run_benches
	@mkdir -p $(BENCH_LOGS); failed=""; \
	for bench in $(1); do \
	  name=$${bench%%.py*}; echo "== benchmarks/$$bench"; \
	  if $(BIN)/python benchmarks/$$bench | tee $(BENCH_LOGS)/$$name.log \
	     && tail -n 1 $(BENCH_LOGS)/$$name.log | $(BIN)/python -c "import json, sys; json.loads(sys.stdin.read())"; \
	  then :; else failed="$$failed $$name"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "benchmarks failed:$$failed (logs in $(BENCH_LOGS)/)"; exit 1; fi
endef

bench: $(STAMP) ## Run every benchmark, full size (each prints one JSON object on its last line).
	$(call run_benches,$(BENCHES))

bench-quick: $(STAMP) ## Every benchmark in its quick smoke mode (figures not comparable).
	$(call run_benches,$(BENCHES_QUICK))

lock: ## Re-resolve and rewrite requirements.lock from pyproject.toml (needs the package index).
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet "torch==2.13.0" && .venv-lock/bin/pip install --quiet -e ".[dev,server]"
	{ head -3 requirements.lock; .venv-lock/bin/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock

clean: ## Remove local state (.tuneloop/) but keep the environment.
	rm -rf .tuneloop
