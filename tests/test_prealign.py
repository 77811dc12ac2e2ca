"""model/prealign.py: the moments pre-alignment recovers a known affine; composition by hand."""
from __future__ import annotations

import numpy as np
import pytest

from model.prealign import affine_ddf, compose, moments, moments_affine, prealign


def ellipsoid(shape, centre, radii):
    g = np.indices(shape, dtype=np.float64)
    r = sum(((g[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return np.clip(1.5 - r, 0, 1)  # a soft-edged axis-aligned ellipsoid


def test_moments_by_hand():
    img = np.zeros((4, 3, 2))
    img[1, 1, 0], img[3, 1, 0] = 1.0, 3.0  # weights 1/4 and 3/4 along x
    img[0, 0, 1] = -5.0                    # negative intensities carry no weight
    c, C = moments(img)
    assert np.allclose(c, [2.5, 1, 0]) and np.allclose(C, np.diag([0.75, 0, 0]))  # 1/4*1.5^2 + 3/4*0.5^2
    with pytest.raises(ValueError, match="positive intensities"):
        moments(np.zeros((2, 2, 2)))


def test_moments_affine_recovers_scaling_and_shift():
    """moving = fixed's ellipsoid scaled by D about the origin and shifted by s: M = D, t = s
    (exact for axis-aligned moments; the voxel discretisation leaves ~1 %)."""
    shape = (32, 40, 32)
    fixed = ellipsoid(shape, (15.0, 20.0, 14.0), (6.0, 8.0, 5.0))
    D, s = np.diag([1.2, 0.9, 1.1]), np.array([-2.0, 3.0, 1.0])
    moving = ellipsoid(shape, D @ [15.0, 20.0, 14.0] + s, (7.2, 7.2, 5.5))
    M, t = moments_affine(moving, fixed)
    assert np.abs(M - D).max() < 0.02 and np.abs(M @ [15.0, 20.0, 14.0] + t - (D @ [15.0, 20.0, 14.0] + s)).max() < 0.05
    aligned, M2, t2 = prealign("moments", moving, fixed)
    assert np.array_equal(M, M2) and aligned.shape == shape and aligned.dtype == np.float32
    overlap = lambda a, b: 2 * np.minimum(a, b).sum() / (a.sum() + b.sum())
    assert overlap(aligned, fixed) > 0.95 > overlap(moving, fixed)


def test_compose_by_hand():
    """M = 2 I, t = (1, 0, 0), local field (0.5, 0, -1) everywhere: at voxel x the whole field is
    2x + t - x + M d = x + (1, 0, 0) + (1, 0, -2)."""
    shape = (3, 2, 2)
    M, t = 2 * np.eye(3), np.array([1.0, 0.0, 0.0])
    local = np.zeros((3, *shape))
    local[0], local[2] = 0.5, -1.0
    ddf = compose(M, t, local)
    assert ddf[:, 2, 1, 0].tolist() == [2 + 1 + 1, 1 + 0 + 0, 0 + 0 - 2]
    assert np.array_equal(compose(np.eye(3), np.zeros(3), local), local)
    assert np.array_equal(affine_ddf(np.eye(3), np.zeros(3), shape), np.zeros((3, *shape)))


def test_unknown_global_stage_is_refused():
    with pytest.raises(ValueError, match="expected one of"):
        prealign("rigid", np.ones((2, 2, 2)), np.ones((2, 2, 2)))


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    a, b = np.deg2rad(deg_x), np.deg2rad(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rx @ rz


def _head(shape, z: float = 1.0):
    """Three soft ellipsoids of other intensities: an image whose moments and edges both constrain
    an affine (a single ellipsoid leaves a rotation about its own axes free); `z` scales it, for a
    grid z times finer."""
    at = lambda *v: tuple(z * x + (z - 1) / 2 for x in v)   # noqa: E731  (voxel centres of the finer grid)
    return (ellipsoid(shape, at(15.5, 19.5, 15.5), tuple(z * r for r in (10.0, 13.0, 9.0)))
            + 0.8 * ellipsoid(shape, at(11.0, 25.0, 17.0), tuple(z * r for r in (3.0, 4.0, 3.0)))
            - 0.5 * ellipsoid(shape, at(20.0, 14.0, 13.0), tuple(z * r for r in (3.5, 3.0, 2.5))))


@pytest.mark.parametrize("gain, offset, z", [(1.0, 0.0, 1), (0.6, 0.0, 1), (1.3, 0.05, 1), (1.0, 0.0, 2)])
def test_affine_stage_recovers_a_known_affine(gain, offset, z):
    """moving(y) = gain x fixed(B^-1 (y - s)) + offset, i.e. fixed voxel x <-> moving voxel B x + s:
    the fitted (M, t) is (B, s) to interpolation accuracy (0.02 in M, 0.3 voxel of the demo's grid
    at the head's centre), whatever the gain (and a small offset) of the moving image's
    intensities; the moments alone, thrown off by the asymmetric structures, land further away.
    z = 2: the same head on a grid twice as fine, registered box-averaged (box_halvings 1)."""
    from model.host_warp import host_warp
    from model.prealign import affine_register, box_halvings

    shape = tuple(z * n for n in (32, 40, 32))
    assert box_halvings(shape) == z - 1
    fixed = _head(shape, z)
    B = _rotation(8.0, -6.0) @ np.diag([1.08, 0.94, 1.03])
    c = (np.asarray(shape) - 1) / 2
    s = c - B @ c + z * np.array([1.5, -2.0, 1.0])
    # moving at voxel y reads fixed at B^-1 (y - s): a field on the moving grid
    Binv = np.linalg.inv(B)
    moving = gain * host_warp(fixed.astype(np.float32), affine_ddf(Binv, -Binv @ s, shape)) + offset
    M, t = affine_register(moving, fixed)
    err = lambda M_, t_: (np.abs(M_ - B).max(), np.abs(M_ @ c + t_ - (B @ c + s)).max())
    dm, dt = err(M, t)
    assert dm < 0.02 and dt < 0.3 * z, (dm, dt)
    dm0, dt0 = err(*moments_affine(moving, fixed))
    assert dm0 + dt0 > 2 * (dm + dt)


def test_affine_to_fine_by_hand():
    """A map between the voxels of a grid box-averaged once (coarse j at fine 2 j + 0.5), carried
    to the fine grid: M = 2 I, t = (1, 0, 0) sends coarse 0 to coarse (1, 0, 0), i.e. fine 0.5 to
    fine (2.5, 0.5, 0.5); coarse 1 to coarse (3, 2, 2), i.e. fine 2.5 to (6.5, 4.5, 4.5)."""
    from model.prealign import affine_to_fine

    M, t = affine_to_fine(2 * np.eye(3), np.array([1.0, 0.0, 0.0]), 1)
    assert np.array_equal(M, 2 * np.eye(3))
    assert (M @ np.full(3, 0.5) + t).tolist() == [2.5, 0.5, 0.5]
    assert (M @ np.full(3, 2.5) + t).tolist() == [6.5, 4.5, 4.5]
    M0, t0 = affine_to_fine(2 * np.eye(3), np.array([1.0, 0.0, 0.0]), 0)
    assert t0.tolist() == [1.0, 0.0, 0.0]
