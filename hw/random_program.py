"""Constrained-random programs for the engine: descriptors no network would emit, to test the
RTL against hw/engine_model.py below the end-to-end level.

    from hw.random_program import random_program
    image, descs = random_program(np.random.default_rng(0), count=250)
    mem, per = run_image(image)          # what the RTL must leave in memory, cycle for cycle

numpy only. Each descriptor reads operands from shared pools of random int8 words and writes
a region of its own, so every result stays in the final memory image and one comparison of
the whole image checks them all. The draws cover what the compiler never emits for LocalNet:
grids with D != H != W (1 .. 5 voxels an axis), kernels 1, 3, 5 and 7 (larger than the grid
too), 1 to 4 words per voxel with any first group, 1 or 2 output groups, sparse and dense
weight blocks (any tap, any input group, up to 48 a group), biases up to +-2^20, requantisation
shifts over the whole range (-15 .. 31, the extremes drawn on purpose), every ADD flag
combination (RELU, A nearest or trilinear, B nearest, HAS_B), left shifts of A and B up to
15 (12 with a trilinear A), CONVs with a fused add (B at the voxel, nearest or trilinear, with
or without its RELU), and MAXPOOL with and without RELU.
"""
from __future__ import annotations

import numpy as np

from hw.compiler import (DESC_WORDS, F_A_NEAREST, F_A_TRILINEAR, F_B_NEAREST, F_B_TRILINEAR, F_HAS_B, F_RELU,
                         F_RELU_B, LANES, OP_ADD, OP_CONV, OP_END, OP_MAXPOOL, Desc, tile_of)
from hw.engine import WBUF_ENTRIES
from hw.engine_model import WINDOW_WORDS, window_span
from hw.reference import MAX_LEFT_SHIFT, MAX_RIGHT_SHIFT

POOL_WORDS = 4 * 10 * 10 * 10   # an operand pool: the largest read (a max-pool's 10^3 input, 4 words a voxel)
POOLS = 3
MAX_AXIS = 5
BIG_GROUP = 512   # an engine whose weight buffer holds more: the first CONV's group has more blocks than this
MAX_BLOCKS = 48


def _shift(rng: np.random.Generator) -> int:
    """A requantisation shift: the extremes one time in four, else a typical one."""
    if rng.random() < 0.25:
        return int(rng.choice([-MAX_LEFT_SHIFT, -1, 0, 1, MAX_RIGHT_SHIFT]))
    return int(rng.integers(-4, 21))


def _grid(rng: np.random.Generator, even: bool = False, top: int = MAX_AXIS) -> tuple[int, int, int]:
    if even:
        return tuple(int(2 * rng.integers(1, top // 2 + 1)) for _ in range(3))
    return tuple(int(rng.integers(1, top + 1)) for _ in range(3))


def _operand(rng: np.random.Generator, groups: int) -> tuple[int, int, int]:
    """(pool number, words per voxel, first group) of an operand with room for `groups` groups
    (the pool number becomes the pool's base address once the memory plan is known)."""
    stride = int(rng.choice([s for s in (1, 2, 4) if s >= groups]))
    return int(rng.integers(POOLS)), stride, int(rng.integers(0, stride - groups + 1))


def random_program(rng: np.random.Generator, count: int = 250, window_words: int = WINDOW_WORDS,
                   wbuf_entries: int = WBUF_ENTRIES, tiles: np.random.Generator | None = None
                   ) -> tuple[np.ndarray, list[Desc]]:
    """(memory image, descriptors) of `count` random descriptors and an END, each fitting an
    engine whose operand window buffer holds `window_words` (a small one wraps around often) and
    whose weight buffer holds `wbuf_entries` blocks a group: above 512 (the default's, 2,048, too), the first
    descriptor is a CONV whose output group has more than 512 (a 7^3 kernel on 2 input groups,
    on a small grid). With `tiles`, about half the descriptors are split along H at random rows
    into spatial tiles (hw.compiler.tile_of), the cuts drawn from `tiles` alone: the same `rng`
    then gives the same operators, operands and weights, tiled or not, and the same results in
    the output regions (which follow the operand pools in the same order)."""
    descs: list[Desc] = []
    weights: list[list[int]] = []   # per CONV descriptor: its weight words
    out_words: list[int] = []
    for i in range(count):
        big = i == 0 and wbuf_entries > BIG_GROUP
        while True:   # drawn again until every row's reach fits the engine's operand windows
            op = OP_CONV if big else int(rng.choice([OP_CONV, OP_CONV, OP_ADD, OP_ADD, OP_MAXPOOL]))
            if op == OP_CONV:
                near = rng.random() < 0.25 and not big
                fuse = rng.random() < 0.4   # an add fused into the output stage: B at the voxel, nearest, trilinear
                b_mode = int(rng.integers(3)) if fuse else 0
                grid = _grid(rng, even=near or b_mode > 0, top=3 if big else MAX_AXIS)
                k = 7 if big else int(rng.choice([1, 3, 5, 7]))
                ocg = 1 if big else int(rng.integers(1, 3))
                in_groups = 2 if big else int(rng.integers(1, 3))
                a = _operand(rng, in_groups)
                words = []
                taps = [(x, y, z, g) for x in range(k) for y in range(k) for z in range(k) for g in range(in_groups)]
                for _ in range(ocg):
                    dense = rng.random() < 0.2 and len(taps) <= MAX_BLOCKS
                    n = len(taps) if dense else int(rng.integers(1, min(MAX_BLOCKS, len(taps)) + 1))
                    if big:
                        n = int(rng.integers(BIG_GROUP + 1, min(wbuf_entries, len(taps)) + 1))
                    pick = sorted(rng.choice(len(taps), size=n, replace=False)) if not dense else range(len(taps))
                    bias = rng.integers(-2**20, 2**20, LANES).astype(np.int32)
                    shifts = np.array([_shift(rng) for _ in range(LANES)], dtype=np.int8)
                    words += [n, *bias.view(np.uint64).tolist(), int(shifts.view(np.uint64)[0])]
                    for t in pick:
                        x, y, z, g = taps[t]
                        blk = rng.integers(-127, 128, (LANES, LANES)).astype(np.int8)
                        blk[rng.random((LANES, LANES)) < 0.3] = 0
                        words += [x | (y << 8) | (z << 16) | (g << 24), *blk.view(np.uint64).reshape(-1).tolist()]
                d = Desc(OP_CONV, f"conv{i}", F_RELU if rng.random() < 0.5 else 0, grid,
                         a=a, o=(0, int(rng.choice([s for s in (1, 2, 4) if s >= ocg]))), ocg=ocg, k=k)
                d.flags |= F_A_NEAREST if near else 0
                if fuse:
                    d.flags |= F_HAS_B | (0, F_B_NEAREST, F_B_TRILINEAR)[b_mode] | (F_RELU_B if rng.random() < 0.5 else 0)
                    d.b = _operand(rng, ocg)
                    d.sa, d.sb, d.s_out = int(rng.integers(0, 16)), int(rng.integers(0, 13 if b_mode == 2 else 16)), _shift(rng)
                w = words
                groups = ocg
            elif op == OP_ADD:
                fl = F_RELU if rng.random() < 0.5 else 0
                kind = rng.random()
                fl |= F_A_TRILINEAR if kind < 0.3 else (F_A_NEAREST if kind < 0.5 else 0)
                if rng.random() < 0.7:
                    fl |= F_HAS_B | (F_B_NEAREST if rng.random() < 0.3 else 0)
                half = bool(fl & (F_A_NEAREST | F_A_TRILINEAR | F_B_NEAREST))
                grid = _grid(rng, even=half)
                groups = int(rng.integers(1, 3))
                sa = int(rng.integers(0, 13 if fl & F_A_TRILINEAR else 16))
                sb = int(rng.integers(0, 16)) if fl & F_HAS_B else 0
                d = Desc(OP_ADD, f"add{i}", fl, grid, a=_operand(rng, groups),
                         b=_operand(rng, groups) if fl & F_HAS_B else (0, 1, 0),
                         o=(0, int(rng.choice([s for s in (1, 2, 4) if s >= groups]))), groups=groups,
                         sa=sa, sb=sb, s_out=_shift(rng))
                w = []
            else:
                groups = int(rng.integers(1, 3))
                d = Desc(OP_MAXPOOL, f"maxpool{i}", F_RELU if rng.random() < 0.5 else 0, _grid(rng, top=MAX_AXIS),
                         a=_operand(rng, groups), o=(0, int(rng.choice([s for s in (1, 2, 4) if s >= groups]))),
                         groups=groups)
                w = []
            span, cap = window_span(d.op, d.flags, d.grid, d.k, d.a, d.b, window_words)
            if span <= cap:
                break
        weights.append(w)
        descs.append(d)
        out_words.append(int(np.prod(d.grid)) * d.o[1])
    descs.append(Desc(OP_END, "end"))
    cuts: list[list[tuple[int, int]] | None] = [None] * len(descs)
    for j, d in enumerate(descs[:-1]):
        H = d.grid[1]
        if tiles is not None and H > 1 and tiles.random() < 0.5:
            pts = sorted(int(v) for v in tiles.choice(np.arange(1, H), size=int(tiles.integers(1, H)), replace=False))
            cuts[j] = list(zip([0, *pts], [*pts, H]))
    # the memory plan: descriptors, weights, the operand pools, then one output region each
    at = sum(len(c) if c else 1 for c in cuts) * DESC_WORDS
    for d, w in zip(descs, weights):
        if w:
            d.wbase = at
            at += len(w)
    pools = [at + POOL_WORDS * j for j in range(POOLS)]
    at += POOL_WORDS * POOLS
    for j, d in enumerate(descs[:-1]):  # operands at their pools' addresses, outputs one region each
        d.a = (pools[d.a[0]], *d.a[1:])
        if d.flags & F_HAS_B:
            d.b = (pools[d.b[0]], *d.b[1:])
        d.o = (at, d.o[1])
        at += out_words[j]
    image = np.zeros(at, dtype=np.uint64)
    for d, w in zip(descs, weights):
        if w:
            image[d.wbase:d.wbase + len(w)] = np.array(w, dtype=np.uint64)
    descs = [t for d, c in zip(descs, cuts) for t in ([d] if c is None else [tile_of(d, *hc) for hc in c])]
    fields = np.array([f & 0xFFFFFFFF for d in descs for f in d.fields()], dtype="<u4")
    image[:len(descs) * DESC_WORDS] = fields.view("<u8")
    image[pools[0]:pools[0] + POOL_WORDS * POOLS] = rng.integers(0, 2**63, POOL_WORDS * POOLS, dtype=np.uint64) * 2 + \
        rng.integers(0, 2, POOL_WORDS * POOLS, dtype=np.uint64)
    return image, descs
