"""model.warp in numpy, for hosts without torch (edge boards, OpenVINO, the integer reference).

    warped = host_warp(moving, ddf)     # moving (X, Y, Z), ddf (3, X, Y, Z) voxels -> (X, Y, Z)

The same rule as model.warp: sample moving at p + ddf(p), trilinear from the 8 neighbours,
positions clamped to [0, size - 1] per axis (GridSample's border padding, align_corners=1).
Computed in float32 like the torch warp; the two agree to float32 rounding (tests/test_model.py).
"""
from __future__ import annotations

import numpy as np


def host_warp(moving: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    shape = moving.shape
    if ddf.shape != (3, *shape):
        raise ValueError(f"ddf {ddf.shape} does not match moving {shape}: expected (3, {', '.join(map(str, shape))})")
    size = np.asarray(shape, np.float32).reshape(3, 1, 1, 1)
    grid = np.indices(shape, dtype=np.float32)
    pos = np.minimum(np.maximum(grid + ddf.astype(np.float32), 0), size - 1)
    lo = np.minimum(np.floor(pos), np.maximum(size - 2, 0))
    t = pos - lo
    lo = lo.astype(np.int64)
    flat = np.ascontiguousarray(moving, np.float32).ravel()
    sy, sx = shape[2], shape[1] * shape[2]
    out = np.zeros(shape, np.float32)
    for dx in (0, 1):
        wx = t[0] if dx else 1 - t[0]
        for dy in (0, 1):
            wy = t[1] if dy else 1 - t[1]
            for dz in (0, 1):
                wz = t[2] if dz else 1 - t[2]
                out += wx * wy * wz * flat[(lo[0] + dx) * sx + (lo[1] + dy) * sy + lo[2] + dz]
    return out
