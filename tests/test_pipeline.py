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

from model.config import ConfigError, load_config
from model.evaluate import evaluate
from model.register import main as register_main
from model.localnet import count_parameters, fold_batchnorm
from model.train import load_checkpoint, model_from_checkpoint, train

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
    keys = {"model", "dice", "tre_mm", "landmark_tre_mm", "folding_pct", "nonzero_params", "weight_bytes"}
    for r in rows.values():
        assert keys <= set(r) and 0.0 <= r["dice"] <= 1.0 and r["tre_mm"] >= 0 and r["landmark_tre_mm"] > 0
    assert rows["identity"]["folding_pct"] == 0.0 and rows["identity"]["nonzero_params"] == 0
    net, _ = model_from_checkpoint(ck)
    total, nonzero = count_parameters(fold_batchnorm(net))
    assert rows["trained"]["weight_bytes"] == 4 * total and rows["trained"]["nonzero_params"] == nonzero
    report = tmp_path / "report"
    for f in ("table1.md", "pairs_trained.csv", "labels_trained.csv", "figure3.png"):
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


def test_register_bad_input_is_a_clear_error(tiny_data, tmp_path, capsys):
    missing = tmp_path / "none.pt"
    rc = register_main(["--ckpt", str(missing), "--fixed", "a.nii.gz", "--moving", "b.nii.gz", "--out", "w.nii.gz"])
    assert rc == 2 and "none.pt: checkpoint not found" in capsys.readouterr().err


def test_resume_after_interruption_matches_uninterrupted_run(tiny_data, tiny_config, tmp_path):
    from model.localnet import LocalNet
    from model.train import fit, load_train_data, setup_torch

    cfg = load_config(tiny_config)
    assert cfg.train.lr != cfg.train.lr_final  # the cosine schedule is part of what must resume
    full = train(cfg, tiny_data, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    calls = []

    def kill_in_step_3(net):  # dies after step 3's update, before its checkpoint
        calls.append(1)
        if len(calls) == 3:
            raise Killed

    setup_torch(cfg)
    data = load_train_data(cfg, tiny_data, progress=False)
    kw = dict(steps=cfg.train.steps, lr=cfg.train.lr, lr_final=cfg.train.lr_final, progress=False)
    with pytest.raises(Killed):
        fit(LocalNet(cfg.model), cfg, data, tmp_path / "cut", after_step=kill_in_step_3, **kw)
    assert load_checkpoint(tmp_path / "cut" / "ckpt.pt")["step"] == 2 and not (tmp_path / "cut" / "model.pt").exists()
    resumed = train(cfg, tiny_data, tmp_path / "cut", resume=True, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]


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
