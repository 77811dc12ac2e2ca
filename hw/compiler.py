"""Compile weights.bin into the accelerator's program: descriptors and one memory image.

    python -m hw.compiler --weights runs/demo/export/weights.bin --input runs/demo/golden/pair_00/input.npy \\
        --out runs/demo/rtl/pair_00 [--dense]

numpy only. The engine (hw/rtl/, programmer's model in hw/ACCEL.md) knows operators, not
LocalNet, and so does this module: it walks the graph weights.bin carries (model/graph.py),
as hw/reference.py does, and emits one descriptor per node, with every tensor placed in
external memory. Writes
OUT/mem.hex ($readmemh, one 64-bit word per line) and OUT/program.json (descriptors, the
memory plan: every tensor's address, channels, grid and exponent).

Memory is 64-bit words (8 bytes), word-addressed. Activations are channel-last in groups of 8
channels: tensor (C, D, H, W) at `base` has S words per voxel (ceil(C/8) rounded up to a power
of two), and channel c of voxel (d, h, w) is byte c % 8 of word base + ((d*H + h)*W + w)*S +
c // 8 (missing channels 0).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from export.weights import Record, WeightsFile, read_weights
from hw.engine import DESC_WORDS, LANES, MEM_WORDS, TP, WBUF_ENTRIES, block_index, unfolds  # noqa: F401
from hw.reference import MAX_LEFT_SHIFT, MAX_RIGHT_SHIFT

OP_END, OP_CONV, OP_ADD, OP_MAXPOOL = 0, 1, 2, 3
F_RELU, F_A_NEAREST, F_A_TRILINEAR, F_B_NEAREST, F_HAS_B, F_RELU_B, F_B_TRILINEAR = 1, 2, 4, 8, 16, 32, 64
# a CONV with HAS_B has an ADD fused into its output stage: its int8 result, shifted by sa, plus
# B (at the output voxel; B_NEAREST or B_TRILINEAR: up-sampled from the half grid) shifted by
# sb, requantised by s_out with RELU_B as the clamp
MAX_DIM = 1023                 # 10-bit grid fields
ACC_LIMIT = 2**31              # accumulators are int32
# requantisation shifts: the reference's limits (hw/reference.py; the requantiser's 48-bit datapath)


class CompileError(ValueError):
    pass


@dataclass
class Tensor:
    """A tensor in external memory: channel-last, groups of LANES channels per word."""
    name: str
    base: int
    channels: int
    grid: tuple[int, int, int]
    e: int

    @property
    def groups(self) -> int:
        return -(-self.channels // LANES)

    @property
    def stride(self) -> int:
        """Words per voxel: the groups rounded up to a power of two (the engine shifts, not
        multiplies, the voxel index; LocalNet's tensors are all 1, 2, 4, 8, ... groups already)."""
        return 1 << (self.groups - 1).bit_length()

    @property
    def words(self) -> int:
        return self.stride * int(np.prod(self.grid))


@dataclass
class Desc:
    """One operator. Fields as in hw/ACCEL.md ("Descriptor")."""
    op: int
    layer: str
    flags: int = 0
    grid: tuple[int, int, int] = (0, 0, 0)   # output grid (D, H, W)
    a: tuple[int, int, int] = (0, 0, 0)      # A: base, stride (words per voxel), group offset
    b: tuple[int, int, int] = (0, 0, 0)
    o: tuple[int, int] = (0, 0)              # O: base, stride
    groups: int = 0                          # ADD / MAXPOOL: channel groups computed
    ocg: int = 0                             # CONV: output channel groups
    k: int = 0                               # CONV: kernel size
    wbase: int = 0                           # CONV: weight blocks' first word
    sa: int = 0
    sb: int = 0
    s_out: int = 0
    entries: list[int] = field(default_factory=list)   # CONV: weight blocks per output group
    macs: int = 0                                      # CONV: the layer's dense MACs (dense_macs); 0: data movement
    executed_macs: int = 0                             # CONV: MACs of its stored blocks at taps inside the volume
    array_macs: int = 0                                # CONV: products the MAC array computes (data movement too)
    # spatial tiling (hw/ACCEL.md): the output tensor's rows, A's and B's view rows (0: untiled),
    # A's and B's row offsets
    tile: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)

    def fields(self) -> list[int]:
        d, h, w = self.grid
        rows, a_rows, b_rows, a_roff, b_roff = self.tile
        f = [self.op | (self.flags << 8), d | (h << 10) | (w << 20), self.a[0], self.a[1] | (a_roff << 8), self.a[2],
             self.b[0], self.b[1] | (b_roff << 8), self.b[2], *self.o,
             self.groups, self.ocg, self.k, self.wbase, self.sa | (self.sb << 8) | ((self.s_out & 0xFF) << 16),
             rows | (a_rows << 10) | (b_rows << 20)]
        assert len(f) == 16
        return f


@dataclass
class Program:
    descs: list[Desc]
    tensors: dict[str, Tensor]       # by golden name (aliases: "ddf")
    weight_words: list[int]
    act_base: int
    act_words: int
    dense: bool
    fused: dict[str, str] = field(default_factory=dict)   # tensors not in memory: CONV output -> the fused ADD's
    intact: set[str] = field(default_factory=set)         # tensors still in memory after the run (plan "reuse": some)

    def image(self, x: np.ndarray | None = None) -> np.ndarray:
        """The external memory image (uint64 words) with the input tensor (1, C, D, H, W) int8 placed."""
        mem = np.zeros(self.act_base + self.act_words, dtype=np.uint64)
        wb = len(self.descs) * DESC_WORDS   # field 2k in the low half of word k (little-endian)
        fields = np.array([f & 0xFFFFFFFF for d in self.descs for f in d.fields()], dtype="<u4")
        mem[:wb] = fields.view("<u8")
        mem[wb:wb + len(self.weight_words)] = np.array(self.weight_words, dtype=np.uint64)
        if x is not None:
            put_tensor(mem, self.tensors["input"], x)
        return mem

    def to_json(self) -> dict:
        return {"lanes": LANES, "mem_words": int(self.act_base + self.act_words), "dense_weights": self.dense,
                "descriptors": [{"layer": d.layer, "op": d.op, "fields": d.fields(), "entries": d.entries, "macs": d.macs,
                 "executed_macs": d.executed_macs}
                                for d in self.descs],
                "fused": self.fused, "intact": sorted(self.intact),
                "tensors": {n: asdict(t) for n, t in self.tensors.items()}}


def put_tensor(mem: np.ndarray, t: Tensor, x: np.ndarray) -> None:
    """Place int8 (1, C, D, H, W) into mem at t (channel-last, groups of LANES)."""
    if x.shape != (1, t.channels, *t.grid) or x.dtype != np.int8:
        raise CompileError(f"{t.name}: input {x.dtype} {x.shape}, the program expects int8 {(1, t.channels, *t.grid)}")
    v = np.zeros((*t.grid, t.stride * LANES), dtype=np.int8)
    v[..., :t.channels] = x[0].transpose(1, 2, 3, 0)
    mem[t.base:t.base + t.words] = v.reshape(-1, LANES).view(np.uint64).reshape(-1)


def get_tensor(mem: np.ndarray, t: Tensor) -> np.ndarray:
    """The int8 tensor (1, C, D, H, W) stored at t."""
    words = np.ascontiguousarray(mem[t.base:t.base + t.words], dtype=np.uint64)
    v = words.view(np.int8).reshape(*t.grid, t.stride * LANES)[..., :t.channels]
    return np.ascontiguousarray(v.transpose(3, 0, 1, 2))[None]


def dense_macs(grid, k: int, cin: int, cout: int, rows: tuple[int, int] | None = None) -> int:
    """MACs of a 'same' convolution whose taps inside the volume count (padding excluded); of
    the output rows [h0, h1) alone with `rows`."""
    p = k // 2
    per_axis = []
    for i, n in enumerate(grid):
        o = np.arange(*rows) if i == 1 and rows else np.arange(n)
        per_axis.append(int((np.minimum(o + p, n - 1) - np.maximum(o - p, 0) + 1).sum()))
    return int(np.prod(per_axis)) * cin * cout


def taps_inside(n: int, t: int, p: int, off: int = 0, n_in: int | None = None) -> int:
    """Output indices o in 0 .. n-1 whose tap o + t - p + off lies in 0 .. n_in - 1 (default n):
    along one axis, the voxels at which kernel tap t of a padding-p convolution reads inside
    the volume (off: the first output row of a tile; n_in: the rows it may read)."""
    n_in = n if n_in is None else n_in
    return max(min(n, n_in + p - t - off) - max(0, p - t - off), 0)


def executed_macs(grid, k: int, blocks, rows: tuple[int, int] | None = None) -> int:
    """MACs the engine executes for a layer: every stored 8x8 block (all 64 products, zeros
    inside it included) at every output voxel whose tap lies inside the volume. Skipped blocks
    and taps in the padding count nothing. `rows`: of the output rows [h0, h1) alone (a tile)."""
    p = k // 2
    h0, h1 = rows or (0, grid[1])
    return sum(LANES * LANES * taps_inside(grid[0], a, p) * taps_inside(h1 - h0, b, p, h0, grid[1]) *
               taps_inside(grid[2], c, p)
               for bl in blocks for (a, b, c, _g), _w in bl)


def conv_blocks(rec: Record, dense: bool, w_taps: list[int] | None = None) -> list[list[tuple[tuple[int, int, int, int], np.ndarray]]]:
    """Per output group: the weight blocks (tap a, b, c, input group g) -> (LANES, LANES) int8
    [output lane, input lane]. Sparse: all-zero blocks are left out (they cost no cycle), except
    one block per group so that every voxel has a slot (the centre tap of group 0). `w_taps`:
    the only W taps the layer has (an unfolded first layer), dense or not."""
    w = rec.weight
    cout, cin, k = w.shape[0], w.shape[1], w.shape[2]
    ocg, icg = -(-cout // LANES), -(-cin // LANES)
    wp = np.zeros((ocg * LANES, icg * LANES, k, k, k), dtype=np.int8)
    wp[:cout, :cin] = w
    c = k // 2
    out = []
    for og in range(ocg):
        blocks = []
        for a in range(k):
            for b in range(k):
                for cc in (range(k) if w_taps is None else w_taps):
                    for g in range(icg):
                        blk = wp[og * LANES:(og + 1) * LANES, g * LANES:(g + 1) * LANES, a, b, cc]
                        if dense or blk.any() or (a, b, cc, g) == (c, c, c, 0):
                            blocks.append(((a, b, cc, g), np.ascontiguousarray(blk)))
        out.append(blocks)
    return out


def structural_weights(base_channels: int, levels: int, ddf_levels, first_kernel: int = 7) -> WeightsFile:
    """A WeightsFile of LocalNet's graph (model/graph.py) with these settings and no zero weight:
    what the cycle model needs to project a configuration no one has trained or exported."""
    from model.graph import localnet_graph

    return graph_weights(localnet_graph(levels, ddf_levels, base_channels, first_kernel=first_kernel))


def graph_weights(graph) -> WeightsFile:
    """Records for every node of `graph` (model/graph.py) with its shapes, all weights one and
    every exponent 0 (cycles depend on shapes and stored blocks, not on values)."""
    from export.weights import OP_CONV3D, OP_QUANT

    recs: dict[str, Record] = {}
    for n in graph.nodes:
        if n.op == "conv":
            w = np.ones((n.channels, graph.width(n.ins[0]), n.k, n.k, n.k), np.int8)
            recs[n.conv] = Record(n.conv, OP_CONV3D, 8, 0, 0, weight=w, bias=np.zeros(n.channels, np.int32))
        if n.op != "maxpool":
            recs[n.out] = Record(n.out, OP_QUANT, 8, 0)
    return WeightsFile({"graph": graph.to_json()}, recs)


def tile_of(d: Desc, h0: int, h1: int, blocks=None) -> Desc:
    """The descriptor of d's output rows [h0, h1) (hw/ACCEL.md, "Spatial tiling"): each operand
    read as a view (the rows its taps reach, within the tensor), the output written into the
    whole tensor. `blocks`: d's weight blocks (conv_blocks), for the tile's MAC counts."""
    from hw.engine_model import operands

    D, H, W = d.grid
    views = []
    for o in operands(d.op, d.flags, d.grid, d.k, d.a, d.b):
        if o.mode == "double":   # max-pool: rows 2h0 .. 2h1 - 1
            vs, ve = 2 * h0, 2 * h1 - 1
        else:
            lo, hi = max(h0 - o.reach, 0), min(h1 - 1 + o.reach, H - 1)   # in the output's rows
            vs, ve = (lo >> 1, hi >> 1) if o.mode == "half" else (lo, hi)
        roff = 0 if o.mode == "double" else h0 - (2 * vs if o.mode == "half" else vs)
        views.append((o.base + vs * o.grid[2] * o.stride, ve - vs + 1, roff))
    (ab, ar, aro), (bb, br, bro) = views[0], views[1] if len(views) > 1 else (d.b[0], 0, 0)
    t = replace(d, grid=(D, h1 - h0, W), a=(ab, *d.a[1:]), b=(bb, *d.b[1:]), o=(d.o[0] + h0 * W * d.o[1], d.o[1]),
                tile=(H, ar, br, aro, bro))
    if d.op == OP_CONV and blocks is not None:
        t.macs = d.macs // dense_macs(d.grid, d.k, 1, 1) * dense_macs(d.grid, d.k, 1, 1, (h0, h1))
        t.executed_macs = executed_macs(d.grid, d.k, blocks, (h0, h1)) if d.macs else 0
        t.array_macs = executed_macs(d.grid, d.k, blocks, (h0, h1))
    return t


class Compiler:
    def __init__(self, wb: WeightsFile, grid: tuple[int, int, int], dense: bool = False,
                 wbuf_entries: int = WBUF_ENTRIES, mem_words: int = MEM_WORDS, window_words: int | None = None,
                 fuse: bool = True, plan: str = "keep"):
        if plan not in ("keep", "reuse"):
            raise CompileError(f"memory plan {plan!r}: 'keep' or 'reuse'")
        self.r, self.dense, self.fuse, self.plan = wb.records, dense, fuse, plan
        self.fused: dict[str, str] = {}   # a CONV output never written (fused) -> the ADD output written instead
        self.wbuf_entries, self.mem_words = wbuf_entries, mem_words
        self.window_words = window_words   # the engine's operand window buffer (None: hw.engine_model's)
        from export.weights import OP_CONV3D, OP_QUANT

        for name, rec in self.r.items():
            if rec.op not in (OP_CONV3D, OP_QUANT):
                raise CompileError(f"record {name}: op {rec.op} is not one the engine runs (conv3d {OP_CONV3D}, "
                                   f"quant {OP_QUANT})")
        self.graph = wb.graph
        self.grid = tuple(int(v) for v in grid)
        if any(not 0 < v <= MAX_DIM for v in self.grid):
            raise CompileError(f"grid {self.grid}: every axis must be 1..{MAX_DIM}")
        if any(v % self.graph.divisor for v in self.grid):
            raise CompileError(f"grid {self.grid}: every axis must divide by {self.graph.divisor} (2^ the graph's "
                               "deepest level)")
        self.descs: list[Desc] = []
        self.tensors: dict[str, Tensor] = {}
        self.wwords: list[int] = []
        self.wpending: list[tuple[Desc, np.ndarray, np.ndarray, list]] = []   # (CONV, bias, shifts, blocks)
        self.act_words = 0
        self.blocks: dict[int, list] = {}   # id(CONV) -> its blocks, for its tiles' MACs (_finish)

    # memory plan: every tensor its own region, in the order written (all stay readable for the
    # dumps); plan "reuse" then reassigns the regions by liveness (_reuse)
    def _alloc(self, name: str, channels: int, grid, e: int) -> Tensor:
        t = Tensor(name, self.act_words, int(channels), tuple(int(v) for v in grid), int(e))
        if t.stride > 128:
            raise CompileError(f"{name}: {channels} channels need {t.stride} words per voxel, the engine takes 128")
        self.act_words += t.words
        self.tensors[name] = t
        return t

    def _conv(self, x: Tensor, conv: str, act: str, nearest_in: bool = False) -> Tensor:
        rec, out = self.r[conv], self.r[act]
        if rec.weight is None:
            raise CompileError(f"{conv}: not a convolution record")
        cout, cin, kd, kh, kw = rec.weight.shape
        if not (kd == kh == kw and kd % 2 == 1):
            raise CompileError(f"{conv}: kernel {rec.weight.shape[2:]}: the engine runs odd cubic kernels")
        if cin != x.channels:
            raise CompileError(f"{conv}: {cin} input channels, its input {x.name} has {x.channels}")
        if x.e != rec.e_in:
            raise CompileError(f"{conv}: input exponent {x.e}, the layer was quantised for {rec.e_in}")
        grid = tuple(2 * v for v in x.grid) if nearest_in else x.grid
        macs = dense_macs(grid, kd, cin, cout)
        if unfolds(cin, kd) and not nearest_in:
            # a narrow input fills few of the 8 lanes: unfold it along W first, then run the
            # layer on the unfolded tensor with one W tap (see unfold_w)
            x, rec = self._unfold_w(x, rec)
            return self._emit_conv(x, rec, conv, act, out, nearest_in, macs, w_taps=[kd // 2])
        return self._emit_conv(x, rec, conv, act, out, nearest_in, macs)

    def _unfold_w(self, x: Tensor, rec: Record) -> tuple[Tensor, Record]:
        """The first layer's mapping: with C_in channels a word holds T = 8 // C_in taps along W, so
        a CONV with one-hot weights (exact: weight 1, shift 0) writes U, ceil(k/T) groups of T
        W-shifted copies of x (lane j*C_in + c of group q = x[c, d, h, w + qT + j - k//2], zero
        outside), and the layer becomes a CONV over U whose only W tap is the centre: k^2 x
        ceil(k/T) slots per voxel instead of k^3 (7^3 = 343 -> 98 for C_in = 2)."""
        cout, cin, k = rec.weight.shape[:3]
        t, p = LANES // cin, k // 2
        nq = -(-k // t)
        onehot = np.zeros((nq * LANES, cin, k, k, k), dtype=np.int8)
        w2 = np.zeros((cout, nq * LANES, k, k, k), dtype=np.int8)
        for q in range(nq):
            for j in range(t):
                c = q * t + j
                if c >= k:
                    continue
                for ch in range(cin):
                    onehot[q * LANES + j * cin + ch, ch, p, p, c] = 1
                    w2[:, q * LANES + j * cin + ch, :, :, p] = rec.weight[:, ch, :, :, c]
        name = f"{rec.name}.unfold_w"
        u_rec = Record(name, rec.op, 8, 0, x.e, weight=onehot, bias=np.zeros(nq * LANES, dtype=np.int32))
        u_out = Record(name, 2, 8, x.e)
        u = self._emit_conv(x, u_rec, name, name, u_out, False, 0, dense=False)
        return u, Record(rec.name, rec.op, rec.bits, rec.e0, rec.e1, weight=w2, bias=rec.bias, e_ch=rec.e_ch)

    def _emit_conv(self, x: Tensor, rec: Record, conv: str, act: str, out: Record, nearest_in: bool, macs: int,
                   w_taps: list[int] | None = None, dense: bool | None = None) -> Tensor:
        cout, kd = rec.weight.shape[0], rec.weight.shape[2]
        bound = int(np.abs(rec.weight.astype(np.int64)).reshape(cout, -1).sum(1).max()) * 128 + \
            int(np.abs(rec.bias.astype(np.int64)).max(initial=0))
        if bound >= ACC_LIMIT:
            raise CompileError(f"{conv}: accumulator bound {bound} does not fit int32")
        shifts = rec.e_w + rec.e_in - out.e_out   # per output channel (all equal with a per-tensor weight scale)
        for c, s in enumerate(shifts):
            self._check_shift(f"{conv} output channel {c}", int(s))
        grid = tuple(2 * v for v in x.grid) if nearest_in else x.grid
        blocks = conv_blocks(rec, self.dense if dense is None else dense, w_taps)
        for og, bl in enumerate(blocks):
            if len(bl) > self.wbuf_entries:
                raise CompileError(f"{conv}: {len(bl)} weight blocks in output group {og}, the weight buffer "
                                   f"holds {self.wbuf_entries}")
        y = self._alloc(act, cout, grid, out.e_out)
        d = Desc(OP_CONV, conv, flags=(F_RELU if out.relu else 0) | (F_A_NEAREST if nearest_in else 0), grid=grid,
                 a=(x.base, x.stride, 0), o=(y.base, y.stride), ocg=len(blocks), k=kd,
                 entries=[len(bl) for bl in blocks], macs=macs,
                 executed_macs=executed_macs(grid, kd, blocks) if macs else 0,
                 array_macs=executed_macs(grid, kd, blocks))
        self.descs.append(d)
        self.wpending.append((d, rec.bias, shifts, blocks))
        return y

    def _check_shift(self, layer: str, s: int) -> None:
        if not -MAX_LEFT_SHIFT <= s <= MAX_RIGHT_SHIFT:
            raise CompileError(f"{layer}: requantisation shift {s} outside [-{MAX_LEFT_SHIFT}, {MAX_RIGHT_SHIFT}]")

    def _add(self, name: str, a: Tensor, b: Tensor | None, *, a_off: int = 0, b_off: int = 0, channels: int | None = None,
             a_nearest: bool = False, b_nearest: bool = False, a_trilinear: bool = False, a_dead: bool = False, b_dead: bool = False) -> Tensor:
        """An ADD. `a_dead` (`b_dead`): nothing else reads A (B); when it is the output of the
        CONV just emitted, the add is fused into that CONV's output stage (_fuse)."""
        out = self.r[name]
        e_a = a.e + 6 if a_trilinear else a.e
        max_a = 64 * 128 if a_trilinear else 128
        e = e_a if b is None else max(e_a, b.e)
        sa = e - e_a
        sb = 0 if b is None else e - b.e
        bound = (max_a << sa) + (0 if b is None else 128 << sb)
        if bound >= ACC_LIMIT:
            raise CompileError(f"{name}: aligned sum bound {bound} does not fit int32")
        s_out = e - out.e_out
        self._check_shift(name, s_out)
        grid = tuple(2 * v for v in a.grid) if (a_nearest or a_trilinear) else a.grid
        ch = channels or a.channels
        if b is not None:
            bgrid = tuple(2 * v for v in b.grid) if b_nearest else b.grid
            if bgrid != grid:
                raise CompileError(f"{name}: operands on grids {grid} and {bgrid}")
        for conv_is_a in ([True] if a_dead else []) + ([False] if b_dead else []):
            y = self._fuse(name, out, a, b, sa, sb, s_out, a_off=a_off, b_off=b_off, a_nearest=a_nearest,
                           b_nearest=b_nearest, a_trilinear=a_trilinear, conv_is_a=conv_is_a) \
                if self.fuse and b is not None else None
            if y is not None:
                return y
        y = self._alloc(name, ch, grid, out.e_out)
        flags = (F_RELU if out.relu else 0) | (F_A_NEAREST if a_nearest else 0) | \
            (F_A_TRILINEAR if a_trilinear else 0) | (F_B_NEAREST if b_nearest else 0) | (F_HAS_B if b is not None else 0)
        self.descs.append(Desc(OP_ADD, name, flags=flags, grid=grid, a=(a.base, a.stride, a_off),
                               b=(0, 0, 0) if b is None else (b.base, b.stride, b_off), o=(y.base, y.stride),
                               groups=y.groups, sa=sa, sb=sb, s_out=s_out))
        return y

    def _fuse(self, name: str, out: Record, a: Tensor, b: Tensor, sa: int, sb: int, s_out: int, *, a_off: int,
              b_off: int, a_nearest: bool, b_nearest: bool, a_trilinear: bool, conv_is_a: bool) -> Tensor | None:
        """The ADD fused into the output stage of the CONV just emitted, when that CONV wrote one of
        its operands whole on the output grid and fusing moves fewer words over the bus (None:
        not fused; the B stream repeats per output group). The CONV's result is then never
        written: the descriptor writes the sum, in the region the result had (the last one
        allocated), and the other operand becomes its B."""
        last = self.descs[-1] if self.descs else None
        conv, other = (a, b) if conv_is_a else (b, a)
        c_off, o_off = (a_off, b_off) if conv_is_a else (b_off, a_off)
        c_up = (a_nearest or a_trilinear) if conv_is_a else b_nearest
        o_near, o_tri = (b_nearest, False) if conv_is_a else (a_nearest, a_trilinear)
        if last is None or last.op != OP_CONV or last.flags & F_HAS_B or last.o[0] != conv.base or c_off or c_up:
            return None
        # only where it removes traffic: the CONV's result no longer written and read back, nor
        # the ADD's descriptor and pass over B, but each output group's run streams B again
        if 2 * conv.words + DESC_WORDS - (len(last.entries) - 1) * other.words <= 0:
            return None
        flags = last.flags | F_HAS_B | (F_B_NEAREST if o_near else 0) | (F_B_TRILINEAR if o_tri else 0)
        try:   # the two operands' windows (half the buffer each) must hold a row of some tile
            self._splits(replace(last, flags=flags, b=(other.base, other.stride, o_off)))
        except CompileError:
            return None
        assert conv.base + conv.words == self.act_words
        self.act_words -= conv.words
        del self.tensors[conv.name]
        y = self._alloc(name, conv.channels, conv.grid, out.e_out)
        last.flags = flags | (F_RELU_B if out.relu else 0)
        last.b, last.o = (other.base, other.stride, o_off), (y.base, y.stride)
        last.sa, last.sb, last.s_out = (sa, sb, s_out) if conv_is_a else (sb, sa, s_out)
        last.layer = f"{last.layer}+{name}"
        self.fused[conv.name] = name
        return y

    def _maxpool(self, name: str, x: Tensor) -> Tensor:
        y = self._alloc(name, x.channels, tuple(v // 2 for v in x.grid), x.e)
        self.descs.append(Desc(OP_MAXPOOL, name, grid=y.grid, a=(x.base, x.stride, 0), o=(y.base, y.stride),
                               groups=y.groups))
        return y

    def compile(self) -> Program:
        """The graph's nodes in order, each one descriptor (an ADD whose operand the CONV just
        emitted produced, and nothing after reads, may fuse into that CONV: _fuse)."""
        g, env = self.graph, {}
        last = g.last_use()
        for i, n in enumerate(g.nodes):
            if n.op == "input":
                y = self._alloc(n.out, n.channels, self.grid, self.r[n.out].e_out)
            elif n.op == "conv":
                y = self._conv(env[n.ins[0].t], n.conv, n.out, nearest_in=n.ins[0].up == "nearest")
            elif n.op == "maxpool":
                y = self._maxpool(n.out, env[n.ins[0].t])
            else:
                ops = list(n.ins)
                if len(ops) == 2 and ops[1].up == "linear":   # the engine up-samples trilinearly on A only
                    ops.reverse()
                if len(ops) == 2 and ops[1].up == "linear":
                    raise CompileError(f"{n.out}: both operands up-sampled trilinearly; the engine does one (A)")
                offs = []
                for o in ops:
                    lo = 0 if o.ch is None else o.ch[0]
                    if lo % LANES or (o.ch is not None and o.ch[1] % LANES and o.ch[1] != env[o.t].channels):
                        raise CompileError(f"{n.out}: channels {o.ch[0]}..{o.ch[1]} of {o.t}: a slice must start and "
                                           f"end on a group of {LANES} (or at the tensor's last channel)")
                    offs.append(lo // LANES)
                dead = [last[o.t] == i and o.t not in g.outputs and (len(ops) == 1 or ops[0].t != ops[1].t)
                        for o in ops]
                b = ops[1] if len(ops) == 2 else None
                y = self._add(n.out, env[ops[0].t], None if b is None else env[b.t], a_off=offs[0],
                              b_off=offs[1] if b else 0, channels=n.channels, a_nearest=ops[0].up == "nearest",
                              a_trilinear=ops[0].up == "linear", b_nearest=b is not None and b.up == "nearest",
                              a_dead=dead[0], b_dead=b is not None and dead[1])
            env[n.out] = y
        self.tensors["ddf"] = env[g.output]
        self.descs.append(Desc(OP_END, "end"))
        return self._finish()

    def _reuse(self) -> set[str]:
        """The liveness plan: each tensor's region holds it from the descriptor that writes it to
        the last that reads it (the input from the start, the displacement field to the end),
        then serves the tensors after it. Placed largest first, each at the lowest address where
        it overlaps no tensor whose life overlaps its own. Rewrites every base; returns the names whose
        region no later tensor takes (still readable after the run: the ddf, the input if never
        overwritten, ...)."""
        uniq = list({id(t): t for t in self.tensors.values()}.values())
        by_base = {t.base: t for t in uniq}
        n = len(self.descs)
        first = {id(self.tensors["input"]): -1}
        last = {id(self.tensors["ddf"]): n}
        for i, d in enumerate(self.descs):
            if d.op == OP_END:
                continue
            for base in [d.a[0]] + ([d.b[0]] if d.flags & F_HAS_B else []):
                last[id(by_base[base])] = max(last.get(id(by_base[base]), i), i)
            first.setdefault(id(by_base[d.o[0]]), i)
        life = {id(t): (first[id(t)], last.get(id(t), first[id(t)])) for t in uniq}
        placed: list[tuple[int, int, Tensor]] = []   # (start, end, tensor)
        new: dict[int, int] = {}
        for t in sorted(uniq, key=lambda t: (-t.words, life[id(t)][0])):   # the largest first
            born, dies = life[id(t)]
            clash = sorted((a, b) for a, b, t2 in placed if life[id(t2)][0] <= dies and born <= life[id(t2)][1])
            at = 0
            for a, b in clash:
                if at + t.words <= a:
                    break
                at = max(at, b)
            new[t.base] = at
            placed.append((at, at + t.words, t))
        intact = {id(t) for a, b, t in placed
                  if not any(life[id(t2)][0] > life[id(t)][0] and a2 < b and a < b2 for a2, b2, t2 in placed)}
        for d in self.descs:
            if d.op == OP_END:
                continue
            d.a = (new[d.a[0]], *d.a[1:])
            if d.flags & F_HAS_B:
                d.b = (new[d.b[0]], *d.b[1:])
            d.o = (new[d.o[0]], d.o[1])
        for t in uniq:
            t.base = new[t.base]
        self.act_words = max(b for _, b, _ in placed)
        return {name for name, t in self.tensors.items() if id(t) in intact}

    def _splits(self, d: Desc) -> list[tuple[int, int]] | None:
        """None when every output row's operand words fit the engine's windows; else the output
        rows [h0, h1) of the tiles d is split into along H, the most rows a tile can have
        (hw/ACCEL.md, "Spatial tiling"). CompileError when a tile of one row does not fit."""
        from hw.engine_model import WINDOW_WORDS, window_span

        if d.op == OP_END:
            return None
        words = self.window_words or WINDOW_WORDS
        span, cap = window_span(d.op, d.flags, d.grid, d.k, d.a, d.b, words)
        if span <= cap:
            return None
        H = d.grid[1]

        def fits(ht):
            cuts = [(h0, min(h0 + ht, H)) for h0 in range(0, H, ht)]
            return all(window_span(t.op, t.flags, t.grid, t.k, t.a, t.b, words, t.tile)[0] <= cap
                       for t in (tile_of(d, *c) for c in cuts)), cuts

        lo, hi = 0, H   # fits(lo) (or lo = 0), not fits(hi): the spans grow with the tile's rows
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid)[0] else (lo, mid)
        if lo == 0:
            raise CompileError(f"{d.layer}: one output row reads more words of an operand than the engine's window "
                               f"holds ({cap}), even in a tile of one row")
        return fits(lo)[1]

    def _finish(self) -> Program:
        intact = set(self.tensors) if self.plan == "keep" else self._reuse()
        # spatial tiling: the descriptors whose rows do not fit the windows, split along H
        self.blocks = {id(d): blocks for d, _, _, blocks in self.wpending}
        least = len(self.descs) * DESC_WORDS + self.act_words + \
            sum(6 + 9 * len(bl) for _, _, _, blocks in self.wpending for bl in blocks)
        if least > self.mem_words:   # (tiles add descriptors: the plan without them is the least it needs)
            raise CompileError(f"program needs at least {least} memory words, the memory plan has {self.mem_words}")
        splits = [self._splits(d) for d in self.descs]
        wbase = sum(len(s) if s else 1 for s in splits) * DESC_WORDS
        words: list[int] = []
        for d, bias, shifts, blocks in self.wpending:
            d.wbase = wbase + len(words)
            bz = np.zeros(len(blocks) * LANES, dtype="<i4")   # output lanes beyond C_out: bias 0, shift 0
            bz[:len(bias)] = bias
            sz = np.zeros(len(blocks) * LANES, dtype=np.int8)
            sz[:len(shifts)] = shifts
            for og, bl in enumerate(blocks):
                words.append(len(bl))
                words += bz[og * LANES:(og + 1) * LANES].view("<u8").tolist()   # lane 2i low, 2i+1 high
                words.append(int(sz[og * LANES:(og + 1) * LANES].view("<u8")[0]))  # byte j: lane j's shift
                for (a, b, c, g), blk in bl:
                    words.append(a | (b << 8) | (c << 16) | (g << 24))
                    words += blk.view("<u8").ravel().tolist()   # word j: output lane j, byte i: input lane i
        act_base = wbase + len(words)
        for t in {id(t): t for t in self.tensors.values()}.values():  # "ddf" aliases the last field
            t.base += act_base
        for d in self.descs:
            if d.op == OP_END:
                continue
            d.a = (d.a[0] + act_base, *d.a[1:])
            if d.flags & F_HAS_B:
                d.b = (d.b[0] + act_base, *d.b[1:])
            d.o = (d.o[0] + act_base, d.o[1])
        total = act_base + self.act_words
        if total > self.mem_words:
            raise CompileError(f"program needs {total} memory words, the memory plan has {self.mem_words}")
        self.descs = [t for d, s in zip(self.descs, splits) for t in ([d] if s is None else
                                                                       [tile_of(d, *c, self.blocks.get(id(d))) for c in s])]
        return Program(self.descs, self.tensors, words, act_base, self.act_words, self.dense, fused=dict(self.fused),
                       intact=intact)


def compile_weights(wb: WeightsFile | str | Path, grid=None, dense: bool = False, **limits) -> Program:
    """weights.bin (or its parsed form) -> Program for the given working grid (default: the
    export's). `limits`: wbuf_entries, mem_words, window_words of a larger engine (projections);
    fuse=False keeps every ADD a descriptor of its own (every tensor in memory); plan="reuse"
    gives a tensor's region to later ones once it is dead (Program.intact: those left readable)."""
    if not isinstance(wb, WeightsFile):
        wb = read_weights(wb)
    if grid is None:
        grid = wb.meta["input_shape"][-3:]
    return Compiler(wb, grid, dense, **limits).compile()


def build_limits(build: str) -> dict:
    """compile_weights' limits for an engine build: 'board' (hw.engine's ENGINE) or 'paper'
    (hw.engine.PAPER_BUILD)."""
    from hw.engine import PAPER_BUILD

    if build == "board":
        return {}
    if build == "paper":
        return {"wbuf_entries": PAPER_BUILD["WBUF_DEPTH"], "mem_words": 1 << PAPER_BUILD["ADDR_BITS"]}
    raise CompileError(f"engine build {build!r}: 'board' or 'paper'")


def write_readmemh64(path: Path, mem: np.ndarray) -> None:
    """One 64-bit word per line, 16 hex digits (the image $readmemh loads into accel_sim.v)."""
    from export.hexfile import to_readmemh
    from model.artifacts import atomic_write_text

    atomic_write_text(path, to_readmemh(mem, 16))


def read_readmemh64(path: Path, words: int) -> np.ndarray:
    """Read a $writememh dump of 64-bit words (comment lines `//` and blanks ignored)."""
    vals = [int(t, 16) for ln in Path(path).read_text().splitlines()
            if (t := ln.split("//")[0].strip()) and not t.startswith("@")]
    if len(vals) < words:
        raise CompileError(f"{path}: {len(vals)} words, the program's memory plan needs {words}")
    return np.array(vals[:words], dtype=np.uint64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--input", type=Path, help="golden input.npy (int8 (1, 2, D, H, W)) to place in the image")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dense", action="store_true", help="store every weight block (no zero-block skipping)")
    ap.add_argument("--no-fuse", action="store_true",
                    help="run every ADD as its own descriptor (every tensor of the trace stays in memory)")
    ap.add_argument("--plan", choices=("keep", "reuse"), default="keep",
                    help="memory plan: every tensor its own region (keep, default: all readable for dumps), or "
                         "regions reused once their tensor is dead (reuse: liveness; program.json lists the intact ones)")
    ap.add_argument("--build", choices=("board", "paper"), default="board",
                    help="the engine compiled for: hw.engine's ENGINE (board, default) or PAPER_BUILD (a 2,048-block "
                         "weight buffer and 28-bit word addresses: the paper-scale network)")
    a = ap.parse_args(argv)
    from hw.npy import read_npy
    from model.artifacts import atomic_write_json
    from model.cli import run_cli

    def body():
        if not a.weights.is_file():
            raise CompileError(f"{a.weights}: weights file not found")
        prog = compile_weights(a.weights, dense=a.dense, fuse=not a.no_fuse, plan=a.plan, **build_limits(a.build))
        x = read_npy(a.input, dtypes=("int8",), ndim=5) if a.input else None
        write_readmemh64(a.out / "mem.hex", prog.image(x))
        atomic_write_json(a.out / "program.json", prog.to_json())
        print(f"[compiler] {len(prog.descs)} descriptors, {prog.act_base + prog.act_words} words -> {a.out}",
              file=sys.stderr)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
