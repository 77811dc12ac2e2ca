"""Golden vectors for accelerator verification, from the integer reference.

    python -m hw.golden --weights runs/demo/export/weights.bin --config configs/demo.toml \\
        --data data/synthetic --out runs/demo/golden [--pairs 2] [--force]

For the first N ordered test pairs (fixed: moving i, fixed j in the order model.evaluate
uses), writes OUT/pair_XX/<tensor>.npy and <tensor>.hex for the quantised input
(`input`), every layer's output (by weights.bin record name) and the displacement field
(`ddf`), and OUT/manifest.json: per tensor its shape, exponent, dtype and sha256, plus the
pairs, the sha256 of weights.bin, the config, seed, git commit and tool versions.

Files: `.npy` int8, layout NCDHW (N = 1). `.hex` is for $readmemh: one element per line,
C order (W fastest), two hex digits of the int8 two's complement (-1 -> ff, 5 -> 05).

Existing golden vectors are never overwritten silently: regenerating is the explicit
`--force` (make golden FORCE=1), which deletes only the files the old manifest lists. A
directory holding anything else is refused, with or without --force.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

import numpy as np

from export.hexfile import to_readmemh
from export.weights import OP_QUANT
from hw.reference import Reference, quantize_input
from model.prealign import network_input
from model.artifacts import sha256_file


def golden(weights: Path, cfg, data_dir: Path, out: Path, pairs: int = 2, force: bool = False) -> dict:
    from model.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text, git_commit, tool_versions
    from model.config import config_to_dict
    from model.data import load_dataset, test_pairs

    if (out / "manifest.json").exists() and not force:
        raise FileExistsError(f"{out}: golden vectors exist; regenerate explicitly with --force (make golden FORCE=1)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    foreign = _foreign_entries(out)
    if foreign:
        raise FileExistsError(f"{out}: holds {', '.join(sorted(foreign)[:3])}, which are not golden vectors; "
                              "choose a new or empty directory (nothing is deleted that hw.golden did not write)")
    ref = Reference.from_file(weights)
    subjects = load_dataset(data_dir, cfg.data, "test", progress=False)
    order = test_pairs(subjects)
    if not 1 <= pairs <= len(order):
        raise ValueError(f"--pairs {pairs}: must lie in [1, {len(order)}] (the test split's ordered pairs)")
    order = order[:pairs]
    if force and (out / "manifest.json").exists():
        _remove_golden(out)
    manifest = {"weights": str(weights), "weights_sha256": sha256_file(weights),
                "layout": "NCDHW, C order; .hex: one two's-complement int8 per line, 2 hex digits",
                "config": config_to_dict(cfg), "seed": cfg.train.seed, "git_commit": git_commit(),
                "versions": tool_versions(), "generator": "hw/golden.py", "pairs": []}
    for k, (mi, fi) in enumerate(order):
        trace: dict = {}
        mov, fix = network_input(cfg.model.prealign, subjects[mi].image, subjects[fi].image)
        ref.run(quantize_input(mov, fix, ref.rec("input", OP_QUANT)), trace)
        d = out / f"pair_{k:02d}"
        tensors = {}
        for name, t in trace.items():
            atomic_write_bytes(d / f"{name}.npy", _npy_bytes(t.q))
            atomic_write_text(d / f"{name}.hex", to_readmemh(t.q, 2))
            tensors[name] = {"shape": list(t.q.shape), "dtype": "int8", "exponent": t.e,
                             "sha256_npy": sha256_file(d / f"{name}.npy"), "sha256_hex": sha256_file(d / f"{name}.hex")}
        manifest["pairs"].append({"dir": d.name, "moving": subjects[mi].name, "fixed": subjects[fi].name,
                                  "tensors": tensors})
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def golden_random(weights: Path, out: Path, pairs: int = 1, seed: int = 0) -> dict:
    """Golden vectors in the same layout (npy and manifest: what hw.verify and hw.rtl_sim read)
    for inputs of uniform random intensities on the weights' grid, `pairs` of them from `seed`:
    for networks with no data of their grid (untrained, paper-scale at a reduced grid). `out`
    must not exist or be empty."""
    from model.artifacts import atomic_write_bytes, atomic_write_json

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory")
    ref = Reference.from_file(weights)
    grid = tuple(ref.wb.meta["input_shape"][-3:])
    rng = np.random.default_rng(seed)
    manifest = {"weights": str(weights), "weights_sha256": sha256_file(weights), "generator": "hw/golden.py (random)",
                "seed": seed, "pairs": []}
    for k in range(pairs):
        trace: dict = {}
        ref.run(quantize_input(rng.random(grid), rng.random(grid), ref.rec("input", OP_QUANT)), trace)
        d = out / f"pair_{k:02d}"
        tensors = {}
        for name, t in trace.items():
            atomic_write_bytes(d / f"{name}.npy", _npy_bytes(t.q))
            tensors[name] = {"shape": list(t.q.shape), "dtype": "int8", "exponent": t.e}
        manifest["pairs"].append({"dir": d.name, "tensors": tensors})
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


_PAIR_DIR = re.compile(r"^pair_\d{2,}$")


def _foreign_entries(out: Path) -> list[str]:
    """Entries of `out` that hw.golden did not write: anything but manifest.json and pair_XX
    directories (a killed run leaves pair directories without a manifest)."""
    if not out.is_dir():
        return []
    return [p.name for p in out.iterdir()
            if not (p.name == "manifest.json" and p.is_file()) and not (_PAIR_DIR.match(p.name) and p.is_dir())]


def _remove_golden(out: Path) -> None:
    """Delete the golden vectors that `out`'s manifest lists (each tensor's .npy and .hex, then
    each pair directory if that left it empty, then the manifest), and nothing else."""
    from hw.verify import read_manifest  # checks that every listed path is a plain name inside `out`

    m = read_manifest(out)
    for pair in m["pairs"]:
        d = out / pair["dir"]
        for name in pair["tensors"]:
            for ext in (".npy", ".hex"):
                (d / f"{name}{ext}").unlink(missing_ok=True)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    (out / "manifest.json").unlink()


def _npy_bytes(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="replace existing golden vectors")
    a = ap.parse_args(argv)
    from model.cli import run_cli
    from model.config import load_config

    def body():
        m = golden(a.weights, load_config(a.config), a.data, a.out, a.pairs, a.force)
        n = sum(len(p["tensors"]) for p in m["pairs"])
        print(f"[golden] {len(m['pairs'])} pairs, {n} tensors -> {a.out}", file=sys.stderr)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
