# Pulse developer targets. `make help` lists them; `make check` is what CI runs.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup demo test check lint fmt lock bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: ## venv, locked Python packages, native BLAS, JVM jars (idempotent)
	@bash scripts/setup.sh

demo: setup ## set up and run the end-to-end demo on generated data
	$(BIN)/pulse demo

test: setup ## set up and run the whole test suite (starts its own Kafka broker)
	$(BIN)/python tests/no_jvm.py $(BIN)/pytest tests/unit $(PYTEST_ARGS)  # the unit tier, with no JVM on the PATH
	$(BIN)/pytest --ignore=tests/unit $(PYTEST_ARGS)

lint: setup ## ruff on everything, mypy on the packages (pyproject.toml lists them)
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test ## what CI runs: lint, then the whole test suite

fmt: setup ## format and autofix with ruff
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

lock: ## re-pin requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

bench: setup ## all benchmarks (producer, stream, batch, view, serve); prints figures and ratios
	$(BIN)/pulse bench producer && $(BIN)/pulse bench stream && $(BIN)/pulse bench batch && $(BIN)/pulse bench view && $(BIN)/pulse bench serve

clean: ## stop the local broker, remove ./data (keeps .venv and the jar cache)
	-$(BIN)/pulse broker stop
	rm -rf data spark-warehouse metastore_db
