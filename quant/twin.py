"""QuantLocalNet: the Brevitas integer twin of the BatchNorm-folded LocalNet, and its integers.

    from quant.twin import quant_twin, calibrate, integer_params
    twin = quant_twin(fold_batchnorm(net), cfg.model, weight_bits=8)
    calibrate(twin, inputs)                         # activation scales from (N, 2, X, Y, Z) inputs
    params = integer_params(twin, example)          # int8 weights, int32 biases, exponents per conv

The twin is built from the same config with the same parameter names as the folded network
(model.localnet), so a folded state_dict and the pruning masks load into it directly. Every
tensor that crosses a layer boundary is quantised (the numeric contract of hw/SPEC.md):

    input            Int8ActPoT        the 2-channel (moving, fixed) image, int8
    convolution      Int8WeightPoT / Int4WeightPoT weights (narrow: [-127, 127] / [-7, 7]), one
                     scale per tensor, or (`weight_scale="channel"`) Int8/Int4WeightPoTPerChannel,
                     one per output channel; Int32Bias at the accumulator scale 2^-(e_in + e_w)
                     (per channel where e_w is), then an int8
                     requantisation, with ReLU where the float network has one
    add              both int8 inputs aligned exactly, summed, requantised once to int8
                     (with ReLU where the float network has one)
    max-pool, nearest up-sampling   move int8 values, scale unchanged
    trilinear x2     (coarse displacement fields) summed exactly with the finer head, then
                     requantised once to int8 (a separate requantisation only at a level
                     without a head: onnxruntime would run DQ-Resize-Q of equal scales as an
                     int8 Resize with its own rounding)
    displacement     int8 at its own power-of-two scale, in voxels (`QuantLocalNet.output_quant`)

Scales are powers of two (Brevitas' fixed-point quantisers: ceil of log2, learned in the log2
domain), rounding is half-to-even, activations saturate to [-128, 127].
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

with warnings.catch_warnings():  # brevitas announces an optional package it does not need here
    warnings.filterwarnings("ignore", message="fast_hadamard_transform")
    import brevitas
    import brevitas.nn as qnn
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Int32Bias
    from brevitas.quant.fixed_point import Int8WeightPerChannelFixedPoint
    from brevitas.quant_tensor import QuantTensor

from model.config import ConfigError
from model.localnet import level_features, upsample_linear2, upsample_nearest2


class Int8WeightPoT(Int8WeightPerTensorFixedPoint):
    """int8 weights in [-127, 127], per-tensor scale 2^-e from the max |w| (ceil).

    The floor applies to the max |w| before the division by 127: e <= 23. It only matters for a
    layer whose weights are all (nearly) zero, whose bias then quantises at 2^-(e_in + 23)."""
    scaling_min_val = 2.0**-16


class Int4WeightPoT(Int8WeightPoT):
    """int4 weights in [-7, 7], per-tensor scale 2^-e from the max |w| (ceil)."""
    bit_width = 4


CHANNEL_SPREAD = 2.0**-6  # a channel's max |w| counts as at least 1/64 of the layer's (below)


class ChannelAbsMaxFloored(brevitas.jit.ScriptModule):
    """Per-output-channel max |w|, floored at CHANNEL_SPREAD times the layer's max |w|.

    Without the floor an (almost) empty channel, e.g. one pruned away, gets a scale 2^-23 and
    its int32 bias at 2^-(e_in + 23) overflows; with it every channel's exponent lies within 6
    of the finest a per-tensor scale would give the layer, so biases stay as far inside int32
    as per-tensor ones (within a factor 64) and the requantisation shifts stay bounded. A
    channel that small would hold integers below 2 at the per-tensor scale anyway."""
    __constants__ = ["stats_reduce_dim"]

    def __init__(self, stats_reduce_dim: Optional[int] = None, keepdim: bool = False) -> None:
        super().__init__()
        self.stats_reduce_dim = stats_reduce_dim
        self.keepdim = keepdim

    @brevitas.jit.script_method
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.max(torch.abs(x), dim=self.stats_reduce_dim, keepdim=self.keepdim)[0]
        return torch.maximum(m, torch.max(m) * CHANNEL_SPREAD)


class Int8WeightPoTPerChannel(Int8WeightPerChannelFixedPoint):
    """int8 weights in [-127, 127], one scale 2^-e per output channel from its max |w| (ceil),
    floored as ChannelAbsMaxFloored says."""
    scaling_min_val = 2.0**-16
    scaling_stats_impl = ChannelAbsMaxFloored


class Int4WeightPoTPerChannel(Int8WeightPoTPerChannel):
    """int4 weights in [-7, 7], one scale 2^-e per output channel."""
    bit_width = 4


WEIGHT_QUANT = {("tensor", 8): Int8WeightPoT, ("tensor", 4): Int4WeightPoT,
                ("channel", 8): Int8WeightPoTPerChannel, ("channel", 4): Int4WeightPoTPerChannel}
WEIGHT_SCALES = ("tensor", "channel")


class Int8ActPoT(Int8ActPerTensorFixedPoint):
    """int8 activations in [-128, 127], per-tensor scale 2^-e, calibrated then learned."""


def _value(x):
    return x.value if isinstance(x, QuantTensor) else x


class QConv(nn.Module):
    """Folded ConvBN: conv with int32 bias, then int8 requantisation [+ ReLU]. Same names as ConvBN."""

    def __init__(self, cin: int, cout: int, k: int, relu: bool, q: "QuantSpec"):
        super().__init__()
        self.conv = qnn.QuantConv3d(cin, cout, k, padding=k // 2, bias=True, weight_quant=q.weight,
                                    bias_quant=q.bias, return_quant_tensor=q.on)
        self.act = q.act_layer(relu)

    def forward(self, x):
        return self.act(self.conv(x))


class QuantSpec:
    """The quantisers of one twin; `on=False` builds the float twin (every quantiser None)."""

    def __init__(self, weight_bits: int = 8, on: bool = True, weight_scale: str = "tensor"):
        if weight_bits not in (4, 8):
            raise ConfigError(f"weight bits must be 4 or 8, got {weight_bits}")
        if weight_scale not in WEIGHT_SCALES:
            raise ConfigError(f"weight scale must be one of {WEIGHT_SCALES}, got {weight_scale!r}")
        self.on = on
        self.weight = WEIGHT_QUANT[weight_scale, weight_bits] if on else None
        self.bias = Int32Bias if on else None
        self.act = Int8ActPoT if on else None

    def act_layer(self, relu: bool) -> nn.Module:
        cls = qnn.QuantReLU if relu else qnn.QuantIdentity
        return cls(act_quant=self.act, return_quant_tensor=self.on)


class QDownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k0: int, q: QuantSpec):
        super().__init__()
        self.c0 = QConv(cin, cout, k0, True, q)
        self.c1 = QConv(cout, cout, 3, True, q)
        self.c2 = QConv(cout, cout, 3, False, q)
        self.add = q.act_layer(relu=True)

    def forward(self, x):
        h0 = self.c0(x)
        r = self.add(_value(self.c2(self.c1(h0))) + _value(h0))
        return F.max_pool3d(r, 2), h0


class QUpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, q: QuantSpec):
        super().__init__()
        self.c0 = QConv(cin, cout, 3, True, q)
        self.c1 = QConv(cout, cout, 3, True, q)
        self.c2 = QConv(cout, cout, 3, False, q)
        self.halves = q.act_layer(relu=False)  # additive up-sampling: sum of the channel halves
        self.add_up = q.act_layer(relu=False)  # c0(up(x)) + up(halves)
        self.add_skip = q.act_layer(relu=False)  # h0 + skip
        self.add = q.act_layer(relu=True)  # c2(c1(h0)) + (h0 + skip)
        self.cout = cout

    def forward(self, x, skip):
        xv = _value(x)
        halves = self.halves(xv[:, : self.cout] + xv[:, self.cout:])
        h0 = self.add_up(_value(self.c0(upsample_nearest2(x))) + _value(upsample_nearest2(halves)))
        r1 = self.add_skip(_value(h0) + _value(skip))
        return self.add(_value(self.c2(self.c1(h0))) + _value(r1))


class QuantLocalNet(nn.Module):
    """The integer twin of fold_batchnorm(LocalNet(cfg)); forward returns the dequantised ddf (voxels)."""

    def __init__(self, cfg, weight_bits: int = 8, quantize: bool = True, in_channels: int = 2,
                 weight_scale: str = "tensor"):
        super().__init__()
        q = QuantSpec(weight_bits, quantize, weight_scale)
        self.cfg, self.weight_bits, self.weight_scale = cfg, weight_bits, weight_scale
        nc = [cfg.base_channels * 2**i for i in range(cfg.levels + 1)]
        self.input = q.act_layer(relu=False)
        self.down = nn.ModuleList([QDownBlock(in_channels if i == 0 else nc[i - 1], nc[i], 7 if i == 0 else 3, q)
                                   for i in range(cfg.levels)])
        self.bottleneck = QConv(nc[cfg.levels - 1], nc[cfg.levels], 3, True, q)
        self.up = nn.ModuleList([QUpBlock(nc[i + 1], nc[i], q) for i in reversed(range(cfg.levels))])
        self.heads = nn.ModuleDict({str(lv): qnn.QuantConv3d(nc[lv], 3, 3, padding=1, bias=True, weight_quant=q.weight,
                                                              bias_quant=q.bias, return_quant_tensor=q.on)
                                    for lv in sorted(cfg.ddf_levels)})
        levels = sorted(cfg.ddf_levels)
        self.head_out = nn.ModuleDict({str(lv): q.act_layer(relu=False) for lv in levels})
        # coarse-to-fine sum of the heads: at a level with a head, trilinear x2 of the coarser field
        # plus the head, rounded once (ddf_add); at a level without one, the up-sampling alone (ddf_up)
        self.ddf_add = nn.ModuleDict({str(lv): q.act_layer(relu=False) for lv in levels[:-1]})
        self.ddf_up = nn.ModuleDict({str(lv): q.act_layer(relu=False) for lv in range(levels[-1]) if lv not in levels})

    def output_quant_name(self) -> str:
        """Module name of the quantiser that produces the returned ddf, following `forward`:
        at the finest level, ddf_add (a head summed with the coarser field), head_out (the only
        head) or ddf_up (no head there)."""
        levels = sorted(int(k) for k in self.heads)
        if levels[0] == 0:
            return "ddf_add.0" if len(levels) > 1 else "head_out.0"
        return "ddf_up.0"

    @property
    def output_quant(self) -> nn.Module:
        """The quantiser of the returned ddf: its scale 2^-e is the exponent of the network output."""
        return self.get_submodule(self.output_quant_name())

    def forward(self, x):  # (N, 2, X, Y, Z) float -> (N, 3, X, Y, Z) voxels (dequantised)
        ddf = None
        for lv, feat in level_features(self, self.input(x)):   # coarse to fine, each head as its level is done
            up = None if ddf is None else upsample_linear2(_value(ddf))  # exact: multiples of 2^-(e+6)
            if str(lv) in self.heads:
                d = self.head_out[str(lv)](self.heads[str(lv)](feat))
                ddf = d if up is None else self.ddf_add[str(lv)](up + _value(d))
            elif up is not None:
                ddf = self.ddf_up[str(lv)](up)
        return _value(ddf)


def quant_twin(folded: nn.Module, cfg, weight_bits: int = 8, quantize: bool = True,
               weight_scale: str = "tensor") -> QuantLocalNet:
    """A QuantLocalNet holding the weights of a BatchNorm-folded LocalNet."""
    twin = QuantLocalNet(cfg, weight_bits, quantize, weight_scale=weight_scale)
    missing, unexpected = twin.load_state_dict(folded.state_dict(), strict=False)
    own = {k for k, _ in folded.named_parameters()}
    if unexpected or any(k in own for k in missing):
        raise ValueError(f"folded network does not match the twin: missing {missing}, unexpected {unexpected}")
    return twin


def quantizer_scales(twin: QuantLocalNet) -> dict[str, float]:
    """Every weight, bias and activation scale of the twin (eval mode), by module name."""
    scales = {}
    for name, m in twin.named_modules():
        if isinstance(m, qnn.QuantConv3d):
            scales[f"{name}.weight"] = float(m.quant_weight().scale.detach().max())
        elif isinstance(m, (qnn.QuantIdentity, qnn.QuantReLU)):
            scales[name] = float(m.act_quant.scale().detach())
    return scales


def pot_exponent(scale) -> int:
    """e of a power-of-two scale 2^-e (a float or a one-element tensor)."""
    return int(round(-math.log2(float(scale))))


def integer_params(twin: QuantLocalNet, example: torch.Tensor) -> dict[str, dict]:
    """The integers a deployment stores, per convolution (module name):

    {"weight": int8 array (C_out, C_in, kD, kH, kW), "bits": 4|8, "e_in": int,
     "e_w": int64 array (C_out,), the weight exponent of each output channel (all equal unless
     "per_channel", twin.weight_scale == "channel"),
     "bias": int32 array (C_out,) at the accumulator scale 2^-(e_in + e_w)}, scale = 2^-e.
    `example` (1, 2, X, Y, Z) is run once to read each convolution's input scale.
    """
    e_in = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: e_in.__setitem__(name, inp[0].scale))
             for name, m in twin.named_modules() if isinstance(m, qnn.QuantConv3d)]
    try:
        with torch.no_grad():
            twin.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    with torch.no_grad():
        for name, m in twin.named_modules():
            if not isinstance(m, qnn.QuantConv3d):
                continue
            qw = m.quant_weight()
            s_w = qw.scale.detach().double()  # () or (C_out, 1, 1, 1, 1)
            s_in = float(e_in[name])
            w = torch.round(qw.value.double() / s_w)
            s_b = (s_w * s_in).reshape(-1)
            b = torch.clamp(torch.round(m.bias.double() / s_b), -2**31, 2**31 - 1)  # Int32Bias: RNE, saturate
            e_w = -torch.round(torch.log2(s_w.reshape(-1))).to(torch.int64)
            if not torch.equal(torch.exp2(-e_w.double()), s_w.reshape(-1)):
                raise ValueError(f"{name}: weight scale is not a power of two")
            per_channel = twin.weight_scale == "channel"
            e_w = e_w.expand(w.shape[0])  # a per-tensor scale: the same exponent for every channel
            out[name] = {"weight": w.to(torch.int8).numpy(), "bits": twin.weight_bits,
                         "e_w": e_w.numpy().astype(np.int64), "per_channel": per_channel,
                         "e_in": pot_exponent(s_in), "bias": b.to(torch.int64).numpy().astype(np.int32)}
    return out


def calibrate(twin: QuantLocalNet, inputs) -> None:
    """Set the activation scales from `inputs`, network inputs (N, 2, X, Y, Z) (eval mode, no gradients)."""
    twin.eval()
    with torch.no_grad(), calibration_mode(twin):
        for x in inputs:
            twin(x)
