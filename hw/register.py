"""Register NIfTI scans with the exported int8 model: the deployed registration, without torch.

    python -m hw.register --export runs/demo/export --fixed F.nii.gz --moving M.nii.gz --out W.nii.gz \\
        [--ddf D.nii.gz] [--moving-labels L.nii.gz --out-labels WL.nii.gz] [--fixed-labels FL.nii.gz]
        [--qc qc.png] [--backend auto|openvino|onnxruntime|onnxruntime_qlinear|reference|rtl|board] [--threads N]
        [--port /dev/ttyUSB1 --csr runs/demo/board/csr.json]   (--backend board: the engine on a board)
    python -m hw.register --export runs/demo/export --pairs pairs.csv --out-dir runs/registered [--qc-all]
    python -m hw.register --export runs/demo/export --evaluate data/synthetic --out-dir runs/demo/runtime

The registration is model/registration.py's, around the exported network on the chosen backend
(hw/runtime.py), with the settings of EXPORT/registration.json. Inputs may have any size,
spacing and orientation (the headers are trusted); every output lies on the fixed image's grid
with its affine, so any NIfTI viewer overlays it on F:

    --out         the moving image, resampled once (trilinear) from its own voxels
    --ddf         the displacement, world RAS mm, moving point minus fixed point, as a NIfTI
                  vector image (X, Y, Z, 1, 3) (intent 'vector')
    --out-labels  the moving labels (--moving-labels, on the moving image's grid), nearest neighbour
    --qc          a PNG on the working grid (hw/qc.py): fixed, moving and warped slices in three
                  planes, the fixed labels' contours (--fixed-labels) over the warped image, and
                  the Jacobian determinant of the field with folding marked

Batch (--pairs): a CSV with columns fixed,moving and optionally moving_labels,fixed_labels
(paths relative to the CSV's directory). For row k it writes OUT_DIR/pair_KKK_warped.nii.gz
(and _labels.nii.gz with moving labels, _qc.png with --qc-all), and after every pair
OUT_DIR/summary.csv: seconds, folding % of the working-grid field, and with both label maps the
mean Dice over the labels present in both, on the fixed grid. A pair that fails is listed with
its error and the batch goes on; the exit code is then 2.

Evaluation (--evaluate DATA): Table 1's metrics (model.evaluate.evaluate_pairs: Dice, centroid
and landmark TRE, folding, seconds per pair) on the ordered test pairs of an IBSR-layout
directory on the working grid, as `make report` scores its int8_deployed row; writes
OUT_DIR/pairs.csv and summary.json/.md.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from hw.runtime import BACKENDS, load, settings_config
from model.cli import UsageError, check_outputs, run_cli
from model.data import DataError, find_subjects, read_volume, resample


def fixed_labels_on_working_grid(path: Path, scan, fixed_path: Path) -> np.ndarray:
    """Fixed labels (on the fixed image's grid) resampled nearest onto its working grid."""
    labels, aff = read_volume(path)
    fixed_shape = scan.warped.shape
    if labels.shape != fixed_shape or not np.allclose(aff, scan.affine, atol=1e-3):
        raise DataError(f"{path}: shape {labels.shape} or affine differs from the fixed image {fixed_path} "
                        f"{fixed_shape}: the labels must lie on the fixed image's grid")
    return resample(np.asarray(labels).astype(np.int32), aff, scan.fixed_grid, scan.fixed_w.shape, 0)


def write_qc(path: Path, reg, scan, fixed_labels: Path | None, fixed_path: Path) -> None:
    from hw.qc import qc_image, write_png

    labels = None if fixed_labels is None else fixed_labels_on_working_grid(fixed_labels, scan, fixed_path)
    write_png(path, qc_image(scan.fixed_w, scan.moving_w, reg.warp(scan.moving_w, scan.ddf), scan.ddf, labels))


def label_dice(warped: np.ndarray, fixed: np.ndarray) -> tuple[float, int]:
    """(mean Dice over the non-zero codes present in both maps, how many), on one grid."""
    from model.metrics import dice

    codes = sorted(set(np.unique(warped).tolist()) & set(np.unique(fixed).tolist()) - {0})
    if not codes:
        return float("nan"), 0
    return float(np.mean([dice(warped == c, fixed == c) for c in codes])), len(codes)


def register_one(reg, a) -> None:
    if a.out_labels and not a.moving_labels:
        raise UsageError("--out-labels needs --moving-labels")
    if a.moving_labels and not a.out_labels:
        raise UsageError("--moving-labels needs --out-labels (where to write them)")
    if a.fixed_labels and not a.qc:
        raise UsageError("--fixed-labels is drawn in the --qc picture only; add --qc")
    check_outputs({"--out": a.out, "--ddf": a.ddf, "--out-labels": a.out_labels, "--qc": a.qc},
                  {"--fixed": a.fixed, "--moving": a.moving, "--moving-labels": a.moving_labels,
                   "--fixed-labels": a.fixed_labels})
    t0 = time.perf_counter()
    scan = reg.register_scans(a.fixed, a.moving, a.moving_labels)
    seconds = time.perf_counter() - t0
    if a.qc:  # every output computed before the first is written
        write_qc(a.qc, reg, scan, a.fixed_labels, a.fixed)
    written = [str(p) for p in scan.write(a.out, a.ddf, a.out_labels) + ([a.qc] if a.qc else [])]
    print(f"[register] {reg.name}: {seconds:.2f} s; wrote {', '.join(written)}", file=sys.stderr)


PAIR_COLUMNS = ("fixed", "moving", "moving_labels", "fixed_labels")


def read_pairs(path: Path) -> list[dict]:
    """The batch CSV's rows, paths resolved against its directory; a clear error otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs CSV not found")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    if not {"fixed", "moving"} <= set(cols) or set(cols) - set(PAIR_COLUMNS):
        raise ValueError(f"{path}: columns {cols}: expected fixed,moving and optionally moving_labels,fixed_labels")
    if not rows:
        raise ValueError(f"{path}: no pairs")
    pairs = []
    for i, row in enumerate(rows, start=2):
        p = {}
        for c in PAIR_COLUMNS:
            v = (row.get(c) or "").strip()
            if c in ("fixed", "moving") and not v:
                raise ValueError(f"{path}:{i}: empty {c}")
            p[c] = (path.parent / v) if v else None
        for c, v in p.items():
            if v is not None and not v.is_file():
                raise FileNotFoundError(f"{path}:{i}: {c} {v} not found")
        pairs.append(p)
    return pairs


def register_batch(reg, a) -> int:
    from model.artifacts import atomic_write_text
    from model.metrics import folding_pct

    pairs = read_pairs(a.pairs)
    if a.out_dir.exists() and not a.out_dir.is_dir():
        raise UsageError(f"--out-dir {a.out_dir}: exists and is not a directory")
    outputs = {}
    for k, p in enumerate(pairs):
        outputs[f"pair {k} warped"] = a.out_dir / f"pair_{k:03d}_warped.nii.gz"
        if p["moving_labels"]:
            outputs[f"pair {k} labels"] = a.out_dir / f"pair_{k:03d}_labels.nii.gz"
        if a.qc_all:
            outputs[f"pair {k} qc"] = a.out_dir / f"pair_{k:03d}_qc.png"
    outputs["summary"] = a.out_dir / "summary.csv"
    inputs = {f"row {k} {c}": v for k, p in enumerate(pairs) for c, v in p.items()} | {"--pairs": a.pairs}
    check_outputs(outputs, inputs)
    rows, failed = [], 0
    for k, p in enumerate(pairs):
        row = {"pair": k, "fixed": str(p["fixed"]), "moving": str(p["moving"]), "seconds": "", "folding_pct": "",
               "dice": "", "labels_scored": "", "error": ""}
        try:
            t0 = time.perf_counter()
            scan = reg.register_scans(p["fixed"], p["moving"], p["moving_labels"])
            row["seconds"] = f"{time.perf_counter() - t0:.3f}"
            row["folding_pct"] = f"{folding_pct(scan.ddf):.4f}"
            scan.write(outputs[f"pair {k} warped"], labels=outputs.get(f"pair {k} labels"))
            if p["moving_labels"]:
                if p["fixed_labels"]:
                    fixed_labels, _ = read_volume(p["fixed_labels"])
                    if fixed_labels.shape != scan.warped.shape:
                        raise DataError(f"{p['fixed_labels']}: shape {fixed_labels.shape} is not the fixed "
                                        f"image's {scan.warped.shape}")
                    d, n = label_dice(scan.warped_labels, np.asarray(fixed_labels))
                    row["dice"], row["labels_scored"] = f"{d:.4f}", n
            if a.qc_all:
                write_qc(outputs[f"pair {k} qc"], reg, scan, p["fixed_labels"], p["fixed"])
        except (ValueError, OSError) as e:
            row["error"] = str(e)
            failed += 1
        rows.append(row)
        status = f"error: {row['error']}" if row["error"] else f"{row['seconds']} s"
        print(f"[register] {k + 1}/{len(pairs)} {p['moving'].name} -> {p['fixed'].name}: {status}", file=sys.stderr)
        atomic_write_text(outputs["summary"], csv_text(rows))  # what is done survives a crash
    done = [float(r["seconds"]) for r in rows if not r["error"]]
    dices = [float(r["dice"]) for r in rows if r["dice"] not in ("", "nan")]
    print(f"[register] {len(done)} of {len(pairs)} pairs registered"
          + (f", {np.mean(done):.2f} s per pair" if done else "")
          + (f", mean Dice {np.mean(dices):.4f} over {len(dices)} labelled pairs" if dices else "")
          + (f"; {failed} failed (see {outputs['summary']})" if failed else ""), file=sys.stderr)
    return 2 if failed else 0


def csv_text(rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def evaluate(reg, a) -> None:
    """Table 1's metrics of the deployed registration on DATA's test pairs (module docstring)."""
    from model.artifacts import git_commit
    from model.data import load_dataset, test_pairs
    from model.evaluate import evaluate_pairs, registration_fn, summarise, write_csv, write_table

    cfg = settings_config(a.export)
    if a.out_dir.exists() and not a.out_dir.is_dir():
        raise UsageError(f"--out-dir {a.out_dir}: exists and is not a directory")
    subjects = load_dataset(a.evaluate, cfg.data, "test", progress=not a.no_progress)
    name = f"{reg.name}{'' if not a.no_refine else ' unrefined'}"
    rows, _ = evaluate_pairs(subjects, cfg, registration_fn(reg, not a.no_refine), name, not a.no_progress)
    write_csv(a.out_dir / "pairs.csv", rows)
    row = summarise(rows, name, 0, 0)
    table = write_table(a.out_dir / "summary.json", {"dataset": str(a.evaluate), "pairs": len(test_pairs(subjects)),
                                                     "labels": cfg.data.labels, "export": str(a.export),
                                                     "backend": reg.name, "threads": a.threads,
                                                     "refine": not a.no_refine, "git_commit": git_commit(),
                                                     "rows": [row]})
    print(f"[register] {name}: Dice {row['dice']}, TRE {row['tre_mm']} mm, folding {row['folding_pct']} %, "
          f"{row['seconds_per_pair']} s per pair over {table['pairs']} pairs -> {a.out_dir}", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, type=Path, help="OUT/export of make export")
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--threads", type=int, help="threads of the network's runtime (default: all cores)")
    ap.add_argument("--port", help="--backend board: the board's UART, e.g. /dev/ttyUSB1")
    ap.add_argument("--csr", type=Path, help="--backend board: the SoC's csr.json (make bitstream writes it)")
    ap.add_argument("--baud", type=int, help="--backend board: the UART's rate (default 1000000)")
    ap.add_argument("--fixed", type=Path)
    ap.add_argument("--moving", type=Path)
    ap.add_argument("--out", type=Path, help="the warped moving image (on the fixed grid)")
    ap.add_argument("--ddf", type=Path, help="also write the displacement (world mm) here")
    ap.add_argument("--moving-labels", type=Path, help="a label map on the moving image's grid")
    ap.add_argument("--out-labels", type=Path, help="where the warped moving labels go")
    ap.add_argument("--fixed-labels", type=Path, help="fixed labels: contours in the --qc picture")
    ap.add_argument("--qc", type=Path, help="write the quality-control PNG here")
    ap.add_argument("--pairs", type=Path, help="batch: a CSV of pairs (fixed,moving[,moving_labels,fixed_labels])")
    ap.add_argument("--evaluate", type=Path, metavar="DATA", help="Table 1's metrics on DATA's test pairs")
    ap.add_argument("--out-dir", type=Path, help="where --pairs and --evaluate write")
    ap.add_argument("--qc-all", action="store_true", help="batch: a QC picture per pair")
    ap.add_argument("--no-refine", action="store_true", help="--evaluate: the registration without the refinement")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    modes = [bool(a.fixed or a.moving or a.out), bool(a.pairs), bool(a.evaluate)]
    if sum(modes) != 1:
        ap.error("give one of: --fixed/--moving/--out (one pair), --pairs CSV (a batch), --evaluate DATA")
    if modes[0] and not (a.fixed and a.moving and a.out):
        ap.error("one pair needs --fixed, --moving and --out")
    if (modes[1] or modes[2]) and not a.out_dir:
        ap.error("--pairs and --evaluate need --out-dir")
    if a.threads is not None and a.threads < 1:
        ap.error("--threads must be at least 1")

    def body():
        if a.evaluate:
            find_subjects(a.evaluate)  # a clear error before the network is loaded
        board = {"port": a.port, "csr": a.csr, "baud": a.baud} if a.backend == "board" else {}
        reg = load(a.export, a.backend, a.threads, **board)
        if modes[0]:
            return register_one(reg, a)
        if modes[1]:
            return register_batch(reg, a)
        return evaluate(reg, a)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
