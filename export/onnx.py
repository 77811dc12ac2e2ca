"""The network as ONNX (fp32, int8 QCDQ, QONNX, sparse initializers) and onnxruntime sessions.

    from export.onnx import export_fp32, export_int8_onnx, sparsify_initializers, ort_session
    export_fp32(fold_batchnorm(net), cfg, "localnet_fp32.onnx")
    export_int8_onnx(twin, cfg, "localnet_int8_dense.onnx")       # Brevitas QCDQ, dynamo=False
    sparsify_initializers("localnet_int8_dense.onnx", "localnet_int8.onnx", "auto")

Input `moving_fixed` (1, 2, X, Y, Z) float32 (moving, fixed), output `ddf` (1, 3, X, Y, Z)
float32 in voxels, as model.localnet. Exported with the TorchScript exporter
(dynamo=False), opset 17, the batch size fixed to 1 (one pair per registration); the
spatial axes are dynamic (any X, Y, Z divisible by 2^levels), so one file serves any grid.
Importing this module needs numpy and onnxruntime only (torch is imported by the exporters),
so the board-side benchmarks open their sessions through `ort_session` too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.artifacts import atomic_path, git_commit
from model.config import Config, config_to_dict

OPSET = 17
INT8_OPSET = 17
INPUT, OUTPUT = "moving_fixed", "ddf"
DYNAMIC_AXES = {INPUT: {2: "X", 3: "Y", 4: "Z"}, OUTPUT: {2: "X", 3: "Y", 4: "Z"}}


def export_fp32(folded, cfg: Config, path: Path, dynamic: bool = True) -> Path:
    """Write the BatchNorm-folded float network as ONNX, with the resolved config in its metadata;
    `dynamic=False` fixes the spatial axes to the working grid (onnxruntime's quantisation
    pre-processing cannot infer the Resize shapes of the dynamic graph)."""
    import onnx
    import torch

    x = torch.zeros(1, 2, *cfg.data.shape)
    with atomic_path(path) as tmp:
        torch.onnx.export(folded.eval(), (x,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=DYNAMIC_AXES if dynamic else None)
        model = onnx.load(str(tmp))
        _set_metadata(model, {"config": json.dumps(config_to_dict(cfg)), "git_commit": git_commit(),
                              "ddf_units": "voxels of the working grid, channel k along array axis k"})
        onnx.save(model, str(tmp))
    return path


def _set_metadata(model, entries: dict[str, str]) -> None:
    for k, v in entries.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v


# onnxruntime on x86 rewrites a QDQ graph's int8 activations to uint8 (zero-point 128) to use
# its U8S8 kernels; on CPUs without VNNI those sum pairs of u8 x s8 products in int16 with
# saturation (AVX2 vpmaddubsw: 2 x 255 x 127 > 32767), which breaks exactness for large
# weights. Keeping the graph s8s8 avoids it (tests/test_export.py shows both).
ORT_INT8_CONFIG = {"session.qdqisint8allowed": "1"}


def ort_session_options(optimize: bool = True, threads: int = 0, keep_s8: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
    if keep_s8:
        for k, v in ORT_INT8_CONFIG.items():
            so.add_session_config_entry(k, v)
    return so


def ort_session(path: Path, optimize: bool = True, threads: int = 0, keep_s8: bool = True):
    import onnxruntime as ort

    so = ort_session_options(optimize, threads, keep_s8)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def export_int8_onnx(twin, cfg: Config, path: Path) -> Path:
    import torch
    from brevitas.export import export_onnx_qcdq

    x = torch.zeros(1, 2, *cfg.data.shape)
    with atomic_path(path) as tmp:
        export_onnx_qcdq(twin.eval(), args=x, export_path=str(tmp), dynamo=False, opset_version=INT8_OPSET,
                         input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=DYNAMIC_AXES)
    return path


def export_qonnx(twin, cfg: Config, path: Path) -> Path:
    import torch
    from brevitas.export import export_qonnx as brevitas_qonnx

    x = torch.zeros(1, 2, *cfg.data.shape)
    with atomic_path(path) as tmp:
        brevitas_qonnx(twin.eval(), args=x, export_path=str(tmp), dynamo=False, opset_version=INT8_OPSET,
                       input_names=[INPUT], output_names=[OUTPUT])
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
