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


REF = {"q": [[4, -8], [0, 2]], "e": 2}  # dequantised: [[1, -2], [0, 0.5]], mean |r| = 0.875


@pytest.mark.parametrize("ddf, backend, want", [
    ({"q": [[4, -8], [0, 2]]}, "reference_like", (True, None)),
    ({"q": [[4, -8], [0, 3]]}, "reference_like", (False, None)),
    ({"f": [[1.0, -2.0], [0.0, 0.5]]}, "ort_int8", (True, None)),  # integers 4, -8, 0, 2: exact
    ({"f": [[1.0, -2.0], [0.0, 0.75]]}, "ort_int8", (False, None)),  # 0.75 -> 3, not 2
    ({"f": [[1.0, -2.0], [0.0, 0.5]]}, "ort_fp32", (True, 0.0)),
    ({"f": [[1.35, -2.0], [0.0, 0.5]]}, "ort_fp32", (True, 0.1)),  # 0.35 / 4 / 0.875 = 0.1
    ({"f": [[0.0, 0.0], [0.0, 0.0]]}, "ort_fp32", (False, 1.0)),  # a zero field fails
    ({"f": [[2.0, -4.0], [0.0, 1.0]]}, "ort_fp32", (False, 1.0)),  # twice the field: mean error = mean |r|
])
def test_compare_by_hand(ddf, backend, want):
    ok, rel = latency.compare(ddf, backend, REF)
    assert ok is want[0]
    assert rel == (None if want[1] is None else pytest.approx(want[1], abs=1e-4))  # rel is rounded to 4 places


def test_compare_refuses_any_field_against_a_zero_reference():
    ok, rel = latency.compare({"f": [[0.0]]}, "ort_fp32", {"q": [[0]], "e": 0})
    assert ok is False and rel == float("inf")


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
    assert set(rep) >= {"platform", "shape", "threads", "results"}
    assert set(rep["platform"]) >= {"cpu", "cores", "isa", "os", "versions"} and rep["shape"] == [16, 24, 32]
    got = {x["backend"]: x for x in rep["results"]}
    assert {"ort_fp32", "ort_int8", "reference_int"} <= set(got) and "torch_fp32" not in got
    keys = {"backend", "p50_ms", "p90_ms", "p99_ms", "pairs_per_s", "peak_rss_mb", "model_bytes", "matches_reference",
            "rel_error"}
    for x in got.values():
        assert set(x) == keys and 0 < x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"] and x["model_bytes"] > 0
    assert got["reference_int"]["matches_reference"] is None  # the reference is not compared with itself
    assert got["ort_int8"]["matches_reference"] is True and got["ort_int8"]["rel_error"] is None  # exact
    assert got["ort_fp32"]["rel_error"] > 0  # another model (unpruned fp32): close at best, never equal
    md = (tmp_path / "bench" / "latency.md").read_text()
    assert "| reference_int |" in md and "(is the reference)" in md and "yes, exactly" in md
