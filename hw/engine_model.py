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

from dataclasses import dataclass

import numpy as np

from hw.engine import WINDOW_WORDS
from hw.reference import requantize_shift_rne, saturate_range
from hw.compiler import (DESC_WORDS, F_A_NEAREST, F_A_TRILINEAR, F_B_NEAREST, F_HAS_B, F_B_TRILINEAR, F_RELU, F_RELU_B, LANES,
                         MEM_WORDS, OP_ADD, OP_CONV, OP_END, OP_MAXPOOL, TP, WBUF_ENTRIES, taps_inside)

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
            "a": (f[2], f[3] & 0xFF, f[4]), "b": (f[5], f[6] & 0xFF, f[7]), "o": tuple(f[8:10]), "groups": f[10],
            "ocg": f[11], "k": f[12], "wbase": f[13], "sa": f[14] & 0xFF, "sb": (f[14] >> 8) & 0xFF,
            "s_out": s_out - 256 if s_out >= 128 else s_out,
            "tile": (f[15] & 0x3FF, (f[15] >> 10) & 0x3FF, (f[15] >> 20) & 0x3FF, (f[3] >> 8) & 0xFF,
                     (f[6] >> 8) & 0xFF)}


def _read(mem: np.ndarray, op: "Operand") -> np.ndarray:
    """(D, Hv, W, stride*LANES) int64 lanes of an operand's view: its planes `mem_rows` rows
    apart in memory, `Hv` rows of each streamed."""
    (dx, hv, wx), plane = op.grid, op.mem_rows * op.grid[2] * op.stride
    idx = op.base + np.arange(dx)[:, None] * plane + np.arange(hv * wx * op.stride)[None, :]
    v = np.ascontiguousarray(mem[idx], dtype=np.uint64).view(np.int8)
    return v.reshape(dx, hv, wx, op.stride * LANES).astype(np.int64)


def _write(mem: np.ndarray, base: int, stride: int, grid, group: int, vals: np.ndarray, rows: int = 0) -> None:
    """vals (D, H, W, LANES) int8 -> word `group` of every voxel of the output tile, its planes
    `rows` rows apart (0: H, untiled)."""
    D, H, W = grid
    vox = (np.arange(D)[:, None, None] * (rows or H) + np.arange(H)[None, :, None]) * W + np.arange(W)[None, None, :]
    mem[base + vox.reshape(-1) * stride + group] = \
        np.ascontiguousarray(vals.astype(np.int8)).reshape(-1, LANES).view(np.uint64).reshape(-1)


def _nearest(v: np.ndarray, rows: int | None = None, roff: int = 0) -> np.ndarray:
    """(d, h, w, L) -> (2d, rows, 2w, L): each voxel repeated on the x2 grid, output rows
    roff .. roff + rows - 1 (default: all 2h)."""
    v = v.repeat(2, 0).repeat(2, 2)
    return v[:, (np.arange(2 * v.shape[1] if rows is None else rows) + roff) >> 1]


def _corners(n: int, count: int | None = None, off: int = 0):
    """Per output index along an axis of the x2 grid: (index, weight) of its two coarse taps,
    clamped to the n coarse indices; `count` outputs from index `off` (default: all 2n)."""
    o = np.arange(2 * n if count is None else count) + off
    k = o >> 1
    even = (o & 1) == 0
    i0 = np.where(even, np.maximum(k - 1, 0), k)
    i1 = np.where(even, k, np.minimum(k + 1, n - 1))
    w0 = np.where(even, 1, 3)
    w1 = np.where(even, 3, 1)
    return (i0, w0), (i1, w1)


def _trilinear(v: np.ndarray, rows: int | None = None, roff: int = 0) -> np.ndarray:
    """(d, h, w, L) -> (2d, rows, 2w, L): the sum over the 8 corners of weight products x value,
    output rows roff .. roff + rows - 1 of the x2 grid (default: all 2h)."""
    cd, ch, cw = _corners(v.shape[0]), _corners(v.shape[1], rows, roff), _corners(v.shape[2])
    out = 0
    for (ia, wa) in cd:
        for (ib, wb) in ch:
            for (ic, wc) in cw:
                coef = wa[:, None, None] * wb[None, :, None] * wc[None, None, :]
                out = out + coef[..., None] * v[np.ix_(ia, ib, ic)]
    return out


def _upsampled(v: np.ndarray, op: "Operand", rows: int, flags_near: bool, flags_tri: bool) -> np.ndarray:
    """An operand at the output tile's voxels: its view's rows from `op.roff` on (nearest or
    trilinear up-sampled from the half grid, or as read)."""
    if flags_tri:
        return _trilinear(v, rows, op.roff)
    if flags_near:
        return _nearest(v, rows, op.roff)
    return v[:, op.roff:op.roff + rows]


def conv_slots(blocks: int, tp: int = TP, flags: int = 0) -> int:
    """Slots per output voxel of a CONV output group with `blocks` weight blocks: TP a slot, and
    those of operand B of a fused add (HAS_B): one, or the 8 corners of a trilinear B."""
    return -(-blocks // tp) + (0 if not flags & F_HAS_B else 8 if flags & F_B_TRILINEAR else 1)


def _conv(mem: np.ndarray, d: dict, cyc: dict, tp: int, limit: int, wbuf_entries: int = WBUF_ENTRIES) -> None:
    D, H, W = d["grid"]
    ops = operands(d["op"], d["flags"], d["grid"], d["k"], d["a"], d["b"], d["tile"])
    A = ops[0]
    aoff = d["a"][2]
    x = _read(mem, A)
    if d["flags"] & F_A_NEAREST:
        x = _nearest(x)
    k, p = d["k"], d["k"] // 2
    # output row h, tap b reads row h + b - p + roff of the (up-sampled) view; rows outside it
    # are padding
    hx, roff = x.shape[1], A.roff
    lo, hi = max(p - roff, 0), max(H - 1 + p + roff - (hx - 1), 0)
    xp = np.pad(x, ((p, p), (lo, hi), (p, p), (0, 0))).astype(np.float64)
    ptr = d["wbase"]
    nvox = D * H * W
    fused = bool(d["flags"] & F_HAS_B)
    if fused:   # the add fused into the output stage: B at the output voxel (or up-sampled from the half grid)
        B = ops[1]
        boff = d["b"][2]
        yb = _read(mem, B)
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
            ch0 = (aoff + g) * LANES
            r0 = b - p + roff + lo
            xs = xp[a:a + D, r0:r0 + H, c:c + W, ch0:ch0 + LANES]
            acc += xs @ blk.astype(np.float64).T
            # 64 products at every voxel whose tap is inside the volume (the view)
            cyc["macs"] += LANES * LANES * taps_inside(D, a, p) * taps_inside(H, b, p, roff, hx) * taps_inside(W, c, p)
            q += 1 + LANES
        acc = np.rint(acc).astype(np.int64) + bias
        y = requantize_shift_rne(acc, shifts, *saturate_range(bool(d["flags"] & F_RELU)))
        if fused:   # the conv's int8 result is operand A of an ADD: aligned, B added, requantised again
            vb = _upsampled(yb[..., (boff + og) * LANES:(boff + og + 1) * LANES], B, H,
                            bool(d["flags"] & F_B_NEAREST), bool(d["flags"] & F_B_TRILINEAR))
            z = (y.astype(np.int64) << d["sa"]) + (vb.astype(np.int64) << d["sb"])
            y = requantize_shift_rne(z, d["s_out"], *saturate_range(bool(d["flags"] & F_RELU_B)))
        _write(mem, d["o"][0], d["o"][1], (D, H, W), og, y, d["tile"][0])
        cyc["load"] += LOAD_FIXED + (1 + LANES) * n
        cyc["entries"].append(n)
        cyc["run"] += nvox * conv_slots(n, tp, d["flags"]) + DRAIN_CYCLES
        ptr = q


def _elementwise(mem: np.ndarray, d: dict, cyc: dict) -> None:
    D, H, W = d["grid"]
    fl = d["flags"]
    ops = operands(d["op"], fl, d["grid"], d["k"], d["a"], d["b"], d["tile"])
    A = ops[0]
    aoff = d["a"][2]
    relu = bool(fl & F_RELU)
    x = _read(mem, A)
    if d["op"] == OP_MAXPOOL:   # output row h reads rows 2(h + roff) and 2(h + roff) + 1 of the view
        x = x[:, 2 * A.roff:2 * (A.roff + H)]
        slots = 8
    else:
        slots = (8 if fl & F_A_TRILINEAR else 1) + (1 if fl & F_HAS_B else 0)
        if fl & F_HAS_B:
            B = ops[1]
            boff = d["b"][2]
            y = _read(mem, B)
    for g in range(d["groups"]):
        if d["op"] == OP_MAXPOOL:
            v = x[..., (aoff + g) * LANES:(aoff + g + 1) * LANES]
            acc = v.reshape(D, 2, H, 2, W, 2, LANES).max(axis=(1, 3, 5))
        else:
            va = _upsampled(x[..., (aoff + g) * LANES:(aoff + g + 1) * LANES], A, H, bool(fl & F_A_NEAREST),
                            bool(fl & F_A_TRILINEAR))
            acc = va << d["sa"]
            if fl & F_HAS_B:
                vb = _upsampled(y[..., (boff + g) * LANES:(boff + g + 1) * LANES], B, H, bool(fl & F_B_NEAREST), False)
                acc = acc + (vb << d["sb"])
        _write(mem, d["o"][0], d["o"][1], (D, H, W), g, requantize_shift_rne(acc, d["s_out"], *saturate_range(relu)),
               d["tile"][0])
    cyc["run"] += D * H * W * d["groups"] * slots + DRAIN_CYCLES


# a descriptor's tile field (hw/ACCEL.md, "Spatial tiling"): the output tensor's rows, A's and B's
# view rows (0: untiled, the rows the output grid gives), A's and B's row offsets
NO_TILE = (0, 0, 0, 0, 0)


@dataclass(frozen=True)
class Operand:
    """An operand as the engine streams it: its view `grid` (D, rows, W) on the operand's own
    grid, its planes `mem_rows` rows apart in memory from `base`, `mode` 'full', 'half' (nearest
    or trilinear up-sampling) or 'double' (max-pool), `reach` taps on either side (a CONV's pad,
    1 for trilinear), output row h taken as h + `roff` (before halving or doubling)."""
    base: int
    stride: int
    grid: tuple[int, int, int]
    mode: str
    reach: int
    roff: int
    mem_rows: int
    rows_field: int   # the descriptor's view rows (0: untiled)


def operands(op: int, flags: int, grid, k: int, a: tuple, b: tuple, tile=NO_TILE) -> list[Operand]:
    """The windows a descriptor streams: A and, for an ADD or a fused CONV with B, B."""
    D, H, W = grid
    rows, a_rows, b_rows, a_roff, b_roff = tile
    full = rows or H   # the output tensor's rows

    def one(base, stride, mode, reach, view_rows, roff):
        m = {"full": (D, H, W, full), "half": (D // 2, H // 2, W // 2, full // 2),
             "double": (2 * D, 2 * H, 2 * W, 2 * full)}[mode]
        return Operand(base, stride & 0xFF, (m[0], view_rows or m[1], m[2]), mode, reach, roff,
                       m[3] if view_rows else m[1], view_rows)

    if op == OP_MAXPOOL:
        return [one(a[0], a[1], "double", 0, a_rows, a_roff)]
    half = flags & F_A_NEAREST or (op == OP_ADD and flags & F_A_TRILINEAR)
    reach = k // 2 if op == OP_CONV else (1 if flags & F_A_TRILINEAR else 0)
    ops = [one(a[0], a[1], "half" if half else "full", reach, a_rows, a_roff)]
    if flags & F_HAS_B:   # an ADD's B, or the B of the add fused into a CONV's output stage
        hb = flags & F_B_NEAREST or (op == OP_CONV and flags & F_B_TRILINEAR)
        ops.append(one(b[0], b[1], "half" if hb else "full", 1 if op == OP_CONV and flags & F_B_TRILINEAR else 0,
                       b_rows, b_roff))
    return ops


def window_span(op: int, flags: int, grid, k: int, a: tuple, b: tuple,
                window_words: int = WINDOW_WORDS, tile=NO_TILE) -> tuple[int, int]:
    """(the most words any output row keeps in one operand's window, the buffer that operand
    has): per row the words from its low mark (the lower of its own reach's first row and the
    next plane's: near the near faces the clamped reach starts lower on the next plane) to its
    reach's last row, as the engine's window generator computes them (hw/ACCEL.md, "Memory"),
    on the operand's view (a tile's rows and their halo)."""
    D, H, _ = grid
    ops = operands(op, flags, grid, k, a, b, tile)
    cap = window_words // len(ops)
    worst = 0
    for o in ops:
        p, mode, (_, oh, ow) = o.reach, o.mode, o.grid
        # the last row a reach may touch, in the output's rows (untiled: the output's last)
        h_last = H - 1 if not o.rows_field else {"full": oh - 1, "half": 2 * oh - 1, "double": oh // 2 - 1}[mode]

        def rng(x, last):
            lo, hi = np.maximum(x - p, 0), np.minimum(x + p, last)
            if mode == "half":
                return lo >> 1, hi >> 1
            if mode == "double":
                return 2 * lo, 2 * hi + 1
            return lo, hi
        d = np.arange(D)[:, None]
        dl, dh = rng(d, D - 1)
        dn, _ = rng(np.minimum(d + 1, D - 1), D - 1)
        hl, hh = rng(np.arange(H)[None, :] + o.roff, h_last)
        rows = (dh * oh + hh + 1) - np.minimum(dl * oh + hl, dn * oh)
        worst = max(worst, int(rows.max()) * ow * o.stride)
    return worst, cap


def traffic(op: int, flags: int, grid, k: int, a: tuple, b: tuple, groups: int, entries=(),
            tile=NO_TILE) -> tuple[int, int]:
    """(words read, words written) over the bus for one descriptor: its 8 words, each output
    group's weights and one pass over every operand's view (per output group for a CONV), every
    result."""
    D, H, W = grid
    vox = D * H * W
    streamed = sum(o.stride * int(np.prod(o.grid)) for o in operands(op, flags, grid, k, a, b, tile)) \
        if op != OP_END else 0
    if op == OP_CONV:
        return DESC_WORDS + sum(LOAD_FIXED + (1 + LANES) * e + streamed for e in entries), vox * len(entries)
    if op == OP_END:
        return DESC_WORDS, 0
    return DESC_WORDS + streamed, vox * groups


def plan_error(d: dict, limit: int) -> str | None:
    """Why a descriptor's regions (its operands' views, its output tile, its first weight words)
    do not lie inside a memory plan of `limit` words (None: they do), as the engine checks at
    S_PLAN."""
    D, H, W = d["grid"]
    regions = [(f"operand {n}", o.base, ((o.grid[0] - 1) * o.mem_rows + o.grid[1]) * o.grid[2] * o.stride)
               for n, o in zip("AB", operands(d["op"], d["flags"], d["grid"], d["k"], d["a"], d["b"], d["tile"]))]
    regions.append(("output", d["o"][0], ((D - 1) * (d["tile"][0] or H) + H) * W * d["o"][1]))
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
            span, cap = window_span(d["op"], d["flags"], d["grid"], d["k"], d["a"], d["b"], window_words, d["tile"])
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
                                              cyc.pop("entries", ()), d["tile"])
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
        c["reads"], c["writes"] = traffic(d.op, d.flags, d.grid, d.k, d.a, d.b, d.groups,
                                          d.entries if d.op == OP_CONV else (), d.tile)
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
