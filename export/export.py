"""`make export`: the deployable files of the pruned, quantised LocalNet.

    python -m export.export --config configs/demo.toml --run runs/demo --data data/synthetic

Reads RUN/train/model.pt and RUN/qat/{int8,int4}/model.pt, writes RUN/export/:

    localnet_fp32.onnx     the trained fp32 network, BatchNorm folded (opset 17)
    localnet_int8.onnx     Brevitas QCDQ export of the int8 QAT model (TorchScript exporter,
                           dynamo=False); int8 weights as sparse_initializers where that is
                           smaller (per tensor; metadata `sparse_initializers`)
    localnet_int8_dense.onnx / localnet_int8_sparse.onnx   the same with every weight dense /
                           every weight sparse, so both sizes can be compared
    localnet_qonnx.onnx    QONNX export of the int8 model, for FINN-style flows
    register_int8.onnx     inputs moving, fixed (1, 1, X, Y, Z); outputs ddf (voxels) and the
                           moving image warped by GridSample (opset 20, trilinear, border)
    weights.bin            int8 weights + int32 biases + exponents (export/FORMAT.md)
    weights_int4.bin       the int4-weight QAT model in the same format
    hex/                   per-layer $readmemh files of the int8 model; localnet_int8.h (C)
    manifest.json          config, layers (shapes, exponents, bits, sparsity, accumulator
                           bounds), sha256 of every file, tool versions, git commit

Before writing the manifest it checks that onnxruntime's int8 output equals the Brevitas
model's integers on the test pairs, graph optimisations on and off; a mismatch is an error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from model.artifacts import atomic_path, atomic_write_json, atomic_write_text, git_commit, tool_versions
from model.config import Config, ConfigError, config_to_dict, load_config
from model.data import DataError, load_dataset, test_pairs
from model.localnet import fold_batchnorm
from model.train import load_checkpoint, model_from_checkpoint
from export.onnx import DYNAMIC_AXES, INPUT, OUTPUT, export_fp32, ort_session
from export.weights import OP_CONV3D, OP_QUANT, Record, write_weights

INT8_OPSET = 17
REGISTER_OPSET = 20  # GridSample on 5-D inputs


def weight_records(twin, example: torch.Tensor) -> list[Record]:
    """The twin's integer parameters as weights.bin records, in module order."""
    import brevitas.nn as qnn
    from quant.qat import integer_params, pot_exponent

    params = integer_params(twin, example)
    recs = []
    for name, m in twin.named_modules():
        if isinstance(m, qnn.QuantConv3d):
            p = params[name]
            recs.append(Record(name, OP_CONV3D, p["bits"], p["e_w"], p["e_in"], weight=p["weight"], bias=p["bias"]))
        elif isinstance(m, (qnn.QuantIdentity, qnn.QuantReLU)):
            e = pot_exponent(m.act_quant.scale().detach())
            recs.append(Record(name, OP_QUANT, 8, e, relu=isinstance(m, qnn.QuantReLU)))
    return recs


def acc_bound(r: Record, act_bits: int = 8) -> int:
    """Worst |accumulator| of a conv3d record: max over output channels of
    sum |w| * max|x| + |bias|, with max|x| = 2^(act_bits-1) (int8: 128)."""
    xmax = 2 ** (act_bits - 1)
    per_out = np.abs(r.weight.astype(np.int64)).reshape(r.weight.shape[0], -1).sum(1) * xmax
    return int((per_out + np.abs(r.bias.astype(np.int64))).max())


def export_int8_onnx(twin, cfg: Config, path: Path) -> Path:
    from brevitas.export import export_onnx_qcdq

    x = torch.zeros(1, 2, *cfg.data.shape)
    with atomic_path(path) as tmp:
        export_onnx_qcdq(twin.eval(), args=x, export_path=str(tmp), dynamo=False, opset_version=INT8_OPSET,
                         input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=DYNAMIC_AXES)
    return path


def sparsify_initializers(src: Path, dst: Path, mode: str = "auto") -> list[dict]:
    """Rewrite the int8 convolution weights of `src` as sparse_initializers: `auto` where that is
    smaller (nnz * (1 + 8) < numel: values int8 plus int64 indices), `all`, or `none`.
    Records the choice and sparsity per tensor in the model metadata; returns that list."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    keep, chosen = [], []
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype != np.int8 or a.ndim != 5:
            keep.append(t)
            continue
        nz = np.flatnonzero(a.ravel())
        dense, sparse = a.size, len(nz) * 9
        use = mode == "all" or (mode == "auto" and sparse < dense)
        chosen.append({"name": t.name, "sparsity": round(1 - len(nz) / a.size, 4), "dense_bytes": dense,
                       "sparse_bytes": sparse, "stored": "sparse" if use else "dense"})
        if not use:
            keep.append(t)
            continue
        values = numpy_helper.from_array(a.ravel()[nz], t.name)
        indices = numpy_helper.from_array(nz.astype(np.int64), t.name + "_indices")
        g.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(a.shape)))
    del g.initializer[:]
    g.initializer.extend(keep)
    p = model.metadata_props.add()
    p.key, p.value = "sparse_initializers", json.dumps(chosen)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return chosen


def warp_nodes(shape: list[int], moving: str, ddf: str, warped: str) -> tuple[list, list]:
    """ONNX nodes + initializers warping `moving` (1, 1, X, Y, Z) by `ddf` (1, 3, X, Y, Z) voxels.

    grid = (identity + ddf) * 2 / (n - 1) - 1 per axis (align_corners=1), components reversed
    to GridSample's (W, H, D) order; trilinear ('linear'), padding 'border': model.warp's
    clamp-to-border behaviour.
    """
    from onnx import helper, numpy_helper

    X, Y, Z = shape
    ident = np.stack(np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij"), -1)[None]
    consts = {"grid_ident": ident.astype(np.float32),  # (1, X, Y, Z, 3)
              "grid_scale": np.array([2.0 / max(n - 1, 1) for n in shape], np.float32),
              "grid_one": np.array(1.0, np.float32), "grid_rev": np.array([2, 1, 0], np.int64)}
    nodes = [
        helper.make_node("Transpose", [ddf], ["ddf_last"], perm=[0, 2, 3, 4, 1]),  # (1, X, Y, Z, 3)
        helper.make_node("Add", ["ddf_last", "grid_ident"], ["grid_pos"]),
        helper.make_node("Mul", ["grid_pos", "grid_scale"], ["grid_scaled"]),
        helper.make_node("Sub", ["grid_scaled", "grid_one"], ["grid_xyz"]),
        helper.make_node("Gather", ["grid_xyz", "grid_rev"], ["grid"], axis=4),
        helper.make_node("GridSample", [moving, "grid"], [warped], mode="linear", padding_mode="border",
                         align_corners=1),
    ]
    return nodes, [numpy_helper.from_array(v, k) for k, v in consts.items()]


def export_register(int8_path: Path, cfg: Config, path: Path) -> Path:
    """Wrap the int8 network with the warp: moving, fixed -> ddf, warped (GridSample, opset 20)."""
    import onnx
    from onnx import TensorProto, helper

    net = onnx.load(str(int8_path))
    g = net.graph
    for n in g.node:  # the network reads the concatenated pair and writes net_ddf
        n.input[:] = ["net_in" if i == INPUT else i for i in n.input]
        n.output[:] = ["net_ddf" if o == OUTPUT else o for o in n.output]
    wnodes, winit = warp_nodes(cfg.data.shape, "moving", "net_ddf", "warped")
    nodes = [helper.make_node("Concat", ["moving", "fixed"], ["net_in"], axis=1), *g.node,
             helper.make_node("Identity", ["net_ddf"], [OUTPUT]), *wnodes]
    vol = [1, 1, *cfg.data.shape]
    graph = helper.make_graph(
        nodes, "register_int8",
        [helper.make_tensor_value_info("moving", TensorProto.FLOAT, vol),
         helper.make_tensor_value_info("fixed", TensorProto.FLOAT, vol)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 3, *cfg.data.shape]),
         helper.make_tensor_value_info("warped", TensorProto.FLOAT, vol)],
        initializer=[*g.initializer, *winit], sparse_initializer=list(g.sparse_initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", REGISTER_OPSET)],
                              producer_name="localnet-toolchain")
    model.ir_version = net.ir_version
    model.metadata_props.extend(net.metadata_props)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def write_hex_and_header(records: list[Record], out: Path) -> list[Path]:
    """$readmemh files (one value per line, two's complement: int8 as 2 hex digits, int32 bias
    as 8, C order) and a C header with the arrays and exponents."""
    hexdir = out / "hex"
    hexdir.mkdir(parents=True, exist_ok=True)
    files = []
    h = ["/* LocalNet int8 weights: generated by export/export.py; layout in export/FORMAT.md */",
         "#pragma once", "#include <stdint.h>", ""]
    for r in records:
        c = r.name.replace(".", "_").upper()
        if r.op == OP_QUANT:
            h.append(f"#define {c}_E_OUT {r.e0}  /* scale 2^-{r.e0}{', ReLU' if r.relu else ''} */")
            continue
        w = r.weight.ravel().astype(np.int64) & 0xFF
        b = r.bias.astype(np.int64) & 0xFFFFFFFF
        for suffix, vals, digits in (("weight", w, 2), ("bias", b, 8)):
            f = hexdir / f"{r.name}.{suffix}.hex"
            atomic_write_text(f, "".join(f"{v:0{digits}x}\n" for v in vals))
            files.append(f)
        shape = "x".join(map(str, r.weight.shape))
        h += [f"#define {c}_E_W {r.e0}", f"#define {c}_E_IN {r.e1}",
              f"static const int8_t {c.lower()}_weight[{r.weight.size}] = {{ /* {shape}, C order */",
              "  " + ", ".join(map(str, r.weight.ravel().tolist())) + "};",
              f"static const int32_t {c.lower()}_bias[{r.bias.size}] = {{" + ", ".join(map(str, r.bias.tolist())) + "};",
              ""]
    header = out / "localnet_int8.h"
    atomic_write_text(header, "\n".join(h) + "\n")
    return files + [header]


def check_ort_matches_brevitas(twin, onnx_path: Path, inputs: list[np.ndarray], e_out: int,
                               keep_s8: bool = True, modes: dict[str, tuple[bool, bool]] | None = None) -> dict:
    """Integer ddf of onnxruntime against the Brevitas model: mismatching elements per session
    mode. Both outputs are dequantised q * 2^-e_out, exact in float32. `modes` maps a name to
    (graph optimisations, keep s8s8); the default is optimisations on and off with `keep_s8`
    (False: onnxruntime's x86 default, int8 activations rewritten to uint8)."""
    modes = modes or {"optimized": (True, keep_s8), "unoptimized": (False, keep_s8)}
    result = {}
    with torch.no_grad():  # the Brevitas integers once, for every mode
        ref = [np.round(twin(torch.from_numpy(x)).numpy() * 2.0 ** e_out).astype(np.int64) for x in inputs]
    for name, (opt, s8) in modes.items():
        sess = ort_session(onnx_path, optimize=opt, keep_s8=s8)
        bad = 0
        for x, r in zip(inputs, ref):
            y = sess.run(None, {INPUT: x})[0]
            q = np.round(y * 2.0 ** e_out).astype(np.int64)
            bad += int((q != r).sum())
        result[name] = bad
    return result


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gzip_size(path: Path) -> int:
    """Bytes after gzip -9 (what a compressed transfer or a flash image would hold)."""
    import gzip

    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def export(cfg: Config, run: Path, data_dir: Path, progress: bool = True) -> dict:
    from quant.qat import load_qat

    out = run / "export"
    out.mkdir(parents=True, exist_ok=True)
    trained, _ = model_from_checkpoint(load_checkpoint(run / "train" / "model.pt", cfg))
    twin8, ck8 = load_qat(run / "qat" / "int8" / "model.pt", cfg)
    twin4, ck4 = load_qat(run / "qat" / "int4" / "model.pt", cfg)
    subjects = load_dataset(data_dir, cfg.data, "test", progress=progress)
    inputs = [np.stack([subjects[m].image, subjects[f].image])[None].astype(np.float32)
              for m, f in test_pairs(subjects)]
    example = torch.from_numpy(inputs[0])

    export_fp32(fold_batchnorm(trained), cfg, out / "localnet_fp32.onnx")
    raw = out / "localnet_int8_dense.onnx"
    export_int8_onnx(twin8, cfg, raw)
    sparse_choice = sparsify_initializers(raw, out / "localnet_int8.onnx", "auto")
    sparsify_initializers(raw, out / "localnet_int8_sparse.onnx", "all")
    export_qonnx(twin8, cfg, out / "localnet_qonnx.onnx")
    export_register(out / "localnet_int8.onnx", cfg, out / "register_int8.onnx")

    recs8, recs4 = weight_records(twin8, example), weight_records(twin4, example)
    meta = {"model": {"base_channels": cfg.model.base_channels, "levels": cfg.model.levels,
                      "ddf_levels": sorted(cfg.model.ddf_levels), "in_channels": 2},
            "input_shape": cfg.data.shape, "act_bits": 8, "config": config_to_dict(cfg), "git_commit": git_commit()}
    write_weights(out / "weights.bin", recs8, meta | {"weight_bits": 8})
    write_weights(out / "weights_int4.bin", recs4, meta | {"weight_bits": 4})
    write_hex_and_header(recs8, out)

    e_ddf = next(r.e0 for r in reversed(recs8) if r.op == OP_QUANT)  # the last requantisation is the ddf's
    # s8s8 with and without graph optimisations must be exact; onnxruntime's x86 default
    # (uint8 activations), as a deployment would run it, is recorded
    mism = check_ort_matches_brevitas(twin8, out / "localnet_int8.onnx", inputs, e_ddf, modes={
        "optimized": (True, True), "unoptimized": (False, True), "optimized_x86_default_u8s8": (True, False)})
    if mism["optimized"] or mism["unoptimized"]:
        raise AssertionError(f"onnxruntime int8 (s8s8) differs from Brevitas on {mism} ddf elements")
    bad = [r.name for r in recs8 + recs4 if r.op == OP_CONV3D and acc_bound(r) >= 2**31]
    if bad:
        raise AssertionError(f"accumulator bound exceeds int32 in {bad}")

    layers = []
    for r in recs8:
        if r.op == OP_CONV3D:
            bound = acc_bound(r)
            layers.append({"name": r.name, "op": "conv3d", "shape": list(r.weight.shape), "bits": r.bits,
                           "e_w": r.e0, "e_in": r.e1, "e_acc": r.e0 + r.e1,
                           "sparsity": round(1 - np.count_nonzero(r.weight) / r.weight.size, 4),
                           "acc_bound": bound, "acc_bits": int(bound).bit_length() + 1,
                           "fits_int32": bound < 2**31, "under_2p24": bound < 2**24})
        else:
            layers.append({"name": r.name, "op": "quant", "bits": r.bits, "e_out": r.e0, "relu": r.relu})
    manifest = {"config": config_to_dict(cfg), "git_commit": git_commit(), "versions": tool_versions(),
                "sources": {"train": str(run / "train" / "model.pt"), "int8": str(run / "qat" / "int8" / "model.pt"),
                            "int4": str(run / "qat" / "int4" / "model.pt")},
                "int8_sparsity": ck8["sparsity"], "int4_sparsity": ck4["sparsity"],
                "ort_vs_brevitas_mismatches": mism, "test_pairs_checked": len(inputs),
                "sparse_initializers": sparse_choice, "layers": layers}
    manifest["files"] = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "gzip_bytes": gzip_size(p),
                                                   "sha256": sha256(p)}
                         for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def export_qonnx(twin, cfg: Config, path: Path) -> Path:
    from brevitas.export import export_qonnx as brevitas_qonnx

    x = torch.zeros(1, 2, *cfg.data.shape)
    with atomic_path(path) as tmp:
        brevitas_qonnx(twin.eval(), args=x, export_path=str(tmp), dynamo=False, opset_version=INT8_OPSET,
                       input_names=[INPUT], output_names=[OUTPUT])
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run", required=True, type=Path, help="OUT of make train/prune/qat")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        m = export(load_config(a.config), a.run, a.data, progress=not a.no_progress)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, f in m["files"].items():
        print(f"{f['bytes']:>10}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
