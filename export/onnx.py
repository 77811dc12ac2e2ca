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


def u8s8_exact_cpu() -> bool:
    """Whether onnxruntime's U8S8 kernels sum exactly on this CPU: everywhere but x86 without
    VNNI, where they add pairs of u8 x s8 products in int16 with saturation (AVX2 vpmaddubsw:
    2 x 255 x 127 > 32767)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "vnni" in flags or "amx_int8" in flags


class _Graph:
    """What the rewrite passes share: the graph, its initializers by name, the producer and
    consumers of every tensor, new constants, and splicing replacement nodes in place."""

    def __init__(self, model):
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}

    def maps(self):
        """(producer of each tensor, consumers of each tensor), as the graph is now."""
        producer = {o: n for n in self.g.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        return producer, consumers

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
            self.g.initializer.append(self.inits[name])
        return name

    def splice(self, new: dict[int, list]) -> None:
        """Each node whose id is in `new` replaced by the nodes it maps to (none: removed)."""
        nodes = [m for n in self.g.node for m in new.get(id(n), [n])]
        del self.g.node[:]
        self.g.node.extend(nodes)


def u8_activations(model, where: str = "model") -> int:
    """Every activation QuantizeLinear / DequantizeLinear pair from int8 to uint8, the zero point
    + 128 (the same integers, shifted); weights stay int8. Returns the pairs rewritten."""
    from onnx import numpy_helper

    gr = _Graph(model)
    _, consumers = gr.maps()
    count = 0
    for n in gr.g.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in gr.inits:
            continue
        outs = consumers.get(n.output[0], [])
        if any(c.op_type != "DequantizeLinear" or c.input[1:] != n.input[1:] for c in outs):
            raise ValueError(f"{where}: the int8 activation {n.output[0]} feeds something other than its "
                             "DequantizeLinear")
        z = numpy_helper.to_array(gr.inits[n.input[2]]) if n.input[2] in gr.inits else None
        if z is None or z.dtype != np.int8 or z.size != 1:
            raise ValueError(f"{where}: {n.name} has no int8 per-tensor zero point")
        zu = gr.const(f"{n.input[2]}/u8", (z.astype(np.int16) + 128).astype(np.uint8))
        for m in (n, *outs):
            m.input[2] = zu
        count += 1
    return count


def relu_on_integers(model, where: str = "model") -> int:
    """`Conv|Add -> Relu -> Q(s, z)` as `Conv|Add -> Q(s, z) -> Clip(z, 255)` (uint8
    activations: after u8_activations). Returns the ReLUs moved."""
    from onnx import helper

    gr = _Graph(model)
    _, consumers = gr.maps()
    new: dict[int, list] = {}
    u8_max = gr.const("qlinear/u8_max", np.uint8(255))
    for n in gr.g.node:
        outs = consumers.get(n.output[0], [])
        if n.op_type not in ("Conv", "Add") or len(outs) != 1 or outs[0].op_type != "Relu":
            continue
        qs = consumers.get(outs[0].output[0], [])
        if len(qs) != 1 or qs[0].op_type != "QuantizeLinear":
            continue
        q = qs[0]
        y = f"{n.output[0]}/qlinear_q"
        new[id(outs[0])] = [helper.make_node("QuantizeLinear", [n.output[0], *q.input[1:]], [y], name=f"{n.name}/qlinear_Q"),
                            helper.make_node("Clip", [y, q.input[2], u8_max], [q.output[0]], name=f"{n.name}/qlinear_relu")]
        new[id(q)] = []
    gr.splice(new)
    return len(new) // 2


def requantise_copies(model, where: str = "model") -> int:
    """After a copy (MaxPool, nearest Resize, Slice) of a DQ(s, z) output that feeds anything
    but a Q, `Q(s, z) -> DQ`: an identity on values on the grid. Returns the copies so marked."""
    from onnx import helper

    gr = _Graph(model)
    producer, consumers = gr.maps()
    new: dict[int, list] = {}
    for n in gr.g.node:
        if n.op_type not in ("MaxPool", "Resize", "Slice"):
            continue
        outs = consumers.get(n.output[0], [])
        nearest = any(a.name == "mode" and a.s == b"nearest" for a in n.attribute)
        d = producer.get(n.input[0])
        if ((n.op_type == "Resize" and not nearest) or d is None or d.op_type != "DequantizeLinear"
                or all(c.op_type == "QuantizeLinear" for c in outs)):
            continue
        k = len(new)
        q, dq = f"{n.output[0]}/qlinear_q{k}", f"{n.output[0]}/qlinear_dq{k}"
        for c in outs:
            for j, x in enumerate(c.input):
                if x == n.output[0]:
                    c.input[j] = dq
        new[id(n)] = [n, helper.make_node("QuantizeLinear", [n.output[0], *d.input[1:]], [q], name=f"{n.name}/qlinear_Q"),
                      helper.make_node("DequantizeLinear", [q, *d.input[1:]], [dq], name=f"{n.name}/qlinear_DQ")]
    gr.splice(new)
    return len(new)


def conv3d_as_2d(model, where: str = "model") -> int:
    """Every `DQ -> Conv(3-D) -> Q` as a 2-D convolution over X images with the X-shifted
    copies stacked as channels (qlinear_graph says how). Returns the convolutions folded."""
    from onnx import helper, numpy_helper

    gr = _Graph(model)
    inits, const = gr.inits, gr.const
    producer, consumers = gr.maps()
    new: dict[int, list] = {}
    axis0 = const("qlinear/axis0", np.array([0], np.int64))
    count = 0
    for n in gr.g.node:
        if n.op_type != "Conv":
            continue
        a = {x.name: list(x.ints) if x.ints else x.i for x in n.attribute}
        d, wdq, outs = producer.get(n.input[0]), producer.get(n.input[1]), consumers.get(n.output[0], [])
        if d is None or d.op_type != "DequantizeLinear" or wdq is None or wdq.op_type != "DequantizeLinear":
            raise ValueError(f"{where}: {n.name} does not take dequantised integers")
        if len(outs) != 1 or outs[0].op_type != "QuantizeLinear":
            raise ValueError(f"{where}: {n.name}'s output is not requantised")
        if set(a.get("strides", [1])) | set(a.get("dilations", [1])) != {1} or a.get("group", 1) != 1:
            raise ValueError(f"{where}: {n.name} has a stride, dilation or group the 2-D form does not carry")
        w_clip = producer.get(wdq.input[0])
        w_name = w_clip.input[0] if w_clip is not None else wdq.input[0]
        w = numpy_helper.to_array(inits[w_name])
        if w.ndim != 5:
            raise ValueError(f"{where}: {n.name}'s weight {w_name} is {w.ndim}-D, not 3-D convolution")
        o, c, k = w.shape[:3]
        inits[w_name].CopyFrom(numpy_helper.from_array(
            np.ascontiguousarray(w.transpose(0, 2, 1, 3, 4).reshape(o, k * c, *w.shape[3:])), w_name))
        pads = a.get("pads", [0] * 6)
        t, q = f"{n.name}/qlinear_2d", outs[0]
        nodes = [helper.make_node("Squeeze", [d.input[0], axis0], [f"{t}/x"], name=f"{t}/Squeeze"),
                 helper.make_node("Transpose", [f"{t}/x"], [f"{t}/xt"], name=f"{t}/Transpose_in", perm=[1, 0, 2, 3]),
                 helper.make_node("Pad", [f"{t}/xt", const(f"{t}/pads", np.array([pads[0], 0, 0, 0, pads[3], 0, 0, 0])),
                                          d.input[2]], [f"{t}/xp"], name=f"{t}/Pad")]
        span = pads[0] + pads[3]
        for j in range(k):  # copy j: padded rows j .. j + X - 1
            end = j - span if j < span else 2**62  # negative: counted from the padded end
            nodes.append(helper.make_node("Slice", [f"{t}/xp", const(f"qlinear/start{j}", np.array([j], np.int64)),
                                                    const(f"qlinear/end{end}", np.array([end], np.int64)), axis0],
                                          [f"{t}/x{j}"], name=f"{t}/Slice{j}"))
        nodes += [helper.make_node("Concat", [f"{t}/x{j}" for j in range(k)], [f"{t}/xc"], name=f"{t}/Concat", axis=1),
                  helper.make_node("DequantizeLinear", [f"{t}/xc", *d.input[1:]], [f"{t}/xd"], name=f"{t}/DQ"),
                  helper.make_node("Conv", [f"{t}/xd", *n.input[1:]], [f"{t}/y"], name=f"{t}/Conv",
                                   kernel_shape=list(w.shape[3:]), pads=[pads[1], pads[2], pads[4], pads[5]])]
        new[id(n)] = nodes
        new[id(q)] = [helper.make_node("QuantizeLinear", [f"{t}/y", *q.input[1:]], [f"{t}/yq"], name=f"{t}/Q"),
                      helper.make_node("Transpose", [f"{t}/yq"], [f"{t}/yt"], name=f"{t}/Transpose_out", perm=[1, 0, 2, 3]),
                      helper.make_node("Unsqueeze", [f"{t}/yt", axis0], [q.output[0]], name=f"{t}/Unsqueeze")]
        count += 1
    gr.splice(new)
    used = {i for n in gr.g.node for i in n.input} | {o.name for o in gr.g.output}
    for n in [n for n in gr.g.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]:
        gr.g.node.remove(n)  # the 3-D convolutions' input DQs
    return count


# qlinear_graph's passes in the order they run (each needs the ones before it), by the name
# under which the count of its rewrites is recorded
QLINEAR_PASSES = {"u8_activations": u8_activations, "relu_clip": relu_on_integers,
                  "copy_requant": requantise_copies, "conv_folded": conv3d_as_2d}


def qlinear_graph(model, where: str = "model") -> dict[str, int]:
    """Reshape a dense Brevitas QCDQ graph (in place) so that onnxruntime's QDQ fusion turns
    every convolution into QLinearConv and every add of two int8 tensors into QLinearAdd, in
    the layout and types its fast integer kernels take, with the same integers out. Four
    rewrites, all exact under ONNX semantics, each a pass of its own (QLINEAR_PASSES):

    - u8 activations (`u8_activations`): every activation QuantizeLinear / DequantizeLinear
      pair goes from int8 to uint8 with the zero point + 128 (the same integers, shifted),
      weights stay int8: the U8S8
      kernels are onnxruntime's native x86 and ARM int8 path (its s8s8 kernels run about twice
      as slow here). They are exact wherever `u8s8_exact_cpu()` holds.
    - ReLU on the integers (`relu_on_integers`): `Conv|Add -> Relu -> Q(s, z)` becomes
      `Conv|Add -> Q(s, z) -> Clip(z, 255)`: relu(sat(rne(x / s))) = sat(rne(relu(x) / s)) for every x (round half to
      even maps (-0.5, 0] to 0). onnxruntime fuses a Relu into its Q only at the type's lowest
      zero point, which a ReLU output here is not, so without this those convs stay float.
    - copies requantised (`requantise_copies`): a copy (MaxPool, nearest Resize, Slice) of a
      DQ(s, z) output that feeds anything but a Q gets `Q(s, z) -> DQ` after it: it copies values on the grid, so the pair is an identity.
    - every 3-D convolution becomes a 2-D one (`conv3d_as_2d`): the input (1, C, X, Y, Z) is
      laid out as X images (X, C, Y, Z) on the integers, padded along X with the zero point, and its k-th
      X-shifted copies (k < kernel extent along X) are stacked as channels (X, K*C, Y, Z); the
      weight (O, C, K, Ky, Kz) becomes (O, K*C, Ky, Kz) in the same order, so every output
      sums the same integer products. onnxruntime's 3-D QLinearConv is an im2col product on
      one thread (its first 7^3 convolution alone several times the float one: docs/experiments.md,
      Latency); its 2-D one is its
      threaded NHWC kernel. Needs batch 1 (the exported files fix it) and stride 1.

    The trilinear up-sampling of the coarse displacement fields stays float: its outputs lie
    on a 64x finer grid than int8 opset 17 can carry, so the three adds it feeds stay float
    (exact: hw/SPEC.md). Returns the number of each rewrite."""
    if len(model.graph.sparse_initializer):
        raise ValueError(f"{where}: has sparse initializers; write the all-QLinearConv graph from the dense file")
    return {name: rewrite(model, where) for name, rewrite in QLINEAR_PASSES.items()}


def _write_rewritten(src: Path, dst: Path, rewrite, key: str) -> dict[str, int]:
    """`src` through `rewrite(model, where)`, written to `dst`; the counts go to its metadata `key`."""
    import onnx

    model = onnx.load(str(src))
    counts = rewrite(model, str(src))
    _set_metadata(model, {key: json.dumps(counts)})
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return counts


def write_qlinear(src: Path, dst: Path) -> dict[str, int]:
    """`src` (a dense int8 QCDQ file) through `qlinear_graph`, written to `dst`."""
    return _write_rewritten(src, dst, qlinear_graph, "qlinear_rewrites")


def drop_weight_clips(model, where: str = "model") -> int:
    """The Clip between each integer weight initializer and its consumer removed (a weight
    outside its Clip is a ValueError). Returns the Clips removed."""
    from onnx import numpy_helper

    gr = _Graph(model)
    rename: dict[str, str] = {}
    keep = []
    for n in gr.g.node:
        if n.op_type == "Clip" and n.input[0] in gr.inits and all(x in gr.inits for x in n.input[1:3]):
            w = numpy_helper.to_array(gr.inits[n.input[0]])
            lo, hi = (numpy_helper.to_array(gr.inits[x]) for x in n.input[1:3])
            if w.dtype.kind not in "iu":
                keep.append(n)
                continue
            if w.size and (w.min() < lo or w.max() > hi):
                raise ValueError(f"{where}: weight {n.input[0]} has values in [{w.min()}, {w.max()}], "
                                 f"outside its Clip [{lo}, {hi}]")
            rename[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    for n in keep:
        for j, x in enumerate(n.input):
            n.input[j] = rename.get(x, x)
    if any(o.name in rename for o in gr.g.output):
        raise ValueError(f"{where}: a graph output is a clipped weight")
    del gr.g.node[:]
    gr.g.node.extend(keep)
    return len(rename)


def barriers_before_adds(model, where: str = "model") -> int:
    """Max(x, x) between an Add and each of its inputs that is a convolution's re-quantised
    output (DQ <- Q <- [Relu <-] Conv). Returns the barriers inserted."""
    from onnx import helper

    gr = _Graph(model)
    producer, _ = gr.maps()

    def conv_requantised(x: str) -> bool:
        chain = [producer.get(x)]
        while chain[-1] is not None and chain[-1].op_type in ("DequantizeLinear", "QuantizeLinear", "Relu"):
            chain.append(producer.get(chain[-1].input[0]))
        ops = [c.op_type if c is not None else None for c in chain]
        return ops in (["DequantizeLinear", "QuantizeLinear", "Conv"],
                       ["DequantizeLinear", "QuantizeLinear", "Relu", "Conv"])

    nodes, count = [], 0
    for n in gr.g.node:
        if n.op_type == "Add":
            for j, x in enumerate(n.input):
                if conv_requantised(x):
                    y = f"{x}/openvino_barrier{count}"
                    nodes.append(helper.make_node("Max", [x, x], [y], name=f"{n.name}/openvino_barrier{j}"))
                    n.input[j] = y
                    count += 1
        nodes.append(n)
    del gr.g.node[:]
    gr.g.node.extend(nodes)
    return count


OPENVINO_PASSES = {"weight_clip_removed": drop_weight_clips, "add_barrier": barriers_before_adds}


def openvino_graph(model, where: str = "model") -> dict[str, int]:
    """Reshape a dense Brevitas QCDQ graph (in place) so that OpenVINO runs every convolution
    on int8 and stays exact. Two rewrites, both identities under ONNX semantics, each a pass of its own
    (OPENVINO_PASSES):

    - `drop_weight_clips`: the Clip between each integer weight initializer and its DequantizeLinear goes. Brevitas
      emits it to narrow int8 weights to [-127, 127] (int4 to [-7, 7]), which the stored
      integers already are (checked: a weight outside its Clip is a ValueError naming `where`
      and the tensor). OpenVINO's low-precision pass does not look through the Clip and runs
      every convolution in f32 (about twice as slow on the demo network: docs/experiments.md).
    - `barriers_before_adds`: a barrier, Max(x, x), between an Add and each input that is a convolution's re-quantised
      output. Without it OpenVINO fuses the convolution, its re-quantisation and the add into
      one node that rounds once where the graph rounds twice, and its integers differ by one LSB
      (from the first residual add on: docs/experiments.md); the barrier keeps them apart and
      every element equal. OpenVINO runs Max(x, x) inside its element-wise kernels: the earlier
      barrier, a MaxPool of kernel 1, was a pooling pass of its own per add (slower: the same
      log).

    Returns the number of each rewrite."""
    return {name: rewrite(model, where) for name, rewrite in OPENVINO_PASSES.items()}


def write_openvino(src: Path, dst: Path) -> dict[str, int]:
    """`src` (a dense int8 QCDQ file) through `openvino_graph`, written to `dst`."""
    return _write_rewritten(src, dst, openvino_graph, "openvino_rewrites")


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
