"""model/refine.py: the written-out gradients against torch's autograd of the same loss, the
pieces against their definitions, and a refinement that recovers a shift the field missed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import ConfigError, RefineConfig, config_from_dict
from model.losses import bending_energy, local_ncc
from model.refine import Refiner, block_mean, box_sum, refine, upsample, upsample_matrix


def blobs(shape, centre, shift=(0.0, 0.0, 0.0)):
    """A smooth image: two Gaussian blobs of different brightness, moved by `shift` voxels."""
    g = np.indices(shape, dtype=np.float64)
    out = np.zeros(shape)
    for c, sd, amp in ((centre, 4.0, 1.0), ((centre[0] + 7, centre[1] - 6, centre[2] + 2), 3.0, 0.6)):
        out += amp * np.exp(-sum((g[i] - c[i] - shift[i]) ** 2 for i in range(3)) / (2 * sd * sd))
    return out.astype(np.float32)


def test_block_mean_and_box_sum_by_definition():
    rng = np.random.default_rng(0)
    x = rng.random((2, 7, 6, 5)).astype(np.float32)
    bm2 = block_mean(x, 2)  # disjoint blocks, the odd last voxel of 7 and 5 dropped
    assert bm2.shape == (2, 3, 3, 2)
    assert np.isclose(bm2[1, 2, 1, 1], x[1, 4:6, 2:4, 2:4].mean())  # float32 sums: rounding only
    bm1 = block_mean(x, 1)
    assert bm1.shape == (2, 6, 5, 4) and np.isclose(bm1[0, 5, 0, 3], x[0, 5:7, 0:2, 3:5].mean())
    # box_sum: the window sum with zeros outside, against an explicit loop
    y = x[0].astype(np.float64)
    want = np.zeros_like(y)
    p = np.pad(y, 1)
    for i in range(7):
        for j in range(6):
            for k in range(5):
                want[i, j, k] = p[i:i + 3, j:j + 3, k:k + 3].sum()
    assert np.allclose(box_sum(y, 3), want, rtol=0, atol=1e-12)  # float64 sums in another order


def test_upsample_matrix_interpolates_cell_centres():
    A = upsample_matrix(8, 4)  # cells centred at 0.5, 2.5, 4.5, 6.5
    assert np.allclose(A.sum(1), 1)
    assert np.allclose(A[0], [1, 0, 0, 0]) and np.allclose(A[7], [0, 0, 0, 1])  # clamped at the edges
    assert np.allclose(A[3], [0, 0.75, 0.25, 0])  # voxel 3 is a quarter of the way from 2.5 to 4.5
    u = np.arange(3 * 4 * 5 * 4, dtype=np.float32).reshape(3, 4, 5, 4)
    up = upsample(u, (8, 10, 8))
    assert up.shape == (3, 8, 10, 8) and np.isclose(up[2, 3, 0, 0], 0.75 * u[2, 1, 0, 0] + 0.25 * u[2, 2, 0, 0])


def test_gradient_matches_autograd():
    """The loss and gradient of Refiner against torch: GridSample (border, align_corners) on the
    moving image's block means, model.losses.local_ncc and bending_energy, autograd."""
    rng = np.random.default_rng(1)
    shape = (16, 20, 14)
    moving, fixed = rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)
    ddf0 = rng.normal(0, 1.5, (3, *shape)).astype(np.float32)
    r = Refiner(moving, fixed, ddf0, RefineConfig(iters=1, bending=0.7, window=3))
    u = rng.normal(0, 0.5, r.d0_c.shape).astype(np.float32)
    loss, grad = r.loss_and_grad(u)

    ut = torch.tensor(u, requires_grad=True)
    d = torch.from_numpy(r.d0_c) + ut
    pos = torch.from_numpy(r.base) + d
    mb = torch.from_numpy(r.moving_b)
    size = torch.tensor(mb.shape, dtype=torch.float32).view(3, 1, 1, 1)
    grid = (pos * 2 / (size - 1) - 1).permute(1, 2, 3, 0)[None].flip(-1)  # GridSample's (z, y, x) order
    warped = torch.nn.functional.grid_sample(mb[None, None], grid, mode="bilinear", padding_mode="border",
                                             align_corners=True)
    want = 1 - local_ncc(warped, torch.from_numpy(r.fixed_c)[None, None], 3) + 0.7 * bending_energy(d[None])
    want.backward()
    # float32 sums in different orders: agreement to about 1e-6 of the gradient's scale
    assert abs(loss - want.item()) < 1e-5
    assert np.abs(grad - ut.grad.numpy()).max() < 1e-5 * np.abs(ut.grad.numpy()).max()


def test_refinement_recovers_a_missed_shift():
    shape = (32, 40, 32)
    fixed = blobs(shape, (15.0, 20.0, 16.0))
    moving = blobs(shape, (15.0, 20.0, 16.0), shift=(2.0, -1.5, 1.0))  # moving = fixed shifted
    ddf0 = np.zeros((3, *shape))
    cfg = RefineConfig(iters=30, lr=0.2, bending=0.5, window=3)
    out = refine(moving, fixed, ddf0, cfg)
    assert out.shape == ddf0.shape and out.dtype == ddf0.dtype
    r = Refiner(moving, fixed, ddf0, cfg)
    start, _ = r.loss_and_grad(np.zeros_like(r.d0_c))
    end, _ = r.loss_and_grad(block_mean(out.astype(np.float32), 2))
    assert end < start
    # at the brighter blob's centre the correction recovers part of the true shift along every axis
    # (measured: 47 % of it in 30 steps; the bending term and Adam's step size hold it back)
    fraction = out[:, 13:18, 18:23, 14:19].reshape(3, -1).mean(1) / [2.0, -1.5, 1.0]
    assert np.all((fraction > 0.3) & (fraction < 1.2)), fraction


def test_no_steps_is_the_registration_itself():
    d = np.ones((3, 12, 12, 12))
    assert refine(np.zeros((12, 12, 12)), np.zeros((12, 12, 12)), d, RefineConfig()) is d
    with pytest.raises(ValueError, match="do not match"):
        refine(np.zeros((12, 12, 12)), np.zeros((12, 12, 10)), d, RefineConfig(iters=2))


@pytest.mark.parametrize("bad", [{"iters": -1}, {"lr": 0}, {"window": 4}, {"bending": -0.1}])
def test_config_refuses_bad_refinement(bad):
    with pytest.raises(ConfigError, match="refine"):
        config_from_dict({"data": {"shape": [32, 32, 32]}, "model": {"levels": 3}, "refine": {"iters": 3, **bad}})


def test_stopping_by_the_similarity_is_the_same_as_that_many_steps():
    """With `tol` the refinement stops once a step changes the similarity by less than tol
    relative to it; what it returns is then, bit for bit, the refinement of that many steps."""
    shape = (32, 40, 32)
    fixed = blobs(shape, (15.0, 20.0, 16.0))
    moving = blobs(shape, (15.0, 20.0, 16.0), shift=(2.0, -1.5, 1.0))
    ddf0 = np.zeros((3, *shape))
    full = {}
    refine(moving, fixed, ddf0, RefineConfig(iters=40, lr=0.2), full)
    sim = full["similarity"]
    assert full["steps"] == 40 and len(sim) == 40 and sim[-1] > sim[0]  # the similarity grows
    rel = [abs(b - a) / abs(a) for a, b in zip(sim, sim[1:])]
    tol = sorted(rel)[len(rel) // 2]  # a threshold some step's change falls below
    stop = next(i for i, r in enumerate(rel) if r < tol) + 1  # steps taken before the first small change
    st = {}
    out = refine(moving, fixed, ddf0, RefineConfig(iters=40, lr=0.2, tol=tol), st)
    assert st["steps"] == stop < 40 and st["similarity"] == sim[:stop + 1]
    assert np.array_equal(out, refine(moving, fixed, ddf0, RefineConfig(iters=stop, lr=0.2)))
