"""Executable model of the accelerator: runs a compiled memory image descriptor by descriptor.

    from hw.engine_model import run_image
    mem, cycles = run_image(prog.image(x))      # mem: the image after the run; cycles per descriptor

numpy only. It decodes the descriptors from the memory image (not from the compiler's
objects, so the encoding is exercised too) and computes what hw/rtl/accel.v computes, in the
engine's own formulation (weight blocks per tap and input group, the trilinear x2 as eight
weighted corner reads, ...), vectorised over voxels. Its cycle count is the cycle model of
hw/ACCEL.md; tests/test_rtl.py checks it against the simulated RTL cycle for cycle.
"""
from __future__ import annotations

import numpy as np

from hw.engine import WINDOW_WORDS
from hw.reference import requantize_shift_rne, saturate_range
from hw.compiler import (DESC_WORDS, F_A_NEAREST, F_A_TRILINEAR, F_B_NEAREST, F_HAS_B, F_B_TRILINEAR, F_RELU, F_RELU_B, LANES,
                         MEM_WORDS, OP_ADD, OP_CONV, OP_END, OP_MAXPOOL, TP, WBUF_ENTRIES, executed_macs)

# cycle model (hw/ACCEL.md): the engine's busy cycles, those it does not spend waiting for memory
# (the simulation counts the waits; cycles - waits is what this model predicts)
FETCH_CYCLES = DESC_WORDS + 4      # the 8 words taken, decode, check, the memory plan's check (2)
END_CYCLES = DESC_WORDS + 2        # END: the 8 words, decode, check
LOAD_FIXED = 1 + LANES // 2 + 1    # block count, 4 bias words, the shift word
DRAIN_CYCLES = 20                  # after the last slot: I0-I1, A0-A4, memory, P0, P1a-P1c, P2a-P2c, P3, the
                                   # fused add's F1-F2 (every run waits for them), P4-P5, the write
START_CYCLES = 2                   # the start, and the first descriptor's address against the plan


# the engine's error codes (hw/ACCEL.md, "Errors"): the run stops, done rises with the code
E_OPCODE, E_GRID, E_STRIDE, E_KERNEL, E_BLOCKS, E_GROUPS, E_WINDOW, E_ADDRESS = 1, 2, 3, 4, 5, 6, 7, 8


class EngineError(ValueError):
    """A descriptor the engine stops on, with its error code."""

    def __init__(self, code: int, message: str):
        super().__init__(f"engine error {code}: {message}")
        self.code = code


def decode_error(d: dict) -> tuple[int, str] | None:
    """The error the engine raises when it decodes `d` (None: it runs), in the RTL's order."""
    pow2 = lambda n: 1 <= n <= 128 and n & (n - 1) == 0  # noqa: E731
    if d["op"] > OP_MAXPOOL:
        return E_OPCODE, f"undefined opcode {d['op']}"
    if d["op"] == OP_END:
        return None
    if 0 in d["grid"]:
        return E_GRID, f"grid {d['grid']} has a zero extent"
    if not pow2(d["a"][1]) or not pow2(d["o"][1]) or (d["flags"] & F_HAS_B and not pow2(d["b"][1])):
        return E_STRIDE, "a words-per-voxel field that is not a power of two in 1 .. 128"
    if d["op"] == OP_CONV and (d["k"] % 2 == 0 or d["k"] > 31):
        return E_KERNEL, f"kernel size {d['k']}: odd, at most 31"
    if (d["ocg"] if d["op"] == OP_CONV else d["groups"]) == 0:
        return E_GROUPS, "no channel groups to compute"
    return None


def decode(mem: np.ndarray, pc: int) -> dict:
    words = [int(v) for v in mem[pc * DESC_WORDS:(pc + 1) * DESC_WORDS]]
    f = []
    for w in words:
        f += [w & 0xFFFFFFFF, w >> 32]
    s_out = (f[14] >> 16) & 0xFF
    return {"op": f[0] & 0xFF, "flags": (f[0] >> 8) & 0xFF,
            "grid": (f[1] & 0x3FF, (f[1] >> 10) & 0x3FF, (f[1] >> 20) & 0x3FF),
            "a": tuple(f[2:5]), "b": tuple(f[5:8]), "o": tuple(f[8:10]), "groups": f[10], "ocg": f[11],
            "k": f[12], "wbase": f[13], "sa": f[14] & 0xFF, "sb": (f[14] >> 8) & 0xFF,
            "s_out": s_out - 256 if s_out >= 128 else s_out}


def _read(mem: np.ndarray, base: int, stride: int, grid) -> np.ndarray:
    """(D, H, W, stride*LANES) int64 lanes of the region at base."""
    n = int(np.prod(grid)) * stride
    v = np.ascontiguousarray(mem[base:base + n], dtype=np.uint64).view(np.int8)
    return v.reshape(*grid, stride * LANES).astype(np.int64)


def _write(mem: np.ndarray, base: int, stride: int, grid, group: int, vals: np.ndarray) -> None:
    """vals (D, H, W, LANES) int8 -> word `group` of every voxel."""
    idx = base + np.arange(int(np.prod(grid))) * stride + group
    mem[idx] = np.ascontiguousarray(vals.astype(np.int8)).reshape(-1, LANES).view(np.uint64).reshape(-1)


def _nearest(v: np.ndarray) -> np.ndarray:
    return v.repeat(2, 0).repeat(2, 1).repeat(2, 2)


def _corners(n: int):
    """Per output index along an axis of the x2 grid: (index, weight) of its two coarse taps."""
    o = np.arange(2 * n)
    k = o >> 1
    even = (o & 1) == 0
    i0 = np.where(even, np.maximum(k - 1, 0), k)
    i1 = np.where(even, k, np.minimum(k + 1, n - 1))
    w0 = np.where(even, 1, 3)
    w1 = np.where(even, 3, 1)
    return (i0, w0), (i1, w1)


def _trilinear(v: np.ndarray) -> np.ndarray:
    """(d, h, w, L) -> (2d, 2h, 2w, L): the sum over the 8 corners of weight products x value."""
    cd, ch, cw = _corners(v.shape[0]), _corners(v.shape[1]), _corners(v.shape[2])
    out = 0
    for (ia, wa) in cd:
        for (ib, wb) in ch:
            for (ic, wc) in cw:
                coef = wa[:, None, None] * wb[None, :, None] * wc[None, None, :]
                out = out + coef[..., None] * v[np.ix_(ia, ib, ic)]
    return out


def conv_slots(blocks: int, tp: int = TP, flags: int = 0) -> int:
    """Slots per output voxel of a CONV output group with `blocks` weight blocks: TP a slot, and
    those of operand B of a fused add (HAS_B): one, or the 8 corners of a trilinear B."""
    return -(-blocks // tp) + (0 if not flags & F_HAS_B else 8 if flags & F_B_TRILINEAR else 1)


def _conv(mem: np.ndarray, d: dict, cyc: dict, tp: int, limit: int, wbuf_entries: int = WBUF_ENTRIES) -> None:
    D, H, W = d["grid"]
    ab, ast, aoff = d["a"]
    in_grid = (D // 2, H // 2, W // 2) if d["flags"] & F_A_NEAREST else (D, H, W)
    x = _read(mem, ab, ast, in_grid)
    if d["flags"] & F_A_NEAREST:
        x = _nearest(x)
    k, p = d["k"], d["k"] // 2
    xp = np.pad(x, ((p, p), (p, p), (p, p), (0, 0))).astype(np.float64)
    ptr = d["wbase"]
    nvox = D * H * W
    fused = bool(d["flags"] & F_HAS_B)
    b_up = d["flags"] & (F_B_NEAREST | F_B_TRILINEAR)
    if fused:   # the add fused into the output stage: B at the output voxel (or up-sampled from the half grid)
        bb, bst, boff = d["b"]
        yb = _read(mem, bb, bst, (D // 2, H // 2, W // 2) if b_up else (D, H, W))
    for og in range(d["ocg"]):
        n = int(mem[ptr])
        if not 1 <= (n & 0xFFFFFFFF) <= wbuf_entries:
            raise EngineError(E_BLOCKS, f"output group {og}: {n & 0xFFFFFFFF} weight blocks, not 1 .. {wbuf_entries}")
        if ptr + LOAD_FIXED + (1 + LANES) * n > limit:
            raise EngineError(E_ADDRESS, f"output group {og}: its weights end at word {ptr + LOAD_FIXED + (1 + LANES) * n}, "
                                         f"the memory plan at {limit}")
        bias = np.ascontiguousarray(mem[ptr + 1:ptr + 1 + LANES // 2], dtype=np.uint64).view(np.int32).astype(np.int64)
        shifts = np.array([int(mem[ptr + 1 + LANES // 2])], dtype="<u8").view(np.int8).astype(np.int64)
        acc = np.zeros((D, H, W, LANES), dtype=np.float64)
        q = ptr + 2 + LANES // 2
        for e in range(n):
            hdr = int(mem[q])
            a, b, c, g = hdr & 0xFF, (hdr >> 8) & 0xFF, (hdr >> 16) & 0xFF, (hdr >> 24) & 0xFF
            blk = np.ascontiguousarray(mem[q + 1:q + 1 + LANES], dtype=np.uint64).view(np.int8).reshape(LANES, LANES)
            lo = (aoff + g) * LANES
            xs = xp[a:a + D, b:b + H, c:c + W, lo:lo + LANES]
            acc += xs @ blk.astype(np.float64).T
            cyc["macs"] += executed_macs((D, H, W), k, [[((a, b, c, g), None)]])
            q += 1 + LANES
        acc = np.rint(acc).astype(np.int64) + bias
        y = requantize_shift_rne(acc, shifts, *saturate_range(bool(d["flags"] & F_RELU)))
        if fused:   # the conv's int8 result is operand A of an ADD: aligned, B added, requantised again
            vb = yb[..., (boff + og) * LANES:(boff + og + 1) * LANES]
            vb = _trilinear(vb) if d["flags"] & F_B_TRILINEAR else _nearest(vb) if d["flags"] & F_B_NEAREST else vb
            z = (y.astype(np.int64) << d["sa"]) + (vb.astype(np.int64) << d["sb"])
            y = requantize_shift_rne(z, d["s_out"], *saturate_range(bool(d["flags"] & F_RELU_B)))
        _write(mem, d["o"][0], d["o"][1], (D, H, W), og, y)
        cyc["load"] += LOAD_FIXED + (1 + LANES) * n
        cyc["entries"].append(n)
        cyc["run"] += nvox * conv_slots(n, tp, d["flags"]) + DRAIN_CYCLES
        ptr = q


def _elementwise(mem: np.ndarray, d: dict, cyc: dict) -> None:
    D, H, W = d["grid"]
    fl = d["flags"]
    ab, ast, aoff = d["a"]
    half = (D // 2, H // 2, W // 2)
    relu = bool(fl & F_RELU)
    if d["op"] == OP_MAXPOOL:
        x = _read(mem, ab, ast, (2 * D, 2 * H, 2 * W))
        slots = 8
    else:
        x = _read(mem, ab, ast, half if fl & (F_A_NEAREST | F_A_TRILINEAR) else (D, H, W))
        slots = (8 if fl & F_A_TRILINEAR else 1) + (1 if fl & F_HAS_B else 0)
        if fl & F_HAS_B:
            bb, bst, boff = d["b"]
            y = _read(mem, bb, bst, half if fl & F_B_NEAREST else (D, H, W))
    for g in range(d["groups"]):
        if d["op"] == OP_MAXPOOL:
            v = x[..., (aoff + g) * LANES:(aoff + g + 1) * LANES]
            acc = v.reshape(D, 2, H, 2, W, 2, LANES).max(axis=(1, 3, 5))
        else:
            va = x[..., (aoff + g) * LANES:(aoff + g + 1) * LANES]
            va = _trilinear(va) if fl & F_A_TRILINEAR else (_nearest(va) if fl & F_A_NEAREST else va)
            acc = va << d["sa"]
            if fl & F_HAS_B:
                vb = y[..., (boff + g) * LANES:(boff + g + 1) * LANES]
                acc = acc + ((_nearest(vb) if fl & F_B_NEAREST else vb) << d["sb"])
        _write(mem, d["o"][0], d["o"][1], (D, H, W), g, requantize_shift_rne(acc, d["s_out"], *saturate_range(relu)))
    cyc["run"] += D * H * W * d["groups"] * slots + DRAIN_CYCLES


def _operands(op: int, flags: int, grid, k: int, a: tuple, b: tuple) -> list[tuple]:
    """The windows a descriptor streams: (base, words per voxel, operand grid, mode, reach) for A
    and, for an ADD with B, B. mode: 'full', 'half' (nearest or trilinear up-sampling) or
    'double' (max-pool); reach: the taps on either side (a CONV's pad, 1 for trilinear)."""
    D, H, W = grid
    if op == OP_MAXPOOL:
        ops = [(a[0], a[1], (2 * D, 2 * H, 2 * W), "double", 0)]
    else:
        half = flags & F_A_NEAREST or (op == OP_ADD and flags & F_A_TRILINEAR)
        reach = k // 2 if op == OP_CONV else (1 if flags & F_A_TRILINEAR else 0)
        ops = [(a[0], a[1], (D // 2, H // 2, W // 2) if half else (D, H, W), "half" if half else "full", reach)]
        if flags & F_HAS_B:   # an ADD's B, or the B of the add fused into a CONV's output stage
            hb = flags & F_B_NEAREST or (op == OP_CONV and flags & F_B_TRILINEAR)
            ops.append((b[0], b[1], (D // 2, H // 2, W // 2) if hb else (D, H, W), "half" if hb else "full",
                        1 if op == OP_CONV and flags & F_B_TRILINEAR else 0))
    return ops


def window_span(op: int, flags: int, grid, k: int, a: tuple, b: tuple,
                window_words: int = WINDOW_WORDS) -> tuple[int, int]:
    """(the most words any output row keeps in one operand's window, the buffer that operand
    has): per row the words from its low mark (the lower of its own reach's first row and the
    next plane's: near the near faces the clamped reach starts lower on the next plane) to its
    reach's last row, as the engine's window generator computes them (hw/ACCEL.md, "Memory")."""
    D, H, _ = grid
    ops = _operands(op, flags, grid, k, a, b)
    cap = window_words // len(ops)
    worst = 0
    for _, stride, (_, oh, ow), mode, p in ops:
        def rng(o, last):
            lo, hi = np.maximum(o - p, 0), np.minimum(o + p, last)
            if mode == "half":
                return lo >> 1, hi >> 1
            if mode == "double":
                return 2 * lo, 2 * hi + 1
            return lo, hi
        d = np.arange(D)[:, None]
        dl, dh = rng(d, D - 1)
        dn, _ = rng(np.minimum(d + 1, D - 1), D - 1)
        hl, hh = rng(np.arange(H)[None, :], H - 1)
        rows = (dh * oh + hh + 1) - np.minimum(dl * oh + hl, dn * oh)
        worst = max(worst, int(rows.max()) * ow * stride)
    return worst, cap


def traffic(op: int, flags: int, grid, k: int, a: tuple, b: tuple, groups: int, entries=()) -> tuple[int, int]:
    """(words read, words written) over the bus for one descriptor: its 8 words, each output
    group's weights and one pass over every operand (per output group for a CONV), every result."""
    D, H, W = grid
    vox = D * H * W
    streamed = sum(stride * int(np.prod(g)) for _, stride, g, _, _ in _operands(op, flags, grid, k, a, b)) \
        if op != OP_END else 0
    if op == OP_CONV:
        return DESC_WORDS + sum(LOAD_FIXED + (1 + LANES) * e + streamed for e in entries), vox * len(entries)
    if op == OP_END:
        return DESC_WORDS, 0
    return DESC_WORDS + streamed, vox * groups


def plan_error(d: dict, limit: int) -> str | None:
    """Why a descriptor's regions (its operands, its output, its first weight words) do not lie
    inside a memory plan of `limit` words (None: they do), as the engine checks at S_PLAN."""
    D, H, W = d["grid"]
    regions = [(f"operand {n}", base, stride * int(np.prod(g)))
               for n, (base, stride, g, _, _) in zip("AB", _operands(d["op"], d["flags"], d["grid"], d["k"], d["a"], d["b"]))]
    regions.append(("output", d["o"][0], D * H * W * d["o"][1]))
    if d["op"] == OP_CONV:
        regions.append(("weights", d["wbase"], LOAD_FIXED))
    for name, base, n in regions:
        if base + n > limit:
            return f"its {name} ends at word {base + n}, the memory plan at {limit}"
    return None


def run_image(mem: np.ndarray, max_descs: int = 4096, tp: int = TP, window_words: int = WINDOW_WORDS,
              mem_limit: int | None = None, wbuf_entries: int = WBUF_ENTRIES,
              mem_words: int = MEM_WORDS) -> tuple[np.ndarray, list[dict]]:
    """Execute the program in `mem` (modified copy returned) and the cycles of each descriptor on
    an engine with `tp` blocks per slot, an operand window buffer of `window_words`, a weight
    buffer of `wbuf_entries` blocks and `mem_words` of address space, its MEM_LIMIT register
    `mem_limit` words (default: the image's)."""
    limit = min(len(mem) if mem_limit is None else mem_limit, mem_words)
    mem = mem.copy()
    per = []
    for pc in range(max_descs):
        if DESC_WORDS * (pc + 1) > limit:
            raise EngineError(E_ADDRESS, f"descriptor {pc} ends at word {DESC_WORDS * (pc + 1)}, the memory plan at {limit}")
        d = decode(mem, pc)
        err = decode_error(d)
        if err:
            raise EngineError(err[0], f"descriptor {pc}: {err[1]}")
        cyc = {"pc": pc, "op": d["op"], "fetch": FETCH_CYCLES if d["op"] != OP_END else END_CYCLES, "load": 0, "run": 0,
               "macs": 0}
        if d["op"] != OP_END:
            why = plan_error(d, limit)
            if why:
                raise EngineError(E_ADDRESS, f"descriptor {pc}: {why}")
            span, cap = window_span(d["op"], d["flags"], d["grid"], d["k"], d["a"], d["b"], window_words)
            if span > cap:
                raise EngineError(E_WINDOW, f"descriptor {pc}: a row reaches {span} words of an operand, "
                                            f"its window holds {cap}")
        if d["op"] == OP_END:
            cyc["reads"], cyc["writes"] = DESC_WORDS, 0
            per.append(cyc)
            return mem, per
        if d["op"] == OP_CONV:
            cyc["entries"] = []
            _conv(mem, d, cyc, tp, limit, wbuf_entries)
        else:
            _elementwise(mem, d, cyc)
        cyc["reads"], cyc["writes"] = traffic(d["op"], d["flags"], d["grid"], d["k"], d["a"], d["b"], d["groups"],
                                              cyc.pop("entries", ()))
        per.append(cyc)
    raise ValueError(f"no END descriptor in the first {max_descs}")


def cycle_model(prog, tp: int = TP) -> list[dict]:
    """The cycles of each descriptor of a compiled Program from its fields alone (no data): what
    run_image counts, for programs too large to execute here (projections)."""
    per = []
    for d in prog.descs:
        D, H, W = d.grid
        vox = D * H * W
        c = {"op": d.op, "fetch": FETCH_CYCLES if d.op != OP_END else END_CYCLES, "load": 0, "run": 0,
             "macs": d.array_macs}
        if d.op == OP_CONV:
            c["load"] = sum(LOAD_FIXED + (1 + LANES) * e for e in d.entries)
            c["run"] = sum(vox * conv_slots(e, tp, d.flags) + DRAIN_CYCLES for e in d.entries)
        elif d.op == OP_MAXPOOL:
            c["run"] = vox * d.groups * 8 + DRAIN_CYCLES
        elif d.op == OP_ADD:
            slots = (8 if d.flags & F_A_TRILINEAR else 1) + (1 if d.flags & F_HAS_B else 0)
            c["run"] = vox * d.groups * slots + DRAIN_CYCLES
        c["reads"], c["writes"] = traffic(d.op, d.flags, d.grid, d.k, d.a, d.b, d.groups, d.entries if d.op == OP_CONV else ())
        per.append(c)
    return per


def total_cycles(per: list[dict]) -> int:
    """The busy cycles of a run (the simulation's cycles less its waits for memory)."""
    return START_CYCLES + sum(c["fetch"] + c["load"] + c["run"] for c in per)


def total_macs(per: list[dict]) -> int:
    """Products the MAC array computes in a run (64 per block read: data movement included)."""
    return sum(c["macs"] for c in per)


def total_traffic(per: list[dict]) -> tuple[int, int]:
    """(words read, words written) over the bus in a run."""
    return sum(c["reads"] for c in per), sum(c["writes"] for c in per)
