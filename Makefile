# The user interface of the toolchain. Each target runs what it needs first.
#   make demo                 data -> train -> report on the embedded synthetic default
#   make test                 the test suite (sets up .venv from pyproject.toml on first use)
#   make train CONFIG=configs/ibsr.toml DATA=/path/to/IBSR_V2.0 OUT=runs/ibsr
CONFIG ?= configs/demo.toml
OUT    ?= runs/demo
SYNTH  := data/synthetic
DATA   ?= $(SYNTH)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# the synthetic set is generated only when it is the data in use
DATA_DEP := $(if $(filter $(SYNTH),$(DATA)),$(SYNTH)/synth_manifest.json,)

.PHONY: all demo venv data train report evaluate test test-slow clean help
.DELETE_ON_ERROR:

help:
	@sed -n '1,6p' Makefile

all demo: report

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # the local CPU wheel first: nothing pulls CUDA
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

$(SYNTH)/synth_manifest.json: model/synth.py | $(STAMP)
	$(PY) -m model.synth --out $(SYNTH)

data: $(SYNTH)/synth_manifest.json

$(OUT)/train/model.pt: $(CONFIG) $(DATA_DEP) | $(STAMP)
	$(PY) -m model.train --config $(CONFIG) --data $(DATA) --out $(OUT)/train --resume

train: $(OUT)/train/model.pt

$(OUT)/report/table1.json: $(OUT)/train/model.pt
	$(PY) -m model.evaluate --config $(CONFIG) --ckpt $(OUT)/train/model.pt --data $(DATA) --out $(OUT)

report evaluate: $(OUT)/report/table1.json

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs $(SYNTH)
