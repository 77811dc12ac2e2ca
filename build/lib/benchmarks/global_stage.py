"""The global stage alone against ANTs' affine stage, on the same pairs, grid and machine in one run.

    python -m benchmarks.global_stage --config configs/demo.toml --data data/synthetic \\
        --out runs/global [--val-data runs/validation/val_data] [--kinds none,moments,affine]

For every ordered test pair (and, with --val-data, every ordered pair of those held-out
subjects) each global stage of model/prealign.py registers the moving image onto the fixed
one without any network, and ANTs affine (Table 1's settings: benchmarks.classical.table1_peer)
does the same. Scored as Table 1 scores (model.evaluate.evaluate_pairs: Dice, centroid and
landmark TRE, folding, seconds per pair). Writes OUT/global_stage.json and .md, each set's
rows side by side.
"""
from __future__ import annotations

import sys
from pathlib import Path

from model.artifacts import atomic_write_json, atomic_write_text, git_commit
from model.cli import run_cli, stage_parser
from model.config import load_config
from model.data import load_dataset
from model.prealign import KINDS, affine_ddf, global_affine

METRICS = ("dice", "tre_mm", "landmark_tre_mm", "folding_pct", "vanished_labels", "seconds_per_pair")


def global_stage_fn(kind: str):
    """(moving Subject, fixed Subject) -> the global stage's field alone, (3, X, Y, Z) voxels."""
    def ddf(m, f):
        M, t = global_affine(kind, m.image, f.image)
        return affine_ddf(M, t, f.image.shape)
    return ddf


def score_sets(cfg, sets: dict, kinds: list[str], ants: bool, progress: bool) -> dict:
    from benchmarks.classical import table1_peer
    from model.evaluate import evaluate_pairs, summarise

    out = {}
    for set_name, subjects in sets.items():
        rows = {}
        fns = {k: global_stage_fn(k) for k in kinds}
        if ants:
            fns["ants_affine"] = table1_peer(cfg, "Affine")
        for name, fn in fns.items():
            pair_rows, _ = evaluate_pairs(subjects, cfg, fn, f"{set_name} {name}", progress)
            s = summarise(pair_rows, name, 0, 0)
            rows[name] = {k: s[k] for k in METRICS} | {"pairs": len(pair_rows)}
            if progress:
                print(f"[global] {set_name} {name}: Dice {s['dice']:.4f}, {s['seconds_per_pair'] * 1e3:.1f} ms/pair",
                      file=sys.stderr)
        out[set_name] = rows
    return out


def markdown(report: dict) -> str:
    sets = list(report["sets"])
    lines = [f"Global stage alone (`python -m benchmarks.global_stage`, commit {report['git_commit']}, "
             f"config {report['config']}; Dice / seconds per pair)", "",
             "| stage | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for name in report["sets"][sets[0]]:
        cells = []
        for s in sets:
            r = report["sets"][s][name]
            cells.append(f"{r['dice']:.3f} / {r['seconds_per_pair']:.4f} s ({r['vanished_labels']} vanished)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = stage_parser(__doc__)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--val-data", type=Path, help="held-out subjects (every ordered pair of them is scored)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"global stages, of {','.join(KINDS)}")
    ap.add_argument("--no-ants", action="store_true", help="leave ANTs affine out")
    a = ap.parse_args(argv)

    def body():
        cfg = load_config(a.config)
        kinds = [k for k in a.kinds.split(",") if k]
        bad = sorted(set(kinds) - set(KINDS))
        if bad:
            raise ValueError(f"--kinds: unknown global stage(s) {bad}; known: {list(KINDS)}")
        sets = {"test": load_dataset(a.data, cfg.data, "test", progress=not a.no_progress)}
        if a.val_data:
            sets["validation"] = load_dataset(a.val_data, cfg.data, "all", progress=not a.no_progress)
        report = {"config": str(a.config), "data": str(a.data), "val_data": str(a.val_data) if a.val_data else None,
                  "git_commit": git_commit(),
                  "sets": score_sets(cfg, sets, kinds, not a.no_ants, not a.no_progress)}
        atomic_write_json(a.out / "global_stage.json", report)
        atomic_write_text(a.out / "global_stage.md", markdown(report))
        print(markdown(report))
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
