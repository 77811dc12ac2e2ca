"""weights.bin of an untrained network of any shape, with magnitudes that exercise the integer path.

    from export.untrained import untrained_weights
    untrained_weights(model_cfg, (8, 8, 8), "w.bin", seed=1)

For verifying the integer chain (reference, compiler, engine model, RTL) on networks nobody has
trained: the paper-scale config, the tests' small one. The Brevitas twin of `model_cfg` gets
uniform weights and biases in [-0.5, 0.5], a fraction `sparsity` of each layer's weights
zeroed (or +-gain * sqrt(6 / fan-in) for deep networks), and each output channel scaled by 2^u
(u uniform in [-3, 1]) so that per-channel
weight exponents differ from lane to lane. It is calibrated on dim random images (a quarter of
the range), so full-range inputs saturate activations; ties of the rounding occur too.
"""
from __future__ import annotations

from pathlib import Path

import torch

from export.export import network_meta, weight_records
from export.weights import write_weights
from quant.twin import QuantLocalNet, calibrate


def untrained_weights(model_cfg, grid, path: Path | str, seed: int = 1, sparsity: float = 0.25,
                      weight_scale: str = "channel", calibration_images: int = 2, fan_in_gain: float | None = None) -> Path:
    """Write weights.bin for `model_cfg` (a model.config ModelConfig) on `grid` (D, H, W) at
    `path`; returns the path. `fan_in_gain`: weights uniform in +-gain * sqrt(6 / fan-in)
    instead of +-0.5, so that a deep, wide network's activations keep their size from layer to
    layer (else the exponents of the deep layers drift apart by more than an add can align)."""
    torch.manual_seed(seed)
    twin = QuantLocalNet(model_cfg, weight_scale=weight_scale)
    for m in twin.modules():
        if isinstance(m, torch.nn.Conv3d):
            fan_in = m.weight[0].numel()
            b = 0.5 if fan_in_gain is None else fan_in_gain * (6.0 / fan_in) ** 0.5
            torch.nn.init.uniform_(m.weight, -b, b)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
            with torch.no_grad():
                m.weight.mul_((torch.rand_like(m.weight) >= sparsity).float())
                m.weight.mul_(torch.exp2(4 * torch.rand(m.weight.shape[0], 1, 1, 1, 1) - 3))
    xs = [0.25 * torch.rand(1, 2, *grid) for _ in range(calibration_images)]
    calibrate(twin, xs)
    records = weight_records(twin, xs[0])
    path = Path(path)
    write_weights(path, records, {**network_meta(model_cfg), "input_shape": [1, 2, *grid]})
    return path
