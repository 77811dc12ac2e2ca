"""Latency and peak memory against the working grid and the thread count, per backend.

    python benchmarks/scaling.py --export runs/demo/export --out runs/demo/bench/scaling \
        [--shapes 32,40,32 64,80,64 128,160,128] [--threads 1 2] [--runs 5] [--check-max-voxels 2621440]
    python benchmarks/scaling.py --untrained configs/ibsr.toml --out runs/demo/bench/scaling_ibsr ...

Runs benchmarks/latency.py once per (grid, threads) and collects its rows into
OUT/scaling.json, scaling.md and scaling.png (latency against voxels, one line per backend
and thread count). Latency does not depend on the weights, so `--untrained CONFIG` first
exports an untrained network of that config (random weights, activations calibrated on
random input at a small grid) into OUT/untrained/export: the paper-scale network of
configs/ibsr.toml can be timed without training it. Exactness against the references is
checked where they fit in memory and time (grids up to --check-max-voxels voxels, by default
the demo network's 128x160x128: the integer reference's columns of its 7^3 convolution hold
voxels x 98 float32, 1.1 GB there, 2.6 GB peak in all, 12.5 s per pass on 2 threads);
larger grids run the deployable backends only: the int8 ones are then not checked, the
float ones still against onnxruntime fp32 when it is among the backends.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as a script from a checkout, without installing
    sys.path.insert(0, str(ROOT))

DEFAULT_SHAPES = ["32,40,32", "64,80,64", "128,160,128"]
CHECK_MAX_VOXELS = 128 * 160 * 128
DEPLOYABLE = ["torch_fp32", "ort_fp32", "ort_int8", "ort_int8_float_kernels", "ort_int8_qlinear",
              "openvino_fp32", "openvino_int8"]


def export_untrained(config: Path, out: Path, seed: int = 0) -> Path:
    """An untrained network of `config` as the files latency.py reads (fp32 and int8 ONNX, the
    all-QLinearConv and the OpenVINO int8 files, weights.bin, a checkpoint for torch, a manifest
    with the config and, where OpenVINO is installed, its int8 mismatches on the small grid)."""
    import torch

    from export.export import weight_records
    from export.onnx import export_fp32, export_int8_onnx, write_openvino, write_qlinear
    from export.weights import write_weights
    from model.artifacts import atomic_write_json, git_commit
    from model.checkpoint import save_checkpoint
    from model.config import config_to_dict, load_config
    from model.localnet import LocalNet, fold_batchnorm
    from quant.twin import QuantLocalNet, calibrate

    cfg = load_config(config)
    exp = out / "export"
    exp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = LocalNet(cfg.model).eval()
    (out / "train").mkdir(exist_ok=True)
    save_checkpoint(out / "train" / "model.pt", cfg, {"model": net.state_dict(), "stage": "train"})
    export_fp32(fold_batchnorm(net), cfg, exp / "localnet_fp32.onnx")
    twin = QuantLocalNet(cfg.model).eval()
    small = [2 ** cfg.model.levels * 2] * 3  # calibration and integer extraction need no full grid
    calibrate(twin, [torch.rand(1, 2, *small) for _ in range(2)])
    export_int8_onnx(twin, cfg, exp / "localnet_int8.onnx")
    write_qlinear(exp / "localnet_int8.onnx", exp / "localnet_int8_qlinear.onnx")
    write_openvino(exp / "localnet_int8.onnx", exp / "localnet_int8_openvino.onnx")
    from export.export import ddf_exponent, weights_meta

    ov_mism = None
    if importlib.util.find_spec("openvino"):
        from export.gate import openvino_vs_brevitas_mismatches

        ov_mism = openvino_vs_brevitas_mismatches(twin, exp / "localnet_int8_openvino.onnx",
                                                  [torch.rand(1, 2, *small).numpy()], ddf_exponent(twin))
    recs = weight_records(twin, torch.rand(1, 2, *small))
    write_weights(exp / "weights.bin", recs, weights_meta(cfg, 8, untrained=True))
    atomic_write_json(exp / "manifest.json", {"config": config_to_dict(cfg), "git_commit": git_commit(),
                                              "untrained": True, "seed": seed, "ddf_exponent": ddf_exponent(twin),
                                              "openvino_vs_brevitas_mismatches": ov_mism,
                                              "files": sorted(p.name for p in exp.iterdir())})
    from hw.runtime import write_settings

    write_settings(cfg, exp, str(config))  # the registration around it, as make export writes it
    return exp


def run_latency(export: Path, shape: list[int], threads: int, runs: int, check: bool, backends: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--export", str(export), "--out", tmp,
               "--threads", str(threads), "--warmup", "1", "--runs", str(runs), "--shape", *map(str, shape),
               "--backends", ",".join(backends)] + ([] if check else ["--no-check"])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"latency.py at {shape}, {threads} threads failed:\n{r.stderr[-2000:]}")
        return json.loads((Path(tmp) / "latency.json").read_text())


def markdown(rows: list[dict]) -> str:
    lines = ["| backend | grid | voxels | threads | p50 ms | register p50 ms | peak RSS MB | matches reference |",
             "|---|---|---|---|---|---|---|---|"]
    refs = {"reference_int": "(the integer reference)", "ort_fp32": "(the float reference)"}
    for r in rows:
        m = refs.get(r["backend"]) or {True: "yes", False: "NO", None: "not checked"}[r["matches_reference"]]
        if r["matches_reference"] is False and r.get("max_abs_diff") is None and "int8" not in r["backend"]:
            m = "unverifiable: the float reference field is near zero (an untrained network)"
        lines.append(f"| {r['backend']} | {'x'.join(map(str, r['shape']))} | {r['voxels']} | {r['threads']} | "
                     f"{r['p50_ms']} | {r['register_p50_ms']} | {r['peak_rss_mb']} | {m} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["backend"], r["threads"]) for r in rows}):
        pts = sorted((r["voxels"], r["p50_ms"]) for r in rows if (r["backend"], r["threads"]) == key)
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]} ({key[1]} thr)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("voxels of the working grid")
    ax.set_ylabel("latency per pair, ms (p50)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--export", type=Path, help="OUT/export of make export")
    src.add_argument("--untrained", type=Path, help="a config: time an untrained network of it")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="grids as X,Y,Z")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--backends", default=",".join(DEPLOYABLE))
    ap.add_argument("--check-max-voxels", type=int, default=CHECK_MAX_VOXELS)
    a = ap.parse_args(argv)
    try:
        shapes = [[int(v) for v in s.split(",")] for s in a.shapes]
        if any(len(s) != 3 for s in shapes):
            raise ValueError
    except ValueError:
        print(f"error: --shapes {a.shapes}: each grid is X,Y,Z (three integers)", file=sys.stderr)
        return 2
    if a.untrained and not a.untrained.is_file():
        print(f"error: {a.untrained}: config not found", file=sys.stderr)
        return 2
    if a.export and not (a.export / "manifest.json").is_file():
        print(f"error: {a.export}/manifest.json: not an export directory (make export)", file=sys.stderr)
        return 2
    export = a.export or export_untrained(a.untrained, a.out / "untrained")
    backends = [b for b in a.backends.split(",") if b]
    rows = []
    for shape in shapes:
        for threads in a.threads:
            voxels = shape[0] * shape[1] * shape[2]
            print(f"[scaling] {shape} {threads} thread(s) ...", file=sys.stderr, flush=True)
            rep = run_latency(export, shape, threads, a.runs, voxels <= a.check_max_voxels, backends)
            for r in rep["results"]:
                rows.append({**r, "shape": shape, "voxels": voxels, "threads": threads})
    from model.artifacts import atomic_write_json, atomic_write_text

    a.out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((export / "manifest.json").read_text())
    report = {"export": str(export), "untrained": bool(a.untrained), "model": manifest["config"]["model"],
              "platform": rep["platform"], "runs": a.runs, "rows": rows}
    atomic_write_json(a.out / "scaling.json", report)
    atomic_write_text(a.out / "scaling.md", markdown(rows))
    plot(a.out / "scaling.png", rows, f"LocalNet {manifest['config']['model']['base_channels']} channels, "
         f"{manifest['config']['model']['levels']} levels{' (untrained)' if a.untrained else ''}")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
