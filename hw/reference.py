"""Bit-accurate integer reference of the quantised LocalNet: the definition the accelerator must meet.

    python -m hw.reference --weights runs/demo/export/weights.bin --moving M.npy --fixed F.npy --out ddf.npy

numpy only (no torch), integer types only in the datapath; weights and exponents come from
weights.bin through export.weights. Operator contracts are in hw/SPEC.md; in short, every
tensor is int8 `q` with scale 2^-e (zero-point 0), layout NCDHW, and each operator runs

    accumulate exactly (int64 here; the bound check proves int32 suffices) -> add bias
    -> requantize_shift_rne (arithmetic right shift, round half to even) -> saturate

The one float step is the quantisation of the input images (quantize_input), which is the
boundary of the integer path, not part of it.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from export.weights import OP_CONV3D, OP_QUANT, Record, WeightsFile, acc_bound, read_weights

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# requantisation shifts a weights file may ask for (hw/SPEC.md): right by at most 31 (an int32
# accumulator), left by at most 15 (the engine's requantiser: int32 << 15 fits its 48-bit datapath)
MAX_RIGHT_SHIFT, MAX_LEFT_SHIFT = 31, 15


class QTensor:
    """int8 values `q` (N, C, D, H, W) with scale 2^-e."""

    def __init__(self, q: np.ndarray, e: int):
        assert q.dtype == np.int8 and q.ndim == 5, (q.dtype, q.shape)
        self.q, self.e = q, int(e)


def requantize_shift_rne(acc: np.ndarray, shift, lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    """round(acc / 2^shift) with ties to even, then saturate to [lo, hi]; int64 in, int8 out.

    shift > 0: arithmetic right shift with round-half-to-even on the dropped bits;
    shift <= 0: exact left shift (the output scale is finer than the accumulator's).
    `shift` is an int, or an integer array that broadcasts against `acc` (one per channel).
    """
    acc = np.asarray(acc, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    right = np.maximum(shift, 0)
    floor = acc >> right  # arithmetic: floor division by 2^shift
    rem = acc - (floor << right)  # in [0, 2^shift)
    half = np.int64(1) << np.maximum(right - 1, 0)  # (for shift <= 0, rem is 0 < half: no rounding)
    up = (rem > half) | ((rem == half) & (floor & 1 == 1) & (right > 0))
    out = (floor + up) << np.maximum(-shift, 0)
    return np.clip(out, lo, hi).astype(np.int8)


def check_shift(shift, name: str):
    """`shift` (an int or per-channel array) within [-MAX_LEFT_SHIFT, MAX_RIGHT_SHIFT], else a
    ValueError naming the layer: exponents from a file never shift silently out of range."""
    s = np.asarray(shift)
    if s.min() < -MAX_LEFT_SHIFT or s.max() > MAX_RIGHT_SHIFT:
        raise ValueError(f"{name}: requantisation shift {int(s.min())}..{int(s.max())} outside "
                         f"[-{MAX_LEFT_SHIFT}, {MAX_RIGHT_SHIFT}]")
    return shift


def saturate_range(relu: bool) -> tuple[int, int]:
    return (0 if relu else INT8_MIN), INT8_MAX


def conv3d_acc_s8(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3-D convolution, stride 1, zero 'same' padding k//2: int8 x (N, C_in, D, H, W), int8 w
    (C_out, C_in, kD, kH, kW), int32 bias (C_out,) -> int64 accumulator (N, C_out, D, H, W).

    Computed as matrix products in floating point, exact: every product is an integer below
    2^14 and every partial sum, in whatever order the BLAS adds, an integer no larger than the
    layer's bound max_c sum |w| x 128; below 2^24 float32 holds all of them exactly, else
    float64 (exact below 2^53; the export keeps accumulators below 2^31). The columns gather
    only the (C_in, kD, kH) taps over the W-padded rows: one product with the kW taps stacked
    as output rows gives, per tap e, a partial sum at every padded position, and the output is
    the sum of those kW partial sums shifted by e along W (each a subset of the products, so
    bounded like the whole). The columns are kW times smaller than a full im2col's (7x for
    the first 7^3 layer). tests/test_hw.py checks both number types against conv3d_acc_s8_loops.
    """
    n, cin, d, h, wd = x.shape
    cout, cin2, kd, kh, kw = w.shape
    assert cin == cin2, (x.shape, w.shape)
    bound = int(np.abs(w.astype(np.int64)).reshape(cout, -1).sum(axis=1).max(initial=0)) * 128
    ft = np.float32 if bound < 2 ** 24 else np.float64
    pd, ph, pw = kd // 2, kh // 2, kw // 2
    xp = np.pad(x.astype(ft), ((0, 0), (0, 0), (pd, pd), (ph, ph), (pw, pw)))
    wp = wd + 2 * pw
    win = np.lib.stride_tricks.sliding_window_view(xp, (kd, kh), axis=(2, 3))  # (N, C, D, H, W + 2pw, kd, kh)
    cols = win.transpose(1, 5, 6, 0, 2, 3, 4).reshape(cin * kd * kh, n * d * h * wp)
    taps = w.transpose(4, 0, 1, 2, 3).reshape(kw * cout, cin * kd * kh).astype(ft)  # rows (e, C_out)
    part = (taps @ cols).reshape(kw, cout, n, d, h, wp)
    acc = part[0, ..., :wd].copy()
    for e in range(1, kw):
        acc += part[e, ..., e:e + wd]
    return acc.transpose(1, 0, 2, 3, 4).astype(np.int64) + bias.astype(np.int64)[None, :, None, None, None]


def conv3d_acc_s8_loops(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The same contract as conv3d_acc_s8, in plain integer loops over the kernel taps (slow;
    the specification the fast route is tested against)."""
    n, cin, d, h, wd = x.shape
    cout, _, kd, kh, kw = w.shape
    pd, ph, pw = kd // 2, kh // 2, kw // 2
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pd, pd), (ph, ph), (pw, pw)))
    acc = np.zeros((n, cout, d, h, wd), dtype=np.int64)
    w64 = w.astype(np.int64)
    for o in range(cout):
        for c in range(cin):
            for a in range(kd):
                for b in range(kh):
                    for e in range(kw):
                        acc[:, o] += w64[o, c, a, b, e] * xp[:, c, a:a + d, b:b + h, e:e + wd]
    return acc + bias.astype(np.int64)[None, :, None, None, None]


def conv3d_s8(x: QTensor, rec: Record, out: Record) -> QTensor:
    """Convolution `rec` then the requantisation `out` (its exponent and ReLU); with per-channel
    weight exponents each output channel shifts by its own e_in + e_w[c] - e_out."""
    if x.e != rec.e_in:
        raise ValueError(f"{rec.name}: input exponent {x.e}, the layer was quantised for {rec.e_in}")
    c_out, c_in, *k = rec.weight.shape
    if c_in != x.q.shape[1] or any(n % 2 == 0 for n in k) or rec.bias.shape != (c_out,):
        raise ValueError(f"{rec.name}: weight {rec.weight.shape} and bias {rec.bias.shape} do not fit an input "
                         f"of {x.q.shape[1]} channels with an odd kernel")
    acc = conv3d_acc_s8(x.q, rec.weight, rec.bias)
    if acc.min() < INT32_MIN or acc.max() > INT32_MAX:
        raise OverflowError(f"{rec.name}: accumulator leaves int32")
    shift = check_shift(rec.e_w + rec.e_in - out.e_out, rec.name)[None, :, None, None, None]
    return QTensor(requantize_shift_rne(acc, shift, *saturate_range(out.relu)), out.e_out)


def add_acc(ops: list[tuple[np.ndarray, int]], out: Record) -> QTensor:
    """The sum of one or two integer operands (values, exponent e: scale 2^-e): aligned exactly
    to the finest exponent, summed, rounded once to out.e_out and saturated."""
    e = max(ex for _, ex in ops)
    # the aligned operands must keep the sum inside int32 (hw/SPEC.md): an int8 operand is at most
    # 128 in magnitude, upsample_linear2's accumulator 64 x 128; checked from the exponents alone
    lim = sum((128 if x.dtype == np.int8 else 64 * 128) << (e - ex) for x, ex in ops)
    if lim > INT32_MAX:
        raise ValueError(f"{out.name}: aligned sum bound {lim} does not fit int32 (exponents "
                         f"{', '.join(str(ex) for _, ex in ops)})")
    acc = sum(x.astype(np.int64) << (e - ex) for x, ex in ops)
    return QTensor(requantize_shift_rne(acc, check_shift(e - out.e_out, out.name), *saturate_range(out.relu)), out.e_out)


def maxpool2_s8(x: QTensor) -> QTensor:
    """2x2x2 max-pool, stride 2: values move, scale unchanged."""
    n, c, d, h, w = x.q.shape
    v = x.q.reshape(n, c, d // 2, 2, h // 2, 2, w // 2, 2)
    return QTensor(v.max(axis=(3, 5, 7)), x.e)


def upsample_nearest2_s8(x: QTensor) -> QTensor:
    q = x.q.repeat(2, axis=2).repeat(2, axis=3).repeat(2, axis=4)
    return QTensor(q, x.e)


def upsample_linear2_acc(q: np.ndarray) -> np.ndarray:
    """Trilinear x2, half-pixel centres, edges clamped, as int64 at 64x the input scale:
    per axis, output 2k = x[k-1] + 3 x[k] and 2k+1 = 3 x[k] + x[k+1] (indices clamped to the
    volume), i.e. weights 1/4 and 3/4 scaled by 4; three axes give 4^3 = 64."""
    acc = q.astype(np.int64)
    for axis in (2, 3, 4):
        n = acc.shape[axis]
        idx = np.arange(n)
        prev = np.take(acc, np.maximum(idx - 1, 0), axis=axis)
        nxt = np.take(acc, np.minimum(idx + 1, n - 1), axis=axis)
        even, odd = prev + 3 * acc, 3 * acc + nxt
        acc = np.stack([even, odd], axis=axis + 1).reshape(*acc.shape[:axis], 2 * n, *acc.shape[axis + 1:])
    return acc


def quantize_input(moving: np.ndarray, fixed: np.ndarray, rec: Record) -> QTensor:
    """The boundary: float images (X, Y, Z) -> int8 (1, 2, X, Y, Z) at 2^-rec.e_out, round half to
    even, saturate (what the Brevitas input quantiser and ONNX QuantizeLinear do)."""
    x = np.stack([moving, fixed])[None].astype(np.float64) * 2.0 ** rec.e_out
    return QTensor(np.clip(np.rint(x), INT8_MIN, INT8_MAX).astype(np.int8), rec.e_out)


class Reference:
    """An interpreter of the graph in weights.bin (model/graph.py); `run` returns the network's
    output and, optionally, every node's."""

    def __init__(self, wb: WeightsFile, where: str = "weights file"):
        self.wb, self.r, self.where = wb, wb.records, where
        self.graph = wb.graph   # checked against the records (a WeightsError names the file)
        for name, rec in self.r.items():  # contract at entry: no accumulator leaves int32
            if rec.op == OP_CONV3D and acc_bound(rec) > INT32_MAX:
                raise ValueError(f"{where}: record {name}: accumulator bound {acc_bound(rec)} does not fit int32")

    def rec(self, name: str, op: int) -> Record:
        """The record `name`, which the graph needs with op `op`."""
        r = self.r.get(name)
        if r is None or r.op != op:
            kind = "conv3d" if op == OP_CONV3D else "quant"
            raise ValueError(f"{self.where}: record {name} ({kind}) is {'missing' if r is None else 'of another op'}")
        return r

    @classmethod
    def from_file(cls, path: str | Path) -> "Reference":
        return cls(read_weights(path), str(path))

    def run(self, x: QTensor, trace: dict | None = None) -> QTensor:
        """x: the quantised input (1, C, X, Y, Z); returns the output (for LocalNet the ddf
        (1, 3, X, Y, Z) in voxels) int8 at 2^-e. `trace`, if given, receives every node's output
        but the max-pools' (every requantised tensor, by its record name), and the output also
        as "ddf". A contract a layer's exponents break is a
        ValueError naming the weights file and the layer."""
        try:
            return self._run(x, trace)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(self.where) else f"{self.where}: {msg}") from None

    def _operand(self, env: dict, o) -> tuple[np.ndarray, int]:
        """An operand's values (a channel slice, up-sampled) and exponent: int8, or for a linear
        up-sampling its exact int64 accumulator at 64x the scale."""
        t = env[o.t]
        q = t.q if o.ch is None else np.ascontiguousarray(t.q[:, o.ch[0]:o.ch[1]])
        if o.up == "nearest":
            return upsample_nearest2_s8(QTensor(q, t.e)).q, t.e
        if o.up == "linear":
            return upsample_linear2_acc(q), t.e + 6
        return q, t.e

    def _run(self, x: QTensor, trace: dict | None) -> QTensor:
        g = self.graph
        if x.q.shape[1] != g.input.channels or any(v % g.divisor for v in x.q.shape[2:]):
            raise ValueError(f"input {x.q.shape}: the graph takes {g.input.channels} channels on a grid whose every "
                             f"axis is a multiple of {g.divisor}")
        env: dict[str, QTensor] = {}
        last = g.last_use()
        for i, n in enumerate(g.nodes):
            if n.op == "input":
                y = x
            elif n.op == "conv":
                q, e = self._operand(env, n.ins[0])
                y = conv3d_s8(QTensor(q, e), self.rec(n.conv, OP_CONV3D), self.rec(n.out, OP_QUANT))
            elif n.op == "add":
                ops = [self._operand(env, o) for o in n.ins]
                if len({a.shape for a, _ in ops}) > 1:
                    raise ValueError(f"{n.out}: operands of shapes {', '.join(str(a.shape) for a, _ in ops)}")
                y = add_acc(ops, self.rec(n.out, OP_QUANT))
            else:
                y = maxpool2_s8(env[n.ins[0].t])
            env[n.out] = y
            if trace is not None:
                if n.op != "maxpool":   # the trace holds every record's tensor (a max-pool has none)
                    trace[n.out] = y
            else:   # without a trace a tensor lives until its last reader
                for o in n.ins:
                    if last[o.t] == i:
                        env.pop(o.t, None)
        out = env[g.output]
        if trace is not None:
            trace["ddf"] = out
        return out

    def register(self, moving: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, int]:
        """Float images (X, Y, Z) -> (ddf int8 (3, X, Y, Z), exponent e): voxels = q * 2^-e."""
        ddf = self.run(quantize_input(moving, fixed, self.rec("input", OP_QUANT)))
        return ddf.q[0], ddf.e


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--moving", required=True, type=Path, help=".npy (X, Y, Z) float image on the working grid")
    ap.add_argument("--fixed", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help=".npy int8 ddf (3, X, Y, Z); exponent printed")
    a = ap.parse_args(argv)
    from hw.npy import read_npy
    from model.artifacts import atomic_write_bytes
    from model.cli import check_outputs, run_cli

    def body():
        check_outputs({"--out": a.out}, {"--weights": a.weights, "--moving": a.moving, "--fixed": a.fixed})
        ref = Reference.from_file(a.weights)
        moving, fixed = (read_npy(p, kinds="iuf", ndim=3) for p in (a.moving, a.fixed))
        if moving.shape != fixed.shape:
            raise ValueError(f"{a.moving}: shape {moving.shape}, {a.fixed}: shape {fixed.shape}: they must be equal")
        step = ref.graph.divisor
        if any(n < step or n % step for n in moving.shape):
            raise ValueError(f"{a.moving}: shape {moving.shape}: every axis must be a positive multiple of "
                             f"{step} (2^ the graph's deepest level)")
        q, e = ref.register(moving, fixed)
        buf = io.BytesIO()
        np.save(buf, q)
        atomic_write_bytes(a.out, buf.getvalue())  # exactly --out (np.save would append .npy)
        print(f"ddf int8 {q.shape}, voxels = q * 2^-{e}")
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
