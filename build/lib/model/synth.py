"""Deterministic synthetic brain MR set in the IBSR_V2.0 layout (`make data`).

    python -m model.synth --out data/synthetic            # 18 subjects, half IBSR resolution
    python -m model.synth --out D --subjects 8 --shape 256 128 256 --seed 1
    python -m model.synth --out D --variation 0           # one template anatomy for every subject

Each subject has its own analytic anatomy (brain, cortex, white matter, lateral
ventricles, thalamus, caudate, putamen, hippocampus, left and right under their CMA
codes; CSF, skull and scalp around them): the template's structures with
subject-specific sizes, positions, ventricle enlargement and cortical folding
(`Anatomy`), seen through a subject-specific smooth random deformation and a small
affine change, imaged
with T1-like contrast, a multiplicative bias field and Rician-like noise. Files
are written with a per-subject voxel order, axis flips and spacing jitter (the
header says which), and odd subjects carry the trailing singleton 4th axis real
IBSR label files have, so the real loader is what reads them. Landmarks (world
mm) are points of the subject's anatomy (structure centres, ventricle tips, lobe
poles) mapped through its deformation, so true landmark TRE is measurable.
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


class Anatomy:
    """One subject's anatomy in template space (mm): the template's structures with their own
    sizes, positions and cortical folding. Real brains differ in more than a smooth warp of one
    template: subcortical volumes vary by 10-20 % between adults (here each semi-axis by 8 %, the
    volume by about 14 %), centres by a few mm after affine normalisation, the lateral
    ventricles by a factor of two or more, and no two cortices fold alike. `variation` scales every departure
    (0: the template itself, every subject the same anatomy up to its deformation)."""

    def __init__(self, rng: np.random.Generator | None = None, variation: float = 1.0):
        v = 0.0 if rng is None else variation
        r = rng if rng is not None else np.random.default_rng(0)
        self.brain_axes = BRAIN_AXES * (1 + v * np.clip(r.normal(0, 0.04, 3), -0.1, 0.1))
        # folding: frequencies +-15 %, phases anywhere, depth +-30 %
        self.fold_period = np.array([5.0, 6.0, 4.5]) / (1 + v * r.uniform(-0.15, 0.15, 3))
        self.fold_phase = v * r.uniform(-np.pi, np.pi, 3)
        self.fold_amp = 0.035 * (1 + v * r.uniform(-0.3, 0.3))
        self.deep = []
        for name, code_l, code_r, centre, axes, val in DEEP:
            for sign, code in ((-1.0, code_l), (1.0, code_r)):
                c = np.array([sign * centre[0], centre[1], centre[2]]) + v * np.clip(r.normal(0, 2.5, 3), -6, 6)
                size = 1 + v * np.clip(r.normal(0, 0.08, 3), -0.2, 0.2)   # volume CV about 14 %
                if name == "lateral_ventricle":  # ventricles: one log-normal factor on width and height
                    size = size * np.exp(v * np.clip(r.normal(0, 0.3), -0.7, 0.7)) ** np.array([1.0, 0.3, 1.0])
                self.deep.append((name, "L" if sign < 0 else "R", c, np.asarray(axes) * size, val))


TEMPLATE = Anatomy()


def template_anatomy(p: np.ndarray, anat: Anatomy = TEMPLATE) -> tuple[np.ndarray, np.ndarray]:
    """Labels (CMA codes, int16) and T1 intensity (float32) at points p (3, N) in mm of `anat`'s space."""
    x, y, z = p
    rho = _ellipsoid_radius(p, (0, 0, 0), anat.brain_axes)
    f, ph = anat.fold_period, anat.fold_phase
    fold = anat.fold_amp * np.sin(x / f[0] + ph[0]) * np.sin(y / f[1] + ph[1]) * np.sin(z / f[2] + ph[2])
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
    codes = {(n, "L"): cl for n, cl, _, *_ in DEEP} | {(n, "R"): cr for n, _, cr, *_ in DEEP}
    for name, side, centre, axes, val in anat.deep:
        code = codes[name, side]
        inside = _ellipsoid_radius(p, centre, axes) < 1.0
        label[inside] = code
        t1[inside] = val
    return label, t1


def template_landmarks(anat: Anatomy = TEMPLATE) -> tuple[list[str], np.ndarray]:
    """Named points (mm) of `anat`: structure centres, ventricle tips, lobe poles."""
    names, pts = [], []
    for name, side, c, axes, _ in anat.deep:
        names.append(f"{name}_{side}")
        pts.append(tuple(c))
    ventricles = [(c, axes) for name, _, c, axes, _ in anat.deep if name == "lateral_ventricle"]
    b = anat.brain_axes
    for (side, sign), (c, axes) in zip((("L", -1.0), ("R", 1.0)), ventricles):
        names += [f"ventricle_anterior_tip_{side}", f"ventricle_posterior_tip_{side}"]
        pts += [(c[0], c[1] + 0.85 * axes[1], c[2]), (c[0], c[1] - 0.85 * axes[1], c[2])]
        names += [f"frontal_pole_{side}", f"occipital_pole_{side}", f"temporal_pole_{side}"]
        pts += [(sign * 25.0 * b[0] / BRAIN_AXES[0], 0.7 * b[1], 10.0), (sign * 20.0 * b[0] / BRAIN_AXES[0], -0.72 * b[1], 5.0),
                (sign * 0.6 * b[0], 10.0, -25.0)]
    return names, np.asarray(pts, dtype=np.float64)


class SubjectWarp:
    """Subject world (mm) -> template (mm): x -> A x + t + u(x), u a sum of Gaussian bumps."""

    def __init__(self, rng: np.random.Generator, amp_mm: float = 4.0, width_mm: float = 28.0, bumps: int = 20,
                 rot_deg: float = 6.0, scale: float = 0.07, shift_mm: float = 5.0):
        ang = np.deg2rad(rng.uniform(-rot_deg, rot_deg, 3))
        cx, cy, cz = np.cos(ang)
        sx, sy, sz = np.sin(ang)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        self.A = rx @ ry @ rz @ np.diag(rng.uniform(1 - scale, 1 + scale, 3))
        self.t = rng.uniform(-shift_mm, shift_mm, 3)
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


def subject_geometry(idx: int, rng: np.random.Generator, base_shape, base_spacing, centre_mm: float = 4.0):
    """Voxel order, flips, spacing and affine of one subject's files (varies by subject)."""
    perm = [0, 1, 2] if idx % 3 else [2, 1, 0]  # every third subject stores z first
    flips = [(idx >> k) & 1 for k in range(3)]
    spacing = np.asarray(base_spacing, dtype=np.float64) * rng.uniform(0.96, 1.04, 3)
    shape = [int(base_shape[a]) for a in perm]
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    for ax, world_axis in enumerate(perm):
        aff[world_axis, ax] = spacing[world_axis] * (-1 if flips[ax] else 1)
    centre = rng.uniform(-centre_mm, centre_mm, 3)
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return shape, aff


# the generator's styles: "demo" (the demo's training and test domain) and "shifted", a
# validation domain no setting is tuned on: larger pose differences (rotation 15 degrees, scale
# 12 %, shift 12 mm; the brain up to 20 mm off the field of view's centre), another deformation
# model (fewer, narrower, stronger bumps), a neck of its own size and intensity below the brain
# (tissue that moves image moments but carries no label), another T1 contrast per subject
# (each tissue's intensity scaled by N(1, 0.12), then a gamma of 0.7-1.4), a bias field twice
# as strong and noise of 2-8 (demo: 4)
STYLES = {
    "demo": dict(warp={}, centre_mm=4.0, bias=1.0),
    "shifted": dict(warp=dict(amp_mm=6.0, width_mm=20.0, bumps=12, rot_deg=15.0, scale=0.12, shift_mm=12.0),
                    centre_mm=20.0, bias=2.0),
}


def make_subject(idx: int, seed: int, base_shape, base_spacing, variation: float = 1.0, style: str = "demo"):
    if style not in STYLES:
        raise ValueError(f"synthetic style {style!r}: expected one of {sorted(STYLES)}")
    st = STYLES[style]
    rng = np.random.default_rng([seed, idx])
    shape, aff = subject_geometry(idx, rng, base_shape, base_spacing, st["centre_mm"])
    warp = SubjectWarp(rng, **st["warp"])
    # the subject's own anatomy from a stream of its own: with variation 0 the set is the template's
    anat = Anatomy(np.random.default_rng([seed, idx, 1]), variation)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")).reshape(3, -1)
    world = aff[:3, :3].astype(np.float32) @ grid + aff[:3, 3].astype(np.float32)[:, None]
    q = warp.to_template(world)
    label, t1 = template_anatomy(q, anat)
    if style == "shifted":
        t1 = _shifted_contrast(q, label, t1, np.random.default_rng([seed, idx, 2]))
    # bias field: smooth multiplicative, up to about +-15% across the head (demo style)
    c = rng.normal(0, 1, 6).astype(np.float32) * np.float32(st["bias"])
    w = world / 100.0
    bias = np.exp(0.07 * (c[0] * w[0] + c[1] * w[1] + c[2] * w[2])
                  + 0.05 * (c[3] * w[0] * w[1] + c[4] * w[1] * w[2] + c[5] * w[2] ** 2))
    gain = rng.uniform(0.8, 1.25)  # scanner scale, undone by the loader's normalisation
    t1 = t1 * bias * gain
    noise_sd = 4.0 if style == "demo" else float(np.random.default_rng([seed, idx, 3]).uniform(2.0, 8.0))
    n1 = rng.normal(0, noise_sd, t1.shape).astype(np.float32)
    n2 = rng.normal(0, noise_sd, t1.shape).astype(np.float32)
    img = np.sqrt((t1 + n1) ** 2 + n2**2)  # Rician magnitude noise
    img = np.clip(np.rint(img), 0, 32767).astype(np.int16).reshape(shape)
    label = label.reshape(shape)
    names, tpl = template_landmarks(anat)
    lm = warp.to_subject(tpl.T).T
    return img, label, aff, names, lm


def _shifted_contrast(q: np.ndarray, label: np.ndarray, t1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "shifted" style's intensities: a neck below the brain (unlabelled, its own size and
    intensity), each intensity level (tissue) scaled by its own N(1, 0.12) factor, then a gamma."""
    neck_axes = np.array([38.0, 42.0, 40.0]) * rng.uniform(0.8, 1.3, 3)
    neck = (_ellipsoid_radius(q, (0.0, -15.0, -BRAIN_AXES[2] - 0.6 * neck_axes[2]), neck_axes) < 1.0) & (label == 0)
    t1 = np.where(neck & (t1 == 0), np.float32(rng.uniform(60, 110)), t1)
    levels = np.unique(t1)
    factors = np.clip(rng.normal(1.0, 0.12, levels.size), 0.6, 1.4).astype(np.float32)
    t1 = t1 * factors[np.searchsorted(levels, t1)]
    gamma = rng.uniform(0.7, 1.4)
    return (130.0 * (np.clip(t1, 0, None) / 130.0) ** gamma).astype(np.float32)


def write_dataset(out: Path, subjects: int = 18, seed: int = 0, shape=(128, 64, 128),
                  spacing=(1.875, 3.0, 1.875), progress: bool = True, variation: float = 1.0,
                  first: int = 1, style: str = "demo") -> None:
    """Subjects IBSR_<first> .. IBSR_<subjects> (each depends only on its number and the
    arguments: a larger set repeats a smaller one's subjects byte for byte)."""
    if not 1 <= first <= subjects:
        raise ValueError(f"subjects {first}..{subjects}: need 1 <= first <= subjects")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for i in range(first - 1, subjects):
        name = f"IBSR_{i + 1:02d}"
        img, lab, aff, names, lm = make_subject(i, seed, shape, spacing, variation, style)
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
        "generator": "model.synth", "git_commit": git_commit(), "seed": seed, "subjects": subjects, "first": first,
        "shape": list(shape), "spacing_mm": list(spacing), "anatomy_variation": variation,
        "style": style, "labels": sorted({c for _, l, r, *_ in DEEP for c in (l, r)} | {2, 41, 3, 42}),
    })


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--subjects", type=int, default=18)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 64, 128], help="voxels (x, y, z) before per-subject reordering")
    ap.add_argument("--spacing", type=float, nargs=3, default=[1.875, 3.0, 1.875], help="mm (x, y, z) before jitter")
    ap.add_argument("--style", choices=sorted(STYLES), default="demo",
                    help="demo: the demo's domain; shifted: the validation domain no setting is tuned on")
    ap.add_argument("--variation", type=float, default=1.0,
                    help="scale of the per-subject anatomy (sizes, positions, folding); 0: one template for all")
    a = ap.parse_args(argv)
    if a.subjects < 2:
        ap.error("--subjects must be at least 2")
    if a.variation < 0:
        ap.error("--variation must be >= 0")
    write_dataset(a.out, a.subjects, a.seed, a.shape, a.spacing, variation=a.variation, style=a.style)
    return 0


if __name__ == "__main__":
    sys.exit(main())
