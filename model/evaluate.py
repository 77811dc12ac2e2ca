"""Evaluate registration on all ordered test pairs; write Table 1 rows, CSVs and a figure.

    python -m model.evaluate --ckpt runs/demo/train/model.pt --data data/synthetic --out runs/demo

Writes OUT/report/:
    pairs_trained.csv    one row per model and ordered test pair (20 pairs for 5 test subjects)
    labels_trained.csv   one row per model, pair and label
    evaluate.json / .md  rows `identity` and `trained` in Table 1's row schema (README: the
                         full Table 1 with the compressed models is benchmarks/accuracy.py's)
    figure3.png          fixed, moving and warped slices with label contours, deformation grid

Metrics (model.metrics): Dice per label of the warped moving label (trilinear, >= 0.5)
against the fixed label; centroid TRE (RMS over labels, mm); landmark TRE (mm) where the
data has landmarks; folding (% voxels with det J <= 0). Pair means are over labels present
in both subjects; table means are over pairs.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from model.artifacts import atomic_path, atomic_write_json, atomic_write_text, git_commit
from model.cli import run_cli
from model.config import Config, config_to_dict, load_config
from model.data import DataError, Subject, load_dataset, test_pairs
from model.metrics import centroid_distance_mm, dice, folding_pct, landmark_tre_mm, rms, weighted_centroid_distance_mm
from model.registration import Registration, Settings


def torch_network(net):
    """A torch network as a Registration's network: (X, Y, Z) float images -> (3, X, Y, Z) voxels."""
    import torch

    dev = next(net.parameters()).device  # the images go to the network's device, the field comes back

    def run(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.stack([moving, fixed])[None]).float().to(dev)
            return net(x)[0].double().cpu().numpy()
    return run


def registration_fn(reg: Registration, refine: bool = True):
    """`reg` as evaluate_pairs calls it: (moving Subject, fixed Subject) -> (3, X, Y, Z) voxel
    displacement of the whole registration; `refine=False` leaves the refinement out."""
    return lambda m, f: reg.field(m.image, f.image, refine)


def network_registration(net, cfg: Config) -> Registration:
    """The deployed registration (model/registration.py) around a torch network and `cfg`'s settings."""
    return Registration(Settings.from_config(cfg), torch_network(net))


def evaluate_pairs(subjects: list[Subject], cfg: Config, ddf_fn, name: str, progress: bool = True):
    """Metrics of `ddf_fn(moving_subject, fixed_subject) -> (3, X, Y, Z)` over all ordered pairs.

    A label present in both subjects whose warped mask is empty (it vanished: no fixed voxel
    samples it at >= 0.5) counts: Dice 0, `vanished` in its pair's count, and in the centroid
    TRE the distance to the centroid of the warped soft mask (the label's mass wherever the
    field smeared it), or, if no fixed voxel samples it at all, to the moving label's own
    centroid (as if unregistered). Labels are warped as the deployed registration warps them
    (model.registration: numpy, trilinear one-hot masks). Seconds per pair time `ddf_fn` alone:
    every pair is registered back to back before any is scored, so scoring never runs between
    two timed registrations."""
    codes, spacing = cfg.data.labels, cfg.data.spacing_mm
    pair_rows, label_rows = [], []
    pairs = test_pairs(subjects)
    it = pairs
    if progress:
        from tqdm import tqdm
        it = tqdm(pairs, desc=f"eval {name}", unit="pair", leave=False)
    fields = []
    for mi, fi in it:
        t0 = time.perf_counter()
        ddf = ddf_fn(subjects[mi], subjects[fi])
        fields.append((ddf, time.perf_counter() - t0))
    for (mi, fi), (ddf, seconds) in zip(pairs, fields):
        mov, fix = subjects[mi], subjects[fi]
        soft = Registration.warp_labels_soft(mov.label, codes, ddf)
        warped = soft >= 0.5
        dices, dists, vanished = [], [], 0
        for k, c in enumerate(codes):
            fmask, mmask = fix.label == c, mov.label == c
            if not fmask.any() or not mmask.any():
                continue
            gone = not warped[k].any()
            d = dice(warped[k], fmask)
            if not gone:
                t = centroid_distance_mm(warped[k], fmask, spacing)
            elif soft[k].any():
                t = weighted_centroid_distance_mm(soft[k], fmask, spacing)
            else:
                t = centroid_distance_mm(mmask, fmask, spacing)
            vanished += gone
            dices.append(d)
            dists.append(t)
            label_rows.append({"model": name, "moving": mov.name, "fixed": fix.name, "label": c,
                               "dice": d, "centroid_dist_mm": t, "vanished": int(gone)})
        lm = float("nan")
        if mov.landmarks_vox is not None and fix.landmarks_vox is not None:
            if mov.landmark_names != fix.landmark_names:
                raise DataError(f"landmark names of {mov.name} and {fix.name} differ")
            lm = landmark_tre_mm(ddf, fix.landmarks_vox, mov.landmarks_vox, spacing)
        pair_rows.append({"model": name, "moving": mov.name, "fixed": fix.name,
                          "dice": float(np.nanmean(dices)) if dices else float("nan"),
                          "tre_mm": rms(dists), "landmark_tre_mm": lm, "folding_pct": folding_pct(ddf),
                          "vanished_labels": vanished, "seconds": seconds})
    return pair_rows, label_rows


def summarise(pair_rows: list[dict], name: str, nonzero: int, weight_bytes: int) -> dict:
    def mean(k):
        v = np.asarray([r[k] for r in pair_rows], dtype=np.float64)
        v = v[np.isfinite(v)]
        return round(float(v.mean()), 4) if len(v) else None

    return {"model": name, "dice": mean("dice"), "tre_mm": mean("tre_mm"),
            "landmark_tre_mm": mean("landmark_tre_mm"), "folding_pct": mean("folding_pct"),
            "vanished_labels": int(sum(r["vanished_labels"] for r in pair_rows)),
            "seconds_per_pair": mean("seconds"), "nonzero_params": nonzero, "weight_bytes": weight_bytes}


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def write_table(path: Path, table: dict) -> dict:
    """Write a table of rows as JSON and, beside it, as markdown (`rows_markdown`)."""
    atomic_write_json(path, table)
    atomic_write_text(path.with_suffix(".md"), rows_markdown(table))
    return table


def rows_markdown(table: dict) -> str:
    """Rows in Table 1's schema as markdown; compression is relative to the `trained` row."""
    fp32 = next((r["weight_bytes"] for r in table["rows"] if r["model"] == "trained"), None)

    def fmt(v, nd=3):
        return "n/a" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    lines = [f"Dataset: {table['dataset']}, {table['pairs']} ordered test pairs, labels {table['labels']}", "",
             "| model | Dice | TRE (mm) | landmark TRE (mm) | folding % | vanished labels | s / pair "
             "| non-zero params | weight bytes | compression |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        comp = f"{fp32 / r['weight_bytes']:.1f}x" if fp32 and r["weight_bytes"] else "n/a"
        lines.append(f"| {r['model']} | {fmt(r['dice'])} | {fmt(r['tre_mm'], 2)} | {fmt(r['landmark_tre_mm'], 2)} "
                     f"| {fmt(r['folding_pct'], 3)} | {r['vanished_labels']} | {fmt(r['seconds_per_pair'], 3)} "
                     f"| {r['nonzero_params']} | {r['weight_bytes']} | {comp} |")
    return "\n".join(lines) + "\n"


def figure3(path: Path, mov: Subject, fix: Subject, ddf: np.ndarray, codes: list[int]) -> None:
    """Seed's Figure 3: fixed, moving, warped (axial slice) with label contours, and the deformation grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = fix.image.shape[2] // 2
    warped_img = Registration.warp(mov.image, ddf)
    warped_lab = Registration.warp_labels_soft(mov.label, codes, ddf) >= 0.5
    lab_w = np.zeros(mov.label.shape, np.int16)
    for k, c in enumerate(codes):
        lab_w[warped_lab[k]] = c
    panels = [("fixed", fix.image, fix.label), ("moving", mov.image, mov.label), ("warped moving", warped_img, lab_w)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, (title, img, lab) in zip(axes, panels):
        ax.imshow(img[:, :, z].T, cmap="gray", origin="lower")
        for k, c in enumerate(codes):
            m = (lab[:, :, z] == c).T.astype(float)
            if m.any():
                ax.contour(m, levels=[0.5], colors=[plt.cm.tab20(k % 20)], linewidths=0.8)
        ax.set_title(title)
        ax.axis("off")
    ax = axes[3]
    xs, ys = np.meshgrid(np.arange(ddf.shape[1]), np.arange(ddf.shape[2]), indexing="ij")
    gx, gy = xs + ddf[0, :, :, z], ys + ddf[1, :, :, z]  # deformed grid lines, in-plane components
    for i in range(0, gx.shape[0], 2):
        ax.plot(gx[i, :], gy[i, :], "b-", lw=0.5)
    for j in range(0, gx.shape[1], 2):
        ax.plot(gx[:, j], gy[:, j], "b-", lw=0.5)
    ax.set_aspect("equal")
    ax.set_title("deformation grid (voxels)")
    ax.axis("off")
    fig.suptitle(f"moving {mov.name} -> fixed {fix.name}, axial slice z={z}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def evaluate(ckpt: Path, data_dir: Path, out: Path, cfg_expected: Config | None = None, progress: bool = True) -> dict:
    from model.checkpoint import load_checkpoint, model_from_checkpoint
    from model.localnet import count_parameters, fold_batchnorm

    ck = load_checkpoint(ckpt, cfg_expected)
    net, cfg = model_from_checkpoint(ck, str(ckpt))
    if cfg_expected is not None:  # [refine] is no training input: the given config's applies
        cfg = dataclasses.replace(cfg, refine=cfg_expected.refine)
    subjects = load_dataset(data_dir, cfg.data, "test", progress=progress)
    report = out / "report"
    deploy = fold_batchnorm(net)
    register_fn = registration_fn(network_registration(deploy, cfg))
    total, nonzero = count_parameters(deploy)
    rows = []
    fns = {"identity": lambda m, f: np.zeros((3, *cfg.data.shape)),
           "trained": register_fn}
    all_pairs, all_labels = [], []
    for name, fn in fns.items():
        pr, lr = evaluate_pairs(subjects, cfg, fn, name, progress)
        all_pairs += pr
        all_labels += lr
        rows.append(summarise(pr, name, 0 if name == "identity" else nonzero, 0 if name == "identity" else 4 * total))
    write_csv(report / "pairs_trained.csv", all_pairs)
    write_csv(report / "labels_trained.csv", all_labels)
    meta = {"dataset": str(data_dir), "pairs": len(test_pairs(subjects)), "labels": cfg.data.labels,
            "config": config_to_dict(cfg), "git_commit": git_commit(), "checkpoint": str(ckpt)}
    table = write_table(report / "evaluate.json", {**meta, "rows": rows})
    m, f = (1, 0) if len(subjects) > 1 else (0, 0)
    figure3(report / "figure3.png", subjects[m], subjects[f], register_fn(subjects[m], subjects[f]),
            cfg.data.labels)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--config", help="refuse a checkpoint made with another config")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)

    def body():
        cfg = load_config(a.config) if a.config else None
        print(rows_markdown(evaluate(a.ckpt, a.data, a.out, cfg, progress=not a.no_progress)))
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
