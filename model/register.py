"""Register a moving NIfTI volume onto a fixed one with a trained checkpoint.

    python -m model.register --ckpt runs/demo/train/model.pt \\
        --fixed F.nii.gz --moving M.nii.gz --out W.nii.gz [--ddf D.nii.gz]

Inputs may have any size, spacing and orientation (the headers are trusted). Both are
resampled to the checkpoint's working grid (each centred on its own volume), the network
predicts the displacement there (the global stage before it and the test-time refinement after
it, as the checkpoint's config has them), and the moving image is then resampled once, trilinearly
from its original voxels, onto the fixed image's own grid: W has the fixed image's shape
and affine, so any NIfTI viewer overlays it on F. Outside the working grid's field of view
the displacement is continued from the nearest edge voxel (the warp's border rule); moving
positions outside the moving volume read 0.

--ddf writes the dense displacement on the fixed grid as a NIfTI vector image of shape
(X, Y, Z, 1, 3) (intent 'vector'): world RAS displacement in mm, moving point minus fixed point.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.cli import check_outputs, run_cli
from model.data import (DataError, apply_affine, check_overlap, grid_affine, grid_coords, normalise_intensity, read_volume,
                        resample, sample, volume_center, write_nifti)
from model.evaluate import predict_ddf
from model.prealign import with_global_stage
from model.refine import with_refinement
from model.localnet import fold_batchnorm


def register(ckpt: Path, fixed_path: Path, moving_path: Path):
    """-> (warped moving on the fixed grid (float32), world displacement (X, Y, Z, 3) mm, fixed affine)."""
    net, cfg = model_from_checkpoint(load_checkpoint(ckpt), str(ckpt))
    net = fold_batchnorm(net)
    fixed, aff_f = read_volume(fixed_path)
    moving, aff_m = read_volume(moving_path)
    check_overlap(fixed_path, fixed.shape, aff_f, moving_path, moving.shape, aff_m)
    shape, spacing = cfg.data.shape, cfg.data.spacing_mm
    g_f = grid_affine(volume_center(fixed.shape, aff_f), shape, spacing)
    g_m = grid_affine(volume_center(moving.shape, aff_m), shape, spacing)
    p = cfg.data.intensity_percentiles
    fixed_w = normalise_intensity(resample(fixed.astype(np.float32), aff_f, g_f, shape, 1), *p)
    moving_w = normalise_intensity(resample(moving.astype(np.float32), aff_m, g_m, shape, 1), *p)
    for path, img in ((fixed_path, fixed_w), (moving_path, moving_w)):
        if not img.any():
            raise DataError(f"{path}: the image is constant on the working grid (its {p[0]} and {p[1]} "
                            "percentiles are equal): nothing to register")
    # (3, X, Y, Z) working-grid voxels, the global stage (if configured) composed in
    # and the test-time refinement (if configured)
    ddf = with_refinement(cfg.refine, with_global_stage(cfg.model.prealign,
                                                        lambda m, f: predict_ddf(net, m, f)))(moving_w, fixed_w)

    world_f = apply_affine(aff_f, grid_coords(fixed.shape))  # (3, ...) mm of every fixed voxel
    q = apply_affine(np.linalg.inv(g_f), world_f)  # fixed working-grid voxels
    q_clamped = np.clip(q, 0, (np.asarray(shape) - 1).reshape(3, 1, 1, 1))
    disp = np.stack([sample(ddf[a], q_clamped, 1) for a in range(3)])
    world_m = apply_affine(g_m, q + disp)
    warped = sample(moving.astype(np.float32), apply_affine(np.linalg.inv(aff_m), world_m), 1).astype(np.float32)
    return warped, np.moveaxis(world_m - world_f, 0, -1).astype(np.float32), aff_f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument("--fixed", required=True, type=Path)
    ap.add_argument("--moving", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--ddf", type=Path, help="also write the displacement field (mm) here")
    a = ap.parse_args(argv)

    def body():
        check_outputs({"--out": a.out, "--ddf": a.ddf}, {"--ckpt": a.ckpt, "--fixed": a.fixed, "--moving": a.moving})
        warped, disp, aff = register(a.ckpt, a.fixed, a.moving)
        write_nifti(a.out, warped, aff)
        if a.ddf:
            write_nifti(a.ddf, disp[:, :, :, None, :], aff, intent="vector")
        print(f"[register] wrote {a.out}" + (f" and {a.ddf}" if a.ddf else ""), file=sys.stderr)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
