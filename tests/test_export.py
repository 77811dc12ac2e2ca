"""Export: weight packing round trips, weights.bin pinned to FORMAT.md, integrity checks, ONNX
exactness, sparse initializers, hex and C header, manifest."""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from export.pack import BITMASK, DENSE, decode_weights, encode_weights, pack_values, unpack_values
from export.weights import HEADER, OP_CONV3D, OP_QUANT, Record, WeightsError, read_weights, write_weights
from model.config import ConfigError, load_config


@st.composite
def sparse_int_tensors(draw):
    bits = draw(st.sampled_from([4, 8]))
    lim = 2 ** (bits - 1) - 1
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=5)))
    sparsity = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = rng.integers(-lim, lim + 1, size=shape).astype(np.int8)
    q[rng.random(shape) < sparsity] = 0
    return q, bits


@settings(max_examples=200, deadline=None)
@given(sparse_int_tensors())
def test_encode_decode_round_trip(case):
    q, bits = case
    enc, payload = encode_weights(q, bits)
    back = decode_weights(enc, payload, q.shape, bits)
    assert back.dtype == np.int8 and np.array_equal(back, q)
    n, nz = q.size, int(np.count_nonzero(q))
    dense = n if bits == 8 else (n + 1) // 2
    assert len(payload) == min(dense, (n + 7) // 8 + (nz if bits == 8 else (nz + 1) // 2))


def test_documented_bit_layouts():
    assert pack_values(np.array([1, -2, 3]), 4) == bytes([0xE1, 0x03])  # low nibble first
    assert unpack_values(bytes([0xE1, 0x03]), 3, 4).tolist() == [1, -2, 3]
    enc, payload = encode_weights(np.array([0, 5, 0, -1], np.int8), 8)
    assert (enc, payload) == (BITMASK, bytes([0x0A, 0x05, 0xFF]))
    assert encode_weights(np.array([1, 2, 3, 4], np.int8), 8) == (DENSE, bytes([1, 2, 3, 4]))


@pytest.mark.parametrize("bits,bad", [(8, -128), (8, 128), (4, 8), (4, -8)])
def test_out_of_range_refused(bits, bad):
    with pytest.raises(ValueError, match=f"int{bits}"):
        encode_weights(np.array([0, bad]), bits)


def _records(seed=0, bits=8):
    rng = np.random.default_rng(seed)
    lim = 2 ** (bits - 1) - 1
    w = rng.integers(-lim, lim + 1, size=(3, 2, 3, 3, 3)).astype(np.int8)
    w[rng.random(w.shape) < 0.6] = 0
    return [Record("in", OP_QUANT, 8, 7),
            Record("c0.conv", OP_CONV3D, bits, 9, 7, weight=w, bias=rng.integers(-2**31, 2**31, 3).astype(np.int32)),
            Record("c0.act", OP_QUANT, 8, 5, relu=True),
            Record("c1.conv", OP_CONV3D, bits, 0, 5, weight=w[:, :, :, ::-1].copy(),  # per-channel exponents
                   bias=rng.integers(-2**31, 2**31, 3).astype(np.int32), e_ch=np.array([9, -3, 16])),
            Record("c1.act", OP_QUANT, 8, 4)]


@pytest.mark.parametrize("bits", [4, 8])
def test_weights_bin_round_trip(tmp_path, bits):
    recs = _records(bits=bits)
    n = write_weights(tmp_path / "w.bin", recs, {"model": {"levels": 1}})
    assert n == (tmp_path / "w.bin").stat().st_size and n % 16 == 0
    wb = read_weights(tmp_path / "w.bin")
    assert wb.meta == {"model": {"levels": 1}} and list(wb.records) == ["in", "c0.conv", "c0.act", "c1.conv", "c1.act"]
    for r in recs:
        got = wb.records[r.name]
        assert (got.op, got.bits, got.e0, got.e1, got.relu) == (r.op, r.bits, r.e0, r.e1, r.relu)
        if r.op == OP_CONV3D:
            assert np.array_equal(got.weight, r.weight) and np.array_equal(got.bias, r.bias)
            assert got.weight.dtype == np.int8 and got.bias.dtype == np.int32
            assert (got.e_ch is None) == (r.e_ch is None) and got.e_w.tolist() == r.e_w.tolist()
    assert wb.records["c0.conv"].e_w.tolist() == [9, 9, 9] and wb.records["c1.conv"].e_w.tolist() == [9, -3, 16]


def test_every_flipped_bit_is_caught(tmp_path):
    write_weights(tmp_path / "w.bin", _records(), {"m": 1})
    data = (tmp_path / "w.bin").read_bytes()
    bad = tmp_path / "bad.bin"
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad.write_bytes(bytes(flipped))
        with pytest.raises(WeightsError):
            read_weights(bad)


def test_truncation_magic_version_named(tmp_path):
    write_weights(tmp_path / "w.bin", _records(), {"m": 1})
    data = (tmp_path / "w.bin").read_bytes()
    bad = tmp_path / "bad.bin"
    for n in range(len(data)):
        bad.write_bytes(data[:n])
        with pytest.raises(WeightsError, match="truncated|header|bytes"):
            read_weights(bad)
    bad.write_bytes(b"XXXX" + data[4:])
    with pytest.raises(WeightsError, match="wrong magic"):
        read_weights(bad)
    # version 4 with a valid header CRC: refused for its version, not its CRC
    head = bytearray(data[:HEADER.size])
    struct.pack_into("<H", head, 4, 4)
    struct.pack_into("<I", head, 28, zlib.crc32(bytes(head[:28])))
    bad.write_bytes(bytes(head) + data[HEADER.size:])
    with pytest.raises(WeightsError, match="format version 4, this reader understands versions 1, 2, 3"):
        read_weights(bad)
    # version 1 has no per-channel exponents: a version-1 header on this file is refused at that record
    struct.pack_into("<H", head, 4, 1)
    struct.pack_into("<I", head, 28, zlib.crc32(bytes(head[:28])))
    bad.write_bytes(bytes(head) + data[HEADER.size:])
    with pytest.raises(WeightsError, match=r"record 3 \(c1.conv\): flags 0x2 not defined .* version 1"):
        read_weights(bad)
    # a corrupted record is named
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    bad.write_bytes(bytes(flipped))
    with pytest.raises(WeightsError, match=r"record 4 at byte \d+: CRC mismatch"):
        read_weights(bad)



HAND_META = ({"model": {"levels": 1}},
             {"graph": {"nodes": [{"op": "input", "out": "input", "in": [], "channels": 2, "level": 0},
                                  {"op": "conv", "out": "c.act", "in": [{"t": "input"}], "channels": 2, "level": 0,
                                   "conv": "c.conv", "k": 1}],
                        "outputs": ["c.act"]}})


def _hand_file(path, version, per_channel):
    """A weights.bin assembled from FORMAT.md's byte layout alone (struct + zlib, not the writer):
    a 2-channel input, one 1x1x1 convolution with two output channels (bitmask weights
    [0, 5 | 0, -1]) and its requantisation; per-tensor e_w 9, or per-channel exponents 9 and
    11; from version 3 with the graph of that network."""
    def record(op, flags, bits, enc, name, e0, e1, shape=(0, 0, 0, 0, 0), extra=b"", payload=b"", nnz=0):
        n = name.encode()
        body = n + b"\0" * (-len(n) % 4) + extra + payload
        size = (32 + len(body) + 15) // 16 * 16
        body += b"\0" * (size - 32 - len(body))
        tail = struct.pack("<BBBBBbbBHHBBBBII", op, flags, bits, enc, len(n), e0, e1, 0, *shape, 0, len(payload), nnz)
        return struct.pack("<II", size, zlib.crc32(tail + body)) + tail + body

    meta = json.dumps(HAND_META[version >= 3], sort_keys=True).encode()   # JSON as the writer spaces it
    meta += b" " * (-len(meta) % 16)
    bias = struct.pack("<ii", -3, 70000)
    conv = (record(1, 2, 8, 1, "c.conv", 0, 7, (2, 2, 1, 1, 1), bias + bytes([9, 11, 0, 0]), bytes([0x0A, 0x05, 0xFF]), 2)
            if per_channel else record(1, 0, 8, 1, "c.conv", 9, 7, (2, 2, 1, 1, 1), bias, bytes([0x0A, 0x05, 0xFF]), 2))
    recs = record(2, 0, 8, 0, "input", 7, 0) + conv + record(2, 1, 8, 0, "c.act", 5, 0)
    total = 32 + len(meta) + len(recs)
    head = struct.pack("<4sHHIIIII", b"LNWB", version, 32, 3, total, len(meta), zlib.crc32(meta), 0)
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + meta + recs)
    return path


@pytest.mark.parametrize("version, per_channel", [(1, False), (2, False), (2, True), (3, False), (3, True)])
def test_weights_bin_built_by_hand_from_format_md(tmp_path, version, per_channel):
    """Format 3 as FORMAT.md lays it out, run by the reference from its graph; formats 1 (no
    per-channel exponents) and 2 (no graph) still read."""
    from hw.reference import QTensor, Reference

    wb = read_weights(_hand_file(tmp_path / "hand.bin", version, per_channel))
    assert wb.meta == HAND_META[version >= 3] and list(wb.records) == ["input", "c.conv", "c.act"]
    conv = wb.records["c.conv"]
    assert (conv.op, conv.bits, conv.e0, conv.e1, conv.encoding, conv.payload_bytes) == \
        (OP_CONV3D, 8, 0 if per_channel else 9, 7, 1, 3)
    assert conv.e_w.tolist() == ([9, 11] if per_channel else [9, 9])
    assert conv.weight.shape == (2, 2, 1, 1, 1) and conv.weight.ravel().tolist() == [0, 5, 0, -1]
    assert conv.bias.tolist() == [-3, 70000]
    assert (wb.records["input"].e0, wb.records["input"].relu, wb.records["c.act"].e0, wb.records["c.act"].relu) == (7, False, 5, True)
    if version == 3:  # the writer produces exactly these bytes from the same records; the graph runs
        write_weights(tmp_path / "w.bin", [Record("input", OP_QUANT, 8, 7), conv, Record("c.act", OP_QUANT, 8, 5, relu=True)],
                      HAND_META[1])
        assert (tmp_path / "w.bin").read_bytes() == (tmp_path / "hand.bin").read_bytes()
        x = np.array([1, 100], np.int8).reshape(1, 2, 1, 1, 1)
        # channel 0: 5 * 100 - 3 = 497 >> 11 -> 0; channel 1: -100 + 70000 = 69900, shift 7 + e_w - 5:
        # 69900 / 2^11 = 34.13 -> 34 (e_w 9), 69900 / 2^13 = 8.53 -> 9 (e_w 11)
        y = Reference(wb).run(QTensor(x, 7))
        assert y.e == 5 and y.q.ravel().tolist() == [0, 9 if per_channel else 34]
    else:  # no graph (format 1 and 2 are LocalNet's by definition): this network is not one
        with pytest.raises(WeightsError, match="needs a valid 'model' table"):
            wb.graph


def test_readmemh_and_c_header_by_hand(tmp_path):
    from export.hexfile import from_readmemh, to_readmemh, write_hex_and_header

    assert to_readmemh(np.array([-1, 5, -128, 127], np.int8), 2) == "ff\n05\n80\n7f\n"
    assert to_readmemh(np.array([-2, 300], np.int32), 8) == "fffffffe\n0000012c\n"
    assert from_readmemh("ff\n05\n80\n7f\n", (2, 2)).tolist() == [[-1, 5], [-128, 127]]
    assert from_readmemh("fffffffe\n0000012c\n", (2,), 8).tolist() == [-2, 300]
    recs = [Record("l.conv", OP_CONV3D, 8, 9, 7, weight=np.array([-1, 5], np.int8).reshape(2, 1, 1, 1, 1),
                   bias=np.array([-2, 300], np.int32)),
            Record("l.act", OP_QUANT, 8, 4, relu=True),
            Record("m", OP_CONV3D, 8, 0, 4, weight=np.array([3, -3], np.int8).reshape(2, 1, 1, 1, 1),
                   bias=np.array([0, 1], np.int32), e_ch=np.array([10, 12]))]
    write_hex_and_header(recs, tmp_path)
    assert (tmp_path / "hex" / "l.conv.weight.hex").read_text() == "ff\n05\n"
    assert (tmp_path / "hex" / "l.conv.bias.hex").read_text() == "fffffffe\n0000012c\n"
    assert (tmp_path / "hex" / "m.e_w.hex").read_text() == "0a\n0c\n" and not (tmp_path / "hex" / "l.conv.e_w.hex").exists()
    assert (tmp_path / "localnet_int8.h").read_text() == (
        "/* LocalNet int8 weights: generated by export/hexfile.py; layout in export/FORMAT.md */\n"
        "#pragma once\n"
        "#include <stdint.h>\n"
        "\n"
        "#define L_CONV_E_W 9\n"
        "#define L_CONV_E_IN 7\n"
        "static const int8_t l_conv_weight[2] = { /* 2x1x1x1x1, C order */\n"
        "  -1, 5};\n"
        "static const int32_t l_conv_bias[2] = {-2, 300};\n"
        "\n"
        "#define L_ACT_E_OUT 4  /* scale 2^-4, ReLU */\n"
        "static const int8_t m_e_w[2] = {10, 12};\n"
        "#define M_E_IN 4\n"
        "static const int8_t m_weight[2] = { /* 2x1x1x1x1, C order */\n"
        "  3, -3};\n"
        "static const int32_t m_bias[2] = {0, 1};\n"
        "\n")


@pytest.fixture(scope="module")
def random_twin_onnx(tmp_path_factory, tiny_toml):
    """An untrained int8 twin with large random weights (a harder test than a trained one), its
    QCDQ ONNX, three inputs and the ddf exponent."""
    import tomllib

    from export.export import ddf_exponent
    from export.onnx import export_int8_onnx
    from model.config import config_from_dict
    from quant.twin import QuantLocalNet, calibrate

    cfg = config_from_dict(tomllib.loads(tiny_toml))
    torch.manual_seed(0)
    twin = QuantLocalNet(cfg.model)
    for m in twin.modules():
        if isinstance(m, torch.nn.Conv3d) and m.weight.shape[0] == 3:
            torch.nn.init.normal_(m.weight, 0.0, 0.1)  # a visible displacement field
    xs = [torch.rand(1, 2, *cfg.data.shape).numpy() for _ in range(3)]
    calibrate(twin, [torch.from_numpy(x) for x in xs])
    path = tmp_path_factory.mktemp("rt") / "q.onnx"
    export_int8_onnx(twin, cfg, path)
    return twin, path, xs, ddf_exponent(twin), cfg


def test_ort_int8_equals_brevitas_on_a_large_weight_model(random_twin_onnx):
    """onnxruntime with and without its graph optimisations, the graph kept s8s8: exact."""
    from export.gate import ort_vs_brevitas_mismatches

    twin, path, xs, e_out, _ = random_twin_onnx
    onnx.checker.check_model(onnx.load(str(path)))
    with torch.no_grad():
        ddf = twin(torch.from_numpy(xs[0])).numpy()
    assert np.count_nonzero(np.round(ddf * 2.0**e_out)) > ddf.size // 4  # not a trivially zero field
    assert ort_vs_brevitas_mismatches(twin, path, xs, e_out) == {"optimized": 0, "unoptimized": 0}


def test_float_kernels_and_qlinear_graph_exact(random_twin_onnx, tmp_path):
    """The two other ways onnxruntime runs the int8 graph give the same integers: QDQ fusion
    off (float kernels on the dequantised integers, exact below 2^24) and the rewritten graph in
    which every convolution is a 2-D QLinearConv on uint8 activations. Counted by hand for L
    levels and D displacement levels: activation quantisers: the input, 4 per down block (3
    convs, the residual add), the bottleneck, 7 per up block (the channel halves, 3 convs, the
    up-sampled, skip and residual adds), D heads and D - 1 field sums: 11L + 2D + 1; ReLUs on
    the integers after 2 convs + 1 residual add per down and per up block, and the bottleneck
    conv: 6L + 1; copies requantised: L max-pools, and per up block 2 channel halves + 2 nearest
    up-samplings: 5L; every convolution folded to 2-D. In onnxruntime's optimised graph no float
    Conv or Relu is left, and the only float Adds are the D - 1 sums of the trilinear-upsampled
    coarse displacement fields. The U8S8 kernels are exact where `u8s8_exact_cpu` says so (this
    machine: AVX-512 VNNI); without VNNI they saturate (the test after next)."""
    from export.gate import ort_vs_brevitas_mismatches
    from export.onnx import optimized_op_counts, u8s8_exact_cpu, write_qlinear

    twin, path, xs, e_out, cfg = random_twin_onnx
    q = tmp_path / "qlinear.onnx"
    levels, d = cfg.model.levels, len(cfg.model.ddf_levels)
    n_conv = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    assert write_qlinear(path, q) == {"u8_activations": 11 * levels + 2 * d + 1, "relu_clip": 6 * levels + 1,
                                      "copy_requant": 5 * levels, "conv_folded": n_conv}
    onnx.checker.check_model(onnx.load(str(q)))
    ops = optimized_op_counts(q)
    assert ops.get("QLinearConv") == n_conv and "Conv" not in ops and "FusedConv" not in ops and "Relu" not in ops
    assert ops.get("Add", 0) == d - 1 and ops.get("QLinearAdd") == 5 * levels
    assert optimized_op_counts(path).get("QLinearConv", 0) < n_conv  # what the rewrite is for
    assert ort_vs_brevitas_mismatches(twin, path, xs, e_out, modes={"float_kernels": {"qdq_fusion": False}}) == \
        {"float_kernels": 0}
    if not u8s8_exact_cpu():
        pytest.skip("onnxruntime's U8S8 kernels saturate on an x86 CPU without VNNI")
    assert ort_vs_brevitas_mismatches(twin, q, xs, e_out) == {"optimized": 0, "unoptimized": 0}


def test_qlinear_graph_refuses_sparse_initializers(random_twin_onnx, tmp_path):
    """The 2-D fold re-lays out each weight, so the rewrite takes the dense file; a sparse one is
    refused, naming the file."""
    from export.onnx import qlinear_graph, sparsify_initializers

    _, path, *_ = random_twin_onnx
    sparse = tmp_path / "sparse.onnx"
    sparsify_initializers(path, sparse, "all")
    with pytest.raises(ValueError, match="sparse.onnx: has sparse initializers"):
        qlinear_graph(onnx.load(str(sparse)), str(sparse))


def _cpu_has_vnni() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "vnni" in flags or "amx" in flags


def test_openvino_graph_int8_and_exact(random_twin_onnx, tmp_path):
    """export.onnx.openvino_graph, counted by hand for L levels and D displacement levels: the
    Clip of every convolution's weight goes; a barrier Max(x, x) goes before each add input that is a
    convolution's requantised output: 2 per down block (its first and third convolutions), 3
    per up block (one convolution in each of its three adds after the channel halves), 1 per
    sum of a coarse displacement field: 5L + D - 1. The ONNX semantics are unchanged
    (onnxruntime on it equals Brevitas); OpenVINO runs every convolution of it on int8 (its
    runtime graph, counted), where the file as Brevitas wrote it runs them in f32, and, on a CPU
    with VNNI (the one measured), gives the Brevitas integers element for element."""
    pytest.importorskip("openvino")
    import openvino as ov

    from export.gate import openvino_vs_brevitas_mismatches, ort_vs_brevitas_mismatches
    from export.onnx import write_openvino

    twin, path, xs, e_out, cfg = random_twin_onnx
    dst = tmp_path / "ov.onnx"
    n_conv = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    levels, d = cfg.model.levels, len(cfg.model.ddf_levels)
    assert write_openvino(path, dst) == {"weight_clip_removed": n_conv, "add_barrier": 5 * levels + d - 1}
    onnx.checker.check_model(onnx.load(str(dst)))
    assert ort_vs_brevitas_mismatches(twin, dst, xs, e_out) == {"optimized": 0, "unoptimized": 0}

    def int8_convs(f):
        core = ov.Core()
        net = core.read_model(str(f))
        net.reshape({0: list(xs[0].shape)})
        rt = core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
        info = [op.get_rt_info() for op in rt.get_ordered_ops()]
        return sum(i["layerType"].astype(str) == "Convolution" and i["runtimePrecision"].astype(str) in ("u8", "i8")
                   for i in info)
    assert int8_convs(dst) == n_conv and int8_convs(path) == 0
    if _cpu_has_vnni():
        assert openvino_vs_brevitas_mismatches(twin, dst, xs, e_out) == 0


def test_openvino_graph_refuses_a_weight_outside_its_clip(random_twin_onnx, tmp_path):
    """A stored weight outside its Clip would make removing the Clip change the network: refused,
    naming the file and the tensor."""
    from onnx import numpy_helper

    from export.onnx import openvino_graph

    _, path, *_ = random_twin_onnx
    model = onnx.load(str(path))
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    lo = next(t for t in model.graph.initializer if t.name == clip.input[1])
    lo.CopyFrom(numpy_helper.from_array(np.array(0, dtype=numpy_helper.to_array(lo).dtype), lo.name))
    with pytest.raises(ValueError, match=rf"some.onnx: weight {clip.input[0]} has values in \[-"):
        openvino_graph(model, "some.onnx")


def test_ort_x86_uint8_rewrite_departs_without_vnni(random_twin_onnx):
    """onnxruntime's x86 default rewrites int8 activations to uint8 for its U8S8 kernels; without
    VNNI those saturate int16 pair sums (2 x 255 x 127 > 32767): this large-weight network then
    differs by 1 LSB in a few ddf elements. Hence export/onnx.py keeps the graph s8s8."""
    from export.gate import ort_vs_brevitas_mismatches
    from export.onnx import u8s8_exact_cpu

    if u8s8_exact_cpu():
        pytest.skip("the u8s8 saturation needs an x86 CPU without VNNI")
    twin, path, xs, e_out, _ = random_twin_onnx
    res = ort_vs_brevitas_mismatches(twin, path, xs, e_out, keep_s8=False)
    assert res["unoptimized"] == 0 and res["optimized"] > 0


def test_sparse_initializers_chosen_by_size(tmp_path):
    """Two int8 weights of 96 elements by hand: 6 non-zeros cost 6 x 9 = 54 bytes sparse (values
    int8 + int64 indices) against 96 dense, so sparse; 48 non-zeros cost 432, so dense. Both
    read back equal, and onnxruntime runs the rewritten graph to the same output."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from export.onnx import sparsify_initializers

    rng = np.random.default_rng(0)
    w = {}
    for name, nnz in (("few", 6), ("many", 48)):
        a = np.zeros(96, np.int8)
        a[rng.choice(96, nnz, replace=False)] = rng.integers(1, 100, nnz)
        w[name] = a.reshape(2, 3, 2, 2, 4)
    nodes, init = [], []
    for name, a in w.items():
        init.append(numpy_helper.from_array(a, name))
        nodes.append(helper.make_node("Cast", [name], [name + "_f"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Add", ["few_f", "many_f"], ["y"]))
    g = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 2, 2, 4])],
                          initializer=init)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dense.onnx"))
    chosen = sparsify_initializers(tmp_path / "dense.onnx", tmp_path / "auto.onnx", "auto")
    assert [(c["name"], c["stored"], c["sparse_bytes"], c["dense_bytes"]) for c in chosen] == [
        ("few", "sparse", 54, 96), ("many", "dense", 432, 96)]
    m = onnx.load(str(tmp_path / "auto.onnx"))
    assert [t.name for t in m.graph.initializer] == ["many"]
    assert [t.values.name for t in m.graph.sparse_initializer] == ["few"]
    got = ort.InferenceSession(str(tmp_path / "auto.onnx"), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert np.array_equal(got, w["few"].astype(np.float32) + w["many"].astype(np.float32))
    assert {p.key: p.value for p in m.metadata_props} == {"sparse_initializers": "few"}
    # nothing worth storing sparse: the file is not one byte larger than the dense one
    m.graph.ClearField("sparse_initializer")
    m.graph.initializer.extend([numpy_helper.from_array(w["many"], "few")])
    m.ClearField("metadata_props")
    onnx.save(m, str(tmp_path / "dense2.onnx"))
    assert all(c["stored"] == "dense" for c in sparsify_initializers(tmp_path / "dense2.onnx", tmp_path / "auto2.onnx"))
    assert (tmp_path / "auto2.onnx").stat().st_size <= (tmp_path / "dense2.onnx").stat().st_size


def test_export_files_manifest_and_consumers(tiny_export):
    import onnxruntime as ort

    from export.onnx import ort_session

    cfg_path, out, m = tiny_export
    cfg = load_config(cfg_path)
    ex = out / "export"
    for name in ("localnet_fp32.onnx", "localnet_int8.onnx", "localnet_int8_qlinear.onnx", "localnet_qonnx.onnx",
                 "register_int8.onnx",
                 "weights.bin", "weights_int4.bin", "localnet_int8.h", "manifest.json"):
        assert (ex / name).stat().st_size > 0, name
    saved = json.loads((ex / "manifest.json").read_text())
    on_disk = sorted(str(p.relative_to(ex)) for p in ex.rglob("*")
                     if p.is_file() and p.name not in ("manifest.json", "registration.json"))  # written after it
    assert sorted(saved["files"]) == on_disk
    for rel, f in saved["files"].items():  # hashed independently of the export's helper
        assert hashlib.sha256((ex / rel).read_bytes()).hexdigest() == f["sha256"]
        assert (ex / rel).stat().st_size == f["bytes"]
    from export.onnx import u8s8_exact_cpu
    # the all-QLinearConv file's U8S8 kernels: exact only where u8s8_exact_cpu (x86 without VNNI
    # saturates pairs of products in int16); unoptimised, the same file runs exact everywhere
    for mode in ("optimized", "unoptimized", "float_kernels", "qlinear_unoptimized",
                 *(["qlinear_optimized"] if u8s8_exact_cpu() else [])):
        assert saved["ort_vs_brevitas_mismatches"][mode] == 0, mode

    # consumers: qonnx, the reader, onnxruntime
    from qonnx.core.modelwrapper import ModelWrapper

    ModelWrapper(str(ex / "localnet_qonnx.onnx"))
    wb = read_weights(ex / "weights.bin")
    assert wb.meta["model"]["levels"] == cfg.model.levels
    convs = [r for r in wb.records.values() if r.op == OP_CONV3D]
    assert len(convs) == 16 and [lay["name"] for lay in saved["layers"] if lay["op"] == "conv3d"] == [r.name for r in convs]
    # the tiny config quantises per output channel: format 2 records with one exponent per channel
    assert cfg.qat.weight_scale == "channel" and all(r.e_ch is not None and r.e0 == 0 for r in convs)
    # (3 training steps leave every channel near its initial bound, so their exponents may all agree
    # here; the large random networks of tests/test_hw.py and tests/test_rtl.py have differing ones)
    assert all(lay["e_w"] == wb.records[lay["name"]].e_w.tolist() for lay in saved["layers"] if lay["op"] == "conv3d")

    # every ONNX variant of the int8 network gives the same ddf, element for element
    rng = np.random.default_rng(0)
    x = rng.random((1, 2, *cfg.data.shape), dtype=np.float32)
    ddfs = {f: ort_session(ex / f).run(None, {"moving_fixed": x})[0]
            for f in ("localnet_int8_dense.onnx", "localnet_int8.onnx", "localnet_int8_sparse.onnx")}
    sparse_model = onnx.load(str(ex / "localnet_int8_sparse.onnx"))
    assert len(sparse_model.graph.sparse_initializer) == len(convs)  # really sparse: every conv weight
    assert np.count_nonzero(ddfs["localnet_int8_dense.onnx"]) > 0
    for f, d in ddfs.items():
        assert np.array_equal(d, ddfs["localnet_int8_dense.onnx"]), f

    # the register model end to end: its ddf is the int8 model's, its warp is model.warp's
    # with the session options that keep it s8s8 (export.onnx.ORT_INT8_CONFIG): onnxruntime's x86
    # default turns it into U8S8 kernels, not exact on a CPU without VNNI (it differed here)
    sess = ort_session(ex / "register_int8.onnx")
    mov, fix = x[:, :1], x[:, 1:]
    ddf, warped = sess.run(None, {"moving": mov, "fixed": fix})
    assert np.array_equal(ddf, ddfs["localnet_int8.onnx"])
    np.testing.assert_allclose(warped, _warp_ref(mov, ddf), atol=1e-5, rtol=0)  # tolerance: see test_warp_nodes


def test_register_model_with_the_global_stage(tiny_export, tmp_path):
    """With model.prealign = "moments" the register model takes the host's affine [M | t] and
    applies the composed field: its ddf is (M x + t - x) + M local_ddf (float32 in the graph
    against float64 here: 1e-4 voxel), its warp is model.warp's of that ddf, and local_ddf is a
    field of the network (non-zero, on its output grid 2^-e)."""
    import dataclasses

    import onnxruntime as ort

    from export.onnx import ort_session
    from export.register_onnx import export_register
    from model.prealign import compose, moments_affine

    cfg_path, out, m = tiny_export
    cfg = load_config(cfg_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prealign="moments"))
    path = export_register(out / "export" / "localnet_int8.onnx", cfg, tmp_path / "register_prealign.onnx")
    sess = ort_session(path)   # s8s8: exact on every CPU
    assert [i.name for i in sess.get_inputs()] == ["moving", "fixed", "affine"]
    rng = np.random.default_rng(0)
    mov, fix = (rng.random((1, 1, *cfg.data.shape), dtype=np.float32) for _ in range(2))
    M, t = moments_affine(mov[0, 0], fix[0, 0])
    affine = np.concatenate([M, t[:, None]], 1).astype(np.float32)
    ddf, warped, local = sess.run(None, {"moving": mov, "fixed": fix, "affine": affine})
    e = m["ddf_exponent"]
    q = local * 2.0**e
    assert np.count_nonzero(q) > 0 and np.array_equal(q, np.round(q))
    want = compose(affine[:, :3].astype(np.float64), affine[:, 3].astype(np.float64), local[0])
    assert np.abs(ddf[0] - want).max() < 1e-4  # float32 MatMul and sums in the graph
    np.testing.assert_allclose(warped, _warp_ref(mov, ddf), atol=1e-5, rtol=0)  # tolerance: see test_warp_nodes


def _warp_ref(mov, ddf):
    from model.warp import warp

    return warp(torch.from_numpy(mov), torch.from_numpy(ddf)).numpy()


def test_warp_nodes_match_model_warp():
    """The GridSample subgraph against model.warp on a field of several voxels, past the borders.
    Both are float trilinear with the same weights, computed in another order: 1e-5 absolute on
    [0, 1] intensities allows a few float32 ulps of the grid normalisation round trip."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from export.register_onnx import REGISTER_OPSET, warp_nodes
    shape = [12, 10, 8]
    nodes, init = warp_nodes(shape, "moving", "ddf", "warped")
    vol = [1, 1, *shape]
    g = helper.make_graph(nodes, "warp", [helper.make_tensor_value_info("moving", TensorProto.FLOAT, vol),
                                          helper.make_tensor_value_info("ddf", TensorProto.FLOAT, [1, 3, *shape])],
                          [helper.make_tensor_value_info("warped", TensorProto.FLOAT, vol)], initializer=init)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", REGISTER_OPSET)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    mov = rng.random((1, 1, *shape), dtype=np.float32)
    ddf = rng.normal(0, 3.0, (1, 3, *shape)).astype(np.float32)
    out = sess.run(None, {"moving": mov, "ddf": ddf})[0]
    np.testing.assert_allclose(out, _warp_ref(mov, ddf), atol=1e-5, rtol=0)
    shift = np.zeros_like(ddf)
    shift[:, 0] = 1.0  # a whole-voxel shift: the next voxel, the border row repeated; GridSample's
    out = sess.run(None, {"moving": mov, "ddf": shift})[0]  # normalised grid costs an ulp or two
    np.testing.assert_allclose(out[:, :, :-1], mov[:, :, 1:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[:, :, -1], mov[:, :, -1], atol=1e-5, rtol=0)


def test_acc_bound_by_hand_and_refused_at_2p24():
    from export.export import check_acc_bounds
    from export.weights import acc_bound

    w = np.zeros((2, 3, 1, 1, 1), np.int8)
    w[0, :, 0, 0, 0] = [127, -127, 5]  # sum |w| = 259
    w[1, 0, 0, 0, 0] = 1
    r = Record("c", OP_CONV3D, 8, 7, 7, weight=w, bias=np.array([-1000, 7], np.int32))
    assert acc_bound(r) == 259 * 128 + 1000
    assert check_acc_bounds([r]) == {"c": 259 * 128 + 1000}
    big = np.full((1, 1033, 1, 1, 1), 127, np.int8)  # 1033 x 127 x 128 = 16,792,448 >= 2^24
    rb = Record("big", OP_CONV3D, 8, 7, 7, weight=big, bias=np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="big.*2\\^24|2\\^24.*big"):
        check_acc_bounds([r, rb])
    rb.weight = big[:, :1032]  # 1032 x 127 x 128 = 16,776,192, just below 2^24 = 16,777,216
    assert 1032 * 127 * 128 < 2**24 and check_acc_bounds([rb])


def test_export_refuses_another_config(tiny_data, tiny_run, tmp_path):
    from export.export import export

    cfg_path, out = tiny_run
    cfg = load_config(cfg_path)
    cfg.qat.steps += 1
    with pytest.raises(ConfigError, match="qat.steps"):
        export(cfg, out, tiny_data, progress=False)


def test_record_conv3d_takes_the_exponent_per_channel(tmp_path):
    """A conv3d record is made from one weight exponent per output channel: stored per channel,
    or as the shared e0 when the scale is per tensor (unequal exponents refused)."""
    w, b = np.ones((3, 2, 1, 1, 1), np.int8), np.zeros(3, np.int32)
    shared = Record.conv3d("c", 8, np.array([5, 5, 5]), 7, w, b, per_channel=False)
    own = Record.conv3d("d", 8, np.array([5, 6, 4]), 7, w, b, per_channel=True)
    assert (shared.e0, shared.per_channel, own.e0, own.per_channel) == (5, False, 0, True)
    write_weights(tmp_path / "w.bin", [shared, own], {"format": "test"})
    got = read_weights(tmp_path / "w.bin").records
    assert got["c"].e_w.tolist() == [5, 5, 5] and got["d"].e_w.tolist() == [5, 6, 4]
    assert not got["c"].per_channel and got["d"].per_channel
    with pytest.raises(WeightsError, match="different exponents"):
        Record.conv3d("e", 8, np.array([5, 6, 5]), 7, w, b, per_channel=False)
    with pytest.raises(WeightsError, match="output channels"):
        Record.conv3d("f", 8, np.array([5, 5]), 7, w, b, per_channel=True)


def _run_unoptimized(model, xs) -> list[np.ndarray]:
    """The graph run as written (onnxruntime, no graph optimisation, so no fusion)."""
    from export.onnx import INPUT, ort_session

    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        onnx.save(model, str(path))
        sess = ort_session(path, optimize=False, threads=1)
        return [sess.run(None, {INPUT: x})[0] for x in xs]


def _uses(model, name: str) -> list:
    return [n for n in model.graph.node if name in n.input]


def _qlinear_after(model, name: str) -> bool:
    """What each qlinear pass leaves true of the graph."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = model.graph.node
    if name == "u8_activations":
        return all(inits[n.input[2]].dtype == np.uint8 for n in nodes
                   if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    if name == "relu_clip":
        return not any(n.op_type == "Relu" for n in nodes)
    if name == "copy_requant":
        return all(all(c.op_type == "QuantizeLinear" for c in _uses(model, n.output[0])) for n in nodes
                   if n.op_type in ("MaxPool", "Slice") or n.op_type == "Resize"
                   and any(a.name == "mode" and a.s == b"nearest" for a in n.attribute))
    producer = {o: n for n in nodes for o in n.output}

    def weight(x: str) -> np.ndarray:  # the initializer behind DQ (and Clip)
        while x not in inits:
            x = producer[x].input[0]
        return inits[x]
    return all(weight(n.input[1]).ndim == 4 for n in nodes if n.op_type == "Conv")  # conv_folded: every weight 2-D


@pytest.mark.parametrize("name", ["u8_activations", "relu_clip", "copy_requant", "conv_folded"])
def test_each_qlinear_pass_keeps_the_graph_output(random_twin_onnx, name):
    """Each rewrite pass of qlinear_graph on its own, after the passes before it: the graph's
    output is the same array before and after it, element for element (float32 sums of
    integer products below 2^24 are exact in any order: the 2-D fold regroups them), what the
    pass is for was not yet true before it and is after, and it counts what it rewrote."""
    from export.onnx import QLINEAR_PASSES

    _, path, xs, _, _ = random_twin_onnx
    model = onnx.load(str(path))
    for before, rewrite in QLINEAR_PASSES.items():
        if before == name:
            break
        rewrite(model, str(path))
    out_before = _run_unoptimized(model, xs)
    assert not _qlinear_after(model, name)
    assert QLINEAR_PASSES[name](model, str(path)) > 0
    onnx.checker.check_model(model)
    assert _qlinear_after(model, name)
    for a, b in zip(out_before, _run_unoptimized(model, xs)):
        assert np.array_equal(a, b)


def test_each_openvino_pass_keeps_the_graph_output(random_twin_onnx):
    """The two passes of openvino_graph one at a time: the same output array after each, no
    Clip left on an initializer after the first, every convolution's re-quantised output
    reaching an Add through a Max(x, x) after the second."""
    from onnx import numpy_helper

    from export.onnx import barriers_before_adds, drop_weight_clips

    _, path, xs, _, _ = random_twin_onnx
    model = onnx.load(str(path))
    ref = _run_unoptimized(model, xs)
    inits = {t.name for t in model.graph.initializer}
    clips = sum(n.op_type == "Clip" and n.input[0] in inits for n in model.graph.node)
    assert clips > 0 and drop_weight_clips(model, str(path)) == clips
    assert not any(n.op_type == "Clip" and n.input[0] in inits for n in model.graph.node)
    assert all(np.array_equal(a, b) for a, b in zip(ref, _run_unoptimized(model, xs)))
    n_max = barriers_before_adds(model, str(path))
    maxes = [n for n in model.graph.node if n.op_type == "Max"]
    assert n_max == len(maxes) > 0 and all(n.input[0] == n.input[1] for n in maxes)
    assert all(any(a.op_type == "Add" for a in _uses(model, m.output[0])) for m in maxes)
    onnx.checker.check_model(model)
    assert all(np.array_equal(a, b) for a, b in zip(ref, _run_unoptimized(model, xs)))
