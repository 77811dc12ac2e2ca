"""Export: weight packing round trips, weights.bin integrity checks, ONNX exactness, manifest."""
from __future__ import annotations

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
            Record("c0.act", OP_QUANT, 8, 5, relu=True)]


@pytest.mark.parametrize("bits", [4, 8])
def test_weights_bin_round_trip(tmp_path, bits):
    recs = _records(bits=bits)
    n = write_weights(tmp_path / "w.bin", recs, {"model": {"levels": 1}})
    assert n == (tmp_path / "w.bin").stat().st_size and n % 16 == 0
    wb = read_weights(tmp_path / "w.bin")
    assert wb.meta == {"model": {"levels": 1}} and list(wb.records) == ["in", "c0.conv", "c0.act"]
    for r in recs:
        got = wb.records[r.name]
        assert (got.op, got.bits, got.e0, got.e1, got.relu) == (r.op, r.bits, r.e0, r.e1, r.relu)
        if r.op == OP_CONV3D:
            assert np.array_equal(got.weight, r.weight) and np.array_equal(got.bias, r.bias)
            assert got.weight.dtype == np.int8 and got.bias.dtype == np.int32


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
    # version 2 with a valid header CRC: refused for its version, not its CRC
    head = bytearray(data[:HEADER.size])
    struct.pack_into("<H", head, 4, 2)
    struct.pack_into("<I", head, 28, zlib.crc32(bytes(head[:28])))
    bad.write_bytes(bytes(head) + data[HEADER.size:])
    with pytest.raises(WeightsError, match="format version 2"):
        read_weights(bad)
    # a corrupted record is named
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    bad.write_bytes(bytes(flipped))
    with pytest.raises(WeightsError, match=r"record 2 at byte \d+: CRC mismatch"):
        read_weights(bad)


@pytest.fixture(scope="module")
def random_twin_onnx(tmp_path_factory):
    """An untrained int8 twin with large random weights (a harder test than a trained one), its
    QCDQ ONNX, three inputs and the ddf exponent."""
    from export.export import export_int8_onnx
    from model.config import config_from_dict
    from quant.qat import QuantLocalNet, calibrate
    from tests.conftest import TINY_TOML
    import tomllib

    cfg = config_from_dict(tomllib.loads(TINY_TOML))
    torch.manual_seed(0)
    twin = QuantLocalNet(cfg.model)
    for m in twin.modules():
        if isinstance(m, torch.nn.Conv3d) and m.weight.shape[0] == 3:
            torch.nn.init.normal_(m.weight, 0.0, 0.1)  # a visible displacement field
    xs = [torch.rand(1, 2, *cfg.data.shape).numpy() for _ in range(3)]
    calibrate(twin, [torch.from_numpy(x) for x in xs])
    path = tmp_path_factory.mktemp("rt") / "q.onnx"
    export_int8_onnx(twin, cfg, path)
    e_out = int(round(-np.log2(float(twin.ddf_add["0"].act_quant.scale()))))  # the last requantisation
    return twin, path, xs, e_out


def test_ort_int8_equals_brevitas_on_a_small_model(random_twin_onnx):
    from export.export import check_ort_matches_brevitas

    twin, path, xs, e_out = random_twin_onnx
    onnx.checker.check_model(onnx.load(str(path)))
    with torch.no_grad():
        ddf = twin(torch.from_numpy(xs[0])).numpy()
    assert np.count_nonzero(np.round(ddf * 2.0**e_out)) > ddf.size // 4  # not a trivially zero field
    assert check_ort_matches_brevitas(twin, path, xs, e_out)["unoptimized"] == 0


def test_ort_int8_optimized_equals_brevitas_on_a_small_model(random_twin_onnx):
    """With its graph optimisations and the graph kept s8s8, onnxruntime is exact too."""
    from export.export import check_ort_matches_brevitas

    twin, path, xs, e_out = random_twin_onnx
    assert check_ort_matches_brevitas(twin, path, xs, e_out)["optimized"] == 0


def test_ort_x86_uint8_rewrite_departs_without_vnni(random_twin_onnx):
    """onnxruntime's x86 default rewrites int8 activations to uint8 for its U8S8 kernels; without
    VNNI those saturate int16 pair sums (2 x 255 x 127 > 32767): this large-weight network then
    differs by 1 LSB in a few ddf elements. Hence export/onnx.py keeps the graph s8s8."""
    import platform

    from export.export import check_ort_matches_brevitas

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if platform.machine() not in ("x86_64", "AMD64") or "vnni" in flags or "amx" in flags:
        pytest.skip("the u8s8 saturation needs an x86 CPU without VNNI")
    twin, path, xs, e_out = random_twin_onnx
    res = check_ort_matches_brevitas(twin, path, xs, e_out, keep_s8=False)
    assert res["unoptimized"] == 0 and res["optimized"] > 0


def test_export_files_manifest_and_consumers(tiny_data, tiny_run):
    import onnxruntime as ort

    from export.export import export, sha256
    from export.onnx import ort_session

    cfg_path, out = tiny_run
    cfg = load_config(cfg_path)
    m = export(cfg, out, tiny_data, progress=False)
    ex = out / "export"
    for name in ("localnet_fp32.onnx", "localnet_int8.onnx", "localnet_qonnx.onnx", "register_int8.onnx",
                 "weights.bin", "weights_int4.bin", "localnet_int8.h", "manifest.json"):
        assert (ex / name).stat().st_size > 0, name
    saved = json.loads((ex / "manifest.json").read_text())
    assert saved["files"] == m["files"] and len(saved["files"]) > 8
    for rel, f in saved["files"].items():
        assert sha256(ex / rel) == f["sha256"] and (ex / rel).stat().st_size == f["bytes"]
    mm = m["ort_vs_brevitas_mismatches"]
    assert mm["optimized"] == 0 and mm["unoptimized"] == 0 and mm["optimized_x86_default_u8s8"] >= 0
    convs = [lay for lay in m["layers"] if lay["op"] == "conv3d"]
    assert convs and all(lay["fits_int32"] for lay in convs)

    # consumers: onnxruntime, qonnx, the reader
    from qonnx.core.modelwrapper import ModelWrapper

    ModelWrapper(str(ex / "localnet_qonnx.onnx"))
    wb = read_weights(ex / "weights.bin")
    assert wb.meta["model"]["levels"] == cfg.model.levels
    assert sum(r.op == OP_CONV3D for r in wb.records.values()) == len(convs)
    for f in ("localnet_fp32.onnx", "localnet_int8.onnx", "localnet_int8_sparse.onnx"):
        ort_session(ex / f)
    meta = {p.key: p.value for p in onnx.load(str(ex / "localnet_int8.onnx")).metadata_props}
    assert all(c["stored"] in ("dense", "sparse") for c in json.loads(meta["sparse_initializers"]))

    # the register model end to end: its ddf is the int8 model's, its warp is model.warp's
    sess = ort.InferenceSession(str(ex / "register_int8.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    mov = rng.random((1, 1, *cfg.data.shape), dtype=np.float32)
    fix = rng.random((1, 1, *cfg.data.shape), dtype=np.float32)
    ddf, warped = sess.run(None, {"moving": mov, "fixed": fix})
    net_ddf = ort_session(ex / "localnet_int8.onnx").run(None, {"moving_fixed": np.concatenate([mov, fix], 1)})[0]
    assert np.array_equal(ddf, net_ddf)
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

    from export.export import REGISTER_OPSET, warp_nodes

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


def test_export_refuses_another_config(tiny_data, tiny_run, tmp_path):
    from export.export import export

    cfg_path, out = tiny_run
    cfg = load_config(cfg_path)
    cfg.qat.steps += 1
    with pytest.raises(ConfigError, match="qat.steps"):
        export(cfg, out, tiny_data, progress=False)
