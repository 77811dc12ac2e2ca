"""register_int8.onnx: the int8 network followed by the warp of the moving image (GridSample).

    from export.register_onnx import export_register
    export_register("localnet_int8.onnx", cfg, "register_int8.onnx")

Inputs `moving`, `fixed` (1, 1, X, Y, Z) float32 on the working grid; outputs `ddf`
(1, 3, X, Y, Z) in voxels and `warped` (1, 1, X, Y, Z), the moving image sampled at
x + ddf(x): GridSample at opset 20, trilinear, border padding, align_corners=1, which is
model.warp's clamp-to-border rule.

Without a global stage (`model.prealign = "none"`) `ddf` is the network's output, unchanged.
With one, the graph has a third input `affine` (3, 4) float32, [M | t] of
model.prealign.moments_affine (fixed voxel x -> moving voxel M x + t, the 12 numbers the host
computes), and applies the composed field: the moving image is first resampled by the affine
(GridSample), the network registers the aligned pair, and `ddf` = (M x + t - x) + M d(x);
`local_ddf` is the network's own output d (the integer path, exact as without the stage).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from export.onnx import INPUT, OUTPUT
from model.artifacts import atomic_path
from model.config import Config

REGISTER_OPSET = 20  # GridSample on 5-D inputs


def warp_nodes(shape: list[int], moving: str, ddf: str, warped: str, prefix: str = "") -> tuple[list, list]:
    """ONNX nodes + initializers warping `moving` (1, 1, X, Y, Z) by `ddf` (1, 3, X, Y, Z) voxels.

    grid = (identity + ddf) * 2 / (n - 1) - 1 per axis (align_corners=1), components reversed
    to GridSample's (W, H, D) order; trilinear ('linear'), padding 'border': model.warp's
    clamp-to-border behaviour. `prefix` names its internal tensors (to use it twice in a graph).
    """
    from onnx import helper, numpy_helper

    X, Y, Z = shape
    ident = np.stack(np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij"), -1)[None]
    consts = {prefix + "grid_ident": ident.astype(np.float32),  # (1, X, Y, Z, 3)
              prefix + "grid_scale": np.array([2.0 / max(n - 1, 1) for n in shape], np.float32),
              prefix + "grid_one": np.array(1.0, np.float32), prefix + "grid_rev": np.array([2, 1, 0], np.int64)}
    nodes = [
        helper.make_node("Transpose", [ddf], [prefix + "ddf_last"], perm=[0, 2, 3, 4, 1]),  # (1, X, Y, Z, 3)
        helper.make_node("Add", [prefix + "ddf_last", prefix + "grid_ident"], [prefix + "grid_pos"]),
        helper.make_node("Mul", [prefix + "grid_pos", prefix + "grid_scale"], [prefix + "grid_scaled"]),
        helper.make_node("Sub", [prefix + "grid_scaled", prefix + "grid_one"], [prefix + "grid_xyz"]),
        helper.make_node("Gather", [prefix + "grid_xyz", prefix + "grid_rev"], [prefix + "grid"], axis=4),
        helper.make_node("GridSample", [moving, prefix + "grid"], [warped], mode="linear", padding_mode="border",
                         align_corners=1),
    ]
    return nodes, [numpy_helper.from_array(v, k) for k, v in consts.items()]


def affine_nodes(shape: list[int], affine: str, out: str) -> tuple[list, list]:
    """Nodes writing `out` (1, 3, X, Y, Z) = M x + t - x from `affine` (3, 4) = [M | t]."""
    from onnx import helper, numpy_helper

    n = int(np.prod(shape))
    coords = np.indices(shape, dtype=np.float32).reshape(3, n)
    consts = {"aff_coords": coords, "aff_m_idx": np.array([0, 1, 2], np.int64), "aff_t_idx": np.array([3], np.int64),
              "aff_shape": np.array([1, 3, *shape], np.int64)}
    nodes = [helper.make_node("Gather", [affine, "aff_m_idx"], ["aff_M"], axis=1),      # (3, 3)
             helper.make_node("Gather", [affine, "aff_t_idx"], ["aff_t"], axis=1),      # (3, 1)
             helper.make_node("MatMul", ["aff_M", "aff_coords"], ["aff_Mx"]),
             helper.make_node("Add", ["aff_Mx", "aff_t"], ["aff_pos"]),
             helper.make_node("Sub", ["aff_pos", "aff_coords"], ["aff_disp"]),
             helper.make_node("Reshape", ["aff_disp", "aff_shape"], [out])]
    return nodes, [numpy_helper.from_array(v, k) for k, v in consts.items()]


def export_register(int8_path: Path, cfg: Config, path: Path) -> Path:
    """Wrap the int8 network with the warp: moving, fixed [, affine] -> ddf, warped [, local_ddf]
    (GridSample, opset 20; the module docstring says what the global stage adds)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = list(cfg.data.shape)
    net = onnx.load(str(int8_path))
    g = net.graph
    for n in g.node:  # the network reads the concatenated pair and writes net_ddf
        n.input[:] = ["net_in" if i == INPUT else i for i in n.input]
        n.output[:] = ["net_ddf" if o == OUTPUT else o for o in n.output]
    vol = [1, 1, *shape]
    field = [1, 3, *shape]
    inputs = [helper.make_tensor_value_info("moving", TensorProto.FLOAT, vol),
              helper.make_tensor_value_info("fixed", TensorProto.FLOAT, vol)]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, field),
               helper.make_tensor_value_info("warped", TensorProto.FLOAT, vol)]
    if cfg.model.prealign == "none":
        wnodes, winit = warp_nodes(shape, "moving", "net_ddf", "warped")
        nodes = [helper.make_node("Concat", ["moving", "fixed"], ["net_in"], axis=1), *g.node,
                 helper.make_node("Identity", ["net_ddf"], [OUTPUT]), *wnodes]
    else:
        inputs.append(helper.make_tensor_value_info("affine", TensorProto.FLOAT, [3, 4]))
        outputs.append(helper.make_tensor_value_info("local_ddf", TensorProto.FLOAT, field))
        anodes, ainit = affine_nodes(shape, "affine", "aff_ddf")
        pnodes, pinit = warp_nodes(shape, "moving", "aff_ddf", "moving_aligned", prefix="pre_")
        wnodes, winit = warp_nodes(shape, "moving", OUTPUT, "warped")
        flat = numpy_helper.from_array(np.array([3, -1], np.int64), "cmp_flat")
        nodes = [*anodes, *pnodes, helper.make_node("Concat", ["moving_aligned", "fixed"], ["net_in"], axis=1),
                 *g.node, helper.make_node("Identity", ["net_ddf"], ["local_ddf"]),
                 helper.make_node("Reshape", ["net_ddf", "cmp_flat"], ["cmp_d"]),       # (3, N)
                 helper.make_node("MatMul", ["aff_M", "cmp_d"], ["cmp_Md"]),
                 helper.make_node("Reshape", ["cmp_Md", "aff_shape"], ["cmp_Md_vol"]),
                 helper.make_node("Add", ["aff_ddf", "cmp_Md_vol"], [OUTPUT]), *wnodes]
        winit = [*ainit, *pinit, flat, *winit]
    graph = helper.make_graph(nodes, "register_int8", inputs, outputs, initializer=[*g.initializer, *winit],
                              sparse_initializer=list(g.sparse_initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", REGISTER_OPSET)],
                              producer_name="localnet-toolchain")
    model.ir_version = net.ir_version
    model.metadata_props.extend(net.metadata_props)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path
