"""The integer reference: operators by hand, bit-exactness against Brevitas and onnxruntime,
golden vectors and verification with fault injection."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.weights import OP_QUANT, Record
from hw.reference import (QTensor, add_acc, conv3d_acc_s8, conv3d_acc_s8_loops, maxpool2_s8, requantize_shift_rne,
                          upsample_linear2_acc, upsample_nearest2_s8)
from model.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def _q(name="q", e=0, relu=False):
    return Record(name, OP_QUANT, 8, e, relu=relu)


@pytest.mark.parametrize("acc,shift,want", [
    ([5, 7, -5, -7, 6, 10, 1, 3, -1, -3], 1, [2, 4, -2, -4, 3, 5, 0, 2, 0, -2]),  # x.5 ties to even
    ([2, 6, 10, -2, -6, 3, 5, -3], 2, [0, 2, 2, 0, -2, 1, 1, -1]),  # 0.5, 1.5, 2.5, -0.5, -1.5; 0.75 1.25 -0.75
    ([37, -37], 0, [37, -37]),
    ([3, -3], -2, [12, -12]),  # a finer output scale: exact left shift
])
def test_requantize_rounds_half_to_even(acc, shift, want):
    assert requantize_shift_rne(np.array(acc), shift).tolist() == want


def test_rounding_is_half_even_not_half_up():
    """Kept on purpose: a round-half-up requantisation (floor(x + 0.5)) gives 3 and -2 here and fails."""
    assert requantize_shift_rne(np.array([5, -3]), 1).tolist() == [2, -2]
    assert requantize_shift_rne(np.array([3 << 9, 5 << 9]), 10).tolist() == [2, 2]  # 1.5 -> 2, 2.5 -> 2


@pytest.mark.parametrize("acc,shift,relu,want", [
    ([1000, -1000, 508, 509, -514, -515], 2, False, [127, -128, 127, 127, -128, -128]),
    ([-5, -1, 0, 1, 600], 0, True, [0, 0, 0, 1, 127]),
    ([2**40, -(2**40)], 30, False, [127, -128]),
])
def test_saturation_at_both_ends(acc, shift, relu, want):
    lo = 0 if relu else -128
    out = requantize_shift_rne(np.array(acc, dtype=np.int64), shift, lo, 127)
    assert out.dtype == np.int8 and out.tolist() == want


@pytest.mark.parametrize("k", [1, 3, 7])
def test_conv_fast_route_equals_loops(k):
    rng = np.random.default_rng(k)
    x = rng.integers(-128, 128, (1, 3, 5, 6, 7)).astype(np.int8)
    x[0, 0, 0, 0, 0] = -128  # extremes
    w = rng.integers(-127, 128, (4, 3, k, k, k)).astype(np.int8)
    w[0] = 127
    b = rng.integers(-2**20, 2**20, 4).astype(np.int32)
    fast, slow = conv3d_acc_s8(x, w, b), conv3d_acc_s8_loops(x, w, b)
    assert fast.dtype == np.int64 and np.array_equal(fast, slow)


def test_conv_float64_route_above_2_24():
    """A bound of 64 x 27 x 127 x 128 = 28.1M >= 2^24 takes the float64 route, exact; float32
    would not be: the centre voxel sums 1,728 odd products 127 x -127 to -27,870,912, and a
    float32 matrix product of exactly these operands gave -27,870,224 here."""
    x = np.full((1, 64, 3, 3, 3), -127, np.int8)
    w = np.full((2, 64, 3, 3, 3), 127, np.int8)
    w[1, ::2] = -127
    b = np.array([5, -5], np.int32)
    fast, slow = conv3d_acc_s8(x, w, b), conv3d_acc_s8_loops(x, w, b)
    assert slow[0, 0, 1, 1, 1] == -27_870_912 + 5 and np.array_equal(fast, slow)


def test_conv_by_hand():
    x = np.zeros((1, 1, 3, 3, 3), np.int8)
    x[0, 0, 1, 1, 1] = 2
    w = np.zeros((1, 1, 3, 3, 3), np.int8)
    w[0, 0, 0, 1, 1] = 5  # reads the voxel one before along D
    acc = conv3d_acc_s8(x, w, np.array([7], np.int32))
    assert acc[0, 0, 2, 1, 1] == 2 * 5 + 7 and acc[0, 0, 1, 1, 1] == 7 and acc[0, 0, 0, 0, 0] == 7


def test_add_aligns_then_rounds_once():
    a = QTensor(np.full((1, 1, 1, 1, 1), 3, np.int8), 1)  # 1.5
    b = QTensor(np.full((1, 1, 1, 1, 1), 1, np.int8), 2)  # 0.25
    assert add_acc([(a.q, a.e), (b.q, b.e)], _q(e=1)).q.item() == 4  # 1.75 at 2^-1 = 3.5 -> 4 (even)
    assert add_acc([(a.q, a.e), (b.q, b.e)], _q(e=2)).q.item() == 7  # exact at the finer scale
    neg = QTensor(np.full((1, 1, 1, 1, 1), -100, np.int8), 0)
    assert add_acc([(neg.q, neg.e)] * 2, _q(e=0, relu=True)).q.item() == 0
    assert add_acc([(neg.q, neg.e)] * 2, _q(e=0)).q.item() == -128


def test_pool_and_nearest_move_values():
    q = np.arange(64, dtype=np.int8).reshape(1, 1, 4, 4, 4) - 32
    p = maxpool2_s8(QTensor(q, 3))
    assert p.e == 3 and p.q.shape == (1, 1, 2, 2, 2) and p.q[0, 0, 0, 0, 0] == q[0, 0, :2, :2, :2].max()
    u = upsample_nearest2_s8(p)
    assert u.q.shape == (1, 1, 4, 4, 4) and (u.q[0, 0, :2, :2, :2] == p.q[0, 0, 0, 0, 0]).all()


def test_trilinear_matches_torch_half_pixel():
    """Integer trilinear x2 (acc at 64x) equals torch's align_corners=False interpolation exactly:
    every value is a multiple of 1/64 of small integers, exact in float32."""
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (1, 3, 3, 4, 5)).astype(np.int8)
    acc = upsample_linear2_acc(q)
    ref = F.interpolate(torch.from_numpy(q.astype(np.float32)), scale_factor=2, mode="trilinear",
                        align_corners=False).numpy() * 64
    assert np.array_equal(acc, ref.astype(np.int64))
    one = np.zeros((1, 1, 2, 1, 1), np.int8)
    one[0, 0] = [[[0]], [[4]]]
    assert upsample_linear2_acc(one)[0, 0, :, 0, 0].tolist() == [0, 64, 192, 256]  # 0, 1, 3, 4 x 64
    assert add_acc([(upsample_linear2_acc(one), 6)], _q(e=0)).q[0, 0, :, 0, 0].tolist() == [0, 1, 3, 4]


@pytest.fixture(scope="module")
def exported(tiny_export):
    cfg_path, out, manifest = tiny_export
    return load_config(cfg_path), out, manifest


def test_reference_equals_brevitas_and_onnxruntime_everywhere(tiny_data, exported):
    """Every requantised tensor of the reference equals the Brevitas twin's integers and
    onnxruntime's (optimisations on and off) on every test pair: zero mismatches."""
    from hw.crosscheck import crosscheck

    cfg, out, _ = exported
    res = crosscheck(cfg, out, tiny_data)
    assert res["pairs"] == 2 and res["onnx_tensors_per_pair"] == res["tensors_per_pair"] > 20
    assert res["elements_per_source"] > 10_000
    assert res["mismatches"] == {"brevitas": 0, "onnxruntime_optimized": 0, "onnxruntime_unoptimized": 0}, res


def test_onnxruntime_requantisation_departs_above_2p24():
    """onnxruntime's QLinearConv converts the int32 accumulator to float32 before scaling: with
    acc = 2^24 + 2^17 + 1 and a shift of 18, the exact value 64.5 + 2^-18 rounds to 65, but
    float32(acc) = 2^24 + 2^17 gives the tie 64.5 -> 64. The reference keeps 65 (SPEC.md)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    acc = 2**24 + 2**17 + 1
    assert requantize_shift_rne(np.array([acc]), 18).item() == 65
    init = [numpy_helper.from_array(np.array(1.0, np.float32), "s1"), numpy_helper.from_array(np.array(0, np.int8), "z"),
            numpy_helper.from_array(np.ones((1, 1, 1, 1, 1), np.int8), "w"),
            numpy_helper.from_array(np.array(2.0**18, np.float32), "sy"),
            numpy_helper.from_array(np.array([acc - 1], np.int32), "b")]
    node = helper.make_node("QLinearConv", ["x", "s1", "z", "w", "s1", "z", "sy", "z", "b"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 1, 1, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 1, 1, 1, 1])], initializer=init)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.ones((1, 1, 1, 1, 1), np.int8)})[0]
    assert y.item() == 64


@pytest.mark.parametrize("weight_scale", ["tensor", "channel"])
def test_reference_equals_brevitas_on_large_random_weights(tmp_path, tiny_toml, weight_scale):
    """An untrained twin with large random weights (every layer, not only the trained model's
    small ones; output channels 2^-3..2^1 apart, so per-channel exponents differ): every
    requantised tensor of the reference equals Brevitas' integers, and onnxruntime's ddf
    (QCDQ export, optimisations on and off) equals both."""
    import tomllib

    import brevitas.nn as qnn

    from export.export import network_meta, weight_records
    from export.weights import write_weights
    from hw.reference import Reference, quantize_input
    from model.config import config_from_dict
    from export.export import ddf_exponent
    from export.gate import ort_vs_brevitas_mismatches
    from export.onnx import export_int8_onnx
    from quant.twin import QuantLocalNet, calibrate, pot_exponent

    cfg = config_from_dict(tomllib.loads(tiny_toml))
    torch.manual_seed(1)
    twin = QuantLocalNet(cfg.model, weight_scale=weight_scale)
    for m in twin.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.uniform_(m.weight, -0.5, 0.5)  # several times the trained weights' size
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
            with torch.no_grad():
                m.weight.mul_(torch.exp2(4 * torch.rand(m.weight.shape[0], 1, 1, 1, 1) - 3))
    xs = [torch.rand(1, 2, *cfg.data.shape) for _ in range(2)]
    calibrate(twin, xs)
    write_weights(tmp_path / "w.bin", weight_records(twin, xs[0]), network_meta(cfg.model))
    ref = Reference.from_file(tmp_path / "w.bin")
    e_w = [len(set(r.e_w.tolist())) for r in ref.r.values() if r.weight is not None]
    assert max(e_w) == 1 if weight_scale == "tensor" else min(e_w) > 1  # per-channel: exponents differ
    cfg.data.shape = list(xs[0].shape[2:])
    export_int8_onnx(twin, cfg, tmp_path / "int8.onnx")
    mism = ort_vs_brevitas_mismatches(twin, tmp_path / "int8.onnx", [x.numpy() for x in xs], ddf_exponent(twin))
    assert mism == {"optimized": 0, "unoptimized": 0}
    quantisers = {name: m for name, m in twin.named_modules() if isinstance(m, (qnn.QuantIdentity, qnn.QuantReLU))}
    saturated = compared = 0
    for x in xs:
        got = {}
        hooks = [m.register_forward_hook(lambda mod, i, o, name=name: got.__setitem__(name, o))
                 for name, m in quantisers.items()]
        with torch.no_grad():
            twin(x)
        for h in hooks:
            h.remove()
        trace: dict = {}
        ref.run(quantize_input(x[0, 0].numpy(), x[0, 1].numpy(), ref.r["input"]), trace)
        for name, o in got.items():
            q = torch.round(o.value / o.scale).to(torch.int64).numpy()
            assert pot_exponent(o.scale) == trace[name].e, name
            bad = np.flatnonzero(q != trace[name].q)
            assert bad.size == 0, f"{name}: {bad.size} of {q.size} differ, first at {bad[0]}"
            saturated += int((np.abs(q) >= 127).sum())
            compared += q.size
    assert compared > 50_000 and saturated > 0  # large values reach the saturation limits


def test_golden_verify_and_fault_injection(tiny_data, exported, tmp_path):
    cfg, out, export_manifest = exported
    golden = tmp_path / "golden"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "hw.golden", "--weights", str(out / "export" / "weights.bin"),
           "--config", str(out / "tiny.toml"), "--data", str(tiny_data), "--out", str(golden), "--pairs", "2"]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    man = json.loads((golden / "manifest.json").read_text())
    assert len(man["pairs"]) == 2 and "ddf" in man["pairs"][0]["tensors"] and man["git_commit"]
    # the export's ddf exponent is the one the reference's output carries
    assert man["pairs"][0]["tensors"]["ddf"]["exponent"] == export_manifest["ddf_exponent"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)  # never overwritten silently
    assert r.returncode == 2 and "--force" in r.stderr

    from export.hexfile import from_readmemh

    t = man["pairs"][0]["tensors"]["down.0.c1.act"]
    npy = np.load(golden / "pair_00" / "down.0.c1.act.npy")
    assert np.array_equal(from_readmemh((golden / "pair_00" / "down.0.c1.act.hex").read_text(), tuple(t["shape"])), npy)
    lines = (golden / "pair_00" / "down.0.c1.act.hex").read_text().splitlines()
    assert lines[:3] == [f"{int(v) & 0xFF:02x}" for v in npy.ravel()[:3]] and all(len(x) == 2 for x in lines)

    # onnxruntime as the device under test (independent of the reference) passes
    verify = [sys.executable, "-m", "hw.verify", "--golden", str(golden), "--quiet"]
    r = subprocess.run(verify, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "device: onnxruntime" in r.stdout and "PASS: 0 mismatching" in r.stdout
    n_tensors = sum(len(p["tensors"]) for p in man["pairs"])
    assert f"in {n_tensors} tensors" in r.stdout
    # weights other than the golden vectors' are refused
    other = tmp_path / "other.bin"
    data = bytearray((out / "export" / "weights.bin").read_bytes())
    other.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 1]))
    r = subprocess.run(verify + ["--weights", str(other)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "other.bin: sha256 differs" in r.stderr
    # one flipped bit in one layer's dump is reported at its exact location
    dut = tmp_path / "dut"
    shutil.copytree(golden, dut)
    a = np.load(dut / "pair_01" / "up.0.add_skip.npy")
    pos = tuple(s // 2 for s in a.shape)
    exp = int(a[pos])
    a[pos] = np.int8(exp ^ 0x04)
    np.save(dut / "pair_01" / "up.0.add_skip.npy", a)
    r = subprocess.run(verify + ["--accel", str(dut)], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert (f"MISMATCH pair_01/up.0.add_skip: 1 of {a.size} elements; first at (n, c, d, h, w) = {pos}: "
            f"expected {exp}, actual {exp ^ 0x04}; max |diff| 4 LSB") in r.stdout
    # a dump of the wrong dtype or shape, or missing: a clear error
    np.save(dut / "pair_01" / "up.0.add_skip.npy", a.astype(np.int16))
    r = subprocess.run(verify + ["--accel", str(dut)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "dtype int16, expected int8" in r.stderr
    np.save(dut / "pair_01" / "up.0.add_skip.npy", a[:, :1])
    r = subprocess.run(verify + ["--accel", str(dut)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "up.0.add_skip.npy: shape" in r.stderr
    (dut / "pair_01" / "up.0.add_skip.npy").unlink()
    r = subprocess.run(verify + ["--accel", str(dut)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "missing dump" in r.stderr


def test_reference_runs_without_torch(exported, tmp_path):
    """hw/ on a board: numpy only. torch and brevitas are made unimportable in the subprocess."""
    _, out, _ = exported
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['brevitas'] = None\n"
        "import numpy as np\n"
        "from hw.reference import Reference\n"
        f"ref = Reference.from_file({str(out / 'export' / 'weights.bin')!r})\n"
        "shape = ref.wb.meta['input_shape']\n"
        "q, e = ref.register(np.zeros(shape, np.float32), np.ones(shape, np.float32) * 0.5)\n"
        "assert q.dtype == np.int8 and q.shape == (3, *shape)\n"
        "print('ok', e)\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")
