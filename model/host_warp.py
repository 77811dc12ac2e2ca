"""model.warp in numpy, for hosts without torch (edge boards, OpenVINO, the integer reference).

    warped = host_warp(moving, ddf)     # moving (X, Y, Z), ddf (3, X, Y, Z) voxels -> (X, Y, Z)

The same rule as model.warp: sample moving at p + ddf(p), trilinear from the 8 neighbours,
positions clamped to [0, size - 1] per axis (GridSample's border padding, align_corners=1).
Computed in float32 like the torch warp; the two agree to float32 rounding (tests/test_model.py).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def voxel_grid(shape: tuple, dtype=np.float32) -> np.ndarray:
    """np.indices(shape, dtype), made once per shape and dtype and read-only (every registration
    on one grid needs the same one: the pre-alignment and the warps)."""
    g = np.indices(shape, dtype=dtype)
    g.flags.writeable = False
    return g


def corners(shape: tuple, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear reading of a volume of `shape` (X, Y, Z) at float voxel positions `pos` (3, ...)
    that lie in [0, size - 1] per axis (others clamp to the edge cell's weights): the 8 corners'
    flat indices and weights (in pos's type), each (8, ...). gather() applies them; two steps so
    that several volumes read at the same positions share one computation."""
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"trilinear needs a 3-D volume (or a stack of them) at least 2 voxels along each axis, "
                         f"got {shape}")
    size = np.asarray(shape, pos.dtype).reshape(3, *([1] * (pos.ndim - 1)))
    lo = np.clip(np.floor(pos), 0, size - 2)
    t = pos - lo              # in pos's type: float32 weights for float32 positions (twice as fast as float64)
    lo = lo.astype(np.int64)
    sx, sy = shape[1] * shape[2], shape[2]
    base = lo[0] * sx + lo[1] * sy + lo[2]
    one = 1 - t
    wxy = np.stack([one[0] * one[1], one[0] * t[1], t[0] * one[1], t[0] * t[1]])   # corners (dx, dy) in order
    w = np.stack([wxy * one[2], wxy * t[2]], 1).reshape(8, *pos.shape[1:])        # (dx, dy, dz), dz fastest
    at = base + np.array([dx * sx + dy * sy + dz for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
                         ).reshape(8, *([1] * (pos.ndim - 1)))
    return at, w


def gather(vol: np.ndarray, at: np.ndarray, w: np.ndarray) -> np.ndarray:
    """`vol` (X, Y, Z), or C volumes (C, X, Y, Z), read at corners() of their grid: (...) or (C, ...)
    in the weights' type. The 8 corners are gathered by flat index (4x faster than indexing three
    axes) and summed corner by corner in corners()' order, so each channel's values are exactly
    those of reading it alone."""
    shape = vol.shape[-3:]
    vols = np.asarray(vol).astype(np.float32, copy=False).reshape(-1, int(np.prod(shape)))
    out = np.zeros((len(vols), *w.shape[1:]), w.dtype)
    for c, v in enumerate(vols):
        prod = w * v.take(at)
        for k in range(8):
            out[c] += prod[k]
    return out if vol.ndim == 4 else out[0]


def trilinear(vol: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """`vol` (X, Y, Z), or C volumes (C, X, Y, Z), read trilinearly at voxel positions `pos`
    (3, ...) that lie in [0, size - 1] per axis (others clamp to the edge cell's weights),
    weights and result in pos's float type: (...) or (C, ...); model.data.sample uses it too."""
    if vol.ndim not in (3, 4):
        raise ValueError(f"trilinear needs a 3-D volume (or a stack of them) at least 2 voxels along each axis, "
                         f"got {vol.shape}")
    return gather(vol, *corners(vol.shape[-3:], pos))


def host_warp(moving: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    shape = moving.shape
    if ddf.shape != (3, *shape):
        raise ValueError(f"ddf {ddf.shape} does not match moving {shape}: expected (3, {', '.join(map(str, shape))})")
    size = np.asarray(shape, np.float32).reshape(3, 1, 1, 1)
    pos = np.minimum(np.maximum(voxel_grid(tuple(shape), np.float32) + ddf.astype(np.float32), 0), size - 1)
    return trilinear(moving, pos)
