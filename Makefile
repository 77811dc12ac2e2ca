# The user interface of the toolchain. Each target runs what it needs first.
#   make demo                 data -> train -> prune -> qat -> report on the embedded synthetic default
#   make test                 the test suite (sets up .venv from pyproject.toml on first use)
#   make train CONFIG=configs/ibsr.toml DATA=/path/to/IBSR_V2.0 OUT=runs/ibsr
#   make prune / qat / export / golden / verify [ACCEL=dir] / bench / report   one stage (and what it needs)
#   make rtl-sim / rtl-synth  the RTL accelerator on the golden pairs (then make verify ACCEL=$(OUT)/rtl) / on an ECP5-85F
#   make docs                 the README's measured tables from $(OUT) (after make demo)
#   make scaling              opt-in: latency against grid and threads, demo and paper-scale networks (~35 min)
#   make soc-sim / bitstream  opt-in: the golden pairs through the accelerator's LiteX SoC and host driver
#                             (simulated) / the SoC's bitstream for an ECPIX-5 85F
#   make rtl-paper            opt-in: the paper-scale network (configs/ibsr.toml, untrained) on the RTL engine at 32^3
#   make domains              opt-in: Table 1's main rows on the demo pairs and on two validation domains side by side
#   make curve                opt-in: the pruning curve to 95 % (configs/curve.toml) in $(OUT)_curve (about an hour)
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

.PHONY: all demo venv data train prune qat export golden golden-force verify rtl-sim rtl-verify rtl-synth soc-sim bitstream rtl-paper domains bench scaling curve report evaluate docs test test-slow test-fuzz clean help FORCE
.DELETE_ON_ERROR:

# The config sections each stage reads, resolved, in $(CFG)/<stage>.json: checked on every run and
# rewritten only when they change (model.config.write_stamp), so editing a section re-runs the
# stages that read it and no other ([refine]: the report, registration.json and the benchmark)
CFG := $(OUT)/config
$(CFG)/%.json: FORCE | $(STAMP)
	@$(PY) -m model.config $(CONFIG) --stamp $* --out $@

help:
	@sed -n '1,13p' Makefile

# Yosys + nextpnr (one thread) place and route the RTL on one core while training runs on the
# other with one thread (torch's two threads beside a busy process run far slower than one:
# docs/experiments.md, "Training speed"); then the rest in order, the benchmark alone
all demo: | $(STAMP)
	$(MAKE) --no-print-directory -j2 rtl-synth train OMP_NUM_THREADS=1
	$(MAKE) --no-print-directory report verify rtl-verify
	$(MAKE) --no-print-directory bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # the local CPU wheel first: nothing pulls CUDA
	$(PY) -m pip install -q -e '.[toolchain,dev]'
	touch $@

venv: $(STAMP)

$(SYNTH)/synth_manifest.json: model/synth.py | $(STAMP)
	$(PY) -m model.synth --out $(SYNTH)

data: $(SYNTH)/synth_manifest.json

$(OUT)/train/model.pt: $(CFG)/train.json $(DATA_DEP) | $(STAMP)
	$(PY) -m model.train --config $(CONFIG) --data $(DATA) --out $(OUT)/train --resume

train: $(OUT)/train/model.pt

$(OUT)/prune/prune.json: $(OUT)/train/model.pt $(CFG)/prune.json
	$(PY) -m quant.prune --config $(CONFIG) --ckpt $< --data $(DATA) --out $(OUT)/prune --resume

prune: $(OUT)/prune/prune.json

$(OUT)/qat/qat.json: $(OUT)/prune/prune.json $(CFG)/qat.json
	$(PY) -m quant.qat --config $(CONFIG) --prune $(OUT)/prune --data $(DATA) --out $(OUT)/qat --resume

qat: $(OUT)/qat/qat.json

$(OUT)/export/manifest.json: $(OUT)/qat/qat.json
	$(PY) -m export.export --config $(CONFIG) --run $(OUT) --data $(DATA)

# the settings around the exported network (pre-alignment, [refine], grid: hw/runtime.py), checked
# against it on every run and rewritten only when the config's change
$(OUT)/export/registration.json: $(OUT)/export/manifest.json FORCE
	@$(PY) -m hw.runtime --config $(CONFIG) --export $(OUT)/export

export: $(OUT)/export/registration.json

# golden vectors are made once; regenerating them is explicit: make golden FORCE=1
$(OUT)/golden/manifest.json: | $(OUT)/export/manifest.json
	$(PY) -m hw.golden --weights $(OUT)/export/weights.bin --config $(CONFIG) --data $(DATA) --out $(OUT)/golden

golden: $(if $(FORCE),golden-force,$(OUT)/golden/manifest.json)

golden-force: $(OUT)/export/manifest.json
	$(PY) -m hw.golden --weights $(OUT)/export/weights.bin --config $(CONFIG) --data $(DATA) --out $(OUT)/golden --force

# compare a device's dumps (ACCEL=dir, golden layout) with the golden vectors; no ACCEL: onnxruntime
# running the exported int8 ONNX is the device (independent of the reference)
verify: $(OUT)/golden/manifest.json
	$(PY) -m hw.verify --golden $(OUT)/golden --quiet $(if $(ACCEL),--accel $(ACCEL),)

# the RTL accelerator (hw/rtl/, hw/ACCEL.md) simulated in Verilator on the golden pairs: every
# tensor dumped to $(OUT)/rtl/pair_XX/ in the golden layout, cycles in $(OUT)/rtl/cycles.json
$(OUT)/rtl/cycles.json: $(OUT)/golden/manifest.json hw/rtl/accel.v hw/rtl/accel_faults.vh hw/rtl/accel_params.vh hw/rtl/accel_axi.vh hw/rtl/accel_mem.v hw/rtl/accel_skid.v hw/rtl/accel_ip.v hw/rtl/accel_sim.v hw/compiler.py hw/engine_model.py
	$(PY) -m hw.rtl_sim --golden $(OUT)/golden --out $(OUT)/rtl --project configs/ibsr.toml

rtl-sim: $(OUT)/rtl/cycles.json

rtl-verify: $(OUT)/rtl/cycles.json
	$(PY) -m hw.verify --golden $(OUT)/golden --accel $(OUT)/rtl --quiet

# Yosys + nextpnr for the LFE5UM-85F: $(OUT)/rtl/synth.json (skipped when the RTL is unchanged);
# SEEDS=1,2,3,4,5 places five times (fmax: minimum and median; about 25 minutes on 2 cores)
SEEDS ?= 1
$(OUT)/rtl/synth.json: hw/rtl/accel.v hw/rtl/accel_faults.vh hw/rtl/accel_params.vh hw/rtl/accel_axi.vh hw/rtl/accel_mem.v hw/rtl/accel_skid.v hw/rtl/accel_ip.v hw/rtl/accel_top.v FORCE | $(STAMP)
	$(PY) -m hw.rtl_synth --out $(OUT)/rtl --seeds $(SEEDS)

rtl-synth: $(OUT)/rtl/synth.json

# opt-in: the golden pairs through the accelerator in its LiteX SoC (hw/soc.py: LiteDRAM on a
# DDR3 model, the UART bridge), loaded, started and read back by the host driver (hw/board.py):
# dumps in $(OUT)/soc/pair_XX, the engine's counters and the link's bytes in $(OUT)/soc/soc.json
soc-sim: $(OUT)/golden/manifest.json | $(STAMP)
	$(PY) -m hw.soc sim --golden $(OUT)/golden --out $(OUT)/soc
	$(PY) -m hw.verify --golden $(OUT)/golden --accel $(OUT)/soc --quiet

# opt-in: the SoC's bitstream for the ECPIX-5 85F (hw/soc.py): LiteX writes the Verilog and the pins,
# Yosys, nextpnr-ecp5 and ecppack (pip wheels) build it: $(OUT)/board/gateware/seedN/soc.bit and
# $(OUT)/board/bitstream.json (every clock's fmax per placer seed; SEEDS as for rtl-synth)
# (the SoC's engine has TP = 1, as in soc-sim: hw/soc.py SOC_TP says why)
bitstream: | $(STAMP)
	$(PY) -m hw.soc bitstream --out $(OUT)/board --seeds $(SEEDS)

# opt-in: Table 1's main rows on the demo's test pairs and on two validation domains (model.synth's
# shifted style and model.anatomy's real anatomy, written to $(OUT)_val/shifted and
# $(OUT)_val/mni once) in one run: $(OUT)/report/domains.json
domains: $(OUT)/report/pruning_curve.json   # its compression rows are the report's QAT models
	$(PY) -m benchmarks.domains --config $(CONFIG) --data $(DATA) --out $(OUT)

# opt-in: configs/ibsr.toml's network (untrained, realistic magnitudes) at PAPER_GRID on the RTL
# engine with a weight buffer and address width it needs: every tensor verified, cycles equal to
# the model ($(OUT)_paper/paper_scale.json); at 32x48x32 the first layer and the finest head
# overflow the engine's windows, so spatial tiles are simulated too
PAPER_GRID ?= 32,48,32
rtl-paper: $(STAMP)
	$(PY) -m benchmarks.paper_scale --config configs/ibsr.toml --grid $(PAPER_GRID) --out $(OUT)_paper

# latency per backend on this machine (BENCH_ARGS, e.g. --threads 2 --runs 50)
bench: $(OUT)/export/registration.json
	$(PY) benchmarks/latency.py --export $(OUT)/export --out $(OUT)/bench $(BENCH_ARGS)

# opt-in (not in demo): latency against grid (up to the paper's 128x160x128) and threads, for
# the demo network and an untrained network of configs/ibsr.toml (latency does not depend on weights)
scaling: $(OUT)/export/manifest.json
	$(PY) benchmarks/scaling.py --export $(OUT)/export --out $(OUT)/bench/scaling --runs 3 $(SCALING_ARGS)
	$(PY) benchmarks/scaling.py --untrained configs/ibsr.toml --out $(OUT)/bench/scaling_ibsr --threads 2 --runs 2 --shapes 32,32,32 64,80,64 128,160,128 \
	    --backends ort_fp32,ort_int8_float_kernels,ort_int8_qlinear,openvino_fp32,openvino_int8 --check-max-voxels 32768 $(SCALING_ARGS)

# opt-in (not in demo): the pruning curve to 95 % (configs/curve.toml: global int8, layer-aware int8
# and int4 at 75/90/95 %) in $(OUT)_curve/report/, reusing $(OUT)'s trained network (about an hour)
curve: $(OUT)/train/model.pt
	mkdir -p $(OUT)_curve/train
	# the final checkpoint too: when configs/curve.toml is newer, train --resume finishes at once
	test -f $(OUT)_curve/train/model.pt || cp $(OUT)/train/model.pt $(OUT)/train/ckpt.pt $(OUT)_curve/train/
	$(MAKE) report CONFIG=configs/curve.toml OUT=$(OUT)_curve

# the float stage alone: identity and trained rows, per-label CSV, figure 3
$(OUT)/report/figure3.png: $(OUT)/train/model.pt $(CFG)/all.json
	$(PY) -m model.evaluate --config $(CONFIG) --ckpt $< --data $(DATA) --out $(OUT)

evaluate: $(OUT)/report/figure3.png

# every row of Table 1 (sizes as make export wrote them) and the pruning curve (which adds the
# int8 QAT models at each sparsity); then SyN and the deployed registration timed interleaved
# (benchmarks/speed.py, about a minute)
$(OUT)/report/pruning_curve.json: $(OUT)/qat/qat.json $(OUT)/report/figure3.png $(OUT)/export/registration.json
	$(PY) -m quant.qat --config $(CONFIG) --prune $(OUT)/prune --data $(DATA) --out $(OUT)/qat --resume --curve
	$(PY) -m benchmarks.accuracy --config $(CONFIG) --data $(DATA) --out $(OUT)
	$(PY) -m benchmarks.speed --config $(CONFIG) --data $(DATA) --out $(OUT)

report: $(OUT)/report/pruning_curve.json

# the README's measured tables, written from $(OUT)'s files (benchmarks/docs_tables.py)
docs: | $(STAMP)
	$(PY) -m benchmarks.docs_tables --run $(OUT) --readme README.md

test: $(STAMP)
	$(PY) -m pytest -q --durations=10

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# opt-in: the long fuzz run of every file reader (FUZZ_CASES per reader, 5 readers; FUZZ_SEED)
test-fuzz: $(STAMP)
	FUZZ_CASES=$${FUZZ_CASES:-250} $(PY) -m pytest -q -m fuzz tests/test_fuzz.py

clean:
	rm -rf runs $(SYNTH)
