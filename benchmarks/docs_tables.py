"""Write the README's measured tables from a run directory, so that no measured number is typed.

    python -m benchmarks.docs_tables --run runs/demo [--readme README.md] [--check] [--only NAME,...]
    make docs                                     # the same for OUT (default runs/demo)

The README holds blocks between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`;
each is replaced by the table NAME made from the run's own files, headed by the run's commit
and the date of the file it was read from:

    quality      OUT/report/table1.json    (make report): Table 1's main rows
    size         OUT/export/manifest.json  (make export): the deployed files' bytes
    latency      OUT/bench/latency.json    (make bench): p50 per backend and the host steps
    accelerator  OUT/rtl/cycles.json, synth.json (make rtl-sim, rtl-synth)
    domains      OUT/report/domains.json   (make domains)
    seeds        OUT/report/seeds.json     (python -m benchmarks.seeds): the spread over trainings
    speed        OUT/report/speed.json     (python -m benchmarks.speed): SyN and the deployed
                                           registration timed pair by pair, interleaved

A block whose file is missing says so rather than keeping old numbers; `--only` rewrites the
named blocks and leaves the others as they are (a run directory that holds some of the files,
the others' tables being from other runs, each stamped with its own). Re-running on the
same run directory writes the same bytes (tests/test_docs.py). --check exits 1 if the
README differs from what the run gives (nothing is written).
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

from benchmarks.latency import match_text

# Table 1's rows shown in the README, in order, with their labels (the full table:
# OUT/report/table1.md)
QUALITY_ROWS = [
    ("identity", "no registration"),
    ("global_stage", "global stage alone (host)"),
    ("ants_affine", "ANTs affine (1 thread)"),
    ("ants_syn", "ANTs SyN (1 thread)"),
    ("trained_unrefined", "trained network alone (fp32)"),
    ("trained", "trained (fp32, + refinement)"),
    ("int8_qat", "int8 QAT (Brevitas)"),
    ("int8_deployed_unrefined", "int8 deployed network alone"),
    ("int8_deployed", "**int8 deployed** (+ refinement)"),
    ("int4_layer_s90", "int4 QAT, layer-aware 90 % sparse"),
]
# rows timed as deployed (host numpy, the exported network in its runtime, ANTs), where a
# speed against SyN means something; the others run PyTorch eager
SPEED_ROWS = ("global_stage", "ants_affine", "int8_deployed_unrefined", "int8_deployed")
SIZE_FILES = ["weights.bin", "weights_int4.bin", "localnet_fp32.onnx", "localnet_int8.onnx",
              "localnet_int8_openvino.onnx", "register_int8.onnx"]
BLOCK = re.compile(r"(<!-- generated:(\w+) -->\n)(.*?)(<!-- /generated:\2 -->)", re.S)


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None


def _stamp(path: Path, commit: str | None) -> str:
    if not commit:  # files written before they carried a commit: the run's export says which
        m = _load(path.parent.parent / "export" / "manifest.json")
        commit = m.get("git_commit") if isinstance(m, dict) else None
    day = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d")
    return f"From `{path.parent.name}/{path.name}` of a run at commit {str(commit or 'unknown')[:12]}, {day}."


def _fmt(v, nd=3):
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))


def quality(run: Path) -> str:
    path = run / "report" / "table1.json"
    t = _load(path)
    if t is None:
        return f"(no `{path}`: run `make report`)\n"
    rows = {r["model"]: r for r in t["rows"]}
    syn = rows.get("ants_syn", {}).get("seconds_per_pair")
    out = [_stamp(path, t.get("git_commit")) + f" {t['pairs']} ordered test pairs, {len(t['labels'])} labels.", "",
           "| registration | Dice | centroid TRE mm | folding % | vanished labels | s / pair | vs SyN |",
           "|---|---|---|---|---|---|---|"]
    for name, label in QUALITY_ROWS:
        r = rows.get(name)
        if r is None:
            continue
        s = r.get("seconds_per_pair")
        speed = f"{syn / s:.1f}x" if syn and s and name in SPEED_ROWS else ""
        out.append(f"| {label} | {_fmt(r['dice'])} | {_fmt(r['tre_mm'], 2)} | {_fmt(r['folding_pct'])} | "
                   f"{r['vanished_labels']} | {_fmt(s, 4)} | {speed} |")
    return "\n".join(out) + "\n"


def size(run: Path) -> str:
    path = run / "export" / "manifest.json"
    m = _load(path)
    if m is None:
        return f"(no `{path}`: run `make export`)\n"
    files = m.get("files", {})
    out = [_stamp(path, m.get("git_commit")), "", "| file | bytes | gzip -9 bytes |", "|---|---|---|"]
    for name in SIZE_FILES:
        f = files.get(name)
        if f:
            out.append(f"| `{name}` | {f['bytes']:,} | {f['gzip_bytes']:,} |")
    return "\n".join(out) + "\n"


def latency(run: Path) -> str:
    path = run / "bench" / "latency.json"
    rep = _load(path)
    if rep is None:
        return f"(no `{path}`: run `make bench`)\n"
    p = rep["platform"]
    out = [_stamp(path, rep.get("git_commit")) + f" {p['cpu']}, {rep['threads']} threads, grid {rep['shape']}, "
           f"{rep['runs']} runs. Network: the network alone; registration: the whole deployed "
           "registration around it (global stage, network, composition, refinement, warp).", "",
           "| backend | network p50 ms | network p90 ms | registration p50 ms | matches the reference |",
           "|---|---|---|---|---|"]
    for r in rep["results"]:
        out.append(f"| {r['backend']} | {r['p50_ms']} | {r['p90_ms']} | {r.get('register_p50_ms', 'n/a')} "
                   f"| {match_text(r)} |")
    h = rep.get("host_steps") or {}
    names = {"prealign_ms": "global stage", "compose_ms": "composition", "refine_ms": "refinement"}
    steps = [f"{names[k]} {v} ms" for k, v in h.items() if k in names]
    if steps:
        out += ["", "Host steps around the network (numpy, p50): " + ", ".join(steps) + "."]
    return "\n".join(out) + "\n"


def accelerator(run: Path) -> str:
    cyc_path, syn_path = run / "rtl" / "cycles.json", run / "rtl" / "synth.json"
    cyc, syn = _load(cyc_path), _load(syn_path)
    if cyc is None:
        return f"(no `{cyc_path}`: run `make rtl-sim`)\n"
    worst = max(cyc["pairs"], key=lambda p: p["cycles"])
    cycles = worst["cycles"]
    dram = cyc.get("dram_cycles", {})
    out = [_stamp(cyc_path, cyc.get("git_commit")), "", "| quantity | value |", "|---|---|",
           f"| DRAM model (cycles: first word of a read, row change, read/write turn; per 64-bit word) | "
           f"{dram.get('LAT')}, {dram.get('ROWMISS')}, {dram.get('TURN')}; {dram.get('BEAT')} |",
           f"| cycles per pair (simulated: AXI4 master on the DRAM model) | {cycles:,} |",
           f"| of which waiting for memory | {worst['waits']:,} ({worst['waits'] / cycles:.1%}) |",
           f"| busy cycles, words read and written equal to the models | {cyc.get('cycle_model_checked')} |",
           f"| words read / written per pair (64-bit) | {worst['reads']:,} / {worst['writes']:,} |",
           f"| descriptors per pair (of them convolutions with an add fused into their output stage) | "
           f"{len(cyc.get('layers', []))} ({sum('+' in r['layer'] for r in cyc.get('layers', []))}) |",
           f"| sparse / dense busy cycles | {cyc.get('sparse_vs_dense')} |",
           f"| MAC array | {cyc.get('array_macs')} |",
           f"| executed-MAC utilisation (stored blocks at taps inside the volume / array capacity over all cycles) "
           f"| {cyc.get('executed_mac_util', 'n/a')} |",
           f"| dense-equivalent utilisation (every weight's MACs / array capacity) | {cyc.get('dense_equiv_util', 'n/a')} |"]
    if syn is not None:
        fmax = syn.get("fmax_mhz")
        seeds = syn.get("seeds", [syn.get("seed", 1)])
        spread = f" (median {syn['fmax_median_mhz']:.2f})" if len(seeds) > 1 and "fmax_median_mhz" in syn else ""
        out.append(f"| placed fmax, lowest of {len(seeds)} placer seed{'s' * (len(seeds) > 1)} ({syn.get('device')}, "
                   f"speed {syn.get('speed_grade', '?')}, out of context; synth.json of {str(syn.get('git_commit', '?'))[:12]}) "
                   f"| {fmax} MHz{spread} |")
        if fmax:
            out.append(f"| ms per pair at that fmax, on the DRAM model | {cycles / (fmax * 1e3):.1f} |")
    pj = cyc.get("projection")
    if pj and "traffic_bytes" in pj:
        at = f", {pj['cycles'] / (syn['fmax_mhz'] * 1e6):.0f} s at that fmax" if syn and syn.get("fmax_mhz") else ""
        tiles = (f"{pj['tiles']:,} spatial tiles of {pj['tiled_layers']} layers for the engine's window, "
                 if "tiles" in pj else "")
        build = pj.get("build")
        fits = tiles + ("compiled for the engine as built" if pj["fits_weight_buffer"] else
                        f"an output group needs {pj['weight_buffer_blocks']:,} weight blocks (the engine as built holds "
                        f"{pj.get('weight_buffer_built', 512):,})") + (
            f"; compiled for the paper-scale build ({build['WBUF_DEPTH']:,} blocks, {build['ADDR_BITS']}-bit word "
            "addresses; simulated at a reduced grid: `make rtl-paper`)" if build else "")
        out.append(f"| projected: `{pj['config']}` at {'x'.join(map(str, pj['grid']))}, dense, cycle model on ideal memory "
                   f"| {pj['cycles']:,} cycles{at}; memory plan {pj['memory_bytes'] / 1e6:.0f} MB (liveness; "
                   f"{pj['memory_bytes_keep_all'] / 1e6:,.0f} MB keeping every tensor); traffic "
                   f"{pj['traffic_bytes'] / 1e9:.2f} GB; {fits} |")
        if syn and syn.get("fmax_mhz"):
            from hw.rtl_synth import DEVICE
            out.append(f"| the same, a bound for any engine on this part: the network's {pj['dense_macs'] / 1e9:,.1f} G "
                       f"MACs, one per cycle on each of the {DEVICE['part']}'s {DEVICE['multipliers']} multipliers at "
                       f"that fmax | {pj['dense_macs'] / (DEVICE['multipliers'] * syn['fmax_mhz'] * 1e6):.0f} s |")
        for nm, r in pj.get("nm", {}).items():
            at = f", {r['cycles'] / (syn['fmax_mhz'] * 1e6):.0f} s at that fmax" if syn and syn.get("fmax_mhz") else ""
            out.append(f"| the same, {nm} block sparsity (N of every M weight blocks of an output group stored; the "
                       f"first convolution and the heads dense) | {r['cycles']:,} cycles{at}; executed-MAC utilisation "
                       f"{100 * r['executed_mac_util']:.1f} % |")
    return "\n".join(out) + "\n"


def soc(run: Path) -> str:
    """The accelerator in its LiteX SoC: OUT/soc/soc.json (make soc-sim) and, when built,
    OUT/board/bitstream.json (make bitstream)."""
    path, bit_path = run / "soc" / "soc.json", run / "board" / "bitstream.json"
    res, bit = _load(path), _load(bit_path)
    if res is None:
        return f"(no `{path}`: run `make soc-sim`)\n"
    worst = max(res["pairs"], key=lambda p: p["cycles"])
    cycles, mhz = worst["cycles"], res["clk_hz"] / 1e6
    link = worst["link_bytes_out"] + worst["link_bytes_in"]
    baud = (bit or {}).get("uart_baud", 1_000_000)
    out = [_stamp(path, res.get("git_commit")), "", "| quantity | value |", "|---|---|",
           f"| pairs through the simulated SoC by the host driver | {len(res['pairs'])} |",
           *([f"| the engine's weight blocks per slot (TP) | {res['tp']} ({res['tp'] * 64} multiply-accumulates a cycle) |"]
             if "tp" in res else []),
           f"| engine cycles per pair (its CYCLES register; LiteDRAM on the DDR3 model) | {cycles:,} |",
           f"| of which waiting for memory | {worst['waits']:,} ({worst['waits'] / cycles:.1%}) |",
           f"| busy cycles = the cycle model's | {cycles - worst['waits'] == res['busy_model_cycles']} |",
           f"| words read / written per pair (64-bit) | {worst['reads']:,} / {worst['writes']:,} |",
           f"| ms per pair at the SoC clock ({mhz:g} MHz) | {cycles / (mhz * 1e3):.1f} |",
           f"| host link bytes per pair (load / read back every activation) | {worst['link_bytes_out']:,} / "
           f"{worst['link_bytes_in']:,} ({link * 10 / baud:.1f} s at {baud / 1e6:g} Mbaud) |",
           f"| simulated SoC cycles per pair, load and read-back included | {worst['sim_cycles']:,} |"]
    if bit is not None:
        runs = bit["runs"]
        tp = f"engine TP = {bit['engine_tp']}, " if "engine_tp" in bit else ""
        mins = sorted(round(r["s"] / 60) for r in runs if "s" in r)
        span = "" if not mins else f"{mins[0]}" if mins[0] == mins[-1] else f"{mins[0]} to {mins[-1]}"
        how = f"{tp}{bit.get('router', 'router1')}" + (f", {span} min of place and route each" if mins else "")
        seeds = ", ".join(str(r["seed"]) for r in runs)
        out.append(f"| ECPIX-5 bitstream: placer seeds | {seeds} ({how}; bitstream.json of "
                   f"{str(bit.get('git_commit', '?'))[:12]}) |")
        for name in runs[0]["clocks"]:   # over seeds: min / median / max, and how many met the constraint
            f = sorted(r["clocks"][name]["fmax_mhz"] for r in runs)
            meets = sum(r["clocks"][name]["meets"] for r in runs)
            spread = f"{f[0]:.1f} / {f[len(f) // 2]:.1f} / {f[-1]:.1f} MHz (min / median / max)" if len(f) > 1 else f"{f[0]:.1f} MHz"
            out.append(f"| `{name}` fmax | {spread}; meets {runs[0]['clocks'][name]['target_mhz']:g} MHz in "
                       f"{meets} of {len(runs)} |")
        cells = bit["runs"][0].get("cells", {})
        out.append("| its cells (used / available) | " + ", ".join(
            f"{k} {v['used']:,} / {v['available']:,}" for k, v in cells.items()) + " |")
    return "\n".join(out) + "\n"


def _report(run: Path, name: str, how: str, markdown) -> str:
    """The block of OUT/report/NAME.json, rendered by `markdown` (its module's), or how to make it."""
    path = run / "report" / f"{name}.json"
    res = _load(path)
    if res is None:
        return f"(no `{path}`: run `{how}`)\n"
    return _stamp(path, res.get("git_commit")) + "\n\n" + markdown(res)


def domains(run: Path) -> str:
    from benchmarks.domains import markdown
    return _report(run, "domains", "make domains", markdown)


def seeds(run: Path) -> str:
    from benchmarks.seeds import markdown
    return _report(run, "seeds", "python -m benchmarks.seeds", markdown)


def speed(run: Path) -> str:
    from benchmarks.speed import markdown
    return _report(run, "speed", "python -m benchmarks.speed", markdown)


TABLES = {"quality": quality, "size": size, "latency": latency, "accelerator": accelerator, "domains": domains,
          "seeds": seeds, "soc": soc, "speed": speed}


def render(text: str, run: Path, only: set[str] | None = None) -> str:
    """`text` with every generated block (or those named in `only`) replaced by its table from `run`."""
    unknown = sorted((only or set()) - set(TABLES))
    if unknown:
        raise ValueError(f"--only {','.join(unknown)}: unknown table; known: {sorted(TABLES)}")

    def block(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise ValueError(f"generated block {name!r}: unknown; known: {sorted(TABLES)}")
        if only is not None and name not in only:
            return m.group(0)
        return m.group(1) + TABLES[name](run) + m.group(4)
    return BLOCK.sub(block, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a run directory (OUT of make demo)")
    ap.add_argument("--readme", type=Path, default=Path("README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the file differs from what the run gives")
    ap.add_argument("--only", help="comma-separated table names: rewrite only these blocks")
    a = ap.parse_args(argv)
    from model.artifacts import atomic_write_text
    from model.cli import run_cli

    def body():
        if not a.run.is_dir():
            raise ValueError(f"--run {a.run}: no such run directory")
        try:
            old = a.readme.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{a.readme}: cannot read ({e})") from None
        new = render(old, a.run, set(a.only.split(",")) if a.only else None)
        if a.check:
            print(f"{a.readme}: {'up to date' if new == old else 'differs from ' + str(a.run)}")
            return 0 if new == old else 1
        if new != old:
            atomic_write_text(a.readme, new)
        print(f"[docs] {a.readme}: {len(BLOCK.findall(new))} tables from {a.run}", file=sys.stderr)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
