"""Opt-in (`make test-slow`): the demo's acceptance criteria, on the full demo config (~10 min)."""
from __future__ import annotations

from pathlib import Path

import pytest

from model.config import load_config
from model.evaluate import evaluate
from model.synth import write_dataset
from model.train import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_meets_acceptance(tmp_path):
    data = tmp_path / "synthetic"
    write_dataset(data, progress=False)
    cfg = load_config(ROOT / "configs" / "demo.toml")
    final = train(cfg, data, tmp_path / "train", progress=False)
    rows = {r["model"]: r for r in evaluate(final, data, tmp_path, cfg, progress=False)["rows"]}
    ident, trained = rows["identity"], rows["trained"]
    assert trained["dice"] >= ident["dice"] + 0.10
    assert trained["folding_pct"] < 1.0
    assert trained["landmark_tre_mm"] < ident["landmark_tre_mm"]
