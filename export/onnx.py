"""The network as ONNX (fp32, int8 QCDQ, QONNX, sparse initializers) and onnxruntime sessions.

    from export.onnx import export_fp32, export_int8_onnx, sparsify_initializers, ort_session
    export_fp32(fold_batchnorm(net), cfg, "localnet_fp32.onnx")
    export_int8_onnx(twin, cfg, "localnet_int8_dense.onnx")       # Brevitas QCDQ, dynamo=False
    sparsify_initializers("localnet_int8_dense.onnx", "localnet_int8.onnx", "auto")
    write_qlinear("localnet_int8.onnx", "localnet_int8_qlinear.onnx")      # every conv a QLinearConv

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


# With QDQ fusion off, onnxruntime runs an int8 QDQ graph's convolutions as float kernels on
# the dequantised integers. That is exact here: every product is an integer times a power of
# two, and every partial sum stays below 2^24 (the export refuses larger accumulator bounds),
# so float32 sums them without rounding in any order; its 3-D float convolution is several
# times faster than its QLinearConv (benchmarks/latency.py measures both).
NO_QDQ_FUSION = {"session.disable_quant_qdq": "1"}


def ort_session_options(optimize: bool = True, threads: int = 0, keep_s8: bool = True, qdq_fusion: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
    for k, v in ((ORT_INT8_CONFIG if keep_s8 else {}) | ({} if qdq_fusion else NO_QDQ_FUSION)).items():
        so.add_session_config_entry(k, v)
    return so


def ort_session(path: Path, optimize: bool = True, threads: int = 0, keep_s8: bool = True, qdq_fusion: bool = True):
    import onnxruntime as ort

    so = ort_session_options(optimize, threads, keep_s8, qdq_fusion)
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
    The model metadata `sparse_initializers` names the tensors stored sparse (absent when none
    is, so `auto` is never larger than `src`); returns the choice and sparsity per tensor."""
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
    stored = [c["name"] for c in chosen if c["stored"] == "sparse"]
    if stored:  # the names only: a per-tensor record here once cost more bytes than sparsity saved
        p = model.metadata_props.add()
        p.key, p.value = "sparse_initializers", ",".join(stored)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return chosen


def qlinear_graph(model) -> dict[str, int]:
    """Reshape a Brevitas QCDQ graph (in place) so that onnxruntime's QDQ fusion turns every
    convolution into QLinearConv and every add of two int8 tensors into QLinearAdd, with the
    same integers out. Two rewrites, both exact:

    - `Conv|Add -> Relu -> Q(s, 0)` becomes `Conv|Add -> Q(s, 0) -> DQ -> Relu -> Q(s, 0)`:
      relu(sat(rne(x / s))) = sat_[0,127](rne(relu(x) / s)) for every x (round half to even
      maps (-0.5, 0] to 0), and the second Q re-quantises integers at their own scale.
      onnxruntime fuses Relu into Q only when the zero point is the type's lowest value, which
      an int8 ReLU output at zero point 0 is not, so without this those convs stay float.
    - a copy (MaxPool, nearest Resize, Slice) of a DQ(s, z) output that feeds anything but a
      Q gets `Q(s, z) -> DQ` after it: it copies values on the grid, so the pair is an identity.

    The trilinear up-sampling of the coarse displacement fields stays float: its outputs lie
    on a 64x finer grid than int8 opset 17 can carry, so the three adds it feeds stay float
    (exact: hw/SPEC.md). Returns the number of each rewrite."""
    from onnx import helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    after: dict[int, list] = {}
    counts = {"relu_requant": 0, "copy_requant": 0}

    def pair(src: str, scale: str, zp: str, tag: str) -> str:
        k = sum(counts.values())
        q, dq = f"{src}/qlinear_q{k}", f"{src}/qlinear_dq{k}"
        after[id(producer[src])] = [helper.make_node("QuantizeLinear", [src, scale, zp], [q], name=f"{tag}/qlinear_Q"),
                                    helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=f"{tag}/qlinear_DQ")]
        return dq

    for n in list(g.node):
        outs = consumers.get(n.output[0], [])
        if n.op_type in ("Conv", "Add") and len(outs) == 1 and outs[0].op_type == "Relu":
            qs = consumers.get(outs[0].output[0], [])
            if not qs or any(q.op_type != "QuantizeLinear" or q.input[1:] != qs[0].input[1:] for q in qs):
                continue
            outs[0].input[0] = pair(n.output[0], qs[0].input[1], qs[0].input[2], n.name)
            counts["relu_requant"] += 1
        elif n.op_type in ("MaxPool", "Resize", "Slice"):
            nearest = any(a.name == "mode" and a.s == b"nearest" for a in n.attribute)
            d = producer.get(n.input[0])
            if ((n.op_type == "Resize" and not nearest) or d is None or d.op_type != "DequantizeLinear"
                    or all(c.op_type == "QuantizeLinear" for c in outs)):
                continue
            dq = pair(n.output[0], d.input[1], d.input[2], n.name)
            for c in outs:
                for j, x in enumerate(c.input):
                    if x == n.output[0]:
                        c.input[j] = dq
            counts["copy_requant"] += 1
    nodes = []
    for n in g.node:
        nodes.append(n)
        nodes.extend(after.get(id(n), []))
    del g.node[:]
    g.node.extend(nodes)
    return counts


def write_qlinear(src: Path, dst: Path) -> dict[str, int]:
    """`src` through `qlinear_graph`, written to `dst`; the counts go to its metadata."""
    import onnx

    model = onnx.load(str(src))
    counts = qlinear_graph(model)
    _set_metadata(model, {"qlinear_rewrites": json.dumps(counts)})
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return counts


def openvino_graph(model, where: str = "model") -> dict[str, int]:
    """Reshape a dense Brevitas QCDQ graph (in place) so that OpenVINO runs every convolution
    on int8 and stays exact. Two rewrites, both identities under ONNX semantics:

    - the Clip between each integer weight initializer and its DequantizeLinear goes. Brevitas
      emits it to narrow int8 weights to [-127, 127] (int4 to [-7, 7]), which the stored
      integers already are (checked: a weight outside its Clip is a ValueError naming `where`
      and the tensor). OpenVINO's low-precision pass does not look through the Clip and runs
      every convolution in f32 (measured on the demo network, one thread: 42.6 ms with the
      Clips, 23.2 without).
    - a barrier, Max(x, x), between an Add and each input that is a convolution's re-quantised
      output. Without it OpenVINO fuses the convolution, its re-quantisation and the add into
      one node that rounds once where the graph rounds twice, and its integers differ by one LSB
      (measured: the first residual add, down.0.add, 59,201 of 327,680 elements; 132,907 ddf
      elements of the two golden pairs); the barrier keeps them apart and every element equal.
      OpenVINO runs Max(x, x) inside its element-wise kernels: the earlier barrier, a MaxPool of
      kernel 1, was a pooling pass of its own per add (the demo network, one thread: 21.4 ms
      with MaxPools, 17.2 with Max; README, Latency).

    Returns the number of each rewrite."""
    from onnx import helper, numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    counts = {"weight_clip_removed": 0, "add_barrier": 0}
    rename: dict[str, str] = {}
    keep = []
    for n in g.node:
        if n.op_type == "Clip" and n.input[0] in inits and all(x in inits for x in n.input[1:3]):
            w = numpy_helper.to_array(inits[n.input[0]])
            lo, hi = (numpy_helper.to_array(inits[x]) for x in n.input[1:3])
            if w.dtype.kind not in "iu":
                keep.append(n)
                continue
            if w.size and (w.min() < lo or w.max() > hi):
                raise ValueError(f"{where}: weight {n.input[0]} has values in [{w.min()}, {w.max()}], "
                                 f"outside its Clip [{lo}, {hi}]")
            rename[n.output[0]] = n.input[0]
            counts["weight_clip_removed"] += 1
        else:
            keep.append(n)
    for n in keep:
        for j, x in enumerate(n.input):
            n.input[j] = rename.get(x, x)
    if any(o.name in rename for o in g.output):
        raise ValueError(f"{where}: a graph output is a clipped weight")

    def conv_requantised(x: str) -> bool:  # DQ <- Q <- [Relu <-] Conv
        chain = [producer.get(x)]
        while chain[-1] is not None and chain[-1].op_type in ("DequantizeLinear", "QuantizeLinear", "Relu"):
            chain.append(producer.get(chain[-1].input[0]))
        ops = [c.op_type if c is not None else None for c in chain]
        return ops in (["DequantizeLinear", "QuantizeLinear", "Conv"],
                       ["DequantizeLinear", "QuantizeLinear", "Relu", "Conv"])

    nodes = []
    for n in keep:
        if n.op_type == "Add":
            for j, x in enumerate(n.input):
                if conv_requantised(x):
                    y = f"{x}/openvino_barrier{counts['add_barrier']}"
                    nodes.append(helper.make_node("Max", [x, x], [y], name=f"{n.name}/openvino_barrier{j}"))
                    n.input[j] = y
                    counts["add_barrier"] += 1
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return counts


def write_openvino(src: Path, dst: Path) -> dict[str, int]:
    """`src` (a dense int8 QCDQ file) through `openvino_graph`, written to `dst`; the counts go
    to its metadata."""
    import onnx

    model = onnx.load(str(src))
    counts = openvino_graph(model, str(src))
    _set_metadata(model, {"openvino_rewrites": json.dumps(counts)})
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return counts


def optimized_op_counts(path: Path, keep_s8: bool = True) -> dict[str, int]:
    """Operator types in onnxruntime's optimised graph of `path` (CPU, all optimisations)."""
    import tempfile
    from collections import Counter

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort_session_options(True, 1, keep_s8)
        so.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        so.log_severity_level = 3  # its warning that the file is specific to this CPU
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return dict(Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node))
