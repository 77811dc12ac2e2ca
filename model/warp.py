"""Trilinear spatial transformer in voxel units.

    warped = warp(moving, ddf)     # moving (N, C, X, Y, Z), ddf (N, 3, X, Y, Z) voxels

warped[n, c, p] = moving[n, c, p + ddf[n, :, p]], interpolated trilinearly from the 8
neighbours. Boundary: sampling positions are clamped to [0, size - 1] per axis, so a
position beyond the volume reads the nearest edge voxel (like GridSample with
padding_mode='border', align_corners=True). Positions are used as voxel indices
directly, with no normalisation to [-1, 1], so a displacement by whole voxels hits
voxel centres exactly and the warp reproduces the shifted values bit for bit.
"""
from __future__ import annotations

import math

import torch


def identity_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """(3, X, Y, Z) voxel coordinates."""
    return torch.stack(torch.meshgrid(*[torch.arange(s, device=device, dtype=dtype) for s in shape], indexing="ij"))


def warp(moving: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    n, c, *shape = moving.shape
    assert ddf.shape == (n, 3, *shape), f"ddf {tuple(ddf.shape)} does not match moving {tuple(moving.shape)}"
    pos = identity_grid(shape, ddf.device, ddf.dtype) + ddf  # (N, 3, X, Y, Z)
    size = torch.tensor(shape, device=ddf.device, dtype=ddf.dtype).view(1, 3, 1, 1, 1)
    pos = torch.minimum(torch.clamp(pos, min=0), size - 1)
    lo = torch.minimum(torch.floor(pos), torch.clamp(size - 2, min=0))
    t = pos - lo  # in [0, 1]
    lo = lo.long()
    strides = (shape[1] * shape[2], shape[2], 1)
    flat = moving.reshape(n, c, -1)
    out = 0
    for dx in (0, 1):
        wx = t[:, 0] if dx else 1 - t[:, 0]
        for dy in (0, 1):
            wy = t[:, 1] if dy else 1 - t[:, 1]
            for dz in (0, 1):
                wz = t[:, 2] if dz else 1 - t[:, 2]
                idx = ((lo[:, 0] + dx) * strides[0] + (lo[:, 1] + dy) * strides[1] + (lo[:, 2] + dz))
                vals = torch.gather(flat, 2, idx.reshape(n, 1, -1).expand(n, c, -1)).reshape(n, c, *shape)
                out = out + (wx * wy * wz).unsqueeze(1) * vals
    return out


def warp_grid_sample(moving: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """`warp` through torch's fused GridSample kernel (trilinear, border padding,
    align_corners=True: the same clamped map), for training: on the training loss's label batch,
    forward and backward, it is several times faster than `warp` (docs/experiments.md, "Training
    speed"). The positions pass through the [-1, 1] normalisation and back, so it equals `warp`
    only within float32 rounding (about 1e-6 of the values; tests/test_model.py), not bit for bit:
    evaluation, figures and the exported register models keep `warp`."""
    n, c, *shape = moving.shape
    assert ddf.shape == (n, 3, *shape), f"ddf {tuple(ddf.shape)} does not match moving {tuple(moving.shape)}"
    pos = identity_grid(shape, ddf.device, ddf.dtype) + ddf  # (N, 3, X, Y, Z) voxels
    scale = torch.tensor([2.0 / max(s - 1, 1) for s in shape], device=ddf.device, dtype=ddf.dtype)
    grid = pos.permute(0, 2, 3, 4, 1) * scale - 1  # (N, X, Y, Z, 3) in [-1, 1], (x, y, z) order
    # GridSample reads grid[..., 0] along the last axis (W = Z) and grid[..., 2] along D = X
    return torch.nn.functional.grid_sample(moving, grid.flip(-1), mode="bilinear", padding_mode="border",
                                           align_corners=True)


def random_affine_ddf(shape, rng, n: int, rot_deg: float, scale: float, trans_vox: float,
                      device=None) -> torch.Tensor:
    """(n, 3, X, Y, Z) displacement fields of random affine maps about the grid centre
    (augmentation), on `device` (the small matrices are drawn on the CPU)."""
    cpu = torch.device("cpu")
    grid = identity_grid(shape, device).reshape(3, -1).double()
    centre = (torch.tensor(shape, dtype=torch.float64, device=device) - 1).view(3, 1) / 2
    out = []
    for _ in range(n):
        a = [math.radians(v) for v in rng.uniform(-rot_deg, rot_deg, 3)]
        rx = torch.tensor(dtype=torch.float64, device=cpu, data=[[1, 0, 0], [0, math.cos(a[0]), -math.sin(a[0])], [0, math.sin(a[0]), math.cos(a[0])]])
        ry = torch.tensor(dtype=torch.float64, device=cpu, data=[[math.cos(a[1]), 0, math.sin(a[1])], [0, 1, 0], [-math.sin(a[1]), 0, math.cos(a[1])]])
        rz = torch.tensor(dtype=torch.float64, device=cpu, data=[[math.cos(a[2]), -math.sin(a[2]), 0], [math.sin(a[2]), math.cos(a[2]), 0], [0, 0, 1]])
        m = (rx @ ry @ rz @ torch.diag(torch.tensor(1 + rng.uniform(-scale, scale, 3), device=cpu))).to(device)
        t = torch.tensor(rng.uniform(-trans_vox, trans_vox, 3), device=device).view(3, 1)
        pos = m @ (grid - centre) + centre + t
        out.append((pos - grid).reshape(3, *shape))
    return torch.stack(out).float()


def random_smooth_ddf(shape, rng, n: int, sigma_vox: float, spacing: int = 8, device=None) -> torch.Tensor:
    """(n, 3, X, Y, Z) random smooth displacements: each component N(0, sigma_vox^2) at control
    points every `spacing` voxels (both ends included), interpolated trilinearly."""
    ctrl = [max(2, -(-(s - 1) // spacing) + 1) for s in shape]
    coarse = torch.from_numpy(rng.normal(0.0, sigma_vox, (n, 3, *ctrl))).float().to(device)
    return torch.nn.functional.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
