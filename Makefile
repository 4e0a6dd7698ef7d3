# One-command entry points. A fresh machine needs only Python 3.11 and make:
#   make smoke   the whole pipeline on the bundled digits data, on the CPU (minutes)
#   make test    the test suite
#   make all     the paper's full run (GPU; downloads CIFAR-10/100 and TinyImageNet)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The stamp names the lock file's digest, so editing the lock reinstalls and nothing else does.
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install test smoke all gpu-check plan docker docker-run clean-smoke

install: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

test: install
	$(BIN)/python -m pytest -q

# The smoke pipeline in JOBS single-threaded CPU lanes (params `threads: 1`), then the tables;
# `make all` in one lane per visible GPU (GPUS=0,3,5 to choose). `mnclglf lanes`
# (src/mnclglf/lanes.py) reads the stage graph from DVC, runs the shared stages (download),
# then the independent chains (pretrain -> linear-eval ...) longest first by `make -k -j`,
# each lane pinned to its GPU; a failed chain stops only itself, and the same command again
# resumes. Logs: .dvc/tmp/lanes/.
JOBS ?= 2
export GPUS

smoke: install
	$(BIN)/mnclglf doctor --profile smoke --no-bench
	$(BIN)/mnclglf lanes --target tabulate-smoke --jobs $(JOBS)
	@echo "Tables 3-6 on the bundled digits data: results/smoke/table3.md ... table6.md, results/smoke/summary.md, plots in results/smoke/plots/"
	@cat results/smoke/claims.md

# The doctor first: a machine that cannot run the paper profile well (no usable CUDA GPU, too
# little disk, a folder it cannot write) stops here with what to fix, not weeks later.
all: install
	$(BIN)/mnclglf doctor --profile paper
	$(BIN)/mnclglf lanes

# A reviewer's first GPU hour (README "What each budget buys"): the doctor prints the estimate
# (projected from docs/RESOURCES.md, and timed on this GPU) before anything runs; then the runs
# and the claim table.
.PHONY: quick
quick: install
	$(BIN)/mnclglf doctor --profile quick
	$(BIN)/mnclglf lanes --target tabulate-quick
	@cat results/quick/claims.md

# One GPU's proof in at most 8 minutes (scripts/gpu_check.py): doctor, the bench of every method
# at the paper's shapes, download -> pretrain -> linear-eval on CUDA; results/bench/<gpu>.json.
# Without a GPU it runs its toy CPU form (writes results/bench/cpu-toy.json).
gpu-check: install
	$(BIN)/python scripts/gpu_check.py

# The image `repro`, running as the caller's uid (any, root included).
docker:
	docker build --build-arg UID="$$(id -u)" --build-arg GIT_COMMIT="$$(git rev-parse HEAD 2>/dev/null)" -t repro .

# The README's docker run line: the container works in DOCKER_STATE, made here first so that
# the caller owns it (Docker would create it owned by root). Outputs land there and a rerun
# after an interruption resumes. CPU only: make docker-run DOCKER_GPUS= DOCKER_CMD='make smoke'
DOCKER_STATE ?= repro-state
DOCKER_GPUS ?= --gpus all
DOCKER_CMD ?= make all
docker-run:
	mkdir -p $(DOCKER_STATE) && docker run --rm --init $(DOCKER_GPUS) --ipc=host --user "$$(id -u):$$(id -g)" -v "$(abspath $(DOCKER_STATE)):/state" repro $(DOCKER_CMD)

plan: install
	$(BIN)/dvc stage list

clean-smoke:
	rm -rf results/smoke runs/digits metrics/digits data/digits
