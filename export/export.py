"""`make export`: the deployable files of the pruned, quantised LocalNet.

    python -m export.export --config configs/demo.toml --run runs/demo --data data/synthetic

Reads RUN/train/model.pt and RUN/qat/{int8,int4}/model.pt, writes RUN/export/:

    localnet_fp32.onnx     the trained fp32 network, BatchNorm folded (opset 17)
    localnet_int8.onnx     Brevitas QCDQ export of the int8 QAT model (TorchScript exporter,
                           dynamo=False); int8 weights as sparse_initializers where that is
                           smaller (per tensor; metadata `sparse_initializers`)
    localnet_int8_dense.onnx / localnet_int8_sparse.onnx   the same with every weight dense /
                           every weight sparse, so both sizes can be compared
    localnet_int8_qlinear.onnx  the dense file reshaped so that onnxruntime runs every
                           convolution as a 2-D QLinearConv on uint8 activations
                           (export.onnx.qlinear_graph; same integers where u8s8_exact_cpu)
    localnet_int8_openvino.onnx  the dense file reshaped so that OpenVINO runs every convolution
                           on int8, exactly (export.onnx.openvino_graph; same integers)
    localnet_qonnx.onnx    QONNX export of the int8 model, for FINN-style flows
    register_int8.onnx     inputs moving, fixed (1, 1, X, Y, Z); outputs ddf (voxels) and the
                           moving image warped by GridSample (opset 20, trilinear, border); exact
                           with export.onnx.ort_session_options (onnxruntime's x86 default runs
                           U8S8 kernels, which saturate on a CPU without VNNI)
    weights.bin            int8 weights + int32 biases + exponents (export/FORMAT.md)
    weights_int4.bin       the int4-weight QAT model in the same format
    hex/                   per-layer $readmemh files of the int8 model; localnet_int8.h (C)
    manifest.json          config (without [refine]), layers (shapes, exponents, bits, sparsity,
                           accumulator bounds), sha256 of every file, tool versions, git commit

`python -m hw.runtime --config C --export RUN/export` then writes registration.json beside it:
the settings of the registration around the network (hw/runtime.py; make export runs both).

Before writing the manifest it checks that onnxruntime's int8 output equals the Brevitas
model's integers on the test pairs, graph optimisations on and off; a mismatch is an error.
Where OpenVINO is installed, its mismatches on localnet_int8_openvino.onnx are recorded
(`openvino_vs_brevitas_mismatches`; benchmarks/latency.py runs that file only when they are 0).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from export.gate import openvino_vs_brevitas_mismatches, ort_vs_brevitas_mismatches
from export.hexfile import write_hex_and_header
from export.onnx import (export_fp32, export_int8_onnx, export_qonnx, sparsify_initializers, u8s8_exact_cpu,
                         write_openvino, write_qlinear)
from export.register_onnx import export_register
from export.weights import OP_CONV3D, OP_QUANT, Record, acc_bound, write_weights
from model.artifacts import atomic_write_json, git_commit, sha256_file, tool_versions
from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.cli import run_cli, stage_parser
from model.config import Config, config_to_dict, load_config
from model.data import load_dataset, test_pairs
from model.localnet import fold_batchnorm
from model.prealign import network_input

# onnxruntime's QLinearConv requantises the int32 accumulator in float32, exact only below 2^24
# (hw/SPEC.md; tests/test_hw.py shows the departure above it): the export refuses larger bounds
ORT_EXACT_BOUND = 2**24


def weight_records(twin, example: torch.Tensor) -> list[Record]:
    """The twin's integer parameters as weights.bin records, in module order."""
    import brevitas.nn as qnn
    from quant.twin import integer_params, pot_exponent

    params = integer_params(twin, example)
    recs = []
    for name, m in twin.named_modules():
        if isinstance(m, qnn.QuantConv3d):
            p = params[name]
            recs.append(Record.conv3d(name, p["bits"], p["e_w"], p["e_in"], p["weight"], p["bias"], p["per_channel"]))
        elif isinstance(m, (qnn.QuantIdentity, qnn.QuantReLU)):
            e = pot_exponent(m.act_quant.scale().detach())
            recs.append(Record(name, OP_QUANT, 8, e, relu=isinstance(m, qnn.QuantReLU)))
    return recs


def check_acc_bounds(records: list[Record]) -> dict[str, int]:
    """Worst-case accumulator of every convolution; an error naming the layers whose bound is
    not below 2^24 (onnxruntime's float requantisation would no longer be exact; int32 holds
    far more)."""
    bounds = {r.name: acc_bound(r) for r in records if r.op == OP_CONV3D}
    bad = {k: v for k, v in bounds.items() if v >= ORT_EXACT_BOUND}
    if bad:
        raise ValueError(f"accumulator bound reaches 2^24 in {bad}: onnxruntime's float requantisation "
                         "would not be exact (smaller weights or fewer input channels per layer needed)")
    return bounds


def ddf_exponent(twin) -> int:
    """e of the network output's scale 2^-e, read from the quantiser that produces it."""
    from quant.twin import pot_exponent

    return pot_exponent(twin.output_quant.act_quant.scale().detach())


def gzip_size(path: Path) -> int:
    """Bytes after gzip -9 (what a compressed transfer or a flash image would hold)."""
    import gzip

    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def network_meta(model_cfg, in_channels: int = 2) -> dict:
    """The network's part of a weights.bin's metadata: its `graph` (the node list hw/ interprets,
    model/graph.py) and the `model` table it was built from."""
    from model.graph import localnet_graph

    levels = sorted(model_cfg.ddf_levels)
    return {"model": {"base_channels": model_cfg.base_channels, "levels": model_cfg.levels, "ddf_levels": levels,
                      "in_channels": in_channels},
            "graph": localnet_graph(model_cfg.levels, levels, model_cfg.base_channels, in_channels).to_json()}


def weights_meta(cfg: Config, weight_bits: int, **extra) -> dict:
    """The metadata block of a weights.bin written with `cfg`."""
    return {**network_meta(cfg.model), "input_shape": cfg.data.shape, "act_bits": 8, "config": config_to_dict(cfg),
            "git_commit": git_commit(), "weight_bits": weight_bits, **extra}


def export(cfg: Config, run: Path, data_dir: Path, progress: bool = True) -> dict:
    from quant.qat import load_qat

    out = run / "export"
    trained, _ = model_from_checkpoint(load_checkpoint(run / "train" / "model.pt", cfg))
    twin8, ck8 = load_qat(run / "qat" / "int8" / "model.pt", cfg)
    twin4, ck4 = load_qat(run / "qat" / "int4" / "model.pt", cfg)
    subjects = load_dataset(data_dir, cfg.data, "test", progress=progress)
    out.mkdir(parents=True, exist_ok=True)  # only once every input has loaded
    inputs = [np.stack(network_input(cfg.model.prealign, subjects[m].image, subjects[f].image))[None]
              for m, f in test_pairs(subjects)]
    example = torch.from_numpy(inputs[0])

    export_fp32(fold_batchnorm(trained), cfg, out / "localnet_fp32.onnx")
    raw = out / "localnet_int8_dense.onnx"
    export_int8_onnx(twin8, cfg, raw)
    sparse_choice = sparsify_initializers(raw, out / "localnet_int8.onnx", "auto")
    sparsify_initializers(raw, out / "localnet_int8_sparse.onnx", "all")
    write_qlinear(raw, out / "localnet_int8_qlinear.onnx")
    openvino_rewrites = write_openvino(raw, out / "localnet_int8_openvino.onnx")
    export_qonnx(twin8, cfg, out / "localnet_qonnx.onnx")
    export_register(out / "localnet_int8.onnx", cfg, out / "register_int8.onnx")

    recs8, recs4 = weight_records(twin8, example), weight_records(twin4, example)
    write_weights(out / "weights.bin", recs8, weights_meta(cfg, 8))
    write_weights(out / "weights_int4.bin", recs4, weights_meta(cfg, 4))
    write_hex_and_header(recs8, out)

    bounds = check_acc_bounds(recs8)
    check_acc_bounds(recs4)
    e_ddf = ddf_exponent(twin8)
    # s8s8 with and without graph optimisations, with QDQ fusion off (float kernels), and the
    # OpenVINO file must be exact; so must the all-QLinearConv file (U8S8 kernels) on a CPU where
    # those sum exactly (u8s8_exact_cpu; elsewhere it is recorded, and latency.py's check flags
    # it); onnxruntime's x86 default for the shipped file (uint8 activations) is recorded
    mism = ort_vs_brevitas_mismatches(twin8, out / "localnet_int8.onnx", inputs, e_ddf, modes={
        "optimized": {}, "unoptimized": {"optimize": False}, "float_kernels": {"qdq_fusion": False},
        "optimized_x86_default_u8s8": {"keep_s8": False}})
    mism |= ort_vs_brevitas_mismatches(twin8, out / "localnet_int8_qlinear.onnx", inputs, e_ddf,
                                       modes={"qlinear_optimized": {}, "qlinear_unoptimized": {"optimize": False}})
    mism |= {f"openvino_file_{k}": v for k, v in ort_vs_brevitas_mismatches(
        twin8, out / "localnet_int8_openvino.onnx", inputs, e_ddf).items()}
    exact = ["optimized", "unoptimized", "float_kernels", "qlinear_unoptimized", "openvino_file_optimized",
             "openvino_file_unoptimized"] + (["qlinear_optimized"] if u8s8_exact_cpu() else [])
    if any(mism[k] for k in exact):
        raise AssertionError(f"onnxruntime int8 differs from Brevitas on {mism} ddf elements")

    # OpenVINO's int8 kernels are the CPU's (measured exact here, AVX-512 VNNI): recorded, not
    # required, so an export on another CPU still completes and the benchmark falls back
    ov_mism = None
    if importlib.util.find_spec("openvino"):
        ov_mism = openvino_vs_brevitas_mismatches(twin8, out / "localnet_int8_openvino.onnx", inputs, e_ddf)

    layers = []
    for r in recs8:
        if r.op == OP_CONV3D:
            bound = bounds[r.name]
            per_channel = lambda a: a.tolist() if r.per_channel else int(a[0])  # noqa: E731 (a list: one per output channel)
            layers.append({"name": r.name, "op": "conv3d", "shape": list(r.weight.shape), "bits": r.bits,
                           "e_w": per_channel(r.e_w), "e_in": r.e_in, "e_acc": per_channel(r.e_w + r.e_in),
                           "sparsity": round(1 - np.count_nonzero(r.weight) / r.weight.size, 4),
                           "acc_bound": bound, "acc_bits": int(bound).bit_length() + 1})
        else:
            layers.append({"name": r.name, "op": "quant", "bits": r.bits, "e_out": r.e_out, "relu": r.relu})
    # the network's config: [refine] runs after the network and lives in registration.json
    # (hw/runtime.py), which make writes beside this file from the config in use
    net_config = {k: v for k, v in config_to_dict(cfg).items() if k != "refine"}
    manifest = {"config": net_config, "git_commit": git_commit(), "versions": tool_versions(),
                "sources": {"train": str(run / "train" / "model.pt"), "int8": str(run / "qat" / "int8" / "model.pt"),
                            "int4": str(run / "qat" / "int4" / "model.pt")},
                "int8_sparsity": ck8["sparsity"], "int4_sparsity": ck4["sparsity"],
                "ddf_exponent": e_ddf, "ort_vs_brevitas_mismatches": mism, "test_pairs_checked": len(inputs),
                "sparse_initializers": sparse_choice, "openvino_rewrites": openvino_rewrites,
                "openvino_vs_brevitas_mismatches": ov_mism, "layers": layers}
    manifest["files"] = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "gzip_bytes": gzip_size(p),
                                                   "sha256": sha256_file(p)}
                         for p in sorted(out.rglob("*")) if p.is_file() and p.name not in ("manifest.json", "registration.json")}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def main(argv=None) -> int:
    ap = stage_parser(__doc__)
    ap.add_argument("--run", required=True, type=Path, help="OUT of make train/prune/qat")
    a = ap.parse_args(argv)

    def body():
        m = export(load_config(a.config), a.run, a.data, progress=not a.no_progress)
        for name, f in m["files"].items():
            print(f"{f['bytes']:>10}  {name}")
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
