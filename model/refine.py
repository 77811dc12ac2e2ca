"""Test-time refinement of a registration's field on the host: a few label-free optimisation steps.

    ddf = refine(moving, fixed, ddf0, RefineConfig(iters=10))   # (3, X, Y, Z) voxels in and out

The network (with the global stage before it) gives the field `ddf0`; this step then adjusts it
to the one pair at hand, as a classical registration does for every pair, with the training's
own image term: it minimises 1 - mean squared local NCC of the warped moving and the fixed image,
plus `bending` x the bending energy of the whole field, by `iters` Adam steps of size `lr`
(voxels) on a correction that lives on a grid of half the resolution. Coarse cell i is the
2 x 2 x 2 block of working voxels 2i, 2i + 1, centred at 2i + 0.5: the fixed image there is the
block's mean, the moving image is read (trilinearly) from its overlapping block means, and the
field there is the block's mean plus the correction. So a step costs about an eighth of a
working-grid one; the correction reaches the working grid by trilinear interpolation (clamped
at the edges). No label is read: inference still needs the two images only.

numpy float32 with the gradients written out (the warp's, the local NCC's, the bending energy's),
so it runs wherever the deployed network's host code runs; tests/test_refine.py checks the
gradient against torch's autograd of the same loss.
"""
from __future__ import annotations

import time
from functools import lru_cache

import numpy as np

from model.config import RefineConfig

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
NCC_EPS = 1e-5  # model.losses.local_ncc's


def block_mean(x: np.ndarray, stride: int) -> np.ndarray:
    """Means of 2 x 2 x 2 blocks over the last three axes: stride 1, every overlapping block
    (n - 1 per axis); stride 2, the disjoint blocks (n // 2 per axis, an odd last voxel dropped)."""
    n = x.shape[-3:]
    if stride == 1:
        part = lambda o: tuple(slice(a, k - 1 + a) for a, k in zip(o, n))
    else:
        part = lambda o: tuple(slice(a, k // 2 * 2, 2) for a, k in zip(o, n))
    out = sum(x[(...,) + part((a, b, c))] for a in (0, 1) for b in (0, 1) for c in (0, 1))
    return out * np.float32(0.125)


@lru_cache(maxsize=8)
def upsample_matrix(n: int, nc: int) -> np.ndarray:
    """(n, nc) float32: linear interpolation from coarse cells (centred at 2i + 0.5) to the n
    working voxels, clamped to the first and last cell."""
    c = np.clip((np.arange(n) - 0.5) / 2, 0, nc - 1)
    lo = np.minimum(np.floor(c).astype(int), max(nc - 2, 0))
    t = c - lo
    A = np.zeros((n, nc), np.float32)
    A[np.arange(n), lo] += 1 - t
    A[np.arange(n), np.minimum(lo + 1, nc - 1)] += t
    return A


def upsample(u: np.ndarray, shape) -> np.ndarray:
    """(3, nx, ny, nz) coarse -> (3, X, Y, Z) working grid (separable, the adjoint is the transpose)."""
    (X, Y, Z), (c, a, b, _) = shape, u.shape
    Ax, Ay, Az = (upsample_matrix(n, nc) for n, nc in zip(shape, u.shape[1:]))
    v = np.matmul(Ay, u @ Az.T)  # (c, a, Y, Z): along z, then y
    return (Ax @ v.reshape(c, a, Y * Z)).reshape(c, X, Y, Z)


def box_sum(x: np.ndarray, w: int) -> np.ndarray:
    """Sum over the w^3 window centred on each voxel of the last three axes, zeros outside
    (separable: w shifted slices per axis of one zero-padded copy)."""
    r = w // 2
    if r:  # np.pad's generality costs more than the sums at these sizes
        padded = np.zeros((*x.shape[:-3], *(k + 2 * r for k in x.shape[-3:])), x.dtype)
        padded[..., r:-r, r:-r, r:-r] = x
        x = padded
    for ax in range(x.ndim - 3, x.ndim):
        n = x.shape[ax] - 2 * r
        sl = lambda k: (slice(None),) * ax + (slice(k, k + n),)
        acc = x[sl(0)].copy()
        for k in range(1, w):
            acc += x[sl(k)]
        x = acc
    return x


@lru_cache(maxsize=8)
def _inverse_counts(shape: tuple, w: int) -> np.ndarray:
    """1 / the number of voxels of each w^3 window inside the volume (read-only, one per grid)."""
    inv = 1 / box_sum(np.ones(shape, np.float32), w)
    inv.flags.writeable = False
    return inv


class LocalNCC:
    """model.losses.local_ncc(a, fixed, w) as a function of a, with its gradient; the fixed
    image's window statistics are computed once."""

    def __init__(self, fixed: np.ndarray, w: int):
        self.w, self.b = w, fixed
        self.inv_cnt = _inverse_counts(fixed.shape, w)
        self.mb = box_sum(fixed, w) * self.inv_cnt
        self.vb = np.maximum(box_sum(fixed * fixed, w) * self.inv_cnt - self.mb * self.mb, 0)

    def __call__(self, a: np.ndarray) -> tuple[float, np.ndarray]:
        """(mean squared local NCC, its gradient with respect to a)."""
        b, mb, vb = self.b, self.mb, self.vb
        ma, pab, paa = box_sum(np.stack([a, a * b, a * a]), self.w) * self.inv_cnt
        cov = pab - ma * mb
        va_raw = paa - ma * ma
        den = np.maximum(va_raw, 0) * vb + NCC_EPS
        cc = cov * cov / den
        g_cov = 2 * cov / den
        g_va = np.where(va_raw > 0, -cc * vb / den, 0).astype(a.dtype)
        # the window mean's adjoint, for the three pooled quantities at once
        g1, g_ab, g_aa = box_sum(np.stack([-mb * g_cov - 2 * ma * g_va, g_cov, g_va]) * self.inv_cnt, self.w)
        return float(cc.mean()), (g1 + b * g_ab + 2 * a * g_aa) / a.size


def bending_and_grad(d: np.ndarray, energy: bool = True) -> tuple[float | None, np.ndarray]:
    """model.losses.bending_energy of (3, X, Y, Z) and its gradient (the energy only if asked).

    That loss takes each second derivative as two central differences, cropped to the voxels 2
    or more from every face, so each is a stencil read there directly: along one axis
    (f[x + 2] - 2 f[x] + f[x - 2]) / 4, across two (f[+1, +1] - f[+1, -1] - f[-1, +1] + f[-1, -1]) / 4;
    the gradient scatters each back through the same stencil."""
    m, stencils = _bending_stencils(d.shape[1:])
    total, grad = 0.0, np.zeros_like(d)
    for coef, (first, *taps) in stencils:
        t = d[first[0]].copy()  # every stencil's first tap has weight 1
        for at, w in taps:
            if w == 1:
                t += d[at]
            else:
                t -= d[at] if w == -1 else 2 * d[at]
        t *= np.float32(0.25)
        if energy:
            total += coef * float((t * t).sum())
        t *= np.float32(0.5 * coef / m)  # d(coef t^2 / m)/dt x the stencil's 1/4
        grad[first[0]] += t
        for at, w in taps:
            if w == 1:
                grad[at] += t
            else:
                grad[at] -= t if w == -1 else 2 * t
    return (total / m if energy else None), grad


@lru_cache(maxsize=8)
def _bending_stencils(n: tuple) -> tuple[float, list]:
    """(interior voxel count, [(coefficient, ((slice of the tap, weight), ...))]) for a grid n."""
    at = lambda off: (slice(None),) + tuple(slice(2 + o, k - 2 + o) for o, k in zip(off, n))
    unit = np.eye(3, dtype=int)
    stencils = [(1.0, ((at(2 * unit[i]), 1), (at(-2 * unit[i]), 1), (at(0 * unit[i]), -2))) for i in range(3)]
    stencils += [(2.0, ((at(unit[i] + unit[j]), 1), (at(-unit[i] - unit[j]), 1), (at(unit[i] - unit[j]), -1),
                        (at(unit[j] - unit[i]), -1))) for i in range(3) for j in range(i + 1, 3)]
    return float(np.prod([k - 4 for k in n])), stencils


def warp_and_grad(vol: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`vol` read trilinearly at `pos` (3, ...) clamped to [0, size - 1] (model.warp's rule), and
    the derivative of the result along each axis of pos (0 where pos was clamped, as GridSample's)."""
    size = np.asarray(vol.shape, np.float32).reshape(3, 1, 1, 1)
    inside = (pos >= 0) & (pos <= size - 1)
    p = np.minimum(np.maximum(pos, 0), size - 1)
    lo = np.minimum(np.floor(p), size - 2)
    t = p - lo   # float32 (an int64 lo would make t and everything after it float64)
    lo = lo.astype(np.int64)
    sx, sy = vol.shape[1] * vol.shape[2], vol.shape[2]
    base = lo[0] * sx + lo[1] * sy + lo[2]
    v = vol.ravel()
    c = {(dx, dy, dz): v.take(base + (dx * sx + dy * sy + dz)) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)}
    # interpolate along z, then y, then x, keeping the differences for the gradient
    cz = {(dx, dy): c[dx, dy, 0] + t[2] * (c[dx, dy, 1] - c[dx, dy, 0]) for dx in (0, 1) for dy in (0, 1)}
    gz = {(dx, dy): c[dx, dy, 1] - c[dx, dy, 0] for dx in (0, 1) for dy in (0, 1)}
    cy = [cz[dx, 0] + t[1] * (cz[dx, 1] - cz[dx, 0]) for dx in (0, 1)]
    gy = [cz[dx, 1] - cz[dx, 0] for dx in (0, 1)]
    gzy = [gz[dx, 0] + t[1] * (gz[dx, 1] - gz[dx, 0]) for dx in (0, 1)]
    out = cy[0] + t[0] * (cy[1] - cy[0])
    grad = np.stack([cy[1] - cy[0], gy[0] + t[0] * (gy[1] - gy[0]), gzy[0] + t[0] * (gzy[1] - gzy[0])])
    return out, grad * inside


class Refiner:
    """The loss on the coarse grid for one pair, and its gradient in the correction u."""

    def __init__(self, moving: np.ndarray, fixed: np.ndarray, ddf0: np.ndarray, cfg: RefineConfig):
        f32 = lambda x: np.asarray(x, np.float32)
        self.cfg, self.shape = cfg, tuple(moving.shape)
        self.fixed_c = block_mean(f32(fixed), 2)
        self.moving_b = block_mean(f32(moving), 1)  # moving_b[j] is centred at j + 0.5
        self.d0_c = block_mean(f32(ddf0), 2)
        self.ncc = LocalNCC(self.fixed_c, cfg.window)
        nc = self.fixed_c.shape
        self.base = 2 * np.indices(nc, dtype=np.float32)  # cell centre 2i + 0.5 is moving_b's index 2i

    def similarity_and_grad(self, u: np.ndarray, energy: bool = False):
        """(mean squared local NCC, the loss's gradient in u[, the loss]): the loss itself (with
        the bending energy's value) only if `energy`."""
        d = self.d0_c + u
        warped, gw = warp_and_grad(self.moving_b, self.base + d)
        ncc, g_a = self.ncc(warped)
        be, g_be = bending_and_grad(d, energy)
        grad = -g_a * gw + np.float32(self.cfg.bending) * g_be
        return (ncc, grad, 1 - ncc + self.cfg.bending * be) if energy else (ncc, grad)

    def loss_and_grad(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        ncc, grad, loss = self.similarity_and_grad(u, energy=True)
        return loss, grad


def refine(moving: np.ndarray, fixed: np.ndarray, ddf0: np.ndarray, cfg: RefineConfig,
           stats: dict | None = None) -> np.ndarray:
    """(X, Y, Z) images and the (3, X, Y, Z) voxel field of the registration so far -> the refined
    field, ddf0 plus the interpolated correction (ddf0's dtype). Stops after cfg.iters steps, or
    earlier by cfg.tol or cfg.budget_ms (RefineConfig). `stats`, if given, receives the steps
    taken and the similarity (mean squared local NCC on the coarse grid) before each step."""
    if cfg.iters == 0:
        return ddf0
    if ddf0.shape != (3, *moving.shape) or fixed.shape != moving.shape:
        raise ValueError(f"refine: moving {moving.shape}, fixed {fixed.shape} and ddf {ddf0.shape} do not match")
    t0 = time.perf_counter()
    r = Refiner(moving, fixed, ddf0, cfg)
    u = np.zeros_like(r.d0_c)
    m, v = np.zeros_like(u), np.zeros_like(u)
    (b1, b2) = ADAM_BETAS
    similarity = []
    k = 0
    for k in range(1, cfg.iters + 1):
        ncc, g = r.similarity_and_grad(u)
        if similarity and abs(ncc - similarity[-1]) < cfg.tol * abs(similarity[-1]):
            k -= 1  # the last step changed the similarity by less than tol: stop before this one
            similarity.append(ncc)
            break
        similarity.append(ncc)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = u - np.float32(cfg.lr / (1 - b1 ** k)) * m / (np.sqrt(v / np.float32(1 - b2 ** k)) + ADAM_EPS)
        if cfg.budget_ms and (time.perf_counter() - t0) * 1e3 >= cfg.budget_ms:
            break
    if stats is not None:
        stats.update(steps=k, similarity=similarity)
    return ddf0 + upsample(u, r.shape).astype(ddf0.dtype)
