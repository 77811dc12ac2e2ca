"""The graph in weights.bin (model/graph.py): LocalNet's node list follows the twin, a malformed
graph is refused by node, and a network that is not LocalNet runs through the reference, the
compiler and the engine model (the RTL: tests/test_rtl.py) from its file alone."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.graph import Graph, GraphError, Node, Operand, localnet_graph

# A network of another shape than LocalNet's: 1 level, a 1^3 kernel, a slice add, a skip, two
# heads summed coarse to fine, on a grid that is not a cube
OTHER = [Node("input", "input", (), 2, 0),
         Node("conv", "a.act", (Operand("input"),), 8, 0, conv="a.conv", k=3),
         Node("conv", "b.act", (Operand("a.act"),), 16, 0, conv="b.conv", k=1),
         Node("maxpool", "p", (Operand("b.act"),), 16, 1),
         Node("conv", "c.act", (Operand("p"),), 16, 1, conv="c.conv", k=3),
         Node("add", "d", (Operand("c.act"), Operand("p")), 16, 1),
         Node("conv", "e.act", (Operand("d", "nearest"),), 8, 0, conv="e.conv", k=3),
         Node("add", "f", (Operand("e.act"), Operand("a.act")), 8, 0),
         Node("add", "g", (Operand("b.act", ch=(0, 8)), Operand("b.act", ch=(8, 16))), 8, 0),
         Node("add", "h", (Operand("f"), Operand("g")), 8, 0),
         Node("conv", "coarse", (Operand("d"),), 3, 1, conv="coarse.conv", k=3),
         Node("conv", "fine", (Operand("h"),), 3, 0, conv="fine.conv", k=3),
         Node("add", "out", (Operand("fine"), Operand("coarse", "linear")), 3, 0)]
OTHER_GRID = (4, 6, 8)


def other_weights(path, seed: int = 0):
    """weights.bin of OTHER: random int8 weights (a quarter zero), per-channel exponents, and
    requantisation shifts sized to the accumulators so that values neither vanish nor all
    saturate (some do). Returns the WeightsFile."""
    from export.weights import read_weights, write_weights
    from hw.compiler import graph_weights

    rng = np.random.default_rng(seed)
    g = Graph(OTHER, ["out"])
    wb = graph_weights(g)
    e = {}
    for n in g.nodes:
        r = wb.records.get(n.out)
        if n.op == "input":
            r.e0 = 7
        elif n.op == "conv":
            c = wb.records[n.conv]
            c.weight = rng.integers(-127, 128, c.weight.shape).astype(np.int8)
            c.weight[rng.random(c.weight.shape) < 0.25] = 0
            c.bias = rng.integers(-3000, 3000, c.weight.shape[0]).astype(np.int32)
            e_w = rng.integers(5, 9, c.weight.shape[0])
            c.e_ch, c.e0, c.e1 = e_w, 0, e[n.ins[0].t]
            s = round(math.log2(math.sqrt(c.weight[0].size) * 2700 / 48))   # typical |acc| -> about 48
            r.e0, r.relu = c.e1 + int(np.median(e_w)) - s, bool(rng.integers(2))
        elif n.op == "add":
            r.e0, r.relu = max(e[o.t] + (6 if o.up == "linear" else 0) for o in n.ins) - 1, n.out == "h"
        e[n.out] = e[n.ins[0].t] if n.op == "maxpool" else r.e0
    write_weights(path, list(wb.records.values()), {**wb.meta, "input_shape": [1, 2, *OTHER_GRID]})
    return read_weights(path)


def test_localnet_graph_follows_the_twin():
    """The twin calls its quantisers (the records) in the order the graph lists them, and the
    graph's shapes are the twin's: LocalNet's order is stated twice (model/graph.py, the twin),
    and this keeps the two one."""
    import torch
    import brevitas.nn as qnn

    from model.config import ModelConfig
    from quant.twin import QuantLocalNet

    cfg = ModelConfig(base_channels=4, levels=2, ddf_levels=[0, 2])
    twin = QuantLocalNet(cfg).eval()
    calls = []
    for name, m in twin.named_modules():
        if isinstance(m, (qnn.QuantConv3d, qnn.QuantIdentity, qnn.QuantReLU)):
            m.register_forward_pre_hook(lambda mod, inp, name=name: calls.append(name))
    with torch.no_grad():
        twin(torch.rand(1, 2, 8, 8, 8))
    g = localnet_graph(2, [0, 2], 4)
    order = [r for n in g.nodes for r in ([n.conv] if n.op == "conv" else []) + ([n.out] if n.op != "maxpool" else [])]
    assert calls == order and g.output == twin.output_quant_name() == "ddf_add.0"
    convs = {name: m.weight.shape for name, m in twin.named_modules() if isinstance(m, qnn.QuantConv3d)}
    assert {n.conv: (n.channels, g.width(n.ins[0]), n.k, n.k, n.k) for n in g.nodes if n.op == "conv"} == convs
    assert Graph.from_json(g.to_json()).to_json() == g.to_json()


@pytest.mark.parametrize("edit, message", [
    (lambda j: j["nodes"].pop(0), "node 0 (down.0.c0.act): the first node, and only it, is the input"),
    (lambda j: j["nodes"][1]["in"][0].update(t="ddf_add.0"), "operand 'ddf_add.0' is not the output of an earlier node"),
    (lambda j: j["nodes"][1].update(k=4), "a conv needs a 'conv' record and an odd kernel"),
    (lambda j: j["nodes"][1].update(level=1), "operand input is at level 0, this node at level 1"),
    (lambda j: j["nodes"][4].update(channels=8), "operand down.0.c2.act has 4 channels, the node 8"),
    (lambda j: j["nodes"][4]["in"][0].update(ch=[0, 9]), "channels 0..9 of down.0.c2.act, which has 4"),
    (lambda j: j["nodes"][6]["in"][0].update(ch=[0, 4]), "a conv operand takes no channel slice and only nearest"),
    (lambda j: j["nodes"][2]["in"][0].update(up="nearest"), "down.0.c0.act is at full resolution"),
    (lambda j: j["nodes"][3].update(out="down.0.c0.act"), "a second node writes down.0.c0.act"),
    (lambda j: j.update(outputs=["nowhere"]), "'outputs' must name one node's output"),
    (lambda j: j["nodes"][3].update(op="softmax"), "node 3: needs 'op'"),
    (lambda j: j["nodes"][3].update(channels="4"), "'channels', 'level' and 'k' must be integers"),
])
def test_graph_refusals_name_the_node(edit, message):
    j = localnet_graph(1, [0, 1], 4).to_json()
    edit(j)
    with pytest.raises(GraphError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        Graph.from_json(j, "w.bin: graph")


def test_another_network_runs_from_its_file(tmp_path):
    """OTHER, which is not LocalNet, from its weights.bin alone: the compiler maps every node
    (the slice add, the 1^3 kernel, the fused adds) and the engine model leaves every tensor of
    the reference's trace in memory, exactly; a grid the graph's levels do not divide is refused."""
    from hw.compiler import CompileError, compile_weights, get_tensor
    from hw.engine_model import cycle_model, run_image, total_cycles
    from hw.reference import Reference, quantize_input

    wb = other_weights(tmp_path / "w.bin")
    ref = Reference(wb)
    rng = np.random.default_rng(1)
    x = quantize_input(rng.random(OTHER_GRID), rng.random(OTHER_GRID), ref.rec("input", 2))
    trace: dict = {}
    y = ref.run(x, trace)
    assert y.q.shape == (1, 3, *OTHER_GRID) and set(trace) == {n.out for n in OTHER if n.op != "maxpool"} | {"ddf"}
    sat = np.mean([np.mean(np.abs(t.q.astype(int)) == 127) for t in trace.values()])
    zero = np.mean([np.mean(t.q == 0) for t in trace.values()])
    assert 0 < sat < 0.3 and zero < 0.6, (sat, zero)   # the values exercise the datapath
    prog = compile_weights(wb)
    assert prog.fused
    mem, per = run_image(prog.image(x.q))
    for name, t in trace.items():
        if name not in prog.fused:
            assert np.array_equal(get_tensor(mem, prog.tensors[name]), t.q), name
    assert total_cycles(per) == total_cycles(cycle_model(prog))
    with pytest.raises(CompileError, match=r"every axis must divide by 2 \(2\^ the graph's deepest level\)"):
        compile_weights(wb, grid=(4, 6, 7))
