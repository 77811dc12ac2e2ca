"""Table 1's main rows on three domains side by side: the demo's test pairs and two validation
domains nothing was tuned on, one synthetic, one of real anatomy.

    python -m benchmarks.domains --config configs/demo.toml --data data/synthetic --out runs/demo \\
        [--val-data runs/demo_val/shifted] [--anatomy-data runs/demo_val/mni]

The validation domain is the synthetic generator's "shifted" style (model.synth: larger pose
differences, another deformation model, a neck below the brain, another contrast per subject,
stronger bias field and noise), 6 subjects of seed 7, all 30 ordered pairs; written to
`--val-data` when that directory does not exist yet. The real-anatomy domain is model.anatomy's:
the MNI152 template nilearn ships, 6 subjects of seed 11 under their own pose, deformation,
contrast, bias and noise, 30 ordered pairs, scored on its 8 labels (white matter, cortex,
ventricles, deep grey matter, left and right: the config with only its label list changed);
written to `--anatomy-data` when missing. On every set, in one run on this machine:
no registration, the global stage alone, ANTs affine and SyN (Table 1's settings) and SyN with
longer iterations (benchmarks.classical SYN_LONG_ITERATIONS), the trained
network, int8 QAT, the int8 deployed registration (hw.runtime, one thread), int4 QAT and the
layer-aware compression rows (int8 75 % and 90 %, int4 90 % sparse), each the whole
registration as Table 1 scores it (model.evaluate). Reads what make demo left in OUT;
writes OUT/report/domains.json and domains.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

from model.artifacts import atomic_write_json, atomic_write_text, git_commit
from model.cli import run_cli, stage_parser
from model.config import load_config

ROWS = ["identity", "global_stage", "ants_affine", "ants_syn", "ants_synlong", "trained", "int8_qat", "int8_deployed", "int4_qat"]
COMPRESSION = ("int8_layer_s75", "int8_layer_s90", "int4_layer_s90")   # of benchmarks.accuracy.compression_rows
METRICS = ("dice", "tre_mm", "folding_pct", "vanished_labels", "seconds_per_pair")
SHIFTED = {"style": "shifted", "subjects": 6, "seed": 7}


def make_validation_domain(path: Path) -> None:
    """The shifted-style synthetic subjects at `path` (model.synth; deterministic from SHIFTED)."""
    from model.synth import main as synth_main

    if synth_main(["--out", str(path), "--style", SHIFTED["style"], "--subjects", str(SHIFTED["subjects"]),
                   "--seed", str(SHIFTED["seed"])]) != 0:
        raise RuntimeError(f"{path}: model.synth failed")


def make_anatomy_domain(path: Path) -> None:
    """model.anatomy's real-anatomy subjects at `path` (deterministic from its defaults)."""
    from model.anatomy import write_domain

    write_domain(path, progress=False)


def row_fns(cfg, out: Path) -> dict:
    """name -> (moving Subject, fixed Subject) -> ddf, for ROWS and the config's COMPRESSION rows,
    from make demo's OUT."""
    import numpy as np

    from benchmarks.accuracy import compression_rows, load_deployed, need
    from benchmarks.classical import table1_peer
    from benchmarks.global_stage import global_stage_fn
    from model.checkpoint import load_checkpoint, model_from_checkpoint
    from model.evaluate import network_registration, registration_fn
    from model.localnet import fold_batchnorm
    from quant.qat import load_qat

    trained, _ = model_from_checkpoint(load_checkpoint(need(out / "train/model.pt", "make train"), cfg))
    nets = {"trained": fold_batchnorm(trained)}
    for name, sub in [("int8_qat", "int8"), ("int4_qat", "int4"), *[r for r in compression_rows(cfg) if r[0] in COMPRESSION]]:
        nets[name], _ = load_qat(need(out / "qat" / sub / "model.pt", "make qat"), cfg)
    fns = {"identity": lambda m, f: np.zeros((3, *cfg.data.shape)),
           "global_stage": global_stage_fn(cfg.model.prealign),
           "ants_affine": table1_peer(cfg, "Affine"), "ants_syn": table1_peer(cfg, "SyN"),
           "ants_synlong": table1_peer(cfg, "SyNLong")}
    fns.update({k: registration_fn(network_registration(net, cfg)) for k, net in nets.items()})
    fns["int8_deployed"] = registration_fn(load_deployed(out / "export", cfg))
    return {k: fns[k] for k in [*ROWS, *COMPRESSION] if k in fns}


def domains(cfg, data: Path, out: Path, val_data: Path, anatomy_data: Path, progress: bool = True) -> dict:
    from model.anatomy import DEFAULTS, scored_config
    from model.data import load_dataset
    from model.evaluate import evaluate_pairs, summarise

    fns = row_fns(cfg, out)   # first: a run without its models is refused before anything is written
    if not val_data.exists():
        make_validation_domain(val_data)
    if not anatomy_data.exists():
        make_anatomy_domain(anatomy_data)
    cfg_anat = scored_config(cfg, anatomy_data)   # the config with only its label list changed
    sets = {"demo test pairs": (cfg, load_dataset(data, cfg.data, "test", progress=False)),
            "validation domain (shifted)": (cfg, load_dataset(val_data, cfg.data, "all", progress=False)),
            "real anatomy (MNI152)": (cfg_anat, load_dataset(anatomy_data, cfg_anat.data, "all", progress=False))}
    res = {"git_commit": git_commit(), "val_data": str(val_data), "validation_domain": SHIFTED,
           "anatomy_data": str(anatomy_data), "anatomy_domain": {**DEFAULTS, "labels": cfg_anat.data.labels}, "sets": {}}
    for set_name, (set_cfg, subjects) in sets.items():
        rows = {}
        for name, fn in fns.items():
            pr, _ = evaluate_pairs(subjects, set_cfg, fn, f"{set_name}: {name}", progress)
            s = summarise(pr, name, 0, 0)
            rows[name] = {k: s[k] for k in METRICS} | {"pairs": len(pr)}
        res["sets"][set_name] = rows
    return res


def markdown(res: dict) -> str:
    names = list(res["sets"])
    head = "| registration | " + " | ".join(f"{n}: Dice | {n}: folding % | {n}: vanished" for n in names) + " |"
    lines = [head, "|---|" + "---|" * (3 * len(names))]
    for row in res["sets"][names[0]]:
        cells = []
        for n in names:
            r = res["sets"][n][row]
            cells += [f"{r['dice']:.3f}", f"{r['folding_pct']:.3f}", str(r["vanished_labels"])]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    pairs = ", ".join(f"{n}: {res['sets'][n]['identity']['pairs']} ordered pairs" for n in names)
    return "\n".join(lines) + f"\n\n{pairs}.\n"


def main(argv=None) -> int:
    ap = stage_parser(__doc__)
    ap.add_argument("--out", required=True, type=Path, help="the run directory of make demo")
    ap.add_argument("--val-data", type=Path, help="the validation domain's subjects (default OUT_val/shifted; "
                                                  "generated when missing)")
    ap.add_argument("--anatomy-data", type=Path, help="the real-anatomy domain's subjects (default OUT_val/mni; "
                                                      "generated when missing)")
    a = ap.parse_args(argv)

    def body():
        cfg = load_config(a.config)
        val = a.val_data or Path(f"{a.out}_val") / "shifted"
        anat = a.anatomy_data or Path(f"{a.out}_val") / "mni"
        res = domains(cfg, a.data, a.out, val, anat, progress=not a.no_progress)
        rep = a.out / "report"
        atomic_write_json(rep / "domains.json", res)
        atomic_write_text(rep / "domains.md", markdown(res))
        print(markdown(res))
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
