"""IBSR_V2.0-layout loader: find subjects, read NIfTI/Analyze, resample to the working grid.

Layout (real IBSR and `make data`'s synthetic set alike):

    DIR/IBSR_XX/IBSR_XX_ana.nii.gz          T1 image        (also .nii, .hdr/.img)
    DIR/IBSR_XX/IBSR_XX_seg_ana.nii.gz      labels, CMA codes (may carry a trailing singleton 4th axis)
    DIR/IBSR_XX/IBSR_XX_landmarks.csv       optional: name,x_mm,y_mm,z_mm (world RAS mm)

The loader trusts the header, not the array order: every volume is resampled
straight from its own voxel grid (through its affine) onto the *working grid*,
an axis-aligned RAS grid of the config's shape and mm spacing, centred on the
volume's centre. Array order of the working grid is (x, y, z) = (R, A, S), so a
volume stored in any orientation loads to the same array. Images are
resampled trilinearly, labels nearest-neighbour; outside the source field of
view both read 0. Intensities are then mapped robustly to [0, 1] (percentiles
from the config).

    python -m model.data DIR        # list subjects and check every file
"""
from __future__ import annotations

import csv
import gzip
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from model.artifacts import atomic_write_bytes
from model.config import DataConfig
from model.host_warp import trilinear

SUFFIXES = (".nii.gz", ".nii", ".hdr")
SUBJECT_RE = re.compile(r"^IBSR_\d+$")


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


@dataclass
class SubjectFiles:
    name: str
    image: Path
    label: Path
    landmarks: Path | None


@dataclass
class Subject:
    name: str
    image: np.ndarray  # (X, Y, Z) float32 in [0, 1], working grid, RAS
    label: np.ndarray  # (X, Y, Z) int16 CMA codes, working grid, RAS
    affine: np.ndarray  # (4, 4) working-grid voxel -> world mm
    landmarks_vox: np.ndarray | None  # (K, 3) float64 working-grid voxel coordinates
    landmark_names: list[str] | None


def _find_file(folder: Path, stem: str) -> Path | None:
    for suf in SUFFIXES:
        p = folder / f"{stem}{suf}"
        if p.is_file():
            return p
    return None


def find_subjects(root: str | Path) -> list[SubjectFiles]:
    """Every IBSR_XX subject under `root`, sorted by name; errors name what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and SUBJECT_RE.match(p.name))
    if not folders:
        seen = sorted(p.name for p in root.iterdir())[:10]
        raise DataError(f"{root}: no subject folders named IBSR_XX (IBSR_V2.0 layout); found {seen or 'nothing'}")
    subjects = []
    for folder in folders:
        name = folder.name
        image = _find_file(folder, f"{name}_ana")
        if image is None:
            raise DataError(f"{folder}: missing image file {name}_ana{{{','.join(SUFFIXES)}}}")
        label = _find_file(folder, f"{name}_seg_ana")
        if label is None:
            raise DataError(f"{folder}: missing label file {name}_seg_ana{{{','.join(SUFFIXES)}}}")
        lm = folder / f"{name}_landmarks.csv"
        subjects.append(SubjectFiles(name, image, label, lm if lm.is_file() else None))
    return subjects


def check_gzip(path: Path) -> None:
    """Read a gzip file to its end, so that its CRC32 and length trailer are checked (nibabel
    reads only the bytes it needs and never reaches them): a flipped bit is a DataError."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read: corrupted gzip stream ({e})") from None


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a NIfTI/Analyze file; a trailing singleton 4th axis is dropped."""
    path = Path(path)
    for p in (path, path.with_name(path.name.replace(".hdr", ".img"))):
        if p.name.endswith(".gz") and p.is_file():
            check_gzip(p)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for bad files
        raise DataError(f"{path}: cannot read volume ({type(e).__name__}: {e})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise DataError(f"{path}: {bad} NaN or inf voxel(s)")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(f"{path}: header has no usable voxel-to-world affine")
    return data, np.asarray(affine, dtype=np.float64)


def world_box(shape, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) world mm corners of the box spanned by a volume's voxel centres."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape[:3]], indexing="ij")).reshape(3, -1)
    w = affine[:3, :3] @ corners + affine[:3, 3:4]
    return w.min(1), w.max(1)


def check_overlap(path_a: Path, shape_a, aff_a, path_b: Path, shape_b, aff_b) -> None:
    """Refuse two volumes whose fields of view do not overlap in world space (a registration of
    them would be a pure translation read from headers, not anatomy): a DataError naming both
    files and the distance between their centres."""
    lo_a, hi_a = world_box(shape_a, aff_a)
    lo_b, hi_b = world_box(shape_b, aff_b)
    if np.any(hi_a < lo_b) or np.any(hi_b < lo_a):
        dist = float(np.linalg.norm(volume_center(shape_a, aff_a) - volume_center(shape_b, aff_b)))
        raise DataError(f"{path_a} and {path_b}: their fields of view do not overlap in world space "
                        f"(centres {dist:.0f} mm apart); check the headers' affines")


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, intent: str | None = None) -> None:
    """Write a NIfTI-1 file atomically (gzip when the name ends in .gz, with mtime 0 so equal data gives
    equal bytes), qform = sform = `affine`, mm units."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if intent:
        img.header.set_intent(intent)
    raw = img.to_bytes()
    atomic_write_bytes(path, gzip.compress(raw, compresslevel=6, mtime=0) if str(path).endswith(".gz") else raw)


def grid_affine(center_mm: np.ndarray, shape, spacing_mm) -> np.ndarray:
    """Affine of an axis-aligned RAS grid whose centre voxel (shape-1)/2 sits at `center_mm`."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = np.asarray(center_mm, dtype=np.float64) - spacing * (np.asarray(shape) - 1) / 2.0
    return aff


def volume_center(shape, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1) / 2.0) + affine[:3, 3]


def grid_coords(shape) -> np.ndarray:
    """(3, X, Y, Z) float64 voxel indices of a grid."""
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))


def apply_affine(aff: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to points (3, ...)."""
    flat = pts.reshape(3, -1)
    return (aff[:3, :3] @ flat + aff[:3, 3:4]).reshape(pts.shape)


def sample(vol: np.ndarray, coords: np.ndarray, order: int, fill: float = 0.0, ties_up=(True, True, True)) -> np.ndarray:
    """Sample `vol` (X, Y, Z) at voxel coordinates `coords` (3, ...): order 0 nearest, 1 trilinear.

    Nearest-neighbour ties (a point exactly half-way between two voxels) go to the
    higher index on axes where `ties_up` is true, else to the lower one; `resample`
    sets it so that ties go the same way in world space whatever the storage order.

    Points outside the volume (beyond half a voxel for nearest, beyond the edge
    voxel centres for trilinear) read `fill`. Coordinates within 1e-6 of an
    integer are snapped to it, so float64 noise from inverting an affine does
    not blur a grid that lands on voxel centres.
    """
    shape = np.asarray(vol.shape)[:, None]
    c = coords.reshape(3, -1).astype(np.float64, copy=True)
    r = np.rint(c)
    snap = np.abs(c - r) < 1e-6
    c[snap] = r[snap]
    if order == 0:
        inside = np.all((c >= -0.5) & (c < shape - 0.5), axis=0)
        up = np.asarray(ties_up)[:, None]
        idx = np.where(up, np.floor(c + 0.5), np.ceil(c - 0.5))
        idx = np.clip(idx.astype(np.int64), 0, shape - 1)
        out = vol[idx[0], idx[1], idx[2]]
        out = np.where(inside, out, np.asarray(fill, dtype=vol.dtype))
        return out.reshape(coords.shape[1:])
    inside = np.all((c >= 0) & (c <= shape - 1), axis=0)
    out = trilinear(vol, c)
    out[~inside] = fill
    return out.reshape(coords.shape[1:])


def resample(vol: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape, order: int):
    """Resample `vol` (with voxel->world `affine`) onto the grid (target_affine, target_shape)."""
    vox_to_src = np.linalg.inv(affine) @ target_affine
    # a source axis whose index grows along +R, +A or +S breaks nearest ties upwards, else downwards
    dominant = np.argmax(np.abs(affine[:3, :3]), axis=0)
    ties_up = affine[:3, :3][dominant, np.arange(3)] > 0
    return sample(vol, apply_affine(vox_to_src, grid_coords(target_shape)), order, ties_up=ties_up)


def normalise_intensity(img: np.ndarray, p_lo: float, p_hi: float) -> np.ndarray:
    """Map the [p_lo, p_hi] percentiles to [0, 1] and clip: robust to outliers and scanner scale."""
    lo, hi = np.percentile(img, [p_lo, p_hi])
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float32)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def read_landmarks(path: Path) -> tuple[list[str], np.ndarray]:
    """Landmarks CSV (name,x_mm,y_mm,z_mm) -> names, (K, 3) world mm."""
    names, pts = [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"name", "x_mm", "y_mm", "z_mm"} <= set(reader.fieldnames):
            raise DataError(f"{path}: landmarks CSV needs columns name,x_mm,y_mm,z_mm")
        for i, row in enumerate(reader, start=2):
            try:
                p = [float(row[k]) for k in ("x_mm", "y_mm", "z_mm")]
            except (TypeError, ValueError):
                raise DataError(f"{path}:{i}: landmark coordinates are not numbers") from None
            if not np.all(np.isfinite(p)):
                raise DataError(f"{path}:{i}: landmark coordinates are not finite")
            names.append(row["name"])
            pts.append(p)
    return names, np.asarray(pts, dtype=np.float64).reshape(-1, 3)


def load_subject(files: SubjectFiles, cfg: DataConfig) -> Subject:
    img, img_aff = read_volume(files.image)
    lab, lab_aff = read_volume(files.label)
    if img.shape != lab.shape:
        raise DataError(f"{files.label}: label shape {lab.shape} does not match image {files.image.name} {img.shape}")
    if not np.allclose(img_aff, lab_aff, atol=1e-3):
        raise DataError(f"{files.label}: label affine does not match image {files.image.name} affine")
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(lab == np.round(lab)):
            raise DataError(f"{files.label}: label file holds non-integer values")
    lab = lab.astype(np.int16)
    target = grid_affine(volume_center(img.shape, img_aff), cfg.shape, cfg.spacing_mm)
    image = normalise_intensity(resample(img.astype(np.float32), img_aff, target, cfg.shape, 1),
                                *cfg.intensity_percentiles)
    label = resample(lab, lab_aff, target, cfg.shape, 0).astype(np.int16)
    lm_vox = names = None
    if files.landmarks is not None:
        names, world = read_landmarks(files.landmarks)
        lm_vox = apply_affine(np.linalg.inv(target), world.T).T
    return Subject(files.name, image, label, target, lm_vox, names)


def split_counts(n: int, n_train: int, n_test: int) -> tuple[int, int]:
    """The config's split when the count matches it, else the same proportion (at least 1 each)."""
    if n < 2:
        raise DataError(f"need at least 2 subjects for a train/test split, found {n}")
    if n == n_train + n_test:
        return n_train, n_test
    test = min(n - 1, max(1, round(n * n_test / (n_train + n_test))))
    return n - test, test


def test_pairs(subjects: list) -> list[tuple[int, int]]:
    """All ordered (moving, fixed) index pairs, fixed-major: the order every stage evaluates in."""
    return [(m, f) for f in range(len(subjects)) for m in range(len(subjects)) if m != f]


test_pairs.__test__ = False  # a helper, not a pytest test


def load_dataset(root: str | Path, cfg: DataConfig, split: str = "all", progress: bool = False) -> list[Subject]:
    """Load the subjects of `split` ('train', 'test' or 'all'): the first n_train by name train, the rest test."""
    files = find_subjects(root)
    n_tr, n_te = split_counts(len(files), cfg.n_train, cfg.n_test)
    chosen = {"train": files[:n_tr], "test": files[n_tr:], "all": files}[split]
    subjects = []
    it = chosen
    if progress:
        from tqdm import tqdm
        it = tqdm(chosen, desc=f"load {split}", unit="subj", leave=False)
    for f in it:
        subjects.append(load_subject(f, cfg))
    # a configured label code absent from every subject is a config/data mismatch
    present = set()
    for s in subjects:
        present.update(np.unique(s.label).tolist())
    missing = [c for c in cfg.labels if c not in present]
    if missing:
        raise DataError(f"{root}: configured label code(s) {missing} absent from every {split} subject "
                        f"(labels present: {sorted(present - {0})[:20]})")
    return subjects


def main(argv=None) -> int:
    import argparse

    from model.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--config", default="configs/demo.toml")
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    subjects = load_dataset(a.data, cfg.data, progress=True)
    n_tr, n_te = split_counts(len(subjects), cfg.data.n_train, cfg.data.n_test)
    for i, s in enumerate(subjects):
        codes = sorted(set(np.unique(s.label).tolist()) - {0})
        lm = 0 if s.landmarks_vox is None else len(s.landmarks_vox)
        print(f"{s.name}  {'train' if i < n_tr else 'test '}  labels={len(codes)}  landmarks={lm}")
    print(f"{len(subjects)} subjects: {n_tr} train, {n_te} test; working grid {cfg.data.shape} @ {cfg.data.spacing_mm} mm")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataError as e:
        sys.exit(f"error: {e}")
