"""Latency of one registration (the network's displacement field for one pair) per backend.

    python benchmarks/latency.py --export runs/demo/export --out runs/demo/bench [--threads 2]
        [--shape 64 80 64] [--warmup 3] [--runs 20] [--backends ort_fp32,ort_int8,reference_int] [--no-check]

Runs on an edge board from the files in OUT/export/ with numpy and onnxruntime only (the
torch-free install, README); PyTorch
fp32 eager is timed when torch is importable (its checkpoint: --ckpt, default
EXPORT/../train/model.pt), OpenVINO fp32/int8 when the `openvino` package is. Each backend
runs in its own subprocess, so its peak resident memory is its own and thread settings do
not leak. Input: a fixed random pair (seed 0) at --shape (default: the exported working
grid; any shape divisible by 2^levels: the ONNX files have dynamic spatial axes); latency
does not depend on the content.

Per backend: p50/p90/p99 latency (ms), pairs per second (1000 / p50), the p50 of a whole
registration (`register_p50_ms`: model/registration.py around the backend's network, with the
export's registration.json: global stage, network, composition, refinement and the warp of
the moving image, on a phantom pair the global stage can register), peak RSS (MB),
model file bytes, and `matches_reference`, each backend against the reference of its own model:
integer backends (the int8 QAT network) must give the integer reference's ddf
(hw/reference.py) exactly; float backends (the trained fp32 network) must lie within
FLOAT_TOL_VOX of onnxruntime's fp32 run of the same file (`max_abs_diff`, voxels), the
float reference. The two references themselves are not compared with themselves (None);
the fp32 and int8 networks are different models (pruned, fine-tuned), so no row compares
one with the other. Also the p50 of the float host steps around the network (`host_steps`:
pre-alignment, composition, test-time refinement, as registration.json has them). Writes
OUT/latency.json, latency.md and latency.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as a script from a checkout, without installing
    sys.path.insert(0, str(ROOT))

# onnxruntime: file and session options (export/onnx.py); ort_int8 is the file as shipped with
# the default session (QDQ fusion on: some convolutions QLinearConv), float_kernels the same
# file with QDQ fusion off (float convolutions on the integers, exact below 2^24), qlinear the
# graph reshaped so that every convolution is a 2-D QLinearConv on uint8 activations (exact
# where export.onnx.u8s8_exact_cpu holds; the check below compares it like every int8 backend)
ORT_RUNS = {"ort_fp32": ("localnet_fp32.onnx", {}), "ort_int8": ("localnet_int8.onnx", {}),
            "ort_int8_float_kernels": ("localnet_int8.onnx", {"qdq_fusion": False}),
            "ort_int8_qlinear": ("localnet_int8_qlinear.onnx", {})}
BACKENDS = ["torch_fp32", *ORT_RUNS, "openvino_fp32", "openvino_int8", "reference_int"]
INT_REFERENCE, FLOAT_REFERENCE = "reference_int", "ort_fp32"
# the same fp32 weights in another runtime: float32 sums in another order differ by ulps of
# the ~1e2-1e3 products per output (measured: about 1e-6 voxel); 1e-3 voxel leaves room for
# other kernels and fails any field that is not the network's (a zero field included, the
# reference field being checked to exceed the bound 100-fold)
FLOAT_TOL_VOX = 1e-3


def platform_info() -> dict:
    isa_flags = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")
    flags: set[str] = set()
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags |= set(val.split())
            if key.strip() in ("model name", "Model", "Hardware") and val.strip():
                cpu = val.strip()
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "torch", "openvino"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": sorted(f for f in isa_flags if f in flags),
            "os": f"{platform.system()} {platform.release()}", "machine": platform.machine(), "versions": versions}


def make_network(backend: str, export: Path, ckpt: Path, threads: int, shape: list[int]):
    """The network of a benchmark row as a hw.runtime.Network (the int8 rows: the runtime's own
    backends; the fp32 rows: the trained network's ONNX file, or its checkpoint in torch)."""
    from hw.runtime import Network, onnxruntime_network, openvino_int8_file, openvino_network, reference_network

    if backend in ORT_RUNS:
        name, options = ORT_RUNS[backend]
        return onnxruntime_network(export / name, threads, **options)
    if backend == "reference_int":
        return reference_network(export / "weights.bin")
    if backend == "openvino_fp32":
        return openvino_network(export / "localnet_fp32.onnx", threads, shape)
    if backend == "openvino_int8":
        return openvino_network(export / openvino_int8_file(export), threads, shape, quantiser=export / "weights.bin")
    if backend == "torch_fp32":
        import torch

        from model.checkpoint import load_checkpoint, model_from_checkpoint
        from model.evaluate import torch_network
        from model.localnet import fold_batchnorm

        torch.set_num_threads(threads)
        net = fold_batchnorm(model_from_checkpoint(load_checkpoint(ckpt))[0]).eval()
        return Network("torch_fp32", ckpt, torch_network(net))
    raise ValueError(f"unknown backend {backend}")


def timed(fn, args, warmup: int, runs: int) -> tuple[list[float], object]:
    for _ in range(warmup):
        out = fn(*args)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn(*args)
        times.append((time.perf_counter() - t) * 1000)
    return times, out


def worker(backend: str, export: Path, ckpt: Path, threads: int, warmup: int, runs: int, shape: list[int]) -> dict:
    import resource

    from hw.runtime import settings_config
    from model.registration import Registration, Settings

    rng = np.random.default_rng(0)
    mov, fix = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
    net = make_network(backend, export, ckpt, threads, shape)
    reg = Registration(Settings.from_config(settings_config(export)), net, backend)
    times, out = timed(net.raw, (mov, fix), warmup, runs)
    # the whole registration on a pair the global stage can register (its time depends on how
    # soon it converges): pre-alignment, network, composition, refinement, warp
    pm, pf = phantom_pair(shape)
    reg_times, _ = timed(lambda m, f: reg.warp(m, reg.field(m, f)), (pm, pf), warmup, runs)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if isinstance(out, tuple):  # the reference: (int8, exponent)
        out = {"q": out[0].tolist(), "e": out[1]}
    else:
        out = {"f": np.asarray(out, np.float32).tolist()}
    p = np.percentile(times, [50, 90, 99])
    return {"backend": backend, "p50_ms": round(float(p[0]), 2), "p90_ms": round(float(p[1]), 2),
            "p99_ms": round(float(p[2]), 2), "pairs_per_s": round(1000 / float(p[0]), 2),
            "register_p50_ms": round(float(np.percentile(reg_times, 50)), 2),
            "peak_rss_mb": round(rss_kb / 1024, 1), "model_bytes": net.model_bytes, "ddf": out}


def host_steps(settings, shape: list[int], warmup: int, runs: int) -> dict:
    """p50 ms of the float host steps around the network (model.registration.Settings: the
    export's), on a fixed phantom pair (phantom_pair: the iterative affine stage's time depends
    on how soon it converges, so the pair must be one it can register): the global stage (fit +
    warp of the moving image), composing its affine with the network's field, and the test-time
    refinement's [refine] steps (model/refine.py). numpy, this process."""
    from model.prealign import compose, prealign
    from model.refine import refine

    rng = np.random.default_rng(0)
    mov, fix = phantom_pair(shape)
    local = rng.normal(0, 1, (3, *shape)).astype(np.float32)  # stands in for the network's field
    p50 = lambda fn: round(float(np.percentile(timed(fn, (), warmup, runs)[0], 50)), 2)  # noqa: E731
    out, kind, rc = {}, settings.prealign, settings.refine
    if kind != "none":
        _, M, t = prealign(kind, mov, fix)
        out["prealign_ms"] = p50(lambda: prealign(kind, mov, fix))
        out["compose_ms"] = p50(lambda: compose(M, t, local))
    if rc.iters:
        out["refine_ms"], out["refine_steps"] = p50(lambda: refine(mov, fix, local, rc)), rc.iters
    return out


def phantom_pair(shape) -> tuple[np.ndarray, np.ndarray]:
    """(moving, fixed) float32 in [0, 1]: a head-like phantom (a bright shell, a darker core,
    two inner blobs) and the same phantom rotated by 6 degrees, scaled by 5 % and shifted by 2
    voxels, with a little noise: a pair any global stage can register."""
    g = np.indices(shape, dtype=np.float32)
    c = (np.asarray(shape, np.float32) - 1) / 2

    def head(p):
        r = lambda ctr, ax: np.sqrt(sum(((p[i] - ctr[i]) / ax[i]) ** 2 for i in range(3)))  # noqa: E731
        s = np.asarray(shape, np.float32)
        img = 0.4 * (r(c, 0.42 * s) < 1) + 0.5 * (r(c, 0.36 * s) < 1)
        img = img + 0.3 * (r(c + [0.1 * s[0], 0.1 * s[1], 0], 0.08 * s) < 1) - 0.3 * (r(c - 0.1 * s, 0.07 * s) < 1)
        return img.astype(np.float32)
    a = np.deg2rad(6.0)
    M = 1.05 * np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], np.float32)
    p = np.einsum("ij,j...->i...", M, g - c[:, None, None, None]) + c[:, None, None, None] + 2.0
    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(0, 0.02, shape).astype(np.float32)  # noqa: E731
    return np.clip(head(p) + noise(), 0, 1), np.clip(head(g) + noise(), 0, 1)


def available(backend: str, export: Path, ckpt: Path) -> bool:
    import importlib.util

    need = {"torch_fp32": "torch", "openvino_fp32": "openvino", "openvino_int8": "openvino"} | dict.fromkeys(
        ORT_RUNS, "onnxruntime")
    if need.get(backend) and importlib.util.find_spec(need[backend]) is None:
        return False
    if backend in ORT_RUNS and not (export / ORT_RUNS[backend][0]).is_file():  # an older export
        return False
    if backend == "torch_fp32":
        try:
            import torch  # noqa: F401  (find_spec passes for a blocked module)
        except ImportError:
            return False
        return ckpt.is_file()
    return True


def compare(ddf: dict, backend: str, refs: dict) -> tuple[bool | None, float | None]:
    """(matches, max |difference| in voxels or None for an exact comparison) of a backend's ddf
    against its model's reference. `ddf` as the workers report it ({"q": int8 list} or {"f":
    float list}); `refs` maps INT_REFERENCE to {"q", "e"} and FLOAT_REFERENCE to {"f"} (either
    may be missing: then (None, None))."""
    if "int8" in backend or "q" in ddf:
        ref = refs.get(INT_REFERENCE)
        if ref is None:
            return None, None
        ref_q = np.asarray(ref["q"], np.int64)
        q = np.asarray(ddf["q"]) if "q" in ddf else np.round(np.asarray(ddf["f"], np.float64) * 2.0 ** ref["e"])
        return bool(q.shape == ref_q.shape and np.array_equal(q.astype(np.int64), ref_q)), None
    ref = refs.get(FLOAT_REFERENCE)
    if ref is None:
        return None, None
    r, f = np.asarray(ref["f"], np.float64), np.asarray(ddf["f"], np.float64)
    if r.shape != f.shape or np.abs(r).max() < 100 * FLOAT_TOL_VOX:  # a near-zero reference proves nothing
        return False, None
    diff = float(np.abs(f - r).max())
    return diff <= FLOAT_TOL_VOX, diff


def match_text(r: dict) -> str:
    if r["backend"] == INT_REFERENCE:
        return "(the integer reference)"
    if r["backend"] == FLOAT_REFERENCE:
        return "(the float reference)"
    if r["matches_reference"] is None:
        return "n/a"
    if r["max_abs_diff"] is None:  # an integer backend
        return "yes, exactly" if r["matches_reference"] else "NO: not bit-exact"
    return f"{'yes' if r['matches_reference'] else 'NO'} (max diff {r['max_abs_diff']:.1e} voxel)"


def fpga_projection(rtl: Path) -> dict | None:
    """The fpga_ecp5 row: the RTL accelerator's simulated cycles per pair (OUT/rtl/cycles.json,
    make rtl-sim) over the placed fmax of the ECP5-85F (OUT/rtl/synth.json, make rtl-synth).
    Projected from simulation, not measured on a board; None until both files exist."""
    try:
        cyc = json.loads((rtl / "cycles.json").read_text())
        syn = json.loads((rtl / "synth.json").read_text())
    except (OSError, ValueError):
        return None
    cycles = max(p["cycles"] for p in cyc["pairs"])
    return {"backend": "fpga_ecp5", "source": "projected: simulated cycles (on the DRAM model) / placed fmax", "cycles": cycles,
            "fmax_mhz": syn["fmax_mhz"], "device": syn["device"], "ms": round(cycles / (syn["fmax_mhz"] * 1e3), 2),
            "executed_mac_util": cyc.get("executed_mac_util"), "dense_equiv_util": cyc.get("dense_equiv_util")}


def markdown(report: dict) -> str:
    p = report["platform"]
    lines = [f"CPU: {p['cpu']} ({p['cores']} cores, ISA {', '.join(p['isa']) or 'none listed'}), {p['os']}; "
             f"shape {report['shape']}, {report['threads']} threads", "",
             "| backend | p50 ms | p90 ms | p99 ms | pairs/s | register p50 ms | peak RSS MB | model bytes "
             "| matches reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['backend']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['pairs_per_s']} | "
                     f"{r['register_p50_ms']} | {r['peak_rss_mb']} | {r['model_bytes']} "
                     f"| {match_text(r)} |")
    h = report.get("host_steps")
    if h:
        names = {"prealign_ms": "pre-alignment", "compose_ms": "composing the fields",
                 "refine_ms": f"refinement ({h.get('refine_steps')} steps)"}
        lines += ["", "host steps around the network (numpy, p50): " +
                  ", ".join(f"{names[k]} {v} ms" for k, v in h.items() if k in names)]
    f = report.get("fpga_ecp5")
    if f:
        lines += ["", f"fpga_ecp5 ({f['device']}, {f['source']}): {f['cycles']:,} cycles at {f['fmax_mhz']} MHz "
                      f"= {f['ms']} ms per pair (network only; executed-MAC utilisation {f['executed_mac_util']}, "
                      f"dense-equivalent {f['dense_equiv_util']})"]
    return "\n".join(lines) + "\n"


def plot(path: Path, report: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # boards without matplotlib still get JSON and markdown
        return False
    rs = report["results"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh([r["backend"] for r in rs], [r["p50_ms"] for r in rs],
            xerr=[[0] * len(rs), [r["p90_ms"] - r["p50_ms"] for r in rs]])
    ax.set_xlabel("latency per pair, ms (p50, bar to p90)")
    ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, type=Path, help="OUT/export of make export")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--ckpt", type=Path, help="fp32 checkpoint for torch_fp32 (default EXPORT/../train/model.pt)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="default: the exported grid")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ",".join(BACKENDS))
    ap.add_argument("--no-check", action="store_true",
                    help="do not run the references (grids too large for them): matches_reference left empty")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    ckpt = a.ckpt or a.export.parent / "train" / "model.pt"
    from model.cli import run_cli

    return run_cli(lambda: bench(a, ckpt))


def read_export_manifest(export: Path) -> dict:
    """The export's manifest.json, with the keys the benchmark reads checked (a ValueError
    naming the file and the key otherwise)."""
    path = export / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{path}: not an export directory (make export)")
    try:
        m = json.loads(path.read_text())
        shape, levels = m["config"]["data"]["shape"], m["config"]["model"]["levels"]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except (KeyError, TypeError):
        raise ValueError(f"{path}: lacks config.data.shape or config.model.levels") from None
    if (not isinstance(shape, list) or len(shape) != 3 or any(type(n) is not int or n < 1 for n in shape)
            or type(levels) is not int or not 1 <= levels <= 8):
        raise ValueError(f"{path}: config.data.shape {shape!r} or config.model.levels {levels!r} is invalid")
    return m


def bench(a, ckpt: Path) -> int:
    from hw.runtime import settings_config
    from model.registration import Settings

    manifest = read_export_manifest(a.export)
    settings = Settings.from_config(settings_config(a.export))  # registration.json, checked
    shape = a.shape or manifest["config"]["data"]["shape"]
    step = 2 ** manifest["config"]["model"]["levels"]
    if any(n <= 0 or n % step for n in shape):
        raise ValueError(f"--shape {shape}: every axis must be a positive multiple of {step} (2^levels)")
    if a.worker:  # errors: one line (run_cli) for the parent's report
        print(json.dumps(worker(a.worker, a.export, ckpt, a.threads, a.warmup, a.runs, shape)))
        return 0
    wanted = [b.strip() for b in a.backends.split(",") if b.strip()]
    unknown = sorted(set(wanted) - set(BACKENDS))
    if unknown:
        raise ValueError(f"--backends: unknown backend(s) {unknown}; known: {BACKENDS}")
    for ref in (INT_REFERENCE, FLOAT_REFERENCE):  # matches_reference needs them
        if ref not in wanted and not a.no_check:
            wanted.append(ref)
    results, failed = [], []
    for b in wanted:
        if not available(b, a.export, ckpt):
            print(f"[bench] {b}: not available here, skipped", file=sys.stderr)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--export", str(a.export), "--out", str(a.out),
               "--ckpt", str(ckpt), "--threads", str(a.threads), "--warmup", str(a.warmup), "--runs", str(a.runs),
               "--shape", *map(str, shape), "--worker", b]
        print(f"[bench] {b} ...", file=sys.stderr)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(f"[bench] {b}: failed: {r.stderr.strip()[-2000:]}", file=sys.stderr)
            failed.append(b)
            continue
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    requested = {b.strip() for b in a.backends.split(",")}
    if not any(r["backend"] in requested for r in results):  # an empty table must not replace a good one
        print(f"error: no backend was measured (failed: {', '.join(failed) or 'none'}; the others are not "
              f"available here); {a.out} left as it was", file=sys.stderr)
        return 1
    refs = {r["backend"]: r["ddf"] for r in results if r["backend"] in (INT_REFERENCE, FLOAT_REFERENCE)}
    for r in results:
        r["matches_reference"], r["max_abs_diff"] = None, None
        if r["backend"] not in refs:
            r["matches_reference"], r["max_abs_diff"] = compare(r["ddf"], r["backend"], refs)
    from model.artifacts import git_commit  # standard library only

    report = {"platform": platform_info(), "git_commit": git_commit(), "shape": shape, "threads": a.threads,
              "failed_backends": failed,
              "warmup": a.warmup, "runs": a.runs, "float_tolerance_voxels": FLOAT_TOL_VOX,
              "results": [{k: v for k, v in r.items() if k != "ddf"} for r in results],
              "fpga_ecp5": fpga_projection(a.export.parent / "rtl"),
              "host_steps": host_steps(settings, shape, a.warmup, a.runs)}
    from model.artifacts import atomic_write_json, atomic_write_text  # standard library only

    atomic_write_json(a.out / "latency.json", report)
    atomic_write_text(a.out / "latency.md", markdown(report))
    plot(a.out / "latency.png", report)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
