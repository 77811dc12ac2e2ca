"""The global stage: the moving image pre-aligned by its intensity moments, a float host step.

    A = moments_affine(moving, fixed)        # fixed voxel x -> moving voxel  M @ x + t
    moving_aligned = host_warp(moving, affine_ddf(A, shape))
    d = network(moving_aligned, fixed)       # the local field, as before (integer path unchanged)
    ddf = compose(A, d)                      # A(x + d(x)) - x = (M x + t - x) + M d(x)

Moments: per image, with negative intensities clipped to 0 as weights, the weighted centroid
c and covariance C of the voxel coordinates. M = C_m^(1/2) C_f^(-1/2) (symmetric square roots
by eigendecomposition), t = c_m - M c_f: the affine that carries the fixed image's centroid
and second moments onto the moving image's, whichever of the many such maps stays closest to
a pure scaling. float64 throughout; 12 numbers cross the host boundary, the network's input
is then quantised by its own input quantiser as before (hw/SPEC.md). No training, no
iterations: a few milliseconds per pair on the demo grid. model/registration.py runs it
before the network (`model.prealign` = "moments" or "affine"); benchmarks/global_stage.py
measures each stage alone against ANTs' affine stage.
"""
from __future__ import annotations

import numpy as np

from model.host_warp import corners, gather, host_warp
from model.refine import block_mean   # coarse voxel j at fine 2 j + 0.5, an odd last plane dropped

KINDS = ("none", "moments", "affine")


def moments(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centroid (3,), covariance (3, 3)) of voxel coordinates weighted by max(image, 0).

    From the image's projections (sums over one or two axes): every first and second moment
    of the coordinates is a product of 1-D coordinate vectors with a 1-D or 2-D projection."""
    w = np.clip(np.asarray(image, np.float64), 0, None)
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("pre-alignment needs an image with positive intensities (all are <= 0 or not finite)")
    ix, iy, iz = (np.arange(n, dtype=np.float64) for n in w.shape)
    wxy, wxz, wyz = w.sum(2), w.sum(1), w.sum(0)  # (X, Y), (X, Z), (Y, Z)
    wx, wy, wz = wxy.sum(1), wxy.sum(0), wxz.sum(0)
    c = np.array([ix @ wx, iy @ wy, iz @ wz]) / total
    S = np.empty((3, 3))
    S[0, 0], S[1, 1], S[2, 2] = ix**2 @ wx, iy**2 @ wy, iz**2 @ wz
    S[0, 1] = S[1, 0] = ix @ wxy @ iy
    S[0, 2] = S[2, 0] = ix @ wxz @ iz
    S[1, 2] = S[2, 1] = iy @ wyz @ iz
    return c, S / total - np.outer(c, c)


def _sqrt_spd(C: np.ndarray, inverse: bool = False) -> np.ndarray:
    vals, vecs = np.linalg.eigh(C)
    vals = np.maximum(vals, 1e-12)
    return (vecs * (vals ** (-0.5 if inverse else 0.5))) @ vecs.T


def moments_affine(moving: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M (3, 3), t (3,)) mapping fixed voxel coordinates to moving ones (see the module docstring)."""
    cm, Cm = moments(moving)
    cf, Cf = moments(fixed)
    M = _sqrt_spd(Cm) @ _sqrt_spd(Cf, inverse=True)
    return M, cm - M @ cf


def smooth_binomial(img: np.ndarray, passes: int) -> np.ndarray:
    """`passes` times the separable [1, 2, 1] / 4 filter along every axis, edges replicated
    (each pass adds variance 1/2 voxel^2: 2 passes ~ a Gaussian of sigma 1 voxel)."""
    out = np.asarray(img, np.float32)
    for _ in range(passes):
        for ax in range(3):
            p = np.concatenate([out.take([0], ax), out, out.take([-1], ax)], ax)
            n = out.shape[ax]
            sl = lambda a, b: tuple(slice(a, b) if i == ax else slice(None) for i in range(3))  # noqa: E731
            out = 0.25 * p[sl(0, n)] + 0.5 * p[sl(1, n + 1)] + 0.25 * p[sl(2, n + 2)]
    return out


# the intensity-based affine stage: (sample stride, smoothing passes, Levenberg-Marquardt iterations)
# per pyramid level, coarse to fine, and the relative cost change that ends a level early
AFFINE_LEVELS = ((4, 2, 30), (2, 1, 15))
AFFINE_TOL = 1e-5
# damping increases (x10 each) tried before a level stops as converged: 3, not 8, ended each level
# after about 38 % fewer cost evaluations with Dice as high on both domains (docs/experiments.md)
AFFINE_TRIALS = 3
# the working grid the levels above were chosen on (the demo's 32x40x32): a volume with about 8^k
# times its voxels is registered box-averaged k times by 2 per axis, so that its strides and
# smoothing cover the same share of the head (at 64x80x64 the levels alone registered below ANTs'
# affine stage: docs/experiments.md, 2026-12-07 late)
AFFINE_GRID_VOXELS = 32 * 40 * 32


def _lm_level(ms: np.ndarray, fs: np.ndarray, stride: int, iters: int, A: np.ndarray, u: np.ndarray):
    """Levenberg-Marquardt iterations of affine_register at one pyramid level, from (A, u) with
    y = A (x - c) + c + u; returns (A, u, mean squared residual)."""
    shape = np.asarray(fs.shape)
    c = (shape - 1) / 2.0
    grads = np.stack(np.gradient(ms))  # (3, X, Y, Z) central differences in voxels, float32
    idx = tuple(np.arange(stride // 2, n, stride) for n in fs.shape)
    Xc = np.stack(np.meshgrid(*idx, indexing="ij")).reshape(3, -1).astype(np.float64) - c[:, None]
    f = fs[np.ix_(*idx)].reshape(-1).astype(np.float64)
    hi = (shape - 1)[:, None]

    def residual(A_, u_):
        Y = A_ @ Xc + (c + u_)[:, None]
        ok = np.all((Y >= 0) & (Y <= hi), 0)
        cw = corners(fs.shape, Y[:, ok].astype(np.float32))  # shared with the gradients' reading
        w = gather(ms, *cw).astype(np.float64)
        fo = f[ok] - f[ok].mean()
        var = fo @ fo
        a = (fo @ (w - w.mean())) / var if var > 0 else 0.0  # the best gain for these parameters
        r = w - w.mean() - a * fo
        return r, ok, cw, fo, float(r @ r) / max(ok.sum(), 1)

    r, ok, cw, fo, cost = residual(A, u)
    lam = 1e-3
    for _ in range(iters):
        g = gather(grads, *cw).astype(np.float64)  # (3, n)
        xc = Xc[:, ok]
        J = np.concatenate([(g[i] * xc).T for i in range(3)] + [g.T, -fo[:, None], -np.ones((xc.shape[1], 1))], 1)
        H, grad = J.T @ J, J.T @ r
        for _ in range(AFFINE_TRIALS):
            step = np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), -grad)
            A2, u2 = A + step[:9].reshape(3, 3), u + step[9:12]
            r2, ok2, cw2, fo2, cost2 = residual(A2, u2)
            if ok2.sum() >= 0.5 * ok.size and cost2 < cost:
                break
            lam *= 10
        else:
            break  # no step lowers the cost: converged (or stuck)
        rel = (cost - cost2) / max(cost, 1e-30)
        A, u, r, ok, cw, fo, cost, lam = A2, u2, r2, ok2, cw2, fo2, cost2, max(lam / 10, 1e-7)
        if rel < AFFINE_TOL:
            break
    return A, u, cost


def box_halvings(shape) -> int:
    """How many times affine_register box-averages a volume of `shape` by 2 per axis: the k with
    8^k nearest AFFINE_GRID_VOXELS / voxels on a log scale, 0 at or below about 2.8x that grid."""
    return max(0, int(np.floor(np.log(np.prod(shape) / AFFINE_GRID_VOXELS) / np.log(8) + 0.5)))


def affine_to_fine(M: np.ndarray, t: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) between voxels of a grid box-averaged k times by 2 -> the same map between the fine
    grid's voxels: with s = 2^k, fine x = s x_c + (s - 1) / 2, so M stays and
    t_f = s t + (s - 1) / 2 (1 - M 1)."""
    s = 2.0 ** k
    return M, s * t + (s - 1) / 2 * (np.ones(3) - M @ np.ones(3))


def affine_register(moving: np.ndarray, fixed: np.ndarray, levels=AFFINE_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) fixed voxel -> moving voxel, fitted to the intensities: Levenberg-Marquardt on the sum
    of squared differences between the moving image read at M x + t and gain x fixed + offset,
    over the 12 affine and the 2 intensity parameters (the gain and offset in closed form at
    every evaluation), so it maximises their correlation, blind to contrast scale and offset.
    Coarse to fine (`levels`: fixed samples every `stride` voxels, both images smoothed first),
    from the moments affine. (Starting from the identity as well and keeping the lower cost
    registered worse on both validation domains: docs/experiments.md, 2026-12-06.) Samples whose
    moving position leaves the volume are left out. A volume much larger than the grid the
    levels were chosen on is registered box-averaged to about that grid (box_halvings) and the
    map carried back (affine_to_fine). float64 parameters, float32 images; deterministic."""
    k = box_halvings(fixed.shape)
    for _ in range(k):
        moving, fixed = block_mean(np.asarray(moving, np.float32), 2), block_mean(np.asarray(fixed, np.float32), 2)
    c = (np.asarray(fixed.shape) - 1) / 2.0
    M0, t0 = moments_affine(moving, fixed)
    A, u = M0, t0 + M0 @ c - c
    for stride, passes, iters in levels:
        A, u, _ = _lm_level(smooth_binomial(moving, passes), smooth_binomial(fixed, passes), stride, iters, A, u)
    return affine_to_fine(A, c + u - A @ c, k)


def global_affine(kind: str, moving: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) of the global stage `kind` (fixed voxel -> moving voxel)."""
    if kind not in KINDS:
        raise ValueError(f"pre-alignment {kind!r}: expected one of {KINDS}")
    if kind == "none":
        return np.eye(3), np.zeros(3)
    if kind == "moments":
        return moments_affine(moving, fixed)
    return affine_register(moving, fixed)


def affine_ddf(M: np.ndarray, t: np.ndarray, shape) -> np.ndarray:
    """(3, X, Y, Z) float64 displacement M x + t - x in voxels."""
    x, y, z = (np.arange(n, dtype=np.float64) for n in shape)
    A = np.asarray(M, np.float64) - np.eye(3)
    return (A[:, 0, None, None, None] * x[:, None, None] + A[:, 1, None, None, None] * y[:, None]
            + A[:, 2, None, None, None] * z + np.asarray(t, np.float64)[:, None, None, None])


def compose(M: np.ndarray, t: np.ndarray, local: np.ndarray) -> np.ndarray:
    """The whole field of a pre-aligned registration: (M x + t - x) + M d(x), (3, X, Y, Z) float64."""
    d = np.asarray(local, np.float64)
    return affine_ddf(M, t, d.shape[1:]) + np.einsum("ij,j...->i...", M, d)


def prealign(kind: str, moving: np.ndarray, fixed: np.ndarray):
    """(moving image resampled onto the fixed grid by the global stage (float32), M, t); `none`
    gives the moving image unchanged and the identity."""
    if kind == "none":
        return np.asarray(moving, np.float32), np.eye(3), np.zeros(3)
    M, t = global_affine(kind, moving, fixed)
    return host_warp(moving, affine_ddf(M, t, moving.shape)), M, t


def network_input(kind: str, moving: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pair the network sees: (moving after the global stage, fixed), float32."""
    return prealign(kind, moving, fixed)[0], np.asarray(fixed, np.float32)

