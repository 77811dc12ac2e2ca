"""Loader: orientation, 4-D labels, split, and every bad-input case named in the issue."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from model.config import DataConfig
from model.data import DataError, find_subjects, load_dataset, load_subject, read_volume, split_counts

CFG = DataConfig(shape=[16, 16, 16], spacing_mm=[4.0, 4.0, 4.0], labels=[1, 2], n_train=1, n_test=1)


def _subject(root, name, img, lab, aff, lab_aff=None, suffix=".nii.gz"):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, aff), str(d / f"{name}_ana{suffix}"))
    nib.save(nib.Nifti1Image(lab, aff if lab_aff is None else lab_aff), str(d / f"{name}_seg_ana{suffix}"))
    return d


def _volume(shape=(20, 18, 22), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 20, shape).astype(np.float32)
    lab = np.zeros(shape, np.int16)
    lab[4:10, 5:12, 6:14] = 1
    lab[11:16, 3:9, 8:18] = 2
    return img, lab


def _aff(spacing=(3.0, 3.5, 4.0)):
    return np.diag([*spacing, 1.0])


def test_flipped_orientation_loads_to_same_array(tmp_path):
    img, lab = _volume()
    aff = _aff()
    _subject(tmp_path / "a", "IBSR_01", img, lab, aff)
    # the same anatomy stored with axes 0 and 2 reversed and axes 0/1 swapped: the header says so
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, img.shape[0] - 1
    flip[2, 2], flip[2, 3] = -1, img.shape[2] - 1
    img_f, lab_f = img[::-1, :, ::-1], lab[::-1, :, ::-1]
    aff_f = aff @ flip
    perm = np.eye(4)[[1, 0, 2, 3]]  # new voxel (j, i, k) -> old voxel (i, j, k)
    img_p, lab_p = np.ascontiguousarray(img_f.transpose(1, 0, 2)), np.ascontiguousarray(lab_f.transpose(1, 0, 2))
    _subject(tmp_path / "b", "IBSR_01", img_p, lab_p, aff_f @ perm)
    a = load_subject(find_subjects(tmp_path / "a")[0], CFG)
    b = load_subject(find_subjects(tmp_path / "b")[0], CFG)
    assert np.array_equal(a.label, b.label) and (a.label == 1).sum() > 0
    # trilinear weights are the same; only the float32 summation order of the 8 corners differs
    np.testing.assert_allclose(a.image, b.image, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)


def test_label_with_singleton_fourth_axis_loads(tmp_path):
    img, lab = _volume()
    _subject(tmp_path / "a", "IBSR_01", img, lab, _aff())
    _subject(tmp_path / "b", "IBSR_01", img, lab[..., None], _aff())
    a = load_subject(find_subjects(tmp_path / "a")[0], CFG)
    b = load_subject(find_subjects(tmp_path / "b")[0], CFG)
    assert b.label.shape == tuple(CFG.shape)
    assert np.array_equal(a.label, b.label)


@pytest.mark.parametrize("suffix", [".nii", ".hdr"])
def test_uncompressed_and_analyze_files_load(tmp_path, suffix):
    img, lab = _volume()
    _subject(tmp_path, "IBSR_01", img, lab, _aff(), suffix=suffix)
    s = load_subject(find_subjects(tmp_path)[0], CFG)
    assert set(np.unique(s.label)) == {0, 1, 2}


def test_loaded_volume_is_normalised(tmp_path):
    img, lab = _volume()
    _subject(tmp_path, "IBSR_01", img * 7.0 + 300, lab, _aff())
    s = load_subject(find_subjects(tmp_path)[0], CFG)
    assert s.image.dtype == np.float32 and s.image.min() == 0.0 and s.image.max() == 1.0


@pytest.mark.parametrize("n, expect", [(18, (13, 5)), (8, (6, 2)), (2, (1, 1)), (40, (29, 11))])
def test_split_is_the_seeds_or_proportional(n, expect):
    assert split_counts(n, 13, 5) == expect


def test_synthetic_set_loads_with_the_real_loader(tiny_data):
    cfg = DataConfig(shape=[16, 16, 16], spacing_mm=[10.0, 12.0, 10.0], labels=[2, 41, 3, 42], n_train=3, n_test=2)
    subs = load_dataset(tiny_data, cfg)
    assert [s.name for s in subs] == [f"IBSR_0{i}" for i in range(1, 6)]
    for s in subs:
        assert set(cfg.labels) <= set(np.unique(s.label).tolist())
        assert s.landmarks_vox.shape == (20, 3)
    # different subjects differ (deformation, affine), so unregistered overlap is imperfect
    assert not np.array_equal(subs[0].label, subs[1].label)


def test_synthetic_generator_is_deterministic(tiny_data, tmp_path):
    from model.synth import write_dataset

    write_dataset(tmp_path, subjects=2, seed=3, shape=(40, 24, 40), spacing=(6.0, 8.0, 6.0), progress=False)
    for f in ("IBSR_02/IBSR_02_ana.nii.gz", "IBSR_02/IBSR_02_seg_ana.nii.gz", "IBSR_02/IBSR_02_landmarks.csv"):
        a = nib.load(tiny_data / f) if f.endswith("gz") else None
        if a is None:
            assert (tiny_data / f).read_text() == (tmp_path / f).read_text()
        else:
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(nib.load(tmp_path / f).dataobj))


def _template_space_volumes(anat) -> dict[int, int]:
    """Voxel count of every label of `anat` on a 2 mm grid of template space (no deformation)."""
    from model.synth import template_anatomy

    axes = [np.arange(-80.0, 80.0, 2.0)] * 3
    p = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).astype(np.float32)
    codes, counts = np.unique(template_anatomy(p, anat)[0], return_counts=True)
    return dict(zip(codes.tolist(), counts.tolist()))


def test_synthetic_anatomy_varies_by_subject():
    from model.synth import TEMPLATE, Anatomy

    a, b = (Anatomy(np.random.default_rng([0, i, 1])) for i in (1, 2))
    va, vb, vt = _template_space_volumes(a), _template_space_volumes(b), _template_space_volumes(TEMPLATE)
    # with variation every deep structure of one subject differs in size from the other's
    for code in (4, 43, 10, 49, 11, 50, 12, 51, 17, 53):
        assert va[code] != vb[code], code
    # the lateral ventricles by more than 10 % somewhere (their log-normal size factor)
    assert max(abs(va[c] / vt[c] - 1) for c in (4, 43)) > 0.1
    # variation 0 is the template itself, whatever the draws
    z = Anatomy(np.random.default_rng([0, 1, 1]), variation=0.0)
    assert _template_space_volumes(z) == vt


# ---- bad input: a DataError naming the file and the problem ----

def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_subjects(tmp_path / "nope")


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no subject folders"):
        find_subjects(tmp_path)


def test_misnamed_directory(tmp_path):
    (tmp_path / "subject1").mkdir()
    with pytest.raises(DataError, match=r"no subject folders.*subject1"):
        find_subjects(tmp_path)


def test_missing_label_file(tmp_path):
    img, lab = _volume()
    d = _subject(tmp_path, "IBSR_01", img, lab, _aff())
    (d / "IBSR_01_seg_ana.nii.gz").unlink()
    with pytest.raises(DataError, match="IBSR_01.*missing label file"):
        find_subjects(tmp_path)


def test_shape_mismatch(tmp_path):
    img, lab = _volume()
    _subject(tmp_path, "IBSR_01", img, lab[:-1], _aff())
    with pytest.raises(DataError, match=r"IBSR_01_seg_ana.nii.gz.*shape"):
        load_subject(find_subjects(tmp_path)[0], CFG)


def test_affine_mismatch(tmp_path):
    img, lab = _volume()
    _subject(tmp_path, "IBSR_01", img, lab, _aff(), lab_aff=_aff((3.0, 3.5, 4.5)))
    with pytest.raises(DataError, match=r"IBSR_01_seg_ana.nii.gz.*affine"):
        load_subject(find_subjects(tmp_path)[0], CFG)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_voxels(tmp_path, bad):
    img, lab = _volume()
    img[3, 4, 5] = bad
    _subject(tmp_path, "IBSR_01", img, lab, _aff())
    with pytest.raises(DataError, match=r"IBSR_01_ana.nii.gz: 1 NaN or inf"):
        load_subject(find_subjects(tmp_path)[0], CFG)


def test_corrupt_file(tmp_path):
    img, lab = _volume()
    d = _subject(tmp_path, "IBSR_01", img, lab, _aff())
    (d / "IBSR_01_ana.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match=r"IBSR_01_ana.nii.gz: cannot read"):
        load_subject(find_subjects(tmp_path)[0], CFG)


def test_bit_flip_in_gzip_stream_is_refused(tmp_path):
    """Every single-bit flip past the 10-byte gzip header (the deflate data and the CRC32 /
    length trailer) is refused by name: nibabel alone reads only the bytes it needs and never
    checks the CRC (issue 30: 27 of 30 flips went unnoticed)."""
    img, lab = _volume()
    d = _subject(tmp_path, "IBSR_01", img, lab, _aff())
    path = d / "IBSR_01_ana.nii.gz"
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    for pos in rng.integers(10, len(good), 30):
        bad = bytearray(good)
        bad[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(bad))
        with pytest.raises(DataError, match=r"IBSR_01_ana.nii.gz: cannot read"):
            read_volume(path)
    path.write_bytes(good)
    assert np.array_equal(read_volume(path)[0], img)


def test_label_code_absent_from_every_subject(tmp_path):
    for i in (1, 2):
        img, lab = _volume(seed=i)
        _subject(tmp_path, f"IBSR_0{i}", img, lab, _aff())
    cfg = DataConfig(shape=[16, 16, 16], spacing_mm=[4.0, 4.0, 4.0], labels=[1, 2, 17], n_train=1, n_test=1)
    with pytest.raises(DataError, match=r"label code\(s\) \[17\] absent"):
        load_dataset(tmp_path, cfg)


def test_landmarks_bad_csv(tiny_data, tmp_path):
    shutil.copytree(tiny_data / "IBSR_01", tmp_path / "IBSR_01")
    (tmp_path / "IBSR_01" / "IBSR_01_landmarks.csv").write_text("name,x_mm,y_mm,z_mm\na,1,two,3\n")
    cfg = DataConfig(shape=[16, 16, 16], spacing_mm=[10.0, 12.0, 10.0])
    with pytest.raises(DataError, match=r"IBSR_01_landmarks.csv:2: landmark coordinates are not numbers"):
        load_subject(find_subjects(tmp_path)[0], cfg)
