"""The paper-scale network on the RTL engine at a reduced grid: every tensor checked.

    python -m benchmarks.paper_scale --config configs/ibsr.toml --grid 32,32,32 --out runs/paper

The network of `--config` (configs/ibsr.toml: 32 base channels, 4 levels, 5 displacement
heads) at `--grid` (each axis divisible by 2^levels, so every level is there), untrained with
realistic magnitudes (export.untrained: saturation and rounding ties occur), golden vectors of
the integer reference on random inputs (hw.golden.golden_random), then hw.rtl_sim on the RTL
engine built with a weight buffer deep enough for the largest output group and an address
width for the memory plan (the defaults, hw/engine.py, hold the demo network), and hw.verify.
Writes OUT/weights.bin, OUT/golden/, OUT/rtl/ (dumps, cycles.json) and OUT/paper_scale.json:
the engine parameters, simulated and model cycles, mismatching elements, wall time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model.artifacts import atomic_write_json, git_commit
from model.cli import run_cli


def engine_for(weights: Path) -> dict:
    """The smallest engine parameters (powers of two) the compiled program needs beyond the
    defaults: WBUF_DEPTH for its largest output group, ADDR_BITS for its memory plan, and the
    simulated DRAM's size (SIM_MEM_BITS) for it."""
    from hw.compiler import OP_CONV, compile_weights
    from hw.engine import ENGINE
    from hw.rtl_sim import SIM_MEM_BITS

    prog = compile_weights(weights, wbuf_entries=1 << 30, mem_words=1 << 62)
    blocks = max(max(d.entries) for d in prog.descs if d.op == OP_CONV)
    words = prog.act_base + prog.act_words
    return {"WBUF_DEPTH": max(ENGINE["WBUF_DEPTH"][0], 1 << (blocks - 1).bit_length()),
            "ADDR_BITS": max(ENGINE["ADDR_BITS"][0], (words - 1).bit_length()),
            "SIM_MEM_BITS": max(SIM_MEM_BITS, (words - 1).bit_length())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/ibsr.toml", help="TOML config of the network (default configs/ibsr.toml)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--grid", default="32,32,32", help="D,H,W: each divisible by 2^levels (default 32,32,32)")
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gain", type=float, default=1.5,
                    help="weights uniform in +-gain * sqrt(6 / fan-in) (default 1.5: activations saturate, none vanish)")
    a = ap.parse_args(argv)

    def body():
        from export.untrained import untrained_weights
        from hw.golden import golden_random
        from hw.rtl_sim import rtl_sim, verilator_env
        from hw.verify import compared, verify
        from model.config import load_config

        cfg = load_config(a.config)
        try:
            grid = tuple(int(v) for v in a.grid.split(","))
        except ValueError:
            grid = ()
        if len(grid) != 3 or any(v < 1 or v % (1 << cfg.model.levels) for v in grid):
            raise ValueError(f"--grid {a.grid}: three axes, each a multiple of 2^levels = {1 << cfg.model.levels}")
        out = Path(a.out)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "paper_scale.json").is_file())):
            raise FileExistsError(f"--out {out}: exists and holds files of something else (only an earlier "
                                  "paper_scale run's directory is reused)")
        verilator_env()
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        weights = untrained_weights(cfg.model, grid, out / "weights.bin", seed=a.seed, fan_in_gain=a.gain)
        golden = out / "golden"
        if golden.exists():   # an earlier run's (the directory holds paper_scale.json): stale with new weights
            import shutil
            shutil.rmtree(golden)
        golden_random(weights, golden, pairs=a.pairs, seed=a.seed)
        engine = engine_for(weights)
        print(f"[paper-scale] {a.config} at {grid}: engine {engine}; reference done in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rep = rtl_sim(golden, out / "rtl", weights, engine=engine)
        total, lines = verify(golden, out / "rtl")
        n = compared(lines)
        result = {"config": str(a.config), "grid": list(grid), "engine": engine, "git_commit": git_commit(),
                  "pairs": [{k: p[k] for k in ("cycles", "waits", "busy_cycles", "model_cycles", "reads", "writes",
                                                "sim_s")} for p in rep["pairs"]],
                  "cycle_model_checked": rep["cycle_model_checked"], "tensors_compared": n,
                  "tensors_fused": len(lines) - n, "mismatching_elements": total,
                  "wall_s": round(time.perf_counter() - t0, 1)}
        atomic_write_json(out / "paper_scale.json", result)
        print(f"[paper-scale] {'PASS' if total == 0 and rep['cycle_model_checked'] else 'FAIL'}: {total} mismatching "
              f"elements in {n} tensors; busy cycles equal to the model: {rep['cycle_model_checked']}; "
              f"{result['wall_s']} s -> {out / 'paper_scale.json'}", file=sys.stderr)
        return 0 if total == 0 and rep["cycle_model_checked"] else 1
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
