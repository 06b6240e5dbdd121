# Every target installs into a local virtualenv (.venv) on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
ARGS ?=
# pytest-xdist processes for `make test` (each runs torch on one thread; 1: one process on two)
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install train demo describe bench bench-quick sweep-grad-accum sweep-variants sweep-samplers sweep-fidelity report reproduce reproduce-gpu sst2-quick shakespeare-quick check-architectures test clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'
	@echo '  extra Hydra overrides go in ARGS, e.g. make train ARGS="data.root=../shared/data/cifar10 data.verify=false"'

$(BIN)/sortednet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/sortednet ## create .venv and install the package with its dev extras

train: $(BIN)/sortednet ## the main job: sortednet train model=cpreresnet20 pool=160
	$(BIN)/sortednet train model=cpreresnet20 pool=160 $(ARGS)

demo: $(BIN)/sortednet ## a short CPU-friendly run (experiment=quick)
	$(BIN)/sortednet train model=cpreresnet20 pool=160 experiment=quick $(ARGS)

describe: $(BIN)/sortednet ## list the sub-models of pool=160
	$(BIN)/sortednet describe model=cpreresnet20 pool=160 $(ARGS)

bench: $(BIN)/sortednet ## the full benchmark (real CIFAR-10 from data.root; bench.json)
	$(BIN)/sortednet bench $(ARGS)

bench-quick: $(BIN)/sortednet ## the benchmark in about two minutes on synthetic data
	$(BIN)/sortednet bench bench.quick=true data=fake $(ARGS)

sweep-grad-accum: $(BIN)/sortednet ## sweep trainer.grad_accum=1,2,4,8 on pool=160 (paper Fig. 5)
	$(BIN)/sortednet train -m +sweep=grad_accum $(ARGS)

sweep-variants: $(BIN)/sortednet ## sweep pool=160,width_only,depth_only,full (paper Fig. 2a)
	$(BIN)/sortednet train -m +sweep=variants $(ARGS)

sweep-samplers: $(BIN)/sortednet ## sweep sampler=uniform,sandwich,weighted on pool=160
	$(BIN)/sortednet train -m +sweep=samplers $(ARGS)

sweep-fidelity: $(BIN)/sortednet ## does the wide end learn? 5 jobs, 2 at a time on this CPU (set trainer.epochs in ARGS; see docs/fidelity.md)
	$(BIN)/sortednet train -m +sweep=fidelity hydra/launcher=local_parallel trainer.threads=1 $(ARGS)

report: $(BIN)/sortednet ## compare the jobs of the newest train sweep (ARGS: sweep_dir=... or runs=[...])
	$(BIN)/sortednet report $(ARGS)

reproduce: $(BIN)/sortednet ## the paper's CIFAR-10 comparison: the variants sweep with experiment=paper_cifar10, then its report
	$(BIN)/sortednet train -m +sweep=variants experiment=paper_cifar10 $(ARGS)
	$(BIN)/sortednet report

reproduce-gpu: $(BIN)/sortednet ## the fidelity study at the paper's 200 epochs on one GPU (about 4 hours on an H200), then its report
	$(BIN)/sortednet train -m +sweep=fidelity experiment=paper_cifar10 trainer.device=cuda $(ARGS)
	$(BIN)/sortednet report

sst2-quick: $(BIN)/sortednet ## SST-2 from scratch with model=bert (ARGS: data.root=<the folder of train.tsv and dev.tsv>)
	$(BIN)/sortednet train model=bert experiment=sst2_quick $(ARGS)

shakespeare-quick: $(BIN)/sortednet ## a character-level LLaMA with every exit trained (ARGS: data.path=<input.txt>)
	$(BIN)/sortednet train model=llama experiment=shakespeare_quick $(ARGS)

check-architectures: $(BIN)/sortednet ## every supported model_type from scratch through train, export (Auto class) and generate (outputs/architectures)
	sweeps/architectures.sh outputs/architectures $(ARGS)

test: $(BIN)/sortednet ## run the test suite on TEST_WORKERS processes, a module each at a time (and list its 15 slowest tests)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15 $(ARGS)

clean: ## remove the virtualenv and build leftovers (keeps outputs/)
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
