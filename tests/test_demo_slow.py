"""Opt-in (`make test-slow`): the demo's acceptance criteria on the full demo config (~30 min):
float training (issue 2), the compression stages and Table 1 (issue 3), and the parts of
issue 10's goals the demo meets (no folding beyond 0.1 %, no vanished label, the deployed
int8 network equal to the Brevitas one), and issue 12's compression goals the demo meets."""
from __future__ import annotations

from pathlib import Path

import pytest

from model.config import load_config
from model.synth import write_dataset
from model.train import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_meets_acceptance(tmp_path):
    from benchmarks.accuracy import report
    from export.export import export
    from quant.prune import prune
    from quant.qat import qat

    data = tmp_path / "synthetic"
    write_dataset(data, progress=False)
    cfg = load_config(ROOT / "configs" / "demo.toml")
    train(cfg, data, tmp_path / "train", progress=False)
    prune(cfg, tmp_path / "train" / "model.pt", data, tmp_path / "prune", progress=False)
    qat(cfg, tmp_path / "prune", data, tmp_path / "qat", curve=True, progress=False)
    export(cfg, tmp_path, data, progress=False)
    table = report(cfg, data, tmp_path, progress=False)
    rows = {r["model"]: r for r in table["rows"]}
    ident, trained = rows["identity"], rows["trained"]
    # issue 2
    assert trained["dice"] >= ident["dice"] + 0.10
    assert trained["folding_pct"] < 1.0
    assert trained["landmark_tre_mm"] < ident["landmark_tre_mm"]
    # issue 3
    assert rows["pruned_finetuned"]["dice"] >= trained["dice"] - 0.01
    assert rows["int8_qat"]["dice"] >= trained["dice"] - 0.01
    assert cfg.qat.int4_sparsity >= 0.5 and rows["int4_qat"]["dice"] >= trained["dice"] - 0.03
    assert trained["weight_bytes"] / rows["int8_qat"]["weight_bytes"] >= 4
    assert trained["weight_bytes"] / rows["int4_qat"]["weight_bytes"] >= 8
    # issue 10: trained and int8 Dice >= ANTs SyN on the same pairs (with the test-time
    # refinement; the speed goal is a benchmark's, Table 1's seconds per pair: README)
    for name in ("trained", "int8_qat", "int8_deployed"):
        assert rows[name]["folding_pct"] <= 0.1 and rows[name]["vanished_labels"] == 0, name
        assert rows[name]["dice"] >= rows["ants_syn"]["dice"], name
    assert rows["int8_deployed"]["dice"] == rows["int8_qat"]["dice"]
    assert rows["trained"]["dice"] > rows["trained_unrefined"]["dice"]
    assert rows["int8_deployed"]["dice"] > rows["int8_deployed_unrefined"]["dice"]
    # issue 11: the deployed int8 model, pruned 25 % in whole engine blocks, takes <= 0.8x the
    # engine cycles of the same weights stored dense, at the global 25 %'s Dice
    assert table["int8_accelerator_cycles"]["ratio"] <= 0.8
    assert rows["blocks_finetuned"]["dice"] >= rows["pruned_finetuned"]["dice"] - 0.01
    # issue 12 (the goals the demo meets; the curve to 95 % is make curve's)
    int4 = rows["int4_layer_s90"]
    assert int4["dice"] >= trained["dice"] - 0.02 and trained["weight_bytes"] / int4["weight_bytes"] >= 20
    assert rows["int8_layer_s75"]["dice"] >= trained["dice"] - 0.01
    assert rows["int8_layer_s90"]["dice"] >= trained["dice"] - 0.03
    nm = rows["int8_nm_layer_s75"]
    assert nm["dice"] >= trained["dice"] - 0.01 and nm["nonzero_params"] <= 0.5 * trained["nonzero_params"]
