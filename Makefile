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

.PHONY: install test smoke all plan docker clean-smoke

install: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

test: install
	$(BIN)/python -m pytest -q

smoke: install
	$(BIN)/dvc repro tabulate-smoke
	@echo "Table 3 on the bundled digits data: results/smoke/table3.md (CSV: results/smoke/table3.csv)"

all: install
	$(BIN)/dvc repro

docker:
	docker build --build-arg UID="$$(id -u)" --build-arg GIT_COMMIT="$$(git rev-parse HEAD 2>/dev/null)" -t mnclglf .

plan: install
	$(BIN)/dvc stage list

clean-smoke:
	rm -rf results/smoke runs/digits metrics/digits data/digits
