"""Deterministic synthetic brain MR set in the IBSR_V2.0 layout (`make data`).

    python -m model.synth --out data/synthetic            # 18 subjects, half IBSR resolution
    python -m model.synth --out D --subjects 8 --shape 256 128 256 --seed 1

Each subject is one analytic template anatomy (brain, cortex, white matter,
lateral ventricles, thalamus, caudate, putamen, hippocampus, left and right
under their CMA codes; CSF, skull and scalp around them) seen through a
subject-specific smooth random deformation and a small affine change, imaged
with T1-like contrast, a multiplicative bias field and Rician-like noise. Files
are written with a per-subject voxel order, axis flips and spacing jitter (the
header says which), and odd subjects carry the trailing singleton 4th axis real
IBSR label files have, so the real loader is what reads them. Landmarks (world
mm) are points of the template mapped through each subject's deformation, so
true landmark TRE is measurable.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np

from model.artifacts import atomic_write_json, atomic_write_text, git_commit
from model.data import write_nifti

BRAIN_AXES = np.array([65.0, 80.0, 55.0])  # semi-axes of the brain ellipsoid, mm (x=R, y=A, z=S)

# deep structures: (left code, right code, centre |x|, y, z in mm, semi-axes mm, T1 intensity)
DEEP = [
    ("lateral_ventricle", 4, 43, (10.0, 2.0, 14.0), (6.5, 30.0, 9.0), 30.0),
    ("thalamus", 10, 49, (12.0, -16.0, 0.0), (9.0, 14.0, 10.0), 92.0),
    ("caudate", 11, 50, (18.0, 16.0, 10.0), (6.0, 13.0, 8.0), 80.0),
    ("putamen", 12, 51, (28.0, 3.0, 0.0), (6.0, 15.0, 10.0), 86.0),
    ("hippocampus", 17, 53, (30.0, -24.0, -16.0), (7.0, 18.0, 7.0), 72.0),
]
WM_T1, GM_T1, CSF_T1, SKULL_T1, SCALP_T1 = 115.0, 70.0, 35.0, 12.0, 125.0
CODES = {"white_matter": (2, 41), "cortex": (3, 42)}


def _ellipsoid_radius(p: np.ndarray, centre, axes) -> np.ndarray:
    q = (p - np.asarray(centre, dtype=np.float32)[:, None]) / np.asarray(axes, dtype=np.float32)[:, None]
    return np.sqrt((q * q).sum(0))


def template_anatomy(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (CMA codes, int16) and T1 intensity (float32) at template points p (3, N) in mm."""
    x, y, z = p
    rho = _ellipsoid_radius(p, (0, 0, 0), BRAIN_AXES)
    fold = 0.035 * np.sin(x / 5.0) * np.sin(y / 6.0) * np.sin(z / 4.5)  # cortical folding
    brain = rho + fold < 1.0
    wm = rho + 2.5 * fold < 0.8
    left = x < 0
    label = np.zeros(p.shape[1], dtype=np.int16)
    t1 = np.zeros(p.shape[1], dtype=np.float32)
    head = rho < 1.25
    t1[head] = SCALP_T1
    t1[rho < 1.15] = SKULL_T1
    t1[rho < 1.07] = CSF_T1
    t1[brain] = GM_T1
    label[brain] = np.where(left[brain], 3, 42)
    t1[wm] = WM_T1
    label[wm] = np.where(left[wm], 2, 41)
    for _, code_l, code_r, (cx, cy, cz), axes, val in DEEP:
        for sign, code in ((-1.0, code_l), (1.0, code_r)):
            inside = _ellipsoid_radius(p, (sign * cx, cy, cz), axes) < 1.0
            label[inside] = code
            t1[inside] = val
    return label, t1


def template_landmarks() -> tuple[list[str], np.ndarray]:
    """Named template points (mm): structure centres, ventricle tips, lobe poles."""
    names, pts = [], []
    for name, _, _, (cx, cy, cz), axes, _ in DEEP:
        for side, sign in (("L", -1.0), ("R", 1.0)):
            names.append(f"{name}_{side}")
            pts.append((sign * cx, cy, cz))
    for side, sign in (("L", -1.0), ("R", 1.0)):
        cx, cy, cz = DEEP[0][3]
        ay = DEEP[0][4][1]
        names += [f"ventricle_anterior_tip_{side}", f"ventricle_posterior_tip_{side}"]
        pts += [(sign * cx, cy + 0.85 * ay, cz), (sign * cx, cy - 0.85 * ay, cz)]
        names += [f"frontal_pole_{side}", f"occipital_pole_{side}", f"temporal_pole_{side}"]
        pts += [(sign * 25.0, 0.7 * BRAIN_AXES[1], 10.0), (sign * 20.0, -0.72 * BRAIN_AXES[1], 5.0),
                (sign * 0.6 * BRAIN_AXES[0], 10.0, -25.0)]
    return names, np.asarray(pts, dtype=np.float64)


class SubjectWarp:
    """Subject world (mm) -> template (mm): x -> A x + t + u(x), u a sum of Gaussian bumps."""

    def __init__(self, rng: np.random.Generator, amp_mm: float = 4.0, width_mm: float = 28.0, bumps: int = 20):
        ang = np.deg2rad(rng.uniform(-6, 6, 3))
        cx, cy, cz = np.cos(ang)
        sx, sy, sz = np.sin(ang)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        self.A = rx @ ry @ rz @ np.diag(rng.uniform(0.93, 1.07, 3))
        self.t = rng.uniform(-5, 5, 3)
        self.centres = rng.uniform(-1, 1, (bumps, 3)) * BRAIN_AXES
        self.amps = rng.normal(0, amp_mm, (bumps, 3))
        self.inv_2s2 = 1.0 / (2 * width_mm**2)

    def smooth(self, p: np.ndarray) -> np.ndarray:
        u = np.zeros_like(p, dtype=np.float32)
        for c, a in zip(self.centres.astype(np.float32), self.amps.astype(np.float32)):
            d2 = ((p - c[:, None]) ** 2).sum(0)
            u += a[:, None] * np.exp(-d2 * np.float32(self.inv_2s2))
        return u

    def to_template(self, p: np.ndarray) -> np.ndarray:
        p = p.astype(np.float32)
        return (self.A.astype(np.float32) @ p + self.t.astype(np.float32)[:, None] + self.smooth(p))

    def to_subject(self, q: np.ndarray, iters: int = 30) -> np.ndarray:
        """Inverse by fixed-point iteration (the bumps' gradient is well below 1)."""
        a_inv = np.linalg.inv(self.A)
        y = a_inv @ (q - self.t[:, None])
        for _ in range(iters):
            y = a_inv @ (q - self.t[:, None] - self.smooth(y.astype(np.float32)).astype(np.float64))
        return y


def subject_geometry(idx: int, rng: np.random.Generator, base_shape, base_spacing):
    """Voxel order, flips, spacing and affine of one subject's files (varies by subject)."""
    perm = [0, 1, 2] if idx % 3 else [2, 1, 0]  # every third subject stores z first
    flips = [(idx >> k) & 1 for k in range(3)]
    spacing = np.asarray(base_spacing, dtype=np.float64) * rng.uniform(0.96, 1.04, 3)
    shape = [int(base_shape[a]) for a in perm]
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    for ax, world_axis in enumerate(perm):
        aff[world_axis, ax] = spacing[world_axis] * (-1 if flips[ax] else 1)
    centre = rng.uniform(-4, 4, 3)
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return shape, aff


def make_subject(idx: int, seed: int, base_shape, base_spacing):
    rng = np.random.default_rng([seed, idx])
    shape, aff = subject_geometry(idx, rng, base_shape, base_spacing)
    warp = SubjectWarp(rng)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")).reshape(3, -1)
    world = aff[:3, :3].astype(np.float32) @ grid + aff[:3, 3].astype(np.float32)[:, None]
    label, t1 = template_anatomy(warp.to_template(world))
    # bias field: smooth multiplicative, up to about +-15% across the head
    c = rng.normal(0, 1, 6).astype(np.float32)
    w = world / 100.0
    bias = np.exp(0.07 * (c[0] * w[0] + c[1] * w[1] + c[2] * w[2])
                  + 0.05 * (c[3] * w[0] * w[1] + c[4] * w[1] * w[2] + c[5] * w[2] ** 2))
    gain = rng.uniform(0.8, 1.25)  # scanner scale, undone by the loader's normalisation
    t1 = t1 * bias * gain
    noise_sd = 4.0
    n1 = rng.normal(0, noise_sd, t1.shape).astype(np.float32)
    n2 = rng.normal(0, noise_sd, t1.shape).astype(np.float32)
    img = np.sqrt((t1 + n1) ** 2 + n2**2)  # Rician magnitude noise
    img = np.clip(np.rint(img), 0, 32767).astype(np.int16).reshape(shape)
    label = label.reshape(shape)
    names, tpl = template_landmarks()
    lm = warp.to_subject(tpl.T).T
    return img, label, aff, names, lm


def write_dataset(out: Path, subjects: int = 18, seed: int = 0, shape=(128, 64, 128),
                  spacing=(1.875, 3.0, 1.875), progress: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for i in range(subjects):
        name = f"IBSR_{i + 1:02d}"
        img, lab, aff, names, lm = make_subject(i, seed, shape, spacing)
        if i % 2:  # as real IBSR label files: trailing singleton 4th axis
            lab = lab[..., None]
        folder = out / name
        folder.mkdir(exist_ok=True)
        write_nifti(folder / f"{name}_ana.nii.gz", img, aff)
        write_nifti(folder / f"{name}_seg_ana.nii.gz", lab, aff)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["name", "x_mm", "y_mm", "z_mm"])
        for n, p in zip(names, lm):
            w.writerow([n, *(f"{v:.4f}" for v in p)])
        atomic_write_text(folder / f"{name}_landmarks.csv", buf.getvalue())
        if progress:
            print(f"\r[synth] {i + 1}/{subjects} subjects  {time.time() - t0:.1f}s", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    atomic_write_json(out / "synth_manifest.json", {
        "generator": "model.synth", "git_commit": git_commit(), "seed": seed, "subjects": subjects,
        "shape": list(shape), "spacing_mm": list(spacing),
        "labels": sorted({c for _, l, r, *_ in DEEP for c in (l, r)} | {2, 41, 3, 42}),
    })


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--subjects", type=int, default=18)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 64, 128], help="voxels (x, y, z) before per-subject reordering")
    ap.add_argument("--spacing", type=float, nargs=3, default=[1.875, 3.0, 1.875], help="mm (x, y, z) before jitter")
    a = ap.parse_args(argv)
    if a.subjects < 2:
        ap.error("--subjects must be at least 2")
    write_dataset(a.out, a.subjects, a.seed, a.shape, a.spacing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
