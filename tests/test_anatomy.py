"""The real-anatomy validation domain (model.anatomy): its depth map, its labels, determinism and
the loader reading what it writes."""
from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from model.anatomy import ANATOMY_LABELS, _depth, main, write_domain
from model.config import load_config
from model.data import DataError, load_dataset


def test_depth_is_the_city_block_distance_to_the_outside():
    """_depth(mask) equals, voxel for voxel, the brute-force city-block distance from each mask
    voxel to the nearest voxel outside the mask (the volume's border counts as outside), minus
    one, capped: integers, compared exactly."""
    rng = np.random.default_rng(3)
    mask = np.zeros((14, 12, 10), dtype=bool)
    mask[2:12, 1:11, 1:9] = True
    mask &= rng.random(mask.shape) > 0.05            # holes inside
    padded = np.pad(~mask, 1, constant_values=True)
    out = np.argwhere(padded) - 1
    want = np.zeros(mask.shape, dtype=np.int16)
    for p in np.argwhere(mask):
        want[tuple(p)] = min(np.abs(out - p).sum(1).min() - 1, 3)
    assert np.array_equal(_depth(mask, 3), want)


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    out = tmp_path_factory.mktemp("mni")
    write_domain(out, subjects=2, progress=False)
    return out


def test_domain_is_deterministic_and_loads_with_its_labels(domain, tmp_path):
    again = tmp_path / "again"
    write_domain(again, subjects=2, progress=False)
    for f in sorted(domain.glob("IBSR_*/*.nii.gz")):
        assert hashlib.sha256(f.read_bytes()).digest() == \
            hashlib.sha256((again / f.relative_to(domain)).read_bytes()).digest(), f
    cfg = load_config("configs/demo.toml")
    subjects = load_dataset(domain, replace(cfg.data, labels=ANATOMY_LABELS), "all")
    for s in subjects:
        codes, counts = np.unique(s.label, return_counts=True)
        got = dict(zip(codes.tolist(), counts.tolist()))
        assert set(got) == {0, *ANATOMY_LABELS}
        # every structure covers at least a few voxels at 5 mm: the smallest, the ventricles
        assert min(got[c] for c in ANATOMY_LABELS) >= 10, got
    # the two subjects differ (their own pose, deformation and noise)
    assert not np.array_equal(subjects[0].image, subjects[1].image)
    # the demo's label list names structures this domain does not have: refused, naming them
    with pytest.raises(DataError, match=r"label code\(s\) \[11, 50, 12, 51, 17, 53\] absent"):
        load_dataset(domain, cfg.data, "all")


def test_missing_nilearn_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else real(name, *a))
    assert main(["--out", str(tmp_path / "d")]) == 2
    assert "pip install nilearn" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_set_is_scored_on_its_own_labels(domain, tmp_path):
    """scored_config: the real-anatomy domain (its manifest present) on ANATOMY_LABELS, any
    other directory on the config's own list, the rest of the config unchanged."""
    from model.anatomy import scored_config

    cfg = load_config("configs/demo.toml")
    got = scored_config(cfg, domain)
    assert got.data.labels == ANATOMY_LABELS and got.data.shape == cfg.data.shape and got.model == cfg.model
    assert scored_config(cfg, tmp_path) is cfg
