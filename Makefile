# The two commands the README opens with are `make demo` (the main job) and `make test`.
# Both install what they need: Debian packages (if missing), a virtualenv and the pinned packages.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help demo test test-unit test-integration test-faults install lint format stack-up stack-down bench-producer bench-pipeline

help:  ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

demo: install  ## The main job: local stack, emulated PACS (Benton), sync, then the live pipeline + dashboard
	$(BIN)/pacs-sync stack up
	$(BIN)/pacs-sync sim init --scale benton --keep-existing
	$(BIN)/pacs-sync sync --until-caught-up
	$(BIN)/pacs-sync run --churn-rate 20 $(DEMO_ARGS)

test: install  ## Every test: unit, integration, e2e, then the fault suite, against the real local stack
	$(BIN)/pacs-sync stack up
	$(BIN)/pytest

test-unit: install  ## Unit tests only (seconds, no services)
	$(BIN)/pytest tests/unit

test-integration: install  ## Integration tests against the running local stack
	$(BIN)/pacs-sync stack up
	$(BIN)/pytest tests/integration

test-faults: install  ## The fault-injection suite only (kill -9, restarts, outages; RELIABILITY.md)
	$(BIN)/pacs-sync stack up
	$(BIN)/pytest tests/faults

install: $(VENV)/.installed  ## System packages, virtualenv and the pinned Python packages

$(VENV)/.installed: pyproject.toml deploy/local/install-system-deps.sh
	bash deploy/local/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

bench-producer: install  ## Producer benchmark at Benton scale (figures to bench-results/producer.json)
	$(BIN)/pacs-sync stack up
	$(BIN)/python tests/benchmarks/bench_producer.py --runs 3

bench-pipeline: install  ## Whole pipeline: Benton snapshot, sustained events/s, latency (bench-results/pipeline.json)
	$(BIN)/pacs-sync stack up
	$(BIN)/python tests/benchmarks/bench_pipeline.py --runs 1

lint: install  ## ruff, mypy and the import contracts between stages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install  ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: install  ## Start the local stack
	$(BIN)/pacs-sync stack up

stack-down: install  ## Stop the local stack (data kept)
	$(BIN)/pacs-sync stack down
