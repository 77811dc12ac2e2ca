"""LocalNet (Hu et al. 2018, label-reg) in PyTorch, shaped for an integer deployment path.

Input (N, 2, X, Y, Z) float: channel 0 moving image, channel 1 fixed image (label-reg's order).
Output (N, 3, X, Y, Z) float: dense displacement field in *voxel* units of the working
grid, channel k = displacement along array axis k; the moving image is sampled at
x + ddf(x) (see model.warp).

Structure as label-reg's LocalNet: `levels` residual down-sampling blocks (the first
with a 7^3 kernel), a bottleneck convolution, `levels` up-sampling blocks with additive
up-sampling and skip connections, and a 3^3 displacement head at each level listed in
`ddf_levels` (0 = full resolution, `levels` = bottleneck), summed into one field.
Channels at level l: base_channels * 2**l.

Departures from label-reg, each for the integer path:
- feature up-sampling is nearest-neighbour x2 followed by a 3^3 convolution instead of a
  transposed convolution, because onnxruntime has no quantised ConvTranspose on CPU and
  nearest up-sampling moves int8 values without arithmetic;
- additive up-sampling uses the same nearest x2 (label-reg resizes trilinearly), so it is
  an exact integer add of channel halves;
- coarse displacement heads are brought to full resolution by repeated trilinear x2
  (half-pixel, align_corners=False), whose weights 1/4 and 3/4 per axis are powers of two
  over 64 in 3-D, so an integer kernel computes it exactly and rounds once;
- BatchNorm is used in training and folded into the convolution for deployment
  (`fold_batchnorm`), so the deployed network is convolutions with biases only;
- convolutions before a BatchNorm carry no bias (BatchNorm's shift replaces it);
  displacement heads, which have no BatchNorm, carry one.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig


class ConvBN(nn.Module):
    """conv (no bias) + BatchNorm [+ ReLU]; after `fold_batchnorm`, conv with bias."""

    def __init__(self, cin: int, cout: int, k: int = 3, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm3d(cout)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


def upsample_nearest2(x):  # (N, C, D, H, W) -> (N, C, 2D, 2H, 2W)
    return F.interpolate(x, scale_factor=2, mode="nearest")


def upsample_linear2(x):  # (N, C, D, H, W) -> (N, C, 2D, 2H, 2W), half-pixel trilinear
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k0: int = 3):
        super().__init__()
        self.c0 = ConvBN(cin, cout, k0)
        self.c1 = ConvBN(cout, cout)
        self.c2 = ConvBN(cout, cout, relu=False)

    def forward(self, x):
        h0 = self.c0(x)  # skip, full resolution of this level
        r = F.relu(self.c2(self.c1(h0)) + h0)
        return F.max_pool3d(r, 2), h0


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        assert cin == 2 * cout
        self.c0 = ConvBN(cin, cout)  # replaces label-reg's transposed convolution
        self.c1 = ConvBN(cout, cout)
        self.c2 = ConvBN(cout, cout, relu=False)
        self.cout = cout

    def forward(self, x, skip):
        up = upsample_nearest2(x)
        # additive up-sampling: sum of the two channel halves (nearest up-sampling commutes with it)
        h0 = self.c0(up) + upsample_nearest2(x[:, : self.cout] + x[:, self.cout :])
        r1 = h0 + skip
        return F.relu(self.c2(self.c1(h0)) + r1)


class LocalNet(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int = 2):
        super().__init__()
        self.cfg = cfg
        nc = [cfg.base_channels * 2**i for i in range(cfg.levels + 1)]
        self.down = nn.ModuleList(
            [DownBlock(in_channels if i == 0 else nc[i - 1], nc[i], 7 if i == 0 else 3) for i in range(cfg.levels)])
        self.bottleneck = ConvBN(nc[cfg.levels - 1], nc[cfg.levels])
        self.up = nn.ModuleList([UpBlock(nc[i + 1], nc[i]) for i in reversed(range(cfg.levels))])
        self.heads = nn.ModuleDict({str(lv): nn.Conv3d(nc[lv], 3, 3, padding=1) for lv in sorted(cfg.ddf_levels)})
        for head in self.heads.values():  # label-reg starts from an almost-zero field
            nn.init.normal_(head.weight, 0.0, 1e-5)
            nn.init.zeros_(head.bias)

    def forward(self, x):  # (N, 2, X, Y, Z) -> (N, 3, X, Y, Z) voxels
        ddf = None
        for lv, feat in level_features(self, x):  # coarse to fine: ddf = sum_l U^l(head_l)
            if ddf is not None:
                ddf = upsample_linear2(ddf)
            if str(lv) in self.heads:
                d = self.heads[str(lv)](feat)
                ddf = d if ddf is None else ddf + d
        return ddf


def level_features(net: nn.Module, x):
    """The encoder-decoder of LocalNet or its quantised twin (modules `down`, `bottleneck`, `up`):
    yields (level, features) as they are computed, coarse to fine: level `levels` the bottleneck,
    0 full resolution. The heads read each as it comes, so a level's features die at its head
    (what keeps the deployed memory plan small: model/graph.py has the same order)."""
    skips = []
    for blk in net.down:
        x, h0 = blk(x)
        skips.append(h0)
    h = net.bottleneck(x)
    yield net.cfg.levels, h
    for lv, blk in zip(reversed(range(net.cfg.levels)), net.up):
        h = blk(h, skips[lv])
        yield lv, h


def fold_batchnorm(model: LocalNet) -> LocalNet:
    """A new model with every BatchNorm merged into its convolution (eval-mode statistics).

    w' = w * g / sqrt(var + eps), b' = beta - mean * g / sqrt(var + eps); BN becomes Identity.
    """
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, ConvBN):
            bn, conv = m.bn, m.conv
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            new = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True)
            with torch.no_grad():
                new.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1, 1))
                new.bias.copy_(bn.bias - bn.running_mean * scale)
            m.conv, m.bn = new, nn.Identity()
    return folded


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, non-zero) parameters of the convolutions, i.e. what a deployment stores."""
    total = nonzero = 0
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            for p in (m.weight, m.bias):
                if p is not None:
                    total += p.numel()
                    nonzero += int(torch.count_nonzero(p))
    return total, nonzero
