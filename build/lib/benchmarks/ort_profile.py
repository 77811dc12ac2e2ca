"""Where onnxruntime spends its time: per-operator shares from its profiler, fp32 against int8.

    python benchmarks/ort_profile.py --export runs/demo/export --out runs/demo/bench [--threads 2] [--runs 10]

Runs localnet_fp32.onnx and localnet_int8.onnx with onnxruntime's profiler (graph
optimisations on, as deployed), sums the kernel time of each operator type over `runs`
inferences after one warm-up, and writes OUT/ort_profile.json and prints a table: total ms
per inference and each operator type's share. numpy + onnxruntime only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as a script from a checkout, without installing
    sys.path.insert(0, str(ROOT))


def profile(path: Path, shape: list[int], threads: int, runs: int, tmp: Path) -> dict:
    import onnxruntime as ort

    from export.onnx import ort_session_options

    so = ort_session_options(threads=threads)  # as latency.py: optimised, s8s8 kept
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / path.stem)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 2, *shape), dtype=np.float32)
    sess.run(None, {"moving_fixed": x})  # warm-up (also profiled; dropped below)
    for _ in range(runs):
        sess.run(None, {"moving_fixed": x})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    runs_seen = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs_seen[1]["ts"] if len(runs_seen) > 1 else 0  # skip the warm-up run
    per_op: dict[str, float] = defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"] / 1000.0 / runs
    total = sum(per_op.values())
    shares = {k: {"ms": round(v, 2), "share": round(v / total, 3)} for k, v in
              sorted(per_op.items(), key=lambda kv: -kv[1])}
    return {"model": path.name, "kernel_ms_per_run": round(total, 2), "ops": shares}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args(argv)
    manifest = a.export / "manifest.json"
    if not manifest.is_file():
        print(f"error: {manifest}: not an export directory (make export)", file=sys.stderr)
        return 2
    shape = json.loads(manifest.read_text())["config"]["data"]["shape"]
    a.out.mkdir(parents=True, exist_ok=True)
    res = [profile(a.export / f, shape, a.threads, a.runs, a.out) for f in ("localnet_fp32.onnx", "localnet_int8.onnx")]
    for f in a.out.glob("*.json"):
        if f.name.startswith(("localnet_fp32_", "localnet_int8_")):
            f.unlink()  # the raw traces: large, summarised below
    (a.out / "ort_profile.json").write_text(json.dumps({"shape": shape, "threads": a.threads, "results": res}, indent=2))
    for r in res:
        print(f"{r['model']}: {r['kernel_ms_per_run']} ms of kernels per inference")
        for op, v in list(r["ops"].items())[:6]:
            print(f"  {op:<20} {v['ms']:>9.2f} ms  {100 * v['share']:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
