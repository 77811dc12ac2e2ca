"""End-to-end smoke (tiny config): train, resume, data-parallel, evaluate, register."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ConfigError, load_config
from model.data import write_nifti
from model.evaluate import evaluate
from model.localnet import LocalNet
from model.register import main as register_main
from model.train import train

ROOT = Path(__file__).resolve().parent.parent


def _weights(path):
    return load_checkpoint(path)["model"]


def test_train_evaluate_register(tiny_data, tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    final = train(cfg, tiny_data, tmp_path / "train", progress=False)
    ck = load_checkpoint(final, cfg)
    assert ck["step"] == 3 and ck["config"]["model"]["base_channels"] == 4 and ck["git_commit"]
    log = [json.loads(x) for x in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)

    table = evaluate(final, tiny_data, tmp_path, cfg)
    assert table["pairs"] == 2  # 2 test subjects -> 2 ordered pairs
    rows = {r["model"]: r for r in table["rows"]}
    assert set(rows) == {"identity", "trained"}
    keys = {"model", "dice", "tre_mm", "landmark_tre_mm", "folding_pct", "vanished_labels", "seconds_per_pair",
            "nonzero_params", "weight_bytes"}
    for r in rows.values():
        assert keys <= set(r) and 0.0 <= r["dice"] <= 1.0 and r["tre_mm"] >= 0 and r["landmark_tre_mm"] > 0
    assert rows["identity"]["folding_pct"] == 0.0 and rows["identity"]["nonzero_params"] == 0
    # the folded tiny LocalNet (base 4, levels 2, heads at 0, 1, 2, 2 input channels), by hand:
    # weights C_in x C_out x k^3 and one bias per output channel after BatchNorm folding
    convs = [(2, 4, 7), (4, 4, 3), (4, 4, 3),  # down.0: c0 (7^3), c1, c2
             (4, 8, 3), (8, 8, 3), (8, 8, 3),  # down.1
             (8, 16, 3),  # bottleneck
             (16, 8, 3), (8, 8, 3), (8, 8, 3),  # up.0 (level 1)
             (8, 4, 3), (4, 4, 3), (4, 4, 3),  # up.1 (level 0)
             (4, 3, 3), (8, 3, 3), (16, 3, 3)]  # heads at levels 0, 1, 2
    params = sum(ci * co * k**3 + co for ci, co, k in convs)
    assert params == 22389
    assert rows["trained"]["weight_bytes"] == 4 * params and 0 < rows["trained"]["nonzero_params"] <= params
    report = tmp_path / "report"
    for f in ("evaluate.md", "pairs_trained.csv", "labels_trained.csv", "figure3.png"):
        assert (report / f).stat().st_size > 0

    # register real files of another size and orientation: output on the fixed grid
    fixed = tiny_data / "IBSR_04" / "IBSR_04_ana.nii.gz"
    moving = tiny_data / "IBSR_03" / "IBSR_03_ana.nii.gz"  # stored z-first: a different orientation
    out, ddf = tmp_path / "w.nii.gz", tmp_path / "ddf.nii.gz"
    assert register_main(["--ckpt", str(final), "--fixed", str(fixed), "--moving", str(moving),
                          "--out", str(out), "--ddf", str(ddf)]) == 0
    f_img, w_img, d_img = nib.load(fixed), nib.load(out), nib.load(ddf)
    assert w_img.shape == f_img.shape and np.allclose(w_img.affine, f_img.affine)
    assert d_img.shape == (*f_img.shape, 1, 3)
    w = np.asarray(w_img.dataobj)
    assert np.isfinite(w).all() and w.max() > 0


def test_register_bad_input_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "none.pt"
    rc = register_main(["--ckpt", str(missing), "--fixed", str(tmp_path / "a.nii.gz"), "--moving",
                        str(tmp_path / "b.nii.gz"), "--out", str(tmp_path / "w.nii.gz")])
    assert rc == 2 and "none.pt: checkpoint not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def _constant_field_checkpoint(cfg, path, voxels):
    """A LocalNet checkpoint whose output is `voxels` (3,) everywhere: every head's weights zero,
    the full-resolution head's bias the displacement (coarser heads add zero)."""
    net = LocalNet(cfg.model)
    with torch.no_grad():
        for lv, head in net.heads.items():
            head.weight.zero_()
            head.bias.copy_(torch.tensor(voxels if lv == "0" else [0.0, 0.0, 0.0]))
    save_checkpoint(path, cfg, {"model": net.state_dict(), "step": 0, "stage": "train"})


@pytest.mark.parametrize("orientation", ["RAS", "LAS"])
@pytest.mark.parametrize("net_voxels", [(0.0, 0.0, 0.0), (0.5, -0.25, 1.0)])
def test_register_recovers_header_shift_in_world_mm(tiny_cfg, tmp_path, orientation, net_voxels):
    """The moving file is the fixed one with its header translated by t mm: the same anatomy
    t mm away in the world. --ddf is world mm, moving point minus fixed point, so a network
    that predicts nothing (each volume is centred on its own grid) must report t, and one
    predicting d voxels of the working grid must report t + d x spacing, along world axes
    whatever the file's storage orientation."""
    rng = np.random.default_rng(0)
    shape = (20, 16, 18)
    ras = rng.random(shape).astype(np.float32) + 0.5  # anatomy, stored RAS
    aff = np.diag([2.0, 3.0, 2.5, 1.0])
    aff[:3, 3] = [-20.0, -24.0, -20.0]
    if orientation == "LAS":  # the same world image with the first axis stored right-to-left
        ras = ras[::-1].copy()
        aff[:, 0] *= -1
        aff[0, 3] = -20.0 + 2.0 * (shape[0] - 1)
    t = np.array([4.0, -6.0, 5.0])
    shifted = aff.copy()
    shifted[:3, 3] += t
    fixed, moving = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    write_nifti(fixed, ras, aff)
    write_nifti(moving, ras, shifted)
    ckpt = tmp_path / "const.pt"
    _constant_field_checkpoint(tiny_cfg, ckpt, list(net_voxels))
    out, ddf = tmp_path / "w.nii.gz", tmp_path / "ddf.nii.gz"
    assert register_main(["--ckpt", str(ckpt), "--fixed", str(fixed), "--moving", str(moving),
                          "--out", str(out), "--ddf", str(ddf)]) == 0
    d = np.asarray(nib.load(ddf).dataobj)[:, :, :, 0, :]  # (X, Y, Z, 3) world mm
    want = t + np.asarray(net_voxels) * np.asarray(tiny_cfg.data.spacing_mm)
    # float32 storage of mm values of a few units: 1e-4 mm
    np.testing.assert_allclose(d.reshape(-1, 3), np.broadcast_to(want, (d[..., 0].size, 3)), atol=1e-4, rtol=0)
    if not any(net_voxels):  # the shift alone: every fixed voxel reads its own value back
        w = np.asarray(nib.load(out).dataobj)
        np.testing.assert_allclose(w, ras, atol=1e-5, rtol=0)  # trilinear at integer positions, float32


def test_resume_after_interruption_matches_uninterrupted_run(tiny_data, tiny_config, tmp_path):
    from model.localnet import LocalNet
    from model.train import fit, load_train_data, setup_torch

    cfg = load_config(tiny_config)
    assert cfg.train.lr != cfg.train.lr_final  # the cosine schedule is part of what must resume
    cfg.train.ema_decay = 0.5  # and the weights' moving average
    full = train(cfg, tiny_data, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    calls = []

    def kill_in_step_3(net, step):  # dies after step 3's update, before its checkpoint
        calls.append(1)
        if len(calls) == 3:
            raise Killed

    setup_torch(cfg)
    data = load_train_data(cfg, tiny_data, progress=False)
    kw = dict(steps=cfg.train.steps, lr=cfg.train.lr, lr_final=cfg.train.lr_final, progress=False,
              channels_last=False, ema_decay=cfg.train.ema_decay)  # as train() runs it
    with pytest.raises(Killed):
        fit(LocalNet(cfg.model), cfg, data, tmp_path / "cut", after_step=kill_in_step_3, **kw)
    assert load_checkpoint(tmp_path / "cut" / "ckpt.pt")["step"] == 2 and not (tmp_path / "cut" / "model.pt").exists()
    resumed = train(cfg, tiny_data, tmp_path / "cut", resume=True, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    # resuming the finished run leaves its model untouched (make's later stages see no new file)
    before = (tmp_path / "cut" / "model.pt").stat().st_mtime_ns
    train(cfg, tiny_data, tmp_path / "cut", resume=True, progress=False)
    assert (tmp_path / "cut" / "model.pt").stat().st_mtime_ns == before


def test_ema_is_the_moving_average_of_each_steps_weights(tiny_data, tiny_config, tmp_path):
    """With train.ema_decay d = 0.5 and 3 steps the saved network is 0.25 w1 + 0.25 w2 + 0.5 w3
    (w_i: every weight and BatchNorm statistic after step i), the last weights stay in ckpt.pt."""
    from model.localnet import LocalNet
    from model.train import fit, load_train_data, setup_torch

    cfg = load_config(tiny_config)
    cfg.train.ema_decay = 0.5
    assert cfg.train.steps == 3
    setup_torch(cfg)
    seen = []
    fit(LocalNet(cfg.model), cfg, load_train_data(cfg, tiny_data, progress=False), tmp_path / "e",
        steps=3, lr=cfg.train.lr, progress=False, channels_last=False, ema_decay=0.5,
        after_step=lambda net, step: seen.append({k: v.detach().clone() for k, v in net.state_dict().items()}))
    got = load_checkpoint(tmp_path / "e" / "model.pt")["model"]
    last = load_checkpoint(tmp_path / "e" / "ckpt.pt")["model"]
    for k, v in got.items():
        if v.is_floating_point():  # three float32 products summed in another order: rounding only
            want = 0.25 * seen[0][k] + 0.25 * seen[1][k] + 0.5 * seen[2][k]
            assert torch.allclose(v, want, rtol=1e-6, atol=1e-7), k
            assert torch.equal(last[k], seen[2][k])
        else:
            assert torch.equal(v, seen[2][k])
    assert any(not torch.equal(got[k], last[k]) for k in got if got[k].is_floating_point())


def test_resume_with_another_config_is_refused(tiny_data, tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    train(cfg, tiny_data, tmp_path / "t", progress=False)
    cfg.model.base_channels = 6
    with pytest.raises(ConfigError, match="model.base_channels: checkpoint 4 vs config 6"):
        train(cfg, tiny_data, tmp_path / "t", resume=True, progress=False)


def test_torchrun_two_processes(tiny_data, tiny_config, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "model.train",
                        "--config", str(tiny_config), "--data", str(tiny_data), "--out", str(tmp_path / "ddp"),
                        "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp" / "model.pt")
    assert ck["world_size"] == 2 and ck["step"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_cli_reports_bad_data_without_traceback(tiny_config, tmp_path):
    r = subprocess.run([sys.executable, "-m", "model.train", "--config", str(tiny_config), "--data",
                        str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nowhere: data directory does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_key_added_later_counts_at_its_default(tiny_data, tiny_config, tmp_path):
    """A checkpoint written before model.prealign existed (its config lacks the key) loads with a
    config at the default ("none"), and is refused with the key named under another value."""
    import dataclasses

    import torch

    from model.checkpoint import load_checkpoint

    cfg = load_config(tiny_config)
    cfg.train.steps = 2
    path = train(cfg, tiny_data, tmp_path / "t", progress=False)
    ck = torch.load(path, weights_only=False)
    del ck["config"]["model"]["prealign"]
    torch.save(ck, path)
    load_checkpoint(path, cfg)
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prealign="moments"))
    with pytest.raises(ConfigError, match="model.prealign: checkpoint 'none' vs config 'moments'"):
        load_checkpoint(path, other)


def test_batches_all_labels_and_the_global_stage(tiny_data, tiny_config):
    """label_sampling = "all": one channel per configured label, weight 1 wherever a label is in
    both volumes. prealign = "moments": the same draw, with the augmented moving volumes
    carried onto the fixed ones by their moments, lands closer (centroid distance of the images)."""
    from model.prealign import moments
    from model.train import load_train_data

    cfg = load_config(tiny_config)
    cfg.train.label_sampling = "all"
    data = load_train_data(cfg, tiny_data, progress=False)
    mi, fi, ml, fl, w = data.batch(cfg, step=3)
    assert ml.shape[1] == fl.shape[1] == len(cfg.data.labels) and w.shape == (cfg.train.batch_size, len(cfg.data.labels))
    present = (ml.flatten(2).amax(2) > 0) & (fl.flatten(2).amax(2) > 0)
    assert bool((w.bool() >= present).all()) and w.sum() > 0  # warping may only thin a label away
    cfg.model.prealign = "moments"
    ai, af, *_ = data.batch(cfg, step=3)
    assert torch.equal(af, fi)  # the fixed volumes are untouched
    gap = lambda m, f: np.mean([np.linalg.norm(moments(m[k, 0].numpy())[0] - moments(f[k, 0].numpy())[0])
                                for k in range(len(m))])
    assert gap(ai, af) < 0.5 * gap(mi, fi)


def test_elastic_self_pairs_deform_only_the_fixed_volume_of_self_pairs(tiny_data, tiny_config):
    """train.self_elastic_vox adds a random smooth field to the fixed volume of same-subject
    pairs only: without them (same_subject_prob 0) the batch is the default one, draw for draw;
    with them the moving volumes stay as drawn and only the fixed ones change."""
    from model.train import load_train_data

    cfg = load_config(tiny_config)
    data = load_train_data(cfg, tiny_data, progress=False)
    plain = data.batch(cfg, step=2)
    cfg.train.self_elastic_vox = 2.0
    assert all(torch.equal(a, b) for a, b in zip(plain[:4], data.batch(cfg, step=2)[:4]))
    cfg.train.same_subject_prob = 1.0
    cfg.train.self_elastic_vox = 0.0
    rigid = data.batch(cfg, step=2)
    cfg.train.self_elastic_vox = 2.0
    bent = data.batch(cfg, step=2)
    assert torch.equal(rigid[0], bent[0]) and torch.equal(rigid[2], bent[2])
    assert not torch.equal(rigid[1], bent[1])
    cfg.train.self_elastic_vox = -1.0
    with pytest.raises(ConfigError, match="train.self_elastic_vox = -1.0: each value must lie in"):
        cfg.validate()


def test_random_smooth_ddf_passes_through_its_control_points():
    from model.warp import random_smooth_ddf

    d = random_smooth_ddf((33, 17, 9), np.random.default_rng(5), 2, 2.0)
    coarse = np.random.default_rng(5).normal(0.0, 2.0, (2, 3, 5, 3, 2)).astype(np.float32)
    assert d.shape == (2, 3, 33, 17, 9)
    assert np.array_equal(d[:, :, ::8, ::8, ::8].numpy(), coarse)
