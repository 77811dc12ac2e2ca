"""A validation domain of real brain anatomy in the IBSR_V2.0 layout (`make domains`).

    python -m model.anatomy --out runs/demo_val/mni            # 6 subjects, seed 11

The only real brain with tissue maps that ships in a package this toolchain can install is the
ICBM 2009a symmetric MNI152 template in nilearn's wheel (`nilearn/datasets/data`: the T1 and its
grey- and white-matter probability maps, 1 mm, skull-stripped). Its labels here, in the template's
space:

- white matter (probability of WM > 0.5 and above GM's): codes 2 / 41 (left / right, by the sign
  of x: the template's x = 0 is the midline);
- cortical grey matter (the same test for GM): 3 / 42;
- ventricles: fluid inside the brain (GM + WM probability < 0.5) at least 8 mm from the brain's
  outer surface and within 30 mm of the midline: 4 / 43;
- deep grey matter (thalamus, caudate, putamen and pallidum together): grey matter at least
  12 mm from the brain's outer surface in the box that holds them (|x| < 33, -38 < y < 28,
  -12 < z < 22 mm), removed from the cortical label: 10 / 49.

Those are the codes of IBSR's white matter, cortex, lateral ventricles and thalamus; a config's
label list selects them (benchmarks.domains uses ANATOMY_LABELS). Each subject is the template
seen through a subject-specific pose and smooth deformation (model.synth.SubjectWarp: rotation up
to 10 degrees, scale 8 %, shift 8 mm, 16 bumps of 5 mm over 24 mm), on its own voxel order,
flips and spacing (model.synth.subject_geometry), with its own T1 contrast (a gamma of 0.75-1.35),
bias field and Rician noise (2-6 on a 0-130 scale). The anatomy is one real brain: subjects differ
from each other by deformation, not by the folding of their own cortices, so this domain tests a
registration on real shapes and contrast, not on real inter-subject variability. No setting of
the toolchain may be chosen on it.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from model.artifacts import atomic_write_json, git_commit
from model.data import DataError, apply_affine, read_volume, sample, write_nifti
from model.synth import SubjectWarp, subject_geometry

ANATOMY_LABELS = [2, 41, 3, 42, 4, 43, 10, 49]
DEFAULTS = {"subjects": 6, "seed": 11}
SHAPE, SPACING = (96, 112, 96), (2.0, 2.0, 2.0)   # 192 x 224 x 192 mm: the head with room to move
WARP = dict(amp_mm=5.0, width_mm=24.0, bumps=16, rot_deg=10.0, scale=0.08, shift_mm=8.0)
FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


def template_dir() -> Path:
    """nilearn's bundled data folder (found without importing nilearn: only its files are read)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the real-anatomy domain needs the MNI152 template that nilearn ships: "
                        "pip install nilearn (make venv installs it)")
    d = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [f for f in FILES.values() if not (d / f).is_file()]
    if missing:
        raise DataError(f"{d}: nilearn's bundled MNI152 files {missing} are missing")
    return d


def _depth(mask: np.ndarray, most: int) -> np.ndarray:
    """Each voxel's count of 6-neighbour erosions of `mask` it survives, up to `most` (voxels to
    the outside, in the city-block metric)."""
    depth = np.zeros(mask.shape, dtype=np.int16)
    m = mask.copy()
    for _ in range(most):
        e = m.copy()
        for ax in range(3):
            for s in (1, -1):
                sh = np.roll(m, s, axis=ax)
                edge = [slice(None)] * 3
                edge[ax] = 0 if s == 1 else -1
                sh[tuple(edge)] = False
                e &= sh
        depth += e
        m = e
        if not m.any():
            break
    return depth


def template_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The labels of the module's docstring on the template's 1 mm grid."""
    brain = t1 > 0
    depth = _depth(brain, 16)
    x, y, z = apply_affine(affine, np.indices(t1.shape).reshape(3, -1).astype(np.float64)).reshape(3, *t1.shape)
    g, w = gm.astype(np.int16), wm.astype(np.int16)
    is_wm = brain & (w > 127) & (w >= g)
    is_gm = brain & (g > 127) & (g > w)
    fluid = brain & (g + w < 128)
    vent = fluid & (depth >= 8) & (np.abs(x) < 30)
    deep = is_gm & (depth >= 12) & (np.abs(x) < 33) & (y > -38) & (y < 28) & (z > -12) & (z < 22)
    right = x > 0
    lab = np.zeros(t1.shape, dtype=np.int16)
    for m, (left_code, right_code) in ((is_wm, (2, 41)), (is_gm & ~deep, (3, 42)), (vent, (4, 43)), (deep, (10, 49))):
        lab[m] = np.where(right[m], right_code, left_code)
    return lab


def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 as float32, labels, voxel -> MNI mm affine) of the template."""
    d = template_dir()
    vols = {k: read_volume(d / f) for k, f in FILES.items()}
    t1, aff = vols["t1"]
    for k in ("gm", "wm"):
        if vols[k][0].shape != t1.shape or not np.allclose(vols[k][1], aff):
            raise DataError(f"{d / FILES[k]}: grid differs from {FILES['t1']}")
    return t1.astype(np.float32), template_labels(t1, vols["gm"][0], vols["wm"][0], aff), aff


def make_subject(idx: int, seed: int, tpl: tuple[np.ndarray, np.ndarray, np.ndarray]):
    """Subject `idx`'s (int16 image, int16 labels, affine): depends only on (idx, seed)."""
    t1_tpl, lab_tpl, tpl_aff = tpl
    rng = np.random.default_rng([seed, idx, 101])
    shape, aff = subject_geometry(idx, rng, SHAPE, SPACING, centre_mm=10.0)
    warp = SubjectWarp(rng, **WARP)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = aff[:3, :3].astype(np.float32) @ grid + aff[:3, 3].astype(np.float32)[:, None]
    vox = apply_affine(np.linalg.inv(tpl_aff), warp.to_template(world).astype(np.float64))
    t1 = sample(t1_tpl, vox, order=1) * np.float32(130.0 / 255.0)
    label = sample(lab_tpl, vox, order=0).astype(np.int16)
    gamma = rng.uniform(0.75, 1.35)
    t1 = (130.0 * (t1 / 130.0) ** gamma).astype(np.float32)
    c = rng.normal(0, 1, 6).astype(np.float32)
    w = world / 100.0
    t1 *= np.exp(0.1 * (c[0] * w[0] + c[1] * w[1] + c[2] * w[2]) + 0.05 * (c[3] * w[0] * w[1] + c[4] * w[2] ** 2))
    sd = rng.uniform(2.0, 6.0)
    img = np.sqrt((t1 + rng.normal(0, sd, t1.shape)) ** 2 + rng.normal(0, sd, t1.shape) ** 2)
    return np.clip(np.rint(img), 0, 32767).astype(np.int16).reshape(shape), label.reshape(shape), aff


def write_domain(out: Path, subjects: int = DEFAULTS["subjects"], seed: int = DEFAULTS["seed"],
                 progress: bool = True) -> None:
    """Subjects IBSR_01 .. IBSR_<subjects> at `out` (each depends only on its number and seed)."""
    if subjects < 2:
        raise ValueError("the real-anatomy domain needs at least 2 subjects")
    tpl = load_template()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for i in range(subjects):
        name = f"IBSR_{i + 1:02d}"
        img, lab, aff = make_subject(i, seed, tpl)
        (out / name).mkdir(exist_ok=True)
        write_nifti(out / name / f"{name}_ana.nii.gz", img, aff)
        write_nifti(out / name / f"{name}_seg_ana.nii.gz", lab, aff)
        if progress:
            print(f"\r[anatomy] {i + 1}/{subjects} subjects  {time.time() - t0:.1f}s", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    atomic_write_json(out / "anatomy_manifest.json", {
        "generator": "model.anatomy", "template": "ICBM 2009a symmetric MNI152 (nilearn's bundled files)",
        "git_commit": git_commit(), "seed": seed, "subjects": subjects, "shape": list(SHAPE),
        "spacing_mm": list(SPACING), "warp": WARP, "labels": ANATOMY_LABELS})


def scored_config(cfg, data_dir: Path):
    """`cfg` as a set at `data_dir` is scored: with its label list replaced by ANATOMY_LABELS when
    the directory is this module's domain (it holds anatomy_manifest.json), else `cfg` itself."""
    from dataclasses import replace

    if (Path(data_dir) / "anatomy_manifest.json").is_file():
        return replace(cfg, data=replace(cfg.data, labels=ANATOMY_LABELS))
    return cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--subjects", type=int, default=DEFAULTS["subjects"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    a = ap.parse_args(argv)
    try:
        write_domain(a.out, a.subjects, a.seed)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
