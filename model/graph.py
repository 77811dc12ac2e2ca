"""The network as a node list: what weights.bin (format 3) carries and hw/ interprets, and
LocalNet's node list.

    from model.graph import Graph, localnet_graph
    g = Graph.from_json(meta["graph"], "weights.bin")   # validated; GraphError names the node
    g.check(records, "weights.bin")                     # every record it names, of the right shape
    g = localnet_graph(levels=2, ddf_levels=[0, 1, 2], base_channels=8)

A graph is its nodes in execution order; each node produces one int8 tensor, named by its
`out` (the quant record that gives the tensor's exponent and ReLU, except for a maxpool).
Operators (hw/SPEC.md states each one's arithmetic):

- `input`: the quantised network input, `channels` wide, named `input`; first and only once.
- `conv`: a 3-D convolution (stride 1, 'same' zero padding, odd cubic kernel `k`) by the
  conv3d record `conv`, then the requantisation `out`; its operand may be read up-sampled x2
  (`up: nearest`).
- `add`: one or two operands, each optionally a channel slice (`ch: [lo, hi]`) and up-sampled
  x2 (`nearest`, or `linear`: trilinear, at 64x its scale), aligned exactly to the finer
  exponent, summed and requantised once to `out`.
- `maxpool`: 2x2x2, stride 2.

Each node states its output's shape: `channels`, and `level` (its grid is the input grid
divided by 2^level), so a graph can be checked, and cycles projected, without any weights.
`outputs` names the network's outputs (one: the displacement field). export/FORMAT.md has
the JSON.

localnet_graph and the Brevitas twin (quant/twin.py) are the only statements of LocalNet's
layer order in the integer path: hw/reference.py, hw/compiler.py and hw/golden.py interpret
whatever graph a file carries (tests/test_graph.py checks that the twin calls its quantisers
in localnet_graph's order, with its module names as record names). numpy-free and torch-free:
boards read it.
"""
from __future__ import annotations

from dataclasses import dataclass

OPS = ("input", "conv", "add", "maxpool")
UPS = ("", "nearest", "linear")
ARITY = {"input": (0, 0), "conv": (1, 1), "add": (1, 2), "maxpool": (1, 1)}
MAX_NODES, MAX_CHANNELS, MAX_LEVEL, MAX_KERNEL = 4096, 4096, 10, 15
RESERVED = ("ddf",)   # an alias the dumps give the output


class GraphError(ValueError):
    pass


@dataclass(frozen=True)
class Operand:
    t: str                 # the tensor read: an earlier node's `out`
    up: str = ""           # "", "nearest" or "linear": read up-sampled x2
    ch: tuple[int, int] | None = None   # channels lo..hi-1 of t (None: all)

    def to_json(self) -> dict:
        d: dict = {"t": self.t}
        if self.up:
            d["up"] = self.up
        if self.ch is not None:
            d["ch"] = list(self.ch)
        return d


@dataclass(frozen=True)
class Node:
    op: str
    out: str
    ins: tuple[Operand, ...] = ()
    channels: int = 0
    level: int = 0
    conv: str = ""         # conv: the conv3d record
    k: int = 0             # conv: the kernel size

    def to_json(self) -> dict:
        d = {"op": self.op, "out": self.out, "in": [o.to_json() for o in self.ins], "channels": self.channels,
             "level": self.level}
        if self.op == "conv":
            d.update(conv=self.conv, k=self.k)
        return d


class Graph:
    def __init__(self, nodes: list[Node], outputs: list[str], where: str = "graph"):
        self.nodes, self.outputs = list(nodes), list(outputs)
        self.by_out = {n.out: n for n in self.nodes}
        self._validate(where)

    @property
    def output(self) -> str:
        return self.outputs[0]

    @property
    def input(self) -> Node:
        return self.nodes[0]

    @property
    def divisor(self) -> int:
        """Every grid axis must be a multiple of this: 2^(the deepest level)."""
        return 1 << max(n.level for n in self.nodes)

    def last_use(self) -> dict[str, int]:
        """Tensor -> index of the last node reading it (len(nodes) for an output)."""
        last = {n.out: i for i, n in enumerate(self.nodes)}
        for i, n in enumerate(self.nodes):
            for o in n.ins:
                last[o.t] = i
        for t in self.outputs:
            last[t] = len(self.nodes)
        return last

    def width(self, o: Operand) -> int:
        """Channels an operand reads."""
        return self.by_out[o.t].channels if o.ch is None else o.ch[1] - o.ch[0]

    def to_json(self) -> dict:
        return {"nodes": [n.to_json() for n in self.nodes], "outputs": list(self.outputs)}

    @classmethod
    def from_json(cls, obj, where: str = "graph") -> "Graph":
        """Parse the metadata's `graph` table; every malformed field is a GraphError naming the node."""
        if not isinstance(obj, dict) or not isinstance(obj.get("nodes"), list) or not isinstance(obj.get("outputs"), list):
            raise GraphError(f"{where}: the graph must be a table with a 'nodes' list and an 'outputs' list")
        if not 1 <= len(obj["nodes"]) <= MAX_NODES:
            raise GraphError(f"{where}: {len(obj['nodes'])} nodes, 1..{MAX_NODES} allowed")
        nodes = []
        for i, d in enumerate(obj["nodes"]):
            at = f"{where}: node {i}"
            if not isinstance(d, dict) or d.get("op") not in OPS or not isinstance(d.get("out"), str):
                raise GraphError(f"{at}: needs 'op' (one of {', '.join(OPS)}) and an 'out' name")
            at = f"{where}: node {i} ({d['out']})"
            if not isinstance(d.get("in"), list) or any(not isinstance(o, dict) for o in d["in"]):
                raise GraphError(f"{at}: 'in' must be a list of operand tables")
            ins = []
            for o in d["in"]:
                ch = o.get("ch")
                if not isinstance(o.get("t"), str) or o.get("up", "") not in UPS or not (
                        ch is None or isinstance(ch, list) and len(ch) == 2 and all(type(v) is int for v in ch)) \
                        or set(o) - {"t", "up", "ch"}:
                    raise GraphError(f"{at}: operand {o!r}: needs 't' (a tensor), optional 'up' (nearest or "
                                     "linear) and 'ch' ([lo, hi])")
                ins.append(Operand(o["t"], o.get("up", ""), None if ch is None else (ch[0], ch[1])))
            ints = {f: d.get(f, 0) for f in ("channels", "level", "k")}
            if any(type(v) is not int for v in ints.values()) or not isinstance(d.get("conv", ""), str):
                raise GraphError(f"{at}: 'channels', 'level' and 'k' must be integers, 'conv' a record name")
            nodes.append(Node(d["op"], d["out"], tuple(ins), ints["channels"], ints["level"], d.get("conv", ""),
                              ints["k"]))
        if any(not isinstance(t, str) for t in obj["outputs"]):
            raise GraphError(f"{where}: 'outputs' must list tensor names")
        return cls(nodes, obj["outputs"], where)

    def _validate(self, where: str) -> None:
        seen: dict[str, Node] = {}
        for i, n in enumerate(self.nodes):
            at = f"{where}: node {i} ({n.out})"
            if not 0 < len(n.out.encode()) < 256 or n.out in RESERVED:
                raise GraphError(f"{at}: an output name must be 1..255 bytes and not {', '.join(RESERVED)}")
            if n.out in seen:
                raise GraphError(f"{at}: a second node writes {n.out}")
            lo, hi = ARITY[n.op]
            if not lo <= len(n.ins) <= hi:
                raise GraphError(f"{at}: {n.op} takes {lo}..{hi} operands, got {len(n.ins)}")
            if (n.op == "input") != (i == 0) or (n.op == "input") != (n.out == "input"):
                raise GraphError(f"{at}: the first node, and only it, is the input, named 'input'")
            if not 1 <= n.channels <= MAX_CHANNELS or not 0 <= n.level <= MAX_LEVEL:
                raise GraphError(f"{at}: channels {n.channels} (1..{MAX_CHANNELS}) or level {n.level} "
                                 f"(0..{MAX_LEVEL}) out of range")
            for o in n.ins:
                src = seen.get(o.t)
                if src is None:
                    raise GraphError(f"{at}: operand {o.t!r} is not the output of an earlier node")
                if o.ch is not None and not (0 <= o.ch[0] < o.ch[1] <= src.channels):
                    raise GraphError(f"{at}: channels {o.ch[0]}..{o.ch[1]} of {o.t}, which has {src.channels}")
                if o.up and src.level == 0:
                    raise GraphError(f"{at}: {o.t} is at full resolution and cannot be up-sampled")
                if n.op != "add" and (o.ch is not None or o.up not in ("", "nearest" if n.op == "conv" else "")):
                    raise GraphError(f"{at}: a {n.op} operand takes no channel slice"
                                     + (" and only nearest up-sampling" if n.op == "conv" else " nor up-sampling"))
                want = n.level + (1 if o.up else 0) - (1 if n.op == "maxpool" else 0)
                if src.level != want:
                    raise GraphError(f"{at}: operand {o.t} is at level {src.level}"
                                     f"{' (up-sampled)' if o.up else ''}, this node at level {n.level}")
                if n.op == "add" and self.width(o) != n.channels or n.op == "maxpool" and src.channels != n.channels:
                    raise GraphError(f"{at}: operand {o.t} has {self.width(o)} channels, the node {n.channels}")
            if n.op == "conv" and (n.k % 2 == 0 or not 1 <= n.k <= MAX_KERNEL or not n.conv):
                raise GraphError(f"{at}: a conv needs a 'conv' record and an odd kernel 1..{MAX_KERNEL}, got "
                                 f"{n.conv!r}, k {n.k}")
            if n.op != "conv" and (n.conv or n.k):
                raise GraphError(f"{at}: 'conv' and 'k' belong to conv nodes")
            if n.op == "input" and n.level:
                raise GraphError(f"{at}: the input is at level 0")
            seen[n.out] = n
        if len(self.outputs) != 1 or self.outputs[0] not in seen:
            raise GraphError(f"{where}: 'outputs' must name one node's output (the displacement field), got "
                             f"{self.outputs}")

    def check(self, records: dict, where: str = "graph") -> None:
        """The records match the graph: each node's records exist with the op and shape it needs,
        and no record is left over (a record the graph never reads is a graph of another network)."""
        used = set()
        for i, n in enumerate(self.nodes):
            at = f"{where}: node {i} ({n.out})"
            need = ([(n.conv, True)] if n.op == "conv" else []) + ([(n.out, False)] if n.op != "maxpool" else [])
            for name, conv in need:   # a conv3d record has weights, a quant record none
                r = records.get(name)
                if r is None or (r.weight is not None) != conv:
                    raise GraphError(f"{at}: record {name} ({'conv3d' if conv else 'quant'}) is "
                                     f"{'missing' if r is None else 'of another op'}")
                used.add(name)
            if n.op == "conv":
                want = (n.channels, self.width(n.ins[0]), n.k, n.k, n.k)
                if tuple(records[n.conv].weight.shape) != want:
                    raise GraphError(f"{at}: record {n.conv} has weights {tuple(records[n.conv].weight.shape)}, "
                                     f"the graph needs {want}")
        extra = sorted(set(records) - used)
        if extra:
            raise GraphError(f"{where}: record{'s' if len(extra) > 1 else ''} {', '.join(extra[:3])} not used by the graph")


def localnet_graph(levels: int, ddf_levels, base_channels: int, in_channels: int = 2, first_kernel: int = 7) -> Graph:
    """The graph of model.localnet.LocalNet / quant.twin.QuantLocalNet with these settings."""
    ch = [base_channels * 2 ** i for i in range(levels + 1)]
    nodes = [Node("input", "input", (), in_channels, 0)]

    def conv(x: str, rec: str, out: str, cout: int, level: int, k: int = 3, up: str = "") -> str:
        nodes.append(Node("conv", out, (Operand(x, up),), cout, level, conv=rec, k=k))
        return out

    def block(x: str, p: str, cout: int, level: int, k: int = 3, up: str = "") -> str:
        return conv(x, f"{p}.conv", f"{p}.act", cout, level, k, up)

    def add(out: str, level: int, channels: int, *ins: Operand) -> str:
        nodes.append(Node("add", out, ins, channels, level))
        return out

    x, skips = "input", []
    for i in range(levels):
        p = f"down.{i}"
        h0 = block(x, f"{p}.c0", ch[i], i, first_kernel if i == 0 else 3)
        u = block(block(h0, f"{p}.c1", ch[i], i), f"{p}.c2", ch[i], i)
        r = add(f"{p}.add", i, ch[i], Operand(u), Operand(h0))
        nodes.append(Node("maxpool", f"{p}.pool", (Operand(r),), ch[i], i + 1))
        x = f"{p}.pool"
        skips.append(h0)
    ddf = None

    def head(lv: int, feat: str):   # coarse to fine, as each level's features are done (then they die)
        nonlocal ddf
        if lv in ddf_levels:
            d = conv(feat, f"heads.{lv}", f"head_out.{lv}", 3, lv)
            ddf = d if ddf is None else add(f"ddf_add.{lv}", lv, 3, Operand(ddf, "linear"), Operand(d))
        elif ddf is not None:   # trilinear x2 of the coarser field
            ddf = add(f"ddf_up.{lv}", lv, 3, Operand(ddf, "linear"))

    h = block(x, "bottleneck", ch[levels], levels)
    head(levels, h)
    for j, lv in enumerate(reversed(range(levels))):
        p, c = f"up.{j}", ch[lv]
        # additive up-sampling: the sum of the channel halves (nearest up-sampling commutes with it)
        halves = add(f"{p}.halves", lv + 1, c, Operand(h, ch=(0, c)), Operand(h, ch=(c, 2 * c)))
        a = block(h, f"{p}.c0", c, lv, up="nearest")
        h0 = add(f"{p}.add_up", lv, c, Operand(a), Operand(halves, "nearest"))
        r1 = add(f"{p}.add_skip", lv, c, Operand(h0), Operand(skips[lv]))
        u = block(block(h0, f"{p}.c1", c, lv), f"{p}.c2", c, lv)
        h = add(f"{p}.add", lv, c, Operand(u), Operand(r1))
        head(lv, h)
    return Graph(nodes, [ddf], "LocalNet graph")


def graph_from_records(model: dict, records: dict, where: str) -> Graph:
    """The graph of a format 1 or 2 weights.bin (which are LocalNet by definition): from its
    metadata's `model` table (levels, ddf_levels) and the first convolution's shape."""
    ok = (isinstance(model, dict) and type(model.get("levels")) is int and 1 <= model["levels"] <= 8
          and isinstance(model.get("ddf_levels"), list) and model["ddf_levels"]
          and all(type(v) is int and 0 <= v <= model["levels"] for v in model["ddf_levels"]))
    first = records.get("down.0.c0.conv")
    if not ok or first is None or first.weight is None:
        raise GraphError(f"{where}: a format 1/2 file needs a valid 'model' table (levels 1..8, ddf_levels in "
                         "[0, levels]) and a record down.0.c0.conv")
    cout, cin, k = first.weight.shape[:3]
    return localnet_graph(model["levels"], sorted(set(model["ddf_levels"])), cout, cin, k)
