"""Analytic unit tests of the warp, losses, metrics and network."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import ModelConfig, load_config
from model.localnet import LocalNet, count_parameters, fold_batchnorm
from model.losses import bending_energy, gaussian_smooth, local_ncc, multiscale_dice_loss
from model.metrics import centroid_distance_mm, dice, folding_pct, jacobian_determinant, landmark_tre_mm
from model.warp import identity_grid, warp, warp_grid_sample


@pytest.mark.parametrize("shift", [(1, 0, 0), (0, -2, 0), (2, 1, -3)])
def test_warp_by_integer_translation_is_exact(shift):
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(2, 3, 10, 12, 9, generator=g)
    ddf = torch.zeros(2, 3, 10, 12, 9)
    for a, s in enumerate(shift):
        ddf[:, a] = s
    out = warp(vol, ddf)
    # interior: out[p] = vol[p + shift], bit for bit
    sl_out = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, vol.shape[2:]))
    sl_in = tuple(slice(max(0, s), n + min(0, s)) for s, n in zip(shift, vol.shape[2:]))
    assert torch.equal(out[(...,) + sl_out], vol[(...,) + sl_in])


def test_warp_border_reads_the_edge_voxel():
    vol = torch.randn(1, 1, 6, 5, 4)
    ddf = torch.zeros(1, 3, 6, 5, 4)
    ddf[:, 0] = 2.0
    out = warp(vol, ddf)
    assert torch.equal(out[:, :, 4], vol[:, :, 5]) and torch.equal(out[:, :, 5], vol[:, :, 5])


def test_warp_half_voxel_is_the_mean():
    vol = torch.arange(5, dtype=torch.float32).view(1, 1, 5, 1, 1).expand(1, 1, 5, 2, 2).contiguous()
    ddf = torch.zeros(1, 3, 5, 2, 2)
    ddf[:, 0] = 0.5
    out = warp(vol, ddf)[0, 0, :, 0, 0]
    assert torch.equal(out, torch.tensor([0.5, 1.5, 2.5, 3.5, 4.0]))  # last one clamps at the border


def test_host_warp_by_hand_and_against_model_warp():
    """model.host_warp (numpy, for boards without torch): a whole-voxel shift reproduces the
    shifted values bit for bit, half a voxel gives the mean (by hand, border clamped), and a
    random field agrees with model.warp."""
    from model.host_warp import host_warp

    rng = np.random.default_rng(0)
    vol = rng.normal(size=(10, 12, 9)).astype(np.float32)
    ddf = np.zeros((3, 10, 12, 9), np.float32)
    ddf[0], ddf[2] = 2.0, -1.0
    assert np.array_equal(host_warp(vol, ddf)[:8, :, 1:], vol[2:, :, :-1])
    ramp = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], (5, 2, 2)).copy()
    half = np.zeros((3, 5, 2, 2), np.float32)
    half[0] = 0.5
    assert host_warp(ramp, half)[:, 0, 0].tolist() == [0.5, 1.5, 2.5, 3.5, 4.0]
    field = rng.normal(0, 3, size=(3, 10, 12, 9)).astype(np.float32)  # reaches past every border
    want = warp(torch.from_numpy(vol)[None, None], torch.from_numpy(field)[None])[0, 0].numpy()
    # float32 weights and sums in another order: differences of a few ulps of values ~1
    assert np.abs(host_warp(vol, field) - want).max() < 1e-5
    with pytest.raises(ValueError, match="does not match moving"):
        host_warp(vol, field[:, :5])


def test_trilinear_of_a_stack_is_each_volume_alone():
    """model.host_warp.trilinear reads C volumes at shared corners and weights: each channel
    bit for bit what reading it alone gives (the global stage samples three gradients so)."""
    from model.host_warp import trilinear

    rng = np.random.default_rng(1)
    vols = rng.normal(size=(3, 6, 7, 5)).astype(np.float32)
    pos = rng.uniform(-1, 8, size=(3, 50, 4))
    both = trilinear(vols, pos)
    assert both.shape == (3, 50, 4) and all(np.array_equal(both[c], trilinear(vols[c], pos)) for c in range(3))
    corner = trilinear(vols, np.array([[1.0], [2.0], [3.0]]))   # a voxel centre reads that voxel
    assert corner[:, 0].tolist() == vols[:, 1, 2, 3].tolist()
    # the corners computed once and applied later (the global stage's cost and gradient reads)
    from model.host_warp import corners, gather
    cw = corners(vols.shape[1:], pos)
    assert np.array_equal(gather(vols, *cw), both) and np.array_equal(gather(vols[1], *cw), both[1])


@pytest.mark.parametrize("shape", [(32, 40, 32), (5, 2, 7)])
def test_warp_grid_sample_equals_warp_within_rounding(shape):
    """Training's fused warp: the same clamped trilinear map as `warp` (an independent kernel,
    torch's GridSample), values and gradient to the field, on a field reaching past every
    border, with an asymmetric grid so a swapped axis would show."""
    g = torch.Generator().manual_seed(1)
    vol = torch.rand(2, 3, *shape, generator=g)
    ddf = (3 * torch.randn(2, 3, *shape, generator=g)).requires_grad_()
    a, b = warp(vol, ddf), warp_grid_sample(vol, ddf)
    ga, = torch.autograd.grad(a.square().sum(), ddf)
    gb, = torch.autograd.grad(b.square().sum(), ddf)
    # float32 positions normalised to [-1, 1] and back: a few ulps of coordinates ~40 voxels
    # (1e-6 relative) on values in [0, 1]; the gradients are products of such weights
    assert (a - b).abs().max() < 2e-5 and (ga - gb).abs().max() < 1e-4
    assert (a - vol).abs().max() > 0.5  # the field does move the values


def test_warp_gradient_flows_to_ddf():
    vol = torch.randn(1, 1, 6, 6, 6)
    ddf = torch.full((1, 3, 6, 6, 6), 0.3, requires_grad=True)
    warp(vol, ddf).sum().backward()
    assert ddf.grad is not None and ddf.grad.abs().sum() > 0


@pytest.mark.parametrize("a, b, expect", [
    ((0, 4), (0, 4), 1.0),     # identical
    ((0, 4), (4, 8), 0.0),     # disjoint
    ((0, 4), (2, 6), 0.5),     # half overlap: 2*2/(4+4)
    ((0, 2), (0, 6), 0.5),     # nested: 2*2/(2+6)
])
def test_dice_of_known_overlaps(a, b, expect):
    m1 = np.zeros((8, 3, 3), bool)
    m2 = np.zeros((8, 3, 3), bool)
    m1[a[0]:a[1]] = True
    m2[b[0]:b[1]] = True
    assert dice(m1, m2) == expect
    assert np.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_centroid_distance_uses_spacing():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[2, 2, 2] = b[2, 5, 6] = True
    assert centroid_distance_mm(a, b, (1.0, 2.0, 0.5)) == np.hypot(6.0, 2.0)


def test_multiscale_dice_loss_is_least_when_aligned():
    lab = torch.zeros(1, 1, 12, 12, 12)
    lab[:, :, 3:8, 4:9, 2:10] = 1
    # only eps = 1e-6 in the denominator separates it from 0: sums of squares are ~0.1 at sigma 16
    assert multiscale_dice_loss(lab, lab, [0, 1, 2, 4, 8, 16]).item() < 1e-4
    assert multiscale_dice_loss(lab, 1 - lab, [0]).item() > 0.99
    aligned = multiscale_dice_loss(lab, lab, [0, 1, 2, 4]).item()
    for s in (1, 2, 3):
        assert multiscale_dice_loss(lab, lab.roll(s, 2), [0, 1, 2, 4]).item() > aligned
    # inflating the warped label does not pay at coarse scales (it did with label-reg's sum denominator)
    big = torch.zeros_like(lab)
    big[:, :, 2:9, 3:10, 1:11] = 1
    assert multiscale_dice_loss(big, lab, [8, 16]).item() > multiscale_dice_loss(lab, lab, [8, 16]).item()


def test_gaussian_smooth_matches_direct_convolution():
    x = torch.randn(1, 1, 9, 7, 8, dtype=torch.float64)
    y = gaussian_smooth(x, 1.5)
    r = 5  # ceil(3 * 1.5)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / 1.5) ** 2)
    k = k / k.sum()
    k3 = k.view(-1, 1, 1) * k.view(1, -1, 1) * k.view(1, 1, -1)
    direct = torch.nn.functional.conv3d(x, k3[None, None], padding=r)
    torch.testing.assert_close(y, direct, rtol=0, atol=1e-12)  # float64 summation order only


def test_local_ncc_by_hand():
    """Squared local correlation: 1 for an affine image of either sign; 0 for two images that
    vary along different axes (x and y) in every window; and by hand on a 3x3x3 volume with
    3-voxel windows (the border windows see 2 voxels along x): a = (0, 1, 2) along x,
    b = (0, 1, 1): at x = 0 the window sees (0, 1) and (0, 1): cc^2 = 1; at x = 1 all three:
    cov 1/3, variances 2/3 and 2/9, cc^2 = (1/9) / (4/27) = 3/4; at x = 2, (1, 2) and (1, 1),
    b constant: 0. Mean (1 + 3/4 + 0) / 3 = 7/12."""
    g = torch.arange(6.0)
    a = g[:, None, None].expand(6, 6, 6)[None, None].contiguous()
    b = g[None, :, None].expand(6, 6, 6)[None, None].contiguous()
    # tolerances: eps 1e-5 in the denominator against variance products of order 0.1-1
    assert local_ncc(a, 2 * a + 1, 3).item() == pytest.approx(1.0, abs=1e-3)
    assert local_ncc(a, -a, 3).item() == pytest.approx(1.0, abs=1e-3)
    assert local_ncc(a, b, 3).item() == pytest.approx(0.0, abs=1e-6)
    x = torch.tensor([0.0, 1.0, 2.0])[:, None, None].expand(3, 3, 3)[None, None].contiguous()
    y = torch.tensor([0.0, 1.0, 1.0])[:, None, None].expand(3, 3, 3)[None, None].contiguous()
    assert local_ncc(x, y, 3).item() == pytest.approx(7 / 12, abs=1e-3)


def test_bending_energy_of_affine_field_is_zero():
    # integer matrix and offset: finite differences of a linear field are exact in float64
    grid = identity_grid((9, 10, 11), dtype=torch.float64)
    m = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    ddf = (torch.einsum("ij,jxyz->ixyz", m, grid) + torch.tensor([1.0, -3.0, 2.0]).view(3, 1, 1, 1))[None]
    assert bending_energy(ddf).item() == 0.0
    quad = ddf.clone()
    quad[:, 0] += grid[0] ** 2
    assert bending_energy(quad).item() > 0


def test_jacobian_and_folding():
    grid = np.stack(np.meshgrid(*[np.arange(8.0)] * 3, indexing="ij"))
    assert folding_pct(np.zeros((3, 8, 8, 8))) == 0.0
    np.testing.assert_array_equal(jacobian_determinant(0.5 * grid), np.full((8, 8, 8), 1.5**3))
    flip = np.zeros((3, 8, 8, 8))
    flip[0] = -2 * grid[0]  # x -> -x: det = -1 everywhere
    assert folding_pct(flip) == 100.0


def test_landmark_tre_of_exact_field_is_zero():
    fixed = np.array([[2.0, 3.0, 4.0], [5.0, 1.0, 2.0]])
    ddf = np.zeros((3, 8, 8, 8))
    ddf[1] = 1.5
    moving = fixed + [0, 1.5, 0]
    assert landmark_tre_mm(ddf, fixed, moving, (2.0, 2.0, 2.0)) == 0.0
    assert landmark_tre_mm(np.zeros_like(ddf), fixed, moving, (2.0, 2.0, 2.0)) == 3.0


def test_localnet_shapes_and_batchnorm_folding():
    torch.manual_seed(0)
    net = LocalNet(ModelConfig(base_channels=4, levels=2, ddf_levels=[0, 1, 2]))
    for head in net.heads.values():  # larger heads so the field is not ~0
        torch.nn.init.normal_(head.weight, 0, 0.1)
    net.train()
    x = torch.randn(2, 2, 16, 8, 12)
    for _ in range(3):  # populate BatchNorm running statistics
        net(x)
    net.eval()
    folded = fold_batchnorm(net)
    y, yf = net(x), folded(x)
    assert y.shape == (2, 3, 16, 8, 12)
    assert y.abs().max() > 1e-3
    torch.testing.assert_close(yf, y, rtol=1e-4, atol=1e-5)  # float32 reassociation of the folded scale
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    total, nonzero = count_parameters(folded)
    head_bias = sum(h.bias.numel() for h in folded.heads.values())  # initialised to exactly 0
    assert nonzero == total - head_bias > 0


def test_paper_config_forward_backward_at_tiny_shape():
    cfg = load_config("configs/ibsr.toml")
    assert cfg.model.base_channels == 32 and cfg.model.levels == 4
    net = LocalNet(cfg.model)
    x = torch.randn(1, 2, 32, 32, 32)  # 4 levels: a 2^3 bottleneck, enough for BatchNorm statistics
    ddf = net(x)
    assert ddf.shape == (1, 3, 32, 32, 32)
    loss = multiscale_dice_loss(warp(torch.rand(1, 1, 32, 32, 32), ddf), torch.rand(1, 1, 32, 32, 32),
                                cfg.loss.dice_scales) + cfg.loss.bending_weight * bending_energy(ddf)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_a_vanished_label_counts(tiny_cfg):
    """A one-voxel label (code 4) that a half-voxel diagonal field smears to 0.25 in four voxels
    vanishes after thresholding: Dice 0, one vanished label, and its centroid distance enters
    the TRE from the soft mask's centroid, (5.5, 5.5, 12) against the fixed (5, 5, 12), by hand.
    Label 2 (a block the field leaves wholly overlapping itself) keeps its normal distance."""
    from model.data import Subject
    from model.evaluate import evaluate_pairs

    tiny_cfg.data.labels = [2, 4]
    shape = tiny_cfg.data.shape
    lab = np.zeros(shape, np.int16)
    lab[2:10, 2:10, 2:10] = 2
    lab[5, 5, 12] = 4
    subs = [Subject(n, np.zeros(shape, np.float32), lab, np.eye(4), None, None) for n in ("a", "b")]
    ddf = np.zeros((3, *shape))
    ddf[0] = ddf[1] = -0.5  # fixed voxel x samples the moving label at x - 0.5
    pairs, labels = evaluate_pairs(subs, tiny_cfg, lambda m, f: ddf, "t", progress=False)
    assert [p["vanished_labels"] for p in pairs] == [1, 1]
    by_label = {r["label"]: r for r in labels if r["moving"] == "a"}
    assert by_label[4]["dice"] == 0.0 and by_label[4]["vanished"] == 1
    sx, sy, _ = tiny_cfg.data.spacing_mm  # soft mass at x, y in {5, 6}: centroid 5.5, 0.5 voxel off
    assert by_label[4]["centroid_dist_mm"] == pytest.approx(np.hypot(0.5 * sx, 0.5 * sy))
    assert by_label[2]["vanished"] == 0 and np.isfinite(by_label[2]["centroid_dist_mm"])
    want_tre = np.sqrt((by_label[2]["centroid_dist_mm"] ** 2 + by_label[4]["centroid_dist_mm"] ** 2) / 2)
    assert pairs[0]["tre_mm"] == pytest.approx(want_tre)


def test_random_contrast():
    """Strength 0 leaves the images as they are (to float rounding of the knot interpolation); a
    positive strength gives each volume its own contrast within [0, 1], the same for the same
    generator, and keeps the images' ordering of intensities largely (a monotone remap, a gamma,
    a smooth bias and small noise: Spearman correlation > 0.9 with the input)."""
    import numpy as np
    import torch

    from model.train import random_contrast

    g = torch.linspace(0, 1, 16)
    base = (g[:, None, None] * 0.5 + g[None, :, None] * 0.3 + g[None, None, :] * 0.2)  # a smooth ramp in [0, 1]
    x = torch.stack([base, base])[:, None]
    assert torch.allclose(random_contrast(x, np.random.default_rng(0), 0.0), x, atol=1e-6)
    y = random_contrast(x, np.random.default_rng(1), 1.0)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(y, random_contrast(x, np.random.default_rng(1), 1.0))
    assert float((y[0] - y[1]).abs().max()) > 0.05 and float((y - x).abs().max()) > 0.05
    rank = lambda a: np.argsort(np.argsort(a.ravel().numpy()))
    for k in range(2):
        assert np.corrcoef(rank(y[k, 0]), rank(x[k, 0]))[0, 1] > 0.9
