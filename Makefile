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
EPOCHS ?= 20
ARGS ?=
TORCH_VERSION ?= 2.13.0
# torchrun rendezvous for several machines, e.g. TORCHRUN_ARGS="--nnodes=2 --node_rank=0 --rdzv_endpoint=host:29500"
TORCHRUN_ARGS ?= --standalone
TORCHRUN := $(BIN)/torchrun $(TORCHRUN_ARGS) --nproc_per_node=$(NGPU)

.PHONY: setup shards train predict evaluate test bench demo clean-outputs help

help:
	@echo "make demo | setup | shards | train | predict | evaluate | test | bench"
	@echo "variables: DATA=$(DATA) SHARDS=$(SHARDS) WEIGHTS=$(WEIGHTS) RESULTS=$(RESULTS) NGPU=$(NGPU) EPOCHS=$(EPOCHS) ARGS=\"$(ARGS)\""

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU build on disk; a bare `torch` requirement would pull a multi-GB CUDA build.
setup: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[test]"
	@$(BIN)/phonerec --help >/dev/null && echo "setup done: $(BIN)/phonerec"

shards: setup
	$(BIN)/phonerec shards --data $(DATA) --shards $(SHARDS) $(ARGS)

train: setup
	$(TORCHRUN) -m pipeline.cli train --shards $(SHARDS) --weights $(WEIGHTS) --results $(RESULTS) --epochs $(EPOCHS) $(ARGS)

predict: setup
	$(TORCHRUN) -m pipeline.cli predict --shards $(SHARDS) --weights $(WEIGHTS) --results $(RESULTS) $(ARGS)

evaluate: setup
	$(BIN)/phonerec evaluate --shards $(SHARDS) --weights $(WEIGHTS) --results $(RESULTS) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)
