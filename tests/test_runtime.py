"""The deployed registration defined once (model/registration.py), the torch-free runtime around
the exported network (hw/runtime.py) and its CLI for scans (hw/register.py)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model.config import RefineConfig
from model.prealign import affine_ddf, global_affine
from model.refine import refine
from model.registration import Registration, Settings

ROOT = Path(__file__).resolve().parent.parent
TORCH_FREE = ("torch", "brevitas", "onnx", "onnxoptimizer", "qonnx", "matplotlib", "ants")


def _settings(prealign="none", iters=0, shape=(16, 16, 16)):
    return Settings(shape, (2.0, 2.0, 2.0), (1.0, 99.0), prealign, RefineConfig(iters=iters))


def _blob(shape, centre, sd=3.0):
    g = np.indices(shape, dtype=np.float64)
    return np.exp(-sum((g[i] - centre[i]) ** 2 for i in range(3)) / (2 * sd * sd)).astype(np.float32)


def test_field_is_the_network_then_the_global_stage_composed_then_the_refinement():
    shape = (16, 16, 16)
    fixed, moving = _blob(shape, (7, 8, 8)), _blob(shape, (9, 7, 8))
    c = np.array([0.5, -0.25, 1.0])
    seen = []

    def net(m, f):
        seen.append(m)
        return np.broadcast_to(c[:, None, None, None], (3, *shape)).astype(np.float32)

    # no global stage: the network's field itself, the moving image as given
    d = Registration(_settings(), net).field(moving, fixed)
    assert d.dtype == np.float64 and np.array_equal(d, np.broadcast_to(c[:, None, None, None], d.shape))
    assert np.array_equal(seen[-1], moving)
    # a global stage A: the network sees the moving image resampled by A, and the field is
    # A(x + d) - x = (M x + t - x) + M d
    M, t = global_affine("moments", moving, fixed)
    d = Registration(_settings("moments"), net).field(moving, fixed)
    want = affine_ddf(M, t, shape) + (M @ c)[:, None, None, None]
    np.testing.assert_allclose(d, want, rtol=0, atol=1e-12)  # float64 sums in another order
    assert not np.array_equal(seen[-1], moving)
    # the refinement: model.refine.refine of that field; refine_field=False leaves it out
    reg = Registration(_settings("moments", iters=3), net)
    assert np.array_equal(reg.field(moving, fixed, refine_field=False), d)
    assert np.array_equal(reg.field(moving, fixed), refine(moving, fixed, d, RefineConfig(iters=3)))
    assert np.array_equal(reg.refined(moving, fixed, d), reg.field(moving, fixed))


def test_png_decodes_to_the_same_pixels(tmp_path):
    from PIL import Image  # an independent decoder (matplotlib's dependency)

    from hw.qc import png_bytes

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (tmp_path / "x.png").write_bytes(png_bytes(rgb))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png").convert("RGB")), rgb)


def test_qc_marks_folding_and_draws_contours():
    from hw.qc import jacobian_colours, qc_image

    assert jacobian_colours(np.array([[1.0, 0.0, -1.0, 2.0, 0.5]])).tolist() == [
        [[255, 255, 255], [255, 215, 0], [255, 215, 0], [255, 0, 0], [128, 128, 255]]]
    shape = (8, 10, 6)
    img = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int16)
    labels[2:6, 3:7, 1:5] = 41
    ddf = np.zeros((3, *shape))
    q = qc_image(img, img, img, ddf, labels)
    k = -(-160 // 10)  # magnified 16x: 160 px across the largest side
    assert q.shape[1] == 4 * (10 * k + 4) and q.dtype == np.uint8
    assert (q == [230, 25, 75]).all(-1).any()        # label 41 is the first code: the first colour
    assert (q == [255, 255, 255]).all(-1).sum() > 0  # det J = 1 everywhere: white
    assert not (q == [255, 215, 0]).all(-1).any()    # and no folding


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    return tiny_export[1] / "export"


def test_backends_give_the_same_registration(export_dir, tiny_data):
    """onnxruntime and the integer reference (and OpenVINO where installed) run the same integer
    network, so the whole registration around them is the same to the last bit."""
    from hw.runtime import load, openvino_available
    from model.data import load_dataset

    s = load_dataset(tiny_data, _cfg(export_dir).data, "test")
    backends = ["reference", "onnxruntime"] + (["openvino"] if openvino_available() else [])
    fields = {b: load(export_dir, b, threads=1).field(s[0].image, s[1].image) for b in backends}
    for b in backends[1:]:
        assert np.array_equal(fields[b], fields["reference"]), b
    assert np.abs(fields["reference"]).max() > 0


def _cfg(export_dir):
    from hw.runtime import settings_config

    return settings_config(export_dir)


def _labels(path: Path) -> Path:
    return path.parent / path.name.replace("_ana.nii.gz", "_seg_ana.nii.gz")


def test_cli_registers_scans_with_labels_and_qc(export_dir, tiny_data, tmp_path):
    from hw.register import main

    fixed = tiny_data / "IBSR_04" / "IBSR_04_ana.nii.gz"
    moving = tiny_data / "IBSR_03" / "IBSR_03_ana.nii.gz"  # stored in another orientation
    out = {k: tmp_path / f"{k}.nii.gz" for k in ("w", "d", "l")}
    assert main(["--export", str(export_dir), "--backend", "reference", "--fixed", str(fixed), "--moving", str(moving),
                 "--out", str(out["w"]), "--ddf", str(out["d"]), "--moving-labels", str(_labels(moving)),
                 "--out-labels", str(out["l"]), "--fixed-labels", str(_labels(fixed)),
                 "--qc", str(tmp_path / "qc.png")]) == 0
    f = nib.load(fixed)
    for k, shape in (("w", f.shape), ("d", (*f.shape, 1, 3)), ("l", f.shape)):
        img = nib.load(out[k])
        assert img.shape == shape and np.allclose(img.affine, f.affine), k
    warped_labels = np.asarray(nib.load(out["l"]).dataobj)
    moving_codes = set(np.unique(np.asarray(nib.load(_labels(moving)).dataobj)).tolist())
    assert set(np.unique(warped_labels).tolist()) <= moving_codes and (warped_labels > 0).any()
    png = (tmp_path / "qc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and zlib.crc32(png[12:29]) == int.from_bytes(png[29:33], "big")


def test_cli_evaluates_with_table1_metrics_and_backends_agree(export_dir, tiny_data, tmp_path):
    """--evaluate scores the test pairs as Table 1 does; the integer reference and onnxruntime
    give the same numbers for every pair (all but the time)."""
    from hw.register import main

    rows = {}
    for b in ("reference", "onnxruntime"):
        assert main(["--export", str(export_dir), "--backend", b, "--evaluate", str(tiny_data),
                     "--out-dir", str(tmp_path / b), "--no-progress", "--threads", "1"]) == 0
        text = (tmp_path / b / "pairs.csv").read_text().splitlines()
        rows[b] = [re.sub(r",[^,]*$", "", ln) for ln in text[1:]]  # seconds is the last column
        summary = json.loads((tmp_path / b / "summary.json").read_text())
        assert summary["pairs"] == 2 and 0 <= summary["rows"][0]["dice"] <= 1
    assert rows["reference"] == [r.replace("onnxruntime", "reference") for r in rows["onnxruntime"]]


def test_cli_batch_goes_on_after_a_bad_pair(export_dir, tiny_data, tmp_path):
    from hw.register import main

    f, m = (tiny_data / s / f"{s}_ana.nii.gz" for s in ("IBSR_04", "IBSR_03"))
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not a NIfTI file")
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"fixed,moving,moving_labels,fixed_labels\n{f},{m},{_labels(m)},{_labels(f)}\n{f},{bad},,\n")
    assert main(["--export", str(export_dir), "--backend", "onnxruntime", "--pairs", str(csv),
                 "--out-dir", str(tmp_path / "out")]) == 2
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and "bad.nii: cannot read" in summary[2]
    first = dict(zip(summary[0].split(","), summary[1].split(",")))
    assert 0 < float(first["dice"]) <= 1 and int(first["labels_scored"]) > 0 and not first["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "pair_000_labels.nii.gz", "pair_000_warped.nii.gz", "summary.csv"]


def _nifti(path, data, aff=None):
    nib.save(nib.Nifti1Image(data, np.diag([8.0, 8.0, 8.0, 1.0]) if aff is None else aff), str(path))
    return path


@pytest.mark.parametrize("case", ["not_nifti", "two_d", "multi_volume", "nan", "no_overlap", "out_is_input",
                                  "old_export"])
def test_cli_bad_input(case, export_dir, tiny_data, tmp_path, capsys):
    from hw.register import main

    rng = np.random.default_rng(0)
    fixed = _nifti(tmp_path / "f.nii.gz", rng.random((12, 12, 12)).astype(np.float32))
    moving = _nifti(tmp_path / "m.nii.gz", rng.random((12, 12, 12)).astype(np.float32))
    export, out = export_dir, tmp_path / "w.nii.gz"
    want = {"not_nifti": "m.nii.gz: cannot read", "multi_volume": "m.nii.gz: expected a 3-D volume",
            "two_d": "m.nii.gz: expected a 3-D volume",
            "nan": "NaN", "no_overlap": "do not overlap", "out_is_input": "refusing to overwrite an input",
            "old_export": "registration.json: missing"}[case]
    if case == "not_nifti":
        moving.write_bytes(b"not a NIfTI file")
    elif case == "two_d":
        _nifti(moving, rng.random((12, 12)).astype(np.float32))
    elif case == "multi_volume":
        _nifti(moving, rng.random((12, 12, 12, 2)).astype(np.float32))
    elif case == "nan":
        data = rng.random((12, 12, 12)).astype(np.float32)
        data[3, 4, 5] = np.nan
        _nifti(moving, data)
    elif case == "no_overlap":
        aff = np.diag([8.0, 8.0, 8.0, 1.0])
        aff[0, 3] = 1000.0
        _nifti(moving, rng.random((12, 12, 12)).astype(np.float32), aff)
    elif case == "out_is_input":
        out = moving
    else:  # an export directory of the format before registration.json
        export = tmp_path / "old_export"
        export.mkdir()
        for p in export_dir.iterdir():
            if p.is_file() and p.name != "registration.json":
                (export / p.name).write_bytes(p.read_bytes())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    rc = main(["--export", str(export), "--fixed", str(fixed), "--moving", str(moving), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and want in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written


def test_settings_follow_the_config_and_are_rewritten_only_when_it_changes(export_dir, tiny_cfg, tmp_path):
    import dataclasses

    from hw.runtime import settings_config, write_settings
    from model.config import write_stamp

    cfg = settings_config(export_dir)
    assert write_settings(cfg, export_dir) is False  # the same settings: the file is left alone
    changed = dataclasses.replace(cfg, refine=RefineConfig(iters=4))
    try:
        assert write_settings(changed, export_dir) is True and settings_config(export_dir).refine.iters == 4
    finally:
        write_settings(cfg, export_dir)
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, base_channels=8))
    with pytest.raises(ValueError, match=r"\[model\] differ from the exported network"):
        write_settings(other, export_dir)
    assert settings_config(export_dir) == cfg  # a refused config leaves the file as it was
    # the stage stamps make depends on: a [refine] change touches `all`, not `qat`
    assert write_stamp(cfg, "qat", tmp_path / "qat.json") and write_stamp(cfg, "all", tmp_path / "all.json")
    assert not write_stamp(changed, "qat", tmp_path / "qat.json") and write_stamp(changed, "all", tmp_path / "all.json")


def test_cli_and_latency_run_without_torch(export_dir, tiny_data, tmp_path):
    """On a board: the packages of the training stack cannot be imported, in any subprocess."""
    block = tmp_path / "block"
    for mod in TORCH_FREE:
        (block / mod).mkdir(parents=True)
        (block / mod / "__init__.py").write_text(f"raise ImportError('{mod} is not installed on this board')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(ROOT)])}
    fixed, moving = (tiny_data / s / f"{s}_ana.nii.gz" for s in ("IBSR_04", "IBSR_03"))
    r = subprocess.run([sys.executable, "-m", "hw.register", "--export", str(export_dir), "--fixed", str(fixed),
                        "--moving", str(moving), "--out", str(tmp_path / "w.nii.gz"), "--qc", str(tmp_path / "qc.png")],
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert nib.load(tmp_path / "w.nii.gz").shape == nib.load(fixed).shape
    r = subprocess.run([sys.executable, "-m", "hw.register", "--export", str(export_dir), "--evaluate", str(tiny_data),
                        "--out-dir", str(tmp_path / "eval"), "--no-progress"], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--export", str(export_dir),
                        "--out", str(tmp_path / "bench"), "--threads", "1", "--warmup", "0", "--runs", "1",
                        "--backends", "ort_int8,reference_int"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = {x["backend"]: x for x in json.loads((tmp_path / "bench" / "latency.json").read_text())["results"]}
    assert got["ort_int8"]["matches_reference"] is True


ASSEMBLY = re.compile(r"(?<![\w.])(compose|refine|prealign)\(")


def test_only_the_registration_assembles_the_registration():
    """Pre-alignment, composition and refinement are called together in model/registration.py
    alone; elsewhere only where each step is defined, tested or timed on its own."""
    allowed = {"model/registration.py", "model/prealign.py", "model/refine.py",
               "benchmarks/latency.py"}  # host_steps times each step alone
    found = []
    for pkg in ("model", "quant", "export", "hw", "benchmarks"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if ASSEMBLY.search(line) and not line.lstrip().startswith(("def ", "#")) and rel not in allowed:
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []


def test_refine_curve_scores_each_setting(export_dir, tiny_data, tmp_path):
    """benchmarks.refine_curve: one row per set and setting; 0 steps is the unrefined registration
    (hw.register --evaluate --no-refine scores the same Dice); the stop rule records its steps."""
    from benchmarks.refine_curve import main
    from hw.register import main as register_main

    assert main(["--export", str(export_dir), "--set", f"test={tiny_data}:test", "--out", str(tmp_path),
                 "--points", "0,2", "--tol", "0.5"]) == 0
    rows = json.loads((tmp_path / "refine_curve.json").read_text())["rows"]
    assert [(r["iters"], r["tol"]) for r in rows] == [(0, 0.0), (2, 0.0), (100, 0.5)]
    assert rows[0]["mean_steps"] == 0 and rows[1]["mean_steps"] == 2 and 1 <= rows[2]["mean_steps"] < 100
    assert register_main(["--export", str(export_dir), "--evaluate", str(tiny_data), "--out-dir", str(tmp_path / "e"),
                          "--no-refine", "--no-progress", "--threads", "1"]) == 0
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["rows"][0]["dice"] == rows[0]["dice"]
    assert "| tol 0.5 |" in (tmp_path / "refine_curve.md").read_text()
