"""benchmarks/latency.py on a board without torch: a subprocess in which torch cannot be imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from model.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_latency_without_torch(tiny_data, tiny_run, tmp_path):
    from export.export import export

    cfg_path, out = tiny_run
    if not (out / "export" / "manifest.json").exists():
        export(load_config(cfg_path), out, tiny_data, progress=False)
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
    assert set(rep) >= {"platform", "shape", "threads", "results"}
    assert set(rep["platform"]) >= {"cpu", "cores", "isa", "os", "versions"} and rep["shape"] == [16, 24, 32]
    got = {x["backend"]: x for x in rep["results"]}
    assert {"ort_fp32", "ort_int8", "reference_int"} <= set(got) and "torch_fp32" not in got
    keys = {"backend", "p50_ms", "p90_ms", "p99_ms", "pairs_per_s", "peak_rss_mb", "model_bytes", "matches_reference"}
    for x in got.values():
        assert set(x) == keys and 0 < x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"] and x["model_bytes"] > 0
    assert got["reference_int"]["matches_reference"] is True
    assert got["ort_int8"]["matches_reference"] is True  # integer backend: exact
    assert isinstance(got["ort_fp32"]["matches_reference"], bool)
    assert (tmp_path / "bench" / "latency.md").read_text().count("|") > 20
