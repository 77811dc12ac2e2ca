"""The registration as deployed, defined once: global stage, network, composition, refinement, warp.

    reg = Registration(Settings.from_config(cfg), network)   # network(moving, fixed) -> (3, X, Y, Z) voxels
    ddf = reg.field(moving, fixed)          # working-grid images (X, Y, Z) -> (3, X, Y, Z) float64 voxels
    warped = reg.warp(moving, ddf)          # the moving image on the fixed working grid
    scan = reg.register_scans(fixed_path, moving_path, moving_labels_path)   # NIfTI files of any grid

`network` is the only part that differs between deployments: the exported int8 network on a
runtime (hw/runtime.py: onnxruntime, OpenVINO, the integer reference, the RTL engine) or a float
checkpoint in torch (model/evaluate.py). Everything around it is here, with numpy and nibabel
only, so a board without torch runs the same registration that Table 1 scores:

1. the global stage (`model.prealign`: none, moments or affine; model/prealign.py) fits an affine
   A on the host and resamples the moving image by it;
2. the network predicts the local field d of the aligned pair; the whole field is A composed
   with it, (M x + t - x) + M d(x) (model.prealign.compose);
3. the test-time refinement ([refine], model/refine.py) adjusts the field to the pair;
4. the moving image (and its labels) are resampled at x + ddf(x).

Scans: both images are resampled to the working grid (each centred on its own volume; headers
trusted, any orientation and spacing) and normalised as in training; after the registration, the
moving image is resampled once, trilinearly from its own voxels, onto the fixed image's grid, and
moving labels nearest-neighbour. Outside the working grid's field of view the displacement is
continued from the nearest edge voxel (the warp's border rule); moving positions outside the
moving volume read 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from model.config import Config, RefineConfig
from model.data import (DataError, apply_affine, check_overlap, grid_affine, grid_coords, normalise_intensity,
                        read_volume, resample, sample, volume_center, write_nifti)
from model.host_warp import host_warp
from model.prealign import KINDS, compose, prealign
from model.refine import refine

Network = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Settings:
    """What the registration needs besides the network: the working grid, the intensity
    normalisation, the global stage and the refinement (all from a validated Config)."""
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    intensity_percentiles: tuple[float, float]
    prealign: str
    refine: RefineConfig

    @classmethod
    def from_config(cls, cfg: Config) -> "Settings":
        if cfg.model.prealign not in KINDS:
            raise ValueError(f"model.prealign {cfg.model.prealign!r}: expected one of {KINDS}")
        d = cfg.data
        return cls(tuple(d.shape), tuple(d.spacing_mm), tuple(d.intensity_percentiles), cfg.model.prealign,
                   dataclasses.replace(cfg.refine))


@dataclass
class ScanResult:
    """A registration of two scans: outputs on the fixed image's grid, and the working-grid pair."""
    warped: np.ndarray                 # (X, Y, Z) float32, the moving image on the fixed grid
    displacement_mm: np.ndarray        # (X, Y, Z, 3) float32, world RAS: moving point - fixed point
    affine: np.ndarray                 # the fixed image's voxel -> world affine
    warped_labels: np.ndarray | None   # (X, Y, Z) moving labels on the fixed grid (nearest), if given
    fixed_w: np.ndarray                # working grid (float32, normalised)
    moving_w: np.ndarray
    ddf: np.ndarray                    # (3, X, Y, Z) float64 voxels of the working grid
    fixed_grid: np.ndarray             # working grid voxel -> world affine of the fixed and moving images
    moving_grid: np.ndarray

    def write(self, out: Path, ddf: Path | None = None, labels: Path | None = None) -> list[Path]:
        """Write the warped image, and optionally the displacement (a NIfTI vector image (X, Y, Z,
        1, 3), intent 'vector', world mm) and the warped labels (int16), on the fixed grid."""
        write_nifti(out, self.warped, self.affine)
        if ddf is not None:
            write_nifti(ddf, self.displacement_mm[:, :, :, None, :], self.affine, intent="vector")
        if labels is not None:
            if self.warped_labels is None:
                raise ValueError(f"{labels}: no moving labels were registered")
            write_nifti(labels, self.warped_labels.astype(np.int16), self.affine)
        return [p for p in (out, ddf, labels) if p is not None]


class Registration:
    """The deployed registration around one network (see the module docstring)."""

    def __init__(self, settings: Settings, network: Network, name: str = "network"):
        self.settings, self.network, self.name = settings, network, name

    def local(self, moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """The network's own field for the pair it is given, float64 (3, X, Y, Z) voxels."""
        return np.asarray(self.network(moving, fixed), np.float64)

    def field(self, moving: np.ndarray, fixed: np.ndarray, refine_field: bool = True) -> np.ndarray:
        """Working-grid images (X, Y, Z) -> the whole registration's field (3, X, Y, Z) float64
        voxels: global stage, network, composition, then (unless `refine_field` is False) the
        refinement."""
        s = self.settings
        fixed = np.asarray(fixed, np.float32)
        if s.prealign == "none":
            ddf = self.local(np.asarray(moving, np.float32), fixed)
        else:
            aligned, M, t = prealign(s.prealign, moving, fixed)
            ddf = compose(M, t, self.local(aligned, fixed))
        return self.refined(moving, fixed, ddf) if refine_field else ddf

    def refined(self, moving: np.ndarray, fixed: np.ndarray, ddf: np.ndarray, cfg: RefineConfig | None = None,
                stats: dict | None = None) -> np.ndarray:
        """The refinement step alone on an unrefined field of this registration (`field(...,
        refine_field=False)`), with the settings' [refine] or `cfg` (model.refine.refine's
        `stats`): field(m, f) == refined(m, f, field(m, f, refine_field=False))."""
        cfg = self.settings.refine if cfg is None else cfg
        return refine(moving, fixed, ddf, cfg, stats) if cfg.iters else ddf

    @staticmethod
    def warp(moving: np.ndarray, ddf: np.ndarray) -> np.ndarray:
        """The moving image read at x + ddf(x), trilinear, clamped at the border (float32)."""
        return host_warp(moving, ddf)

    @staticmethod
    def warp_labels_soft(label: np.ndarray, codes: list[int], ddf: np.ndarray) -> np.ndarray:
        """One-hot masks of `codes` warped trilinearly -> (L, X, Y, Z) float32 in [0, 1]."""
        return np.stack([host_warp((label == c).astype(np.float32), ddf) for c in codes])

    # ---- scans of any grid -------------------------------------------------------------------

    def working_image(self, path: Path, image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the image on its working grid, normalised as in training; that grid's affine)."""
        s = self.settings
        grid = grid_affine(volume_center(image.shape, affine), s.shape, s.spacing_mm)
        w = normalise_intensity(resample(image.astype(np.float32), affine, grid, s.shape, 1), *s.intensity_percentiles)
        if not w.any():
            p = s.intensity_percentiles
            raise DataError(f"{path}: the image is constant on the working grid (its {p[0]} and {p[1]} "
                            "percentiles are equal): nothing to register")
        return w, grid

    def register_scans(self, fixed_path: Path, moving_path: Path, moving_labels: Path | None = None,
                       refine_field: bool = True) -> ScanResult:
        """Register two NIfTI scans (module docstring); every input is read and checked before
        the network runs."""
        fixed, aff_f = read_volume(fixed_path)
        moving, aff_m = read_volume(moving_path)
        check_overlap(fixed_path, fixed.shape, aff_f, moving_path, moving.shape, aff_m)
        labels = None
        if moving_labels is not None:
            labels, aff_l = read_volume(moving_labels)
            if labels.shape != moving.shape or not np.allclose(aff_l, aff_m, atol=1e-3):
                raise DataError(f"{moving_labels}: shape {labels.shape} or affine differs from the moving image "
                                f"{moving_path} {moving.shape}: the labels must lie on the moving image's grid")
            if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
                raise DataError(f"{moving_labels}: holds non-integer values; expected a label map")
        fixed_w, g_f = self.working_image(fixed_path, fixed, aff_f)
        moving_w, g_m = self.working_image(moving_path, moving, aff_m)
        ddf = self.field(moving_w, fixed_w, refine_field)

        shape = self.settings.shape
        world_f = apply_affine(aff_f, grid_coords(fixed.shape))  # (3, ...) mm of every fixed voxel
        q = apply_affine(np.linalg.inv(g_f), world_f)             # fixed working-grid voxels
        q_clamped = np.clip(q, 0, (np.asarray(shape) - 1).reshape(3, 1, 1, 1))
        disp = np.stack([sample(ddf[a], q_clamped, 1) for a in range(3)])
        world_m = apply_affine(g_m, q + disp)
        at_m = apply_affine(np.linalg.inv(aff_m), world_m)       # moving voxels of every fixed voxel
        warped = sample(moving.astype(np.float32), at_m, 1).astype(np.float32)
        warped_labels = None if labels is None else sample(labels, at_m, 0)
        return ScanResult(warped, np.moveaxis(world_m - world_f, 0, -1).astype(np.float32), aff_f, warped_labels,
                          fixed_w, moving_w, ddf, g_f, g_m)
