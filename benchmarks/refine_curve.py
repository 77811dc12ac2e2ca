"""Dice against refinement steps and time: the curve [refine]'s operating point is chosen from.

    python -m benchmarks.refine_curve --export runs/demo/export --set test=data/synthetic:test \\
        --set validation=runs/val_data --set shifted=runs/shifted --out runs/refine_curve \\
        [--points 0,1,3,5,8,10,15,20,40] [--lr 0.2] [--bending 0.25] [--tol 0.003,0.001]

The deployed registration of the export (hw.runtime, backend auto, one thread) without its
refinement is computed once per ordered pair of each set (DIR:test for a data directory's test
split, else every subject of DIR; model.anatomy's domain on its own labels); then each
refinement setting runs on those fields: `--points` fixed step counts, and `--tol` the stop
rule on the similarity's relative change (with at most 100 steps). Scored as Table 1 scores
(model.evaluate: Dice, folding, vanished labels) with the median milliseconds of the
refinement per pair and the mean steps taken.
Writes OUT/refine_curve.json and .md.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, type=Path)
    ap.add_argument("--set", action="append", required=True, metavar="NAME=DIR[:test]")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--points", default="0,1,3,5,8,10,15,20,40")
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--bending", type=float, default=0.25)
    ap.add_argument("--tol", default="", help="comma-separated tolerances of the stop rule (100 steps at most)")
    a = ap.parse_args(argv)
    from model.cli import run_cli

    return run_cli(lambda: curve(a))


def curve(a) -> None:
    from hw.runtime import load, settings_config
    from model.artifacts import atomic_write_json, atomic_write_text, git_commit
    from model.config import RefineConfig
    from model.data import load_dataset, test_pairs
    from model.anatomy import scored_config
    from model.evaluate import evaluate_pairs, summarise

    cfg = settings_config(a.export)
    reg = load(a.export, "auto", threads=1)
    settings = [RefineConfig(iters=int(n), lr=a.lr, bending=a.bending, window=cfg.refine.window)
                for n in a.points.split(",") if n.strip()]
    settings += [RefineConfig(iters=100, lr=a.lr, bending=a.bending, window=cfg.refine.window, tol=float(t))
                 for t in a.tol.split(",") if t.strip()]
    rows = []
    for spec in a.set:
        name, _, where = spec.partition("=")
        path, _, split = where.partition(":")
        set_cfg = scored_config(cfg, Path(path))   # the real-anatomy domain has labels of its own
        subjects = load_dataset(Path(path), set_cfg.data, split or "all")
        base = {(m, f): reg.field(subjects[m].image, subjects[f].image, refine_field=False)
                for m, f in test_pairs(subjects)}
        index = {id(s): i for i, s in enumerate(subjects)}
        for rc in settings:
            steps, secs = [], []

            def fn(ms, fs, rc=rc):
                st = {}
                t0 = time.perf_counter()
                d = reg.refined(ms.image, fs.image, base[index[id(ms)], index[id(fs)]], rc, st)
                secs.append(time.perf_counter() - t0)
                steps.append(st.get("steps", 0))
                return d
            s = summarise(evaluate_pairs(subjects, set_cfg, fn, name, progress=False)[0], name, 0, 0)
            row = {"set": name, **dataclasses.asdict(rc), "dice": s["dice"], "folding_pct": s["folding_pct"],
                   "vanished_labels": s["vanished_labels"], "refine_ms": round(1e3 * float(np.median(secs)), 2),
                   "mean_steps": round(float(np.mean(steps)), 2), "pairs": len(base)}
            rows.append(row)
            print(f"[refine-curve] {name} iters {rc.iters} tol {rc.tol}: Dice {row['dice']}, folding "
                  f"{row['folding_pct']} %, {row['refine_ms']} ms, {row['mean_steps']} steps", file=sys.stderr)
    report = {"export": str(a.export), "backend": reg.name, "git_commit": git_commit(), "rows": rows}
    atomic_write_json(a.out / "refine_curve.json", report)
    sets = list(dict.fromkeys(r["set"] for r in rows))
    lines = [f"Refinement curve (`python -m benchmarks.refine_curve`, commit {report['git_commit']}, "
             f"backend {reg.name}, lr {a.lr}, bending {a.bending}): Dice / folding % / ms per pair", "",
             "| steps | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for rc in settings:
        label = f"{rc.iters}" if not rc.tol else f"tol {rc.tol}"
        cells = []
        for sname in sets:
            r = next(r for r in rows if r["set"] == sname and r["iters"] == rc.iters and r["tol"] == rc.tol)
            extra = f", {r['mean_steps']} steps" if rc.tol else ""
            cells.append(f"{r['dice']:.4f} / {r['folding_pct']:.3f} / {r['refine_ms']}{extra}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    atomic_write_text(a.out / "refine_curve.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
