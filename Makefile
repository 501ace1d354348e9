# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# torch is pinned: on our machines and CI, pip's configuration serves torch 2.13.0 as a CPU build from
# local disk, where a bare `torch` or a newer range pulls multi-GB CUDA wheels. Elsewhere pip takes
# PyPI's default build of that version.
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed
# a recipe's pipeline fails with its first failing command (`dsf check | tee` failed only with tee)
SHELL         := /bin/bash
.SHELLFLAGS   := -eo pipefail -c

.PHONY: demo test book bench clean clean-results install

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test,book,train]"
	touch $(STAMP)

install: $(STAMP)

## demo: the zoo table, every form checked against every other, Φ heatmaps under results/
demo: $(STAMP)
	mkdir -p results
	$(BIN)/dsf zoo | tee results/zoo.txt
	$(BIN)/dsf check | tee results/check.txt
	$(BIN)/dsf phi all --out results/phi
	@echo "results written under results/: zoo.txt, check.txt, phi/*.png"

## test: the whole suite (hypothesis profile "ci"), the exercises and the book build, on one pytest-xdist
## worker per core
test: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q -n auto

## book: build the Jupyter Book with every page executed, warnings as errors
book: $(STAMP)
	rm -rf book/_build
	$(BIN)/jupyter-book build book -W -n --keep-going

## bench: CPU benchmark of the forms (writes benchmarks/results/forms_cpu.md)
bench: $(STAMP)
	$(BIN)/python -m benchmarks.forms

## clean: the venv, the book's build and the caches; results/ (the demo's outputs, and every dsf-train run's
## logs and checkpoints by default) stays: `make clean-results` removes it
clean:
	rm -rf $(VENV) book/_build .pytest_cache .hypothesis book/.hypothesis

clean-results:
	rm -rf results
