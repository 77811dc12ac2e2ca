"""Training losses of label-reg: multi-scale soft Dice on Gaussian-smoothed labels, bending energy.

    loss = multiscale_dice_loss(warped_label, fixed_label, scales) + w * bending_energy(ddf)

Labels are (N, C, X, Y, Z) float in [0, 1], one channel per label; ddf is (N, 3, X, Y, Z) in voxels.
"""
from __future__ import annotations

import math

import torch


def gaussian_kernel1d(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised Gaussian, truncated at 3 sigma."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_matrix(n: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(n, n) matrix applying the truncated Gaussian along one axis with zero padding."""
    k = gaussian_kernel1d(sigma, torch.float64, device)
    r = (k.numel() - 1) // 2
    i = torch.arange(n, device=device)
    d = i.view(1, -1) - i.view(-1, 1)  # d[a, j] = j - a
    return torch.where(d.abs() <= r, k[(d + r).clamp(0, 2 * r)], k.new_zeros(())).to(dtype)


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter over the 3 spatial axes of (N, C, X, Y, Z), zero padding; sigma in voxels.

    Each axis is one matrix product with a banded (n, n) matrix: on a CPU this is an order
    of magnitude faster than 1-D convolutions for the long kernels of sigma 8 and 16.
    """
    if sigma <= 0:
        return x
    mx, my, mz = (gaussian_matrix(n, sigma, x.dtype, x.device) for n in x.shape[2:])
    x = torch.einsum("ai,ncijk->ncajk", mx, x)
    x = torch.einsum("bj,ncajk->ncabk", my, x)
    return x @ mz.T


def soft_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice 2 sum(ab) / (sum(a^2) + sum(b^2)) per sample and channel (label) of (N, C, ...)
    tensors -> (N, C).

    The squared denominator (Milletari et al. 2016) departs from label-reg's
    sum(a) + sum(b): on strongly smoothed labels (sigma 8, 16 voxels) that form grows
    with the mass of the warped label, so it rewards inflating it; this one is at most 1,
    reached exactly when the two smoothed labels are equal, and equals the usual Dice on
    binary labels.
    """
    dims = tuple(range(2, a.dim()))
    return 2 * (a * b).sum(dims) / ((a * a).sum(dims) + (b * b).sum(dims) + eps)


def multiscale_dice_loss(warped: torch.Tensor, fixed: torch.Tensor, scales,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean over scales, samples and labels (channels) of the soft Dice of the
    Gaussian-smoothed labels; `weight` (N, C) of 0/1 leaves out absent labels."""
    dice = torch.stack([soft_dice(gaussian_smooth(warped, s), gaussian_smooth(fixed, s)) for s in scales])  # (S, N, C)
    if weight is None:
        return 1 - dice.mean()
    return 1 - (dice * weight).sum() / (weight.sum() * len(scales))


def _d(f: torch.Tensor, axis: int) -> torch.Tensor:
    """Central difference along spatial axis (0..2) of (N, C, X, Y, Z), cropped to the valid part."""
    ax = 2 + axis
    n = f.shape[ax]
    return (f.narrow(ax, 2, n - 2) - f.narrow(ax, 0, n - 2)) / 2


def bending_energy(ddf: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of |Hessian|_F^2 of the displacement (voxel units), as label-reg.

    Second derivatives by repeated central differences; each is cropped so all six
    terms cover the same interior voxels. An affine field has zero energy.
    """
    d = [_d(ddf, a) for a in range(3)]
    dxx, dyy, dzz = _d(d[0], 0), _d(d[1], 1), _d(d[2], 2)
    dxy, dxz, dyz = _d(d[0], 1), _d(d[0], 2), _d(d[1], 2)

    def crop(t):  # every term to shape (X-4, Y-4, Z-4)
        for a in range(3):
            n = t.shape[2 + a]
            excess = n - (ddf.shape[2 + a] - 4)
            t = t.narrow(2 + a, excess // 2, n - excess)
        return t

    terms = [crop(t) ** 2 for t in (dxx, dyy, dzz)] + [2 * crop(t) ** 2 for t in (dxy, dxz, dyz)]
    return torch.stack([t.sum(1) for t in terms]).sum(0).mean()


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int, eps: float = 1e-5) -> torch.Tensor:
    """Mean over voxels of the squared local normalised cross-correlation of two (N, 1, X, Y, Z)
    images in cubic windows of `window` voxels (clipped at the borders): 1 where one image is
    an affine function of the other in every window (either sign: the correlation is squared)."""
    pool = lambda t: torch.nn.functional.avg_pool3d(t, window, stride=1, padding=window // 2,
                                                    count_include_pad=False)
    ma, mb = pool(a), pool(b)
    cov = pool(a * b) - ma * mb
    va = (pool(a * a) - ma * ma).clamp_min(0)
    vb = (pool(b * b) - mb * mb).clamp_min(0)
    return (cov * cov / (va * vb + eps)).mean()
