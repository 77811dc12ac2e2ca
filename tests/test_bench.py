"""benchmarks/latency.py: its comparison rule by hand, and a run on a board without torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import latency  # noqa: E402  (a script, run on boards from a checkout)


INT_REF = {"q": [[4, -8], [0, 2]], "e": 2}  # dequantised: [[1, -2], [0, 0.5]]
FLOAT_REF = {"f": [[1.0, -2.0], [0.0, 0.5]]}
REFS = {latency.INT_REFERENCE: INT_REF, latency.FLOAT_REFERENCE: FLOAT_REF}


@pytest.mark.parametrize("ddf, backend, want", [
    ({"q": [[4, -8], [0, 2]]}, "some_int8", (True, None)),
    ({"q": [[4, -8], [0, 3]]}, "some_int8", (False, None)),
    ({"f": [[1.0, -2.0], [0.0, 0.5]]}, "openvino_int8", (True, None)),  # integers 4, -8, 0, 2: exact
    ({"f": [[1.0, -2.0], [0.0, 0.75]]}, "openvino_int8", (False, None)),  # 0.75 -> 3, not 2
    ({"f": [[1.0, -2.0], [0.0, 0.5]]}, "torch_fp32", (True, 0.0)),
    ({"f": [[1.0005, -2.0], [0.0, 0.5]]}, "torch_fp32", (True, 0.0005)),  # within 1e-3 voxel
    ({"f": [[1.0, -2.0], [0.0, 0.503]]}, "torch_fp32", (False, 0.003)),
    ({"f": [[0.0, 0.0], [0.0, 0.0]]}, "torch_fp32", (False, 2.0)),  # a zero field fails
])
def test_compare_by_hand(ddf, backend, want):
    ok, diff = latency.compare(ddf, backend, REFS)
    assert ok is want[0]
    assert diff == (None if want[1] is None else pytest.approx(want[1], abs=1e-9))


def test_compare_refuses_a_near_zero_reference_and_missing_ones():
    zero = {latency.FLOAT_REFERENCE: {"f": [[0.0, 5e-5]]}}
    assert latency.compare({"f": [[0.0, 5e-5]]}, "torch_fp32", zero) == (False, None)  # equal, but proves nothing
    assert latency.compare({"f": [[1.0]]}, "torch_fp32", {}) == (None, None)
    assert latency.compare({"q": [[1]]}, "ort_int8", {}) == (None, None)


def test_fpga_projection_by_hand(tmp_path):
    """fpga_ecp5: the slower golden pair's simulated cycles over the placed fmax; absent until
    both files exist."""
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    assert latency.fpga_projection(rtl) is None
    (rtl / "cycles.json").write_text(json.dumps({"pairs": [{"cycles": 2_000_000}, {"cycles": 3_000_000}],
                                                "executed_mac_util": 0.5, "dense_equiv_util": 0.7}))
    assert latency.fpga_projection(rtl) is None
    (rtl / "synth.json").write_text(json.dumps({"fmax_mhz": 60.0, "device": "LFE5UM-85F"}))
    f = latency.fpga_projection(rtl)
    assert f["ms"] == 50.0 and f["cycles"] == 3_000_000 and "projected" in f["source"]   # 3e6 / 60e6 s


def test_latency_without_torch(tiny_export, tmp_path):
    _, out, _ = tiny_export
    block = tmp_path / "block"
    for mod in ("torch", "brevitas"):  # an import of either fails, in every subprocess
        (block / mod).mkdir(parents=True)
        (block / mod / "__init__.py").write_text(f"raise ImportError('{mod} is not installed on this board')\n")
    env = {**os.environ, "PYTHONPATH": str(block)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--export", str(out / "export"),
                        "--out", str(tmp_path / "bench"), "--threads", "1", "--warmup", "1", "--runs", "3",
                        "--shape", "16", "24", "32"],  # not the exported grid: the ONNX spatial axes are dynamic
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch_fp32: not available here" in r.stderr
    rep = json.loads((tmp_path / "bench" / "latency.json").read_text())
    assert set(rep) >= {"platform", "shape", "threads", "results", "host_steps"}
    assert set(rep["platform"]) >= {"cpu", "cores", "isa", "os", "versions"} and rep["shape"] == [16, 24, 32]
    got = {x["backend"]: x for x in rep["results"]}
    int8 = ("ort_int8", "ort_int8_float_kernels", "ort_int8_qlinear")
    assert {"ort_fp32", *int8, "reference_int"} <= set(got) and "torch_fp32" not in got
    keys = {"backend", "p50_ms", "p90_ms", "p99_ms", "pairs_per_s", "peak_rss_mb", "model_bytes", "matches_reference",
            "max_abs_diff", "register_p50_ms"}
    for x in got.values():
        assert set(x) == keys and 0 < x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"] and x["model_bytes"] > 0
        assert x["register_p50_ms"] > 0
    # the references are not compared with themselves; the int8 backend equals its reference exactly
    assert got["reference_int"]["matches_reference"] is None and got["ort_fp32"]["matches_reference"] is None
    from export.onnx import u8s8_exact_cpu
    # each onnxruntime route through the int8 graph; the all-QLinearConv one only where the U8S8
    # kernels sum exactly (x86 without VNNI saturates pairs of products in int16: there its
    # comparison is recorded, whichever way it goes)
    for b in int8:
        if b == "ort_int8_qlinear" and not u8s8_exact_cpu():
            assert isinstance(got[b]["matches_reference"], bool), b
            continue
        assert got[b]["matches_reference"] is True and got[b]["max_abs_diff"] is None, b
    md = (tmp_path / "bench" / "latency.md").read_text()
    assert "(the integer reference)" in md and "(the float reference)" in md and "yes, exactly" in md


def test_host_steps_follow_the_config():
    """The host steps timed are the config's: none for a network alone; the pre-alignment and
    composition with a global stage; the refinement with [refine] steps."""
    from model.config import RefineConfig
    from model.registration import Settings

    s = lambda kind, iters: Settings((16, 24, 32), (1.0, 1.0, 1.0), (1.0, 99.0), kind, RefineConfig(iters=iters))  # noqa: E731
    assert latency.host_steps(s("none", 0), [16, 24, 32], 0, 1) == {}
    h = latency.host_steps(s("moments", 2), [16, 24, 32], 0, 2)
    assert set(h) == {"prealign_ms", "compose_ms", "refine_ms", "refine_steps"} and h["refine_steps"] == 2
    assert all(h[k] > 0 for k in ("prealign_ms", "compose_ms", "refine_ms"))
    md = latency.markdown({"platform": {"cpu": "c", "cores": 2, "isa": [], "os": "o"}, "shape": [16, 24, 32],
                           "threads": 1, "results": [], "host_steps": h})
    assert "refinement (2 steps)" in md


def test_torch_fp32_matches_the_float_reference(tiny_export, tmp_path):
    """torch (the fp32 checkpoint, BatchNorm folded) against onnxruntime's fp32 ONNX of it."""
    _, out, _ = tiny_export
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--export", str(out / "export"),
                        "--out", str(tmp_path / "bench"), "--threads", "1", "--warmup", "0", "--runs", "1",
                        "--backends", "torch_fp32,ort_int8"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = {x["backend"]: x for x in json.loads((tmp_path / "bench" / "latency.json").read_text())["results"]}
    assert got["torch_fp32"]["matches_reference"] is True and got["torch_fp32"]["max_abs_diff"] < 1e-3
    assert got["torch_fp32"]["register_p50_ms"] > 0


def test_scaling_of_an_untrained_network(tmp_path, tiny_toml):
    """benchmarks/scaling.py times an untrained network of a config at two grids and one thread
    count: one row per backend, grid and thread count; at the smaller grid the int8 backends are
    checked against the integer reference (exactly), above --check-max-voxels not at all."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml)
    out = tmp_path / "scaling"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--untrained", str(cfg),
                        "--out", str(out), "--shapes", "8,8,8", "16,8,8", "--threads", "1", "--runs", "1",
                        "--backends", "ort_int8,ort_int8_qlinear", "--check-max-voxels", "512"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "scaling.json").read_text())
    assert rep["untrained"] is True and rep["model"]["base_channels"] == 4
    got = {(x["backend"], x["voxels"]): x for x in rep["rows"]}
    from export.onnx import u8s8_exact_cpu
    for b in ("ort_int8", "ort_int8_qlinear"):
        # the all-QLinearConv route is exact only where the U8S8 kernels sum exactly; elsewhere
        # (x86 without VNNI) its comparison is recorded, whichever way it goes
        assert got[(b, 512)]["matches_reference"] is True or \
            (b == "ort_int8_qlinear" and not u8s8_exact_cpu() and got[(b, 512)]["matches_reference"] is False)
        assert got[(b, 1024)]["matches_reference"] is None and (("reference_int", 1024) not in got)
    assert ("reference_int", 512) in got and (out / "scaling.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--untrained", str(cfg),
                          "--out", str(out), "--shapes", "8,8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "each grid is X,Y,Z" in bad.stderr


def test_exported_row_stats_checks_the_config(tmp_path, tiny_cfg):
    """Table 1 reads sizes from a weights.bin only if it was exported with the config in use; a
    config key added to the toolchain since the export counts at its default (as for checkpoints)."""
    from benchmarks.accuracy import exported_row_stats
    from export.weights import OP_CONV3D, Record, write_weights
    from model.config import config_to_dict

    rec = Record("c", OP_CONV3D, 8, 9, 7, weight=np.array([0, 3, -2, 0], np.int8).reshape(1, 1, 1, 1, 4),
                 bias=np.array([5], np.int32))
    tiny_cfg.qat.global_int4 = []  # the default
    old = config_to_dict(tiny_cfg)
    del old["qat"]["global_int4"]  # as an export made before the key existed
    write_weights(tmp_path / "w.bin", [rec], {"config": old})
    assert exported_row_stats(tmp_path / "w.bin", tiny_cfg) == (3, 3 + 4)  # 2 weights + 1 bias; bitmask payload 1 + 2 bytes, bias 4
    tiny_cfg.qat.steps += 1
    with pytest.raises(ValueError, match="w.bin: exported with another config"):
        exported_row_stats(tmp_path / "w.bin", tiny_cfg)


def test_validation_run_on_generated_held_out_subjects(tiny_data, tiny_config, tmp_path, capsys):
    """benchmarks/validation.py: the held-out subjects are the ones a larger `make data` would
    have written (byte for byte), a config change reaches the training, and the table lists the run."""
    from benchmarks.validation import main
    from model.config import load_config
    from model.synth import write_dataset

    out = tmp_path / "runs" / "steps2_s1"
    assert main(["--config", str(tiny_config), "--data", str(tiny_data), "--out", str(out), "--val-subjects", "2",
                 "--set", "train.steps=2", "--set", "train.seed=1", "--set", "refine.iters=2", "--no-progress"]) == 0
    larger = tmp_path / "larger"
    man = json.loads((tiny_data / "synth_manifest.json").read_text())
    write_dataset(larger, 7, man["seed"], tuple(man["shape"]), tuple(man["spacing_mm"]), progress=False)
    val = tmp_path / "runs" / "data_val"
    assert sorted(p.name for p in val.iterdir() if p.is_dir()) == ["IBSR_06", "IBSR_07"]
    for name in ("IBSR_06", "IBSR_07"):
        for f in (larger / name).iterdir():
            assert (val / name / f.name).read_bytes() == f.read_bytes()
    r = json.loads((out / "validation.json").read_text())
    assert r["validation_subjects"] == ["IBSR_06", "IBSR_07"] and r["validation"]["pairs"] == 2
    assert r["test"]["pairs"] == 2 and 0 <= r["validation"]["dice"] <= 1
    # with refinement steps the network is also scored without them, on the same pairs
    assert r["unrefined"]["validation"]["pairs"] == 2 and r["unrefined"]["validation"] != r["validation"]
    assert r["ants_syn"]["validation"]["pairs"] == 2 and r["ants_syn"]["test"]["pairs"] == 2
    # SyN registers these pairs better than leaving them alone
    assert r["ants_syn"]["validation"]["dice"] > r["identity"]["validation"]["dice"]
    assert json.loads((out / "train" / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
    assert load_config(tiny_config).train.steps == 3  # the change went to this run only
    capsys.readouterr()
    assert main(["--table", str(tmp_path / "runs")]) == 0
    assert "| steps2_s1 | train.steps=2, refine.iters=2 | 1 |" in capsys.readouterr().out
    # a key the config does not have is refused, naming it
    assert main(["--config", str(tiny_config), "--data", str(tiny_data), "--out", str(out), "--set", "train.stepz=2"]) == 2
    assert "train.stepz=2" in capsys.readouterr().err


def test_domains_refuses_a_run_without_its_models(tmp_path, capsys):
    """benchmarks.domains names the missing stage's file and writes nothing (not even the
    validation domain) when OUT is not a finished make demo run."""
    from benchmarks.domains import main

    val = tmp_path / "val"
    assert main(["--config", str(ROOT / "configs/demo.toml"), "--data", str(tmp_path / "data"), "--out",
                 str(tmp_path / "run"), "--val-data", str(val)]) == 2
    err = capsys.readouterr().err
    assert "train/model.pt" in err and "make train" in err and not val.exists() and not (tmp_path / "run").exists()
