# phonerec: `make demo` runs the whole job on a generated corpus; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
SHARDS ?= shards
WEIGHTS ?= weights
RESULTS ?= results
NGPU ?= 1
# EPOCHS=N: train N epochs (unset: the recipe's, else train's default of 20)
EPOCHS ?=
EPOCHS_ARGS = $(if $(EPOCHS),--epochs "$(EPOCHS)")
# MINUTES=N: train as many epochs as fit in N minutes (at most EPOCHS), the schedule spanning them
MINUTES ?=
BUDGET_ARGS = $(if $(MINUTES),--time-budget "$(MINUTES)")
# TB=1: also write metrics.jsonl's scalars as TensorBoard events in RESULTS (train and demo; view them with
# `tensorboard --logdir $RESULTS`; `make setup` installs the package, else pip install -e '.[tensorboard]')
TB ?=
TB_ARGS = $(if $(filter-out 0,$(TB)),--tensorboard)
ARGS ?=
TORCH_VERSION ?= 2.13.0
# torchrun rendezvous for several machines, e.g. TORCHRUN_ARGS="--nnodes=2 --node_rank=0 --rdzv_endpoint=host:29500"
TORCHRUN_ARGS ?= --standalone
# torchrun, with a failing rank's one-line error repeated last (phonerec/launch.py)
TORCHRUN := $(BIN)/python -m phonerec.launch $(TORCHRUN_ARGS) --nproc_per_node="$(NGPU)"
# One process on one machine runs phonerec itself (its one-line error stays the last line); several
# processes, or several machines, go through torchrun.
ALONE = $(and $(filter 1,$(NGPU)),$(if $(filter-out --standalone,$(TORCHRUN_ARGS)),,1))
LAUNCH = $(if $(ALONE),$(BIN)/phonerec,$(TORCHRUN) -m phonerec)

# `train` chooses a phone LM and its weights on dev (WEIGHTS/decode.json), which predict and evaluate use;
# LM=FILE.arpa decodes with another one instead (its --alpha/--beta in ARGS, or evaluate chooses them)
LM ?=
ORDER ?= 4
LM_ARGS = $(if $(LM),--lm "$(LM)")

.PHONY: setup speech-tools postgresql shards publish train sweep lm predict evaluate test bench gpu-wheels gpu-check demo speech-corpus help

help:
	@echo "make demo | setup | shards | publish | train | sweep | lm | predict | evaluate | test | bench | gpu-check | speech-corpus"
	@echo "variables: DATA='$(DATA)' SHARDS='$(SHARDS)' WEIGHTS='$(WEIGHTS)' RESULTS='$(RESULTS)' NGPU=$(NGPU) EPOCHS='$(EPOCHS)' MINUTES='$(MINUTES)' TB='$(TB)' LM='$(LM)' ORDER=$(ORDER) ARGS='$(ARGS)'"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU build on disk; a bare `torch` requirement would pull a multi-GB CUDA build.
# Done once (a stamp; again when pyproject.toml changes): `rm $(VENV)/.setup-done` forces it.
SETUP_STAMP := $(VENV)/.setup-done
$(SETUP_STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[test,speech,sweep,bench]"
	@$(BIN)/phonerec --help >/dev/null && touch "$@" && echo "setup done: $(BIN)/phonerec (activate it: source $(BIN)/activate)"

setup: $(SETUP_STAMP)

# The system synthesizers, only for what synthesizes speech (demo, speech-corpus, and the tests of it)
speech-tools:
	@bash scripts/install-speech-tools.sh --check >/dev/null 2>&1 || bash scripts/install-speech-tools.sh || \
	  echo "warning: speech tools missing: synth-speech and its tests will be skipped"

# Debian's PostgreSQL server, for the test of `phonerec sweep` on a shared storage (it skips without it)
postgresql:
	@bash scripts/install-postgresql.sh --check >/dev/null 2>&1 || bash scripts/install-postgresql.sh || \
	  echo "warning: PostgreSQL missing: the sweep's PostgreSQL test will be skipped"

shards: setup
	$(BIN)/phonerec shards --data "$(DATA)" --shards "$(SHARDS)" $(ARGS)

# Copy the built shards to a URL that every machine can read (s3://, gs://, file://, a served folder):
# shards first, manifests last. Then SHARDS=<that URL> for train, predict and evaluate.
PUBLISH_TO ?=
publish: setup
	@[ -n "$(PUBLISH_TO)" ] || { echo "usage: make publish PUBLISH_TO=s3://bucket/path (or gs://, file://, a folder)"; exit 2; }
	$(BIN)/phonerec publish --shards "$(SHARDS)" --to "$(PUBLISH_TO)" $(ARGS)

train: setup
	$(LAUNCH) train --shards "$(SHARDS)" --weights "$(WEIGHTS)" --results "$(RESULTS)" $(EPOCHS_ARGS) $(BUDGET_ARGS) $(TB_ARGS) $(ARGS)

# A hyperparameter search (Optuna) over train's options and model settings: SPACE the search space, STUDY its
# name (the same name continues it), TRIALS and MINUTES bound the whole sweep, TRIAL_MINUTES each trial;
# the base recipe and the train options in ARGS, e.g. ARGS="--config configs/demo.yaml --devices 0,1".
SPACE ?= configs/sweep-cpu.yaml
STUDY ?= sweep
TRIALS ?=
TRIAL_MINUTES ?=
sweep: setup
	$(BIN)/phonerec sweep --space "$(SPACE)" --study "$(STUDY)" --shards "$(SHARDS)" --weights "$(WEIGHTS)" \
	  --results "$(RESULTS)" $(if $(TRIALS),--trials "$(TRIALS)") $(if $(MINUTES),--minutes "$(MINUTES)") \
	  $(if $(TRIAL_MINUTES),--trial-minutes "$(TRIAL_MINUTES)") $(ARGS)

# An LM of another order or other splits; `make evaluate LM=... ARGS=--tune` then chooses its weights for predict
lm: setup
	$(BIN)/phonerec lm --shards "$(SHARDS)" --weights "$(WEIGHTS)" --order "$(ORDER)" $(ARGS)

predict: setup
	$(LAUNCH) predict --shards "$(SHARDS)" --weights "$(WEIGHTS)" --results "$(RESULTS)" $(LM_ARGS) $(ARGS)

evaluate: setup
	$(BIN)/phonerec evaluate --shards "$(SHARDS)" --weights "$(WEIGHTS)" --results "$(RESULTS)" $(LM_ARGS) $(ARGS)

test: setup speech-tools postgresql
	$(BIN)/python -m pytest -q $(ARGS)

# A corpus of synthesized English speech (flite, festival, espeak-ng) in the raw layout, e.g. ARGS="--split train-clean-100=3000"
speech-corpus: setup speech-tools
	$(BIN)/phonerec synth-speech --data "$(DATA)" $(ARGS)

# ---- benchmarks and the demo -------------------------------------------------------------
# Everything side by side in one run (about 21 min on 2 cores, with a 28-features-per-frame corpus
# beside the 15 one and the training-step row, about 5 min, before/after issue 28; the decoding part,
# about 8 min, is reused from results/bench_decode.json when there; BENCH_ARGS=--scale adds the
# 132,553-utterance corpus, --decode-model SHARDS WEIGHTS the PER rows of a trained model,
# --no-widths drops the 28 one, --no-train the training-step row): results/bench.json, bench.md,
# bench_lengths.png, bench_bars.png.
BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m bench.run_all --out "$(RESULTS)" $(BENCH_ARGS)

# The GPU path on a GPU machine, in about 8 minutes (bench/gpu_check.py): tests/test_gpu.py, the search on CUDA
# against the CPU search and greedy, the GPU presets' training speed with --amp, the GPU demo recipe shortened;
# RESULTS/gpu_check.{json,md}. It runs with the GPU machine's own python and (CUDA) torch; a machine without
# the network takes the project's other packages as wheels made here first: `make gpu-wheels`.
GPU_PYTHON ?= python3
GPU_WHEELS ?= .gpu-wheels
# The wheels leave torch out (and the project, which runs from this folder): the GPU machine keeps its own CUDA build.
gpu-wheels: setup
	rm -rf "$(GPU_WHEELS)" && $(BIN)/pip wheel -q -w "$(GPU_WHEELS)" ".[test,bench]"
	rm -f "$(GPU_WHEELS)"/torch-*.whl "$(GPU_WHEELS)"/nvidia_*.whl "$(GPU_WHEELS)"/triton-*.whl "$(GPU_WHEELS)"/phonerec-*.whl

gpu-check:
	@$(GPU_PYTHON) -c "import zarr, webdataset, pytest, fast_ctc_decode" 2>/dev/null || \
	  $(if $(wildcard $(GPU_WHEELS)),$(GPU_PYTHON) -m pip install -q --no-index --find-links "$(GPU_WHEELS)" "$(GPU_WHEELS)"/*.whl,\
	    $(GPU_PYTHON) -m bench.requirements test bench | $(GPU_PYTHON) -m pip install -q -r /dev/stdin)
	PYTHONPATH="$(CURDIR)" $(GPU_PYTHON) -m bench.gpu_check --out "$(RESULTS)" $(ARGS)

# The whole job on synthesized English speech: corpus -> shards -> train (which then chooses the phone LM
# and its weights on dev: WEIGHTS/decode.json, RESULTS/evaluate-dev-clean.*) -> predict (with that choice).
# The recipe is configs/demo.yaml on a CPU and configs/demo-gpu.yaml where CUDA is available
# (DEMO_CONFIG=FILE chooses; ARGS add to or override it; the CPU recipe trains for 20 minutes,
# DEMO_MINUTES=N for N instead, DEMO_EPOCHS=N for N epochs whatever the time);
# synth-speech returns at once when the corpus is already there with these sizes.
DEMO_DATA ?= data/demo
DEMO_SHARDS ?= shards/demo
DEMO_TRAIN ?= 6000
DEMO_DEV ?= 300
DEMO_TEST ?= 300
DEMO_EPOCHS ?=
DEMO_MINUTES ?=
DEMO_CONFIG ?= auto
# TIMED=1: each stage under /usr/bin/time -v (CPU, system time, page faults), appended to RESULTS/demo-time.txt
TIMED ?=
T = $(if $(TIMED),/usr/bin/time -v -a -o "$(RESULTS)/demo-time.txt")
demo: setup speech-tools
	@$(if $(TIMED),mkdir -p "$(RESULTS)" && rm -f "$(RESULTS)/demo-time.txt")
	$(T) $(BIN)/phonerec synth-speech --data "$(DEMO_DATA)" --quiet \
	  --split "train-clean-100=$(DEMO_TRAIN)" --split "dev-clean=$(DEMO_DEV)" --split "test-clean=$(DEMO_TEST)"
	$(T) $(BIN)/phonerec shards --data "$(DEMO_DATA)" --shards "$(DEMO_SHARDS)" --quiet
	@cfg="$(DEMO_CONFIG)"; if [ "$$cfg" = auto ]; then cfg=configs/demo.yaml; \
	  if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then \
	    cfg=configs/demo-gpu.yaml; fi; fi; \
	echo "demo recipe: $$cfg"; set -x; \
	$(T) $(LAUNCH) train --config "$$cfg" --shards "$(DEMO_SHARDS)" --weights "$(WEIGHTS)" \
	  --results "$(RESULTS)" $(if $(DEMO_MINUTES),--time-budget "$(DEMO_MINUTES)") \
	  $(if $(DEMO_EPOCHS),--epochs "$(DEMO_EPOCHS)" --time-budget 0) --quiet $(TB_ARGS) $(ARGS)
	$(T) $(BIN)/phonerec predict --shards "$(DEMO_SHARDS)" --weights "$(WEIGHTS)" --results "$(RESULTS)" --quiet
	@$(BIN)/phonerec summary --shards "$(DEMO_SHARDS)" --weights "$(WEIGHTS)" --results "$(RESULTS)" --data "$(DEMO_DATA)"
