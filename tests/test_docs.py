"""benchmarks/docs_tables.py: the README's tables come from a run directory's files, byte for
byte the same on every re-run, with nothing outside the generated blocks touched."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.docs_tables import main, render

README = """# T

intro text
<!-- generated:quality -->
old numbers 0.123
<!-- /generated:quality -->
middle
<!-- generated:latency -->
<!-- /generated:latency -->
<!-- generated:size -->
x
<!-- /generated:size -->
<!-- generated:accelerator -->
<!-- /generated:accelerator -->
end
"""


def _run(tmp: Path) -> Path:
    run = tmp / "run"
    for d in ("report", "bench", "export", "rtl"):
        (run / d).mkdir(parents=True)
    row = lambda m, dice, s: {"model": m, "dice": dice, "tre_mm": 8.5, "landmark_tre_mm": 9.0, "folding_pct": 0.01,
                              "vanished_labels": 0, "seconds_per_pair": s, "nonzero_params": 0, "weight_bytes": 0}
    (run / "report" / "table1.json").write_text(json.dumps({
        "dataset": "d", "pairs": 20, "labels": [2, 41], "git_commit": "abcdef1234567890",
        "rows": [row("identity", 0.314, 0.0001), row("ants_syn", 0.453, 0.5), row("int8_deployed", 0.5012, 0.025)]}))
    (run / "bench" / "latency.json").write_text(json.dumps({
        "platform": {"cpu": "cpu X"}, "threads": 2, "shape": [32, 40, 32], "runs": 30,
        "results": [{"backend": "openvino_int8", "p50_ms": 9.1, "p90_ms": 9.9, "register_p50_ms": 31.5,
                     "matches_reference": True, "max_abs_diff": None}],
        "host_steps": {"prealign_ms": 15.2, "refine_ms": 0.9}}))
    (run / "export" / "manifest.json").write_text(json.dumps({
        "git_commit": "abcdef1234567890", "files": {"weights.bin": {"bytes": 270688, "gzip_bytes": 200001}}}))
    (run / "rtl" / "cycles.json").write_text(json.dumps({
        "pairs": [{"cycles": 7871501, "waits": 500000, "reads": 1100000, "writes": 700000},
                  {"cycles": 7871500, "waits": 499999, "reads": 1100000, "writes": 700000}],
        "cycle_model_checked": True, "sparse_vs_dense": 0.785, "array_macs": 128,
        "dram_cycles": {"LAT": 32, "ROWMISS": 6, "TURN": 4, "BEAT": 1}}))
    (run / "rtl" / "synth.json").write_text(json.dumps({"fmax_mhz": 100.0, "device": "LFE5UM-85F",
                                                        "git_commit": "1234567890abcdef"}))
    for p in run.rglob("*.json"):  # a fixed date: the stamp reads the file's time
        os.utime(p, (1796000000, 1796000000))
    return run


def test_tables_from_a_run(tmp_path):
    run = _run(tmp_path)
    out = render(README, run)
    assert out.startswith("# T\n\nintro text\n<!-- generated:quality -->\n") and out.endswith("end\n")
    assert "middle" in out and "0.123" not in out
    # the values of the fixture, formatted by hand
    assert "| **int8 deployed** (+ refinement) | 0.501 | 8.50 | 0.010 | 0 | 0.0250 | 20.0x |" in out
    assert "| ANTs SyN (1 thread) | 0.453 | 8.50 | 0.010 | 0 | 0.5000 |  |" in out
    assert "| openvino_int8 | 9.1 | 9.9 | 31.5 | yes, exactly |" in out
    assert "global stage 15.2 ms, refinement 0.9 ms" in out
    assert "| `weights.bin` | 270,688 | 200,001 |" in out
    assert "| cycles per pair (simulated: AXI4 master on the DRAM model) | 7,871,501 |" in out
    assert "| of which waiting for memory | 500,000 (6.4%) |" in out
    assert "| words read / written per pair (64-bit) | 1,100,000 / 700,000 |" in out
    assert "| DRAM model (cycles: first word of a read, row change, read/write turn; per 64-bit word) | 32, 6, 4; 1 |" in out
    assert "| placed fmax, lowest of 1 placer seed (LFE5UM-85F, speed ?, out of context; synth.json of 1234567890ab) | 100.0 MHz |" in out
    assert "| ms per pair at that fmax, on the DRAM model | 78.7 |" in out
    assert "commit abcdef123456, 2026-11-30" in out  # 1796000000 s after the epoch
    assert render(out, run) == out  # a second run changes nothing


def test_cli_writes_then_checks(tmp_path, capsys):
    run = _run(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert main(["--run", str(run), "--readme", str(readme), "--check"]) == 1
    assert main(["--run", str(run), "--readme", str(readme)]) == 0
    first = readme.read_bytes()
    assert main(["--run", str(run), "--readme", str(readme)]) == 0 and readme.read_bytes() == first
    assert main(["--run", str(run), "--readme", str(readme), "--check"]) == 0
    (run / "bench" / "latency.json").unlink()   # a missing file says so, no stale numbers
    main(["--run", str(run), "--readme", str(readme)])
    assert "(no `" in readme.read_text() and "| openvino_int8 |" not in readme.read_text()


def test_bad_run_is_a_clear_error(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "none"), "--readme", str(tmp_path / "R.md")]) == 2
    assert "--run" in capsys.readouterr().err
    run = _run(tmp_path)
    (run / "report" / "table1.json").write_text("{bad")
    (tmp_path / "R.md").write_text(README)
    assert main(["--run", str(run), "--readme", str(tmp_path / "R.md")]) == 2
    assert "table1.json: not readable JSON" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown"):
        render("<!-- generated:nope -->\n<!-- /generated:nope -->", run)


def test_only_rewrites_the_named_blocks(tmp_path):
    """--only: the named blocks come from the run, every other block is left byte for byte (its
    file missing from this run would otherwise replace it with a pointer); an unknown name is
    refused."""
    run = _run(tmp_path)
    text = ("<!-- generated:quality -->\nold quality\n<!-- /generated:quality -->\n"
            "<!-- generated:soc -->\nold soc table\n<!-- /generated:soc -->\n")
    out = render(text, run, {"quality"})
    assert "old soc table" in out and "old quality" not in out and "| registration |" in out
    assert "old soc table" not in render(text, run)
    with pytest.raises(ValueError, match="--only nope: unknown table"):
        render(text, run, {"nope"})


def _domains_run(run: Path, seed: int, dice: dict) -> Path:
    """A run directory with report/domains.json (rows' Dice as given) and config/train.json."""
    from benchmarks.domains import METRICS

    rows = {name: {m: 0.0 for m in METRICS} | {"dice": v, "pairs": 20} for name, v in dice.items()}
    (run / "report").mkdir(parents=True)
    (run / "config").mkdir()
    (run / "report" / "domains.json").write_text(json.dumps({"git_commit": "abc", "sets": {"demo": rows}}))
    (run / "config" / "train.json").write_text(json.dumps({"train": {"seed": seed, "threads": 1}}))
    return run


def test_seeds_summary_and_its_block(tmp_path):
    """benchmarks.seeds: per row the runs' values, their mean, range and sample sd, by hand; the
    README block renders it; one run or a missing file is a clear error."""
    from benchmarks.docs_tables import render
    from benchmarks.seeds import main, summarise

    runs = [_domains_run(tmp_path / f"s{k}", k, {"int8_deployed": v, "ants_syn": 0.45})
            for k, v in enumerate((0.50, 0.47, 0.53))]
    s = summarise(runs)
    d = s["sets"]["demo"]["int8_deployed"]["dice"]
    assert d["values"] == [0.50, 0.47, 0.53] and (d["min"], d["max"]) == (0.47, 0.53)
    assert abs(d["mean"] - 0.50) < 1e-12 and abs(d["sd"] - 0.03) < 1e-12   # float sums: exact to rounding
    assert [m["seed"] for m in s["runs"]] == [0, 1, 2]
    assert main(["--runs", *map(str, runs), "--out", str(runs[0] / "report" / "seeds.json")]) == 0
    text = render("x\n<!-- generated:seeds -->\nold\n<!-- /generated:seeds -->\n", runs[0])
    assert "| int8_deployed | 0.500 (0.470 .. 0.530) | 0 |" in text and "old" not in text
    with pytest.raises(ValueError, match="at least two run directories"):
        summarise(runs[:1])
    with pytest.raises(ValueError, match=r"nowhere/report/domains.json: missing \(make domains\)"):
        summarise([runs[0], tmp_path / "nowhere"])


def test_speed_interleaves_and_summarises_rounds(tmp_path):
    """benchmarks.speed.measure: per pair SyN then the deployed registration, each round's mean
    seconds and ratio, the median and range over rounds (fake registrations with known sleeps
    would make a timed test: the clock is replaced by a counter instead); the README block."""
    import benchmarks.speed as sp
    from benchmarks.docs_tables import render

    calls, clock = [], iter(range(1000))
    sp.time.perf_counter, real = (lambda: next(clock)), sp.time.perf_counter
    try:
        subjects = ["a", "b"]
        syn = lambda m, f: calls.append(("syn", m, f))           # noqa: E731
        dep = lambda m, f: calls.append(("dep", m, f))           # noqa: E731
        res = sp.measure(subjects, None, dep, syn, rounds=2, progress=False)
    finally:
        sp.time.perf_counter = real
    from model.data import test_pairs
    order = [(subjects[m], subjects[f]) for m, f in test_pairs(subjects)]
    assert calls == [(who, m, f) for m, f in order for who in ("syn", "dep")] * 2 and len(order) == 2
    # every timed call spans one tick of the counter: both take 1 "second" per pair, ratio 1
    assert res["pairs"] == 2 and [r["ratio"] for r in res["rounds"]] == [1.0, 1.0]
    res["rounds"][1] = {"ants_syn": 0.6, "int8_deployed": 0.05, "ratio": 12.0}
    res.update({k: {"median": v, "min": v, "max": v} for k, v in (("ants_syn", 0.6), ("int8_deployed", 0.05))},
               ratio={"median": 11.0, "min": 10.0, "max": 12.0}, backend="openvino", git_commit="abc")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "speed.json").write_text(json.dumps(res))
    text = render("<!-- generated:speed -->\n<!-- /generated:speed -->\n", tmp_path)
    assert "| SyN / deployed | 11.0x (10.0x .. 12.0x) |" in text and "| ANTs SyN (1 thread) | 600.0 (600.0 .. 600.0) |" in text


def test_soc_block_reads_the_simulation_and_the_bitstream(tmp_path):
    """The README's soc block: the simulated SoC's cycles against the model, its ms at the SoC
    clock, the link's bytes, and per placer seed of bitstream.json the engine's TP, the router,
    the place-and-route time and each clock's verdict."""
    from benchmarks.docs_tables import render

    pair = {"cycles": 1200, "waits": 200, "reads": 50, "writes": 40, "link_bytes_out": 1000, "link_bytes_in": 4000,
            "sim_cycles": 5000}
    (tmp_path / "soc").mkdir()
    (tmp_path / "soc" / "soc.json").write_text(json.dumps({"git_commit": "abc", "clk_hz": 60e6, "tp": 1,
                                                         "busy_model_cycles": 1000, "pairs": [pair]}))
    text = render("<!-- generated:soc -->\n<!-- /generated:soc -->\n", tmp_path)
    assert "| busy cycles = the cycle model's | True |" in text and "| ms per pair at the SoC clock (60 MHz) | 0.0 |" in text
    assert "| the engine's weight blocks per slot (TP) | 1 (64 multiply-accumulates a cycle) |" in text
    assert "bitstream" not in text
    (tmp_path / "board").mkdir()
    runs = [{"seed": s, "s": 60.0 * m, "clocks": {"sys": {"fmax_mhz": f, "target_mhz": 75.0, "meets": f >= 75}},
             "cells": {"MULT18X18D": {"used": 77, "available": 156}}}
            for s, m, f in ((1, 22, 81.12), (2, 14, 74.0), (3, 15, 79.5))]
    (tmp_path / "board" / "bitstream.json").write_text(json.dumps({"git_commit": "def", "engine_tp": 1,
                                                                   "router": "router2", "runs": runs}))
    text = render("<!-- generated:soc -->\n<!-- /generated:soc -->\n", tmp_path)
    assert ("| ECPIX-5 bitstream: placer seeds | 1, 2, 3 (engine TP = 1, router2, 14 to 22 min of place and route "
            "each; bitstream.json of def) |") in text
    assert "| `sys` fmax | 74.0 / 79.5 / 81.1 MHz (min / median / max); meets 75 MHz in 2 of 3 |" in text
    assert "| its cells (used / available) | MULT18X18D 77 / 156 |" in text
