"""The classical peer (benchmarks/classical.py): ANTs' field in the network's convention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.classical import ants_ddf
from model.warp import warp

pytestmark = pytest.mark.ants  # ANTs (antspyx) registrations: `pytest -m "not ants"` leaves them out


def _blobs(shape, shift=0.0):
    """Smooth test image: three Gaussian blobs, moved by `shift` voxels along axis 0."""
    g = np.indices(shape, dtype=np.float64)
    img = np.zeros(shape)
    for c, s in (((10, 12, 11), 3.0), ((20, 9, 14), 2.5), ((15, 18, 8), 2.0)):
        d2 = sum((g[a] - (c[a] + (shift if a == 0 else 0.0))) ** 2 for a in range(3))
        img += np.exp(-d2 / (2 * s * s))
    return img.astype(np.float32)


@pytest.mark.parametrize("kind", ["Affine", "SyN", "SyNLong"])
def test_ants_recovers_a_known_shift_in_voxels(kind):
    """moving(x) = fixed(x - 2 e0): the field must be +2 voxels along axis 0 (moving sampled at
    x + ddf), and model.warp with it must reproduce the fixed image."""
    shape = (32, 28, 24)
    fixed, moving = _blobs(shape), _blobs(shape, shift=2.0)
    ddf = ants_ddf(moving, fixed, (4.0, 4.0, 4.0), kind, threads=1, seed=1)
    assert ddf.shape == (3, *shape)
    inner = (slice(8, -8),) * 3
    # registration of a smooth image: within a quarter voxel of the true shift in the middle
    assert abs(np.median(ddf[0][inner]) - 2.0) < 0.25 and np.abs(np.median(ddf[1:][(slice(None), *inner)])) < 0.25
    warped = warp(torch.from_numpy(moving)[None, None], torch.from_numpy(ddf).float()[None])[0, 0].numpy()
    # ANTs' mutual-information optimum leaves 12-14 % of the initial difference here (measured);
    # a field of the wrong sign or unit would double it
    assert np.abs(warped - fixed)[inner].mean() < 0.25 * np.abs(moving - fixed)[inner].mean()


def test_ants_is_repeatable_and_refuses_seed_zero():
    shape = (24, 24, 24)
    fixed, moving = _blobs(shape), _blobs(shape, shift=1.5)
    a = ants_ddf(moving, fixed, (4.0, 4.0, 4.0), "Affine", threads=1, seed=3)
    b = ants_ddf(moving, fixed, (4.0, 4.0, 4.0), "Affine", threads=1, seed=3)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="seed must be >= 1"):
        ants_ddf(moving, fixed, (4.0, 4.0, 4.0), "Affine", seed=0)
    with pytest.raises(ValueError, match="kind 'BSpline'"):
        ants_ddf(moving, fixed, (4.0, 4.0, 4.0), "BSpline")
