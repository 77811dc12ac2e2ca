"""Registration metrics (numpy, float64).

- Dice per label of binary masks (warped moving label thresholded at 0.5);
- centroid TRE: RMS over labels of the distance between label centroids, in mm
  (voxel offsets times the working grid's spacing; label-reg reports voxels); a warped label
  that vanished enters with its soft (pre-threshold) mask's centroid (model.evaluate);
- landmark TRE: RMS distance in mm between where the field sends each fixed
  landmark (p + ddf(p)) and the corresponding moving landmark;
- folding: percentage of voxels where det(I + grad ddf) <= 0.
"""
from __future__ import annotations

import numpy as np

from model.data import sample


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; nan when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return float("nan") if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def centroid(mask: np.ndarray) -> np.ndarray | None:
    idx = np.argwhere(mask)
    return None if len(idx) == 0 else idx.mean(0)


def centroid_distance_mm(a: np.ndarray, b: np.ndarray, spacing) -> float:
    ca, cb = centroid(a), centroid(b)
    if ca is None or cb is None:
        return float("nan")
    return float(np.linalg.norm((ca - cb) * np.asarray(spacing)))


def weighted_centroid_distance_mm(weights: np.ndarray, b: np.ndarray, spacing) -> float:
    """Distance (mm) between the centroid of non-negative `weights` (a soft mask) and mask `b`'s."""
    cb = centroid(b)
    total = float(weights.sum())
    if cb is None or total <= 0:
        return float("nan")
    grid = np.indices(weights.shape, dtype=np.float64).reshape(weights.ndim, -1)
    ca = grid @ weights.ravel().astype(np.float64) / total
    return float(np.linalg.norm((ca - cb) * np.asarray(spacing)))


def rms(values) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    return float(np.sqrt(np.mean(v**2))) if len(v) else float("nan")


def landmark_tre_mm(ddf: np.ndarray, fixed_pts: np.ndarray, moving_pts: np.ndarray, spacing) -> float:
    """ddf (3, X, Y, Z) voxels; points (K, 3) in voxels of the fixed / moving working grids."""
    disp = np.stack([sample(ddf[a], fixed_pts.T, 1) for a in range(3)], axis=0).T  # (K, 3)
    err = (fixed_pts + disp - moving_pts) * np.asarray(spacing)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def jacobian_determinant(ddf: np.ndarray) -> np.ndarray:
    """det(I + grad u) of u = ddf (3, X, Y, Z) voxels, central differences (one-sided at the edges)."""
    grads = np.stack([np.stack(np.gradient(ddf[i]), 0) for i in range(3)], 0)  # (3 comp, 3 axis, X, Y, Z)
    j = grads + np.eye(3)[:, :, None, None, None]
    return (j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
            - j[0, 1] * (j[1, 0] * j[2, 2] - j[1, 2] * j[2, 0])
            + j[0, 2] * (j[1, 0] * j[2, 1] - j[1, 1] * j[2, 0]))


def folding_pct(ddf: np.ndarray) -> float:
    return float(100.0 * np.mean(jacobian_determinant(ddf) <= 0))
