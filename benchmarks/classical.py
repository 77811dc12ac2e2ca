"""The classical peer of Table 1: ANTs affine and SyN registration on the working grid.

    from benchmarks.classical import ants_ddf
    ddf = ants_ddf(moving_image, fixed_image, spacing_mm=(5, 5, 5), kind="SyN", threads=2, seed=0)

Both images are the arrays the network sees: (X, Y, Z) float on the working grid
(axis-aligned, `spacing_mm`), so ANTs registers exactly the pairs, grid and intensities the
learned rows are evaluated on. ANTs (antspyx, default parameters of `ants.registration` for
`type_of_transform` "Affine" or "SyN", or "SyNLong": SyN with SYN_LONG_ITERATIONS; mutual information, its own multi-resolution schedule)
returns forward transforms that map fixed points to moving points; they are composed into
one displacement field on the fixed grid (`ants.apply_transforms(..., compose=...)`), in mm
along the array axes (the images carry identity direction and zero origin), and divided by
the spacing: the result is the network's convention, (3, X, Y, Z) voxels, the moving image
sampled at x + ddf(x) (model.warp). tests/test_classical.py checks the conversion against
ANTs' own resampling.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

KINDS = ("Affine", "SyN", "SyNLong")
# "SyNLong": SyN with more iterations per level, (100, 70, 50, 20) on four levels (shrink factors
# 8, 4, 2, 1) instead of antspyx's (40, 20, 0): the stronger peer issue 37 measured at 0.489
SYN_LONG_ITERATIONS = (100, 70, 50, 20)


def table1_peer(cfg, kind: str):
    """(moving Subject, fixed Subject) -> ants_ddf with Table 1's settings: one thread (like the
    deployed network's runtime), random seed train.seed + 1 (repeatable). Table 1 and
    benchmarks/validation.py both run the peer through this."""
    return lambda m, f: ants_ddf(m.image, f.image, cfg.data.spacing_mm, kind, threads=1, seed=cfg.train.seed + 1)


def ants_ddf(moving: np.ndarray, fixed: np.ndarray, spacing_mm, kind: str = "SyN", threads: int = 2,
             seed: int = 1) -> np.ndarray:
    """(X, Y, Z) float images -> (3, X, Y, Z) float64 displacement in voxels (see the module docstring).

    `seed` (>= 1) fixes ANTs' random metric sampling: with seed 0 antsRegistration draws a new
    one every run, and the affine stage then lands in different optima (measured on a demo
    pair: translations of 0.5 to 16.6 mm between three runs)."""
    if kind not in KINDS:
        raise ValueError(f"ANTs registration kind {kind!r}: expected one of {KINDS}")
    if seed < 1:
        raise ValueError(f"ANTs random seed must be >= 1 (0 means a random seed), got {seed}")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)  # read by ITK when ANTs runs
    import ants

    sp = tuple(float(s) for s in spacing_mm)
    f = ants.from_numpy(np.ascontiguousarray(fixed, dtype=np.float32), spacing=sp)
    m = ants.from_numpy(np.ascontiguousarray(moving, dtype=np.float32), spacing=sp)
    ants.config._random_seed = seed  # antsRegistration --random-seed
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"reg_iterations": SYN_LONG_ITERATIONS} if kind == "SyNLong" else {}
        reg = ants.registration(f, m, type_of_transform="SyN" if kind == "SyNLong" else kind,
                                outprefix=os.path.join(tmp, "reg_"), **extra)
        field_path = ants.apply_transforms(f, m, reg["fwdtransforms"], compose=os.path.join(tmp, "field_"))
        field = ants.image_read(field_path).numpy()  # (X, Y, Z, 3) mm, fixed point -> moving point
    return np.moveaxis(field.astype(np.float64), -1, 0) / np.asarray(sp)[:, None, None, None]
