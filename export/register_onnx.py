"""register_int8.onnx: the int8 network followed by the warp of the moving image (GridSample).

    from export.register_onnx import export_register
    export_register("localnet_int8.onnx", cfg, "register_int8.onnx")

Inputs `moving`, `fixed` (1, 1, X, Y, Z) float32 on the working grid; outputs `ddf`
(1, 3, X, Y, Z) in voxels (the network's output, unchanged) and `warped` (1, 1, X, Y, Z), the
moving image sampled at x + ddf(x): GridSample at opset 20, trilinear, border padding,
align_corners=1, which is model.warp's clamp-to-border rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from export.onnx import INPUT, OUTPUT
from model.artifacts import atomic_path
from model.config import Config

REGISTER_OPSET = 20  # GridSample on 5-D inputs


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
