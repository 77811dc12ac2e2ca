"""Choose a training config on validation subjects, not on the test pairs.

    python -m benchmarks.validation --config configs/demo.toml --data data/synthetic \\
        --out runs/validation/bend1_s0 --set train.seed=0 --set loss.bending_weight=1.0
    python -m benchmarks.validation --table runs/validation      # every run below, as markdown

Trains the config (with the `--set section.key=JSON` changes) on the training split of
`--data`, exactly as `make train` does (`model.train.train`, resumable with --resume), then
evaluates the saved network (the global stage composed in, as in Table 1) on two sets of
ordered pairs: the validation subjects and, for the record, the test split of `--data`.

The validation subjects are subjects that no stage trains or tests on. For the synthetic set
they are the generator's next `--val-subjects` subjects (IBSR_19-23 after the demo's 18), made
with the settings of `--data`'s synth_manifest.json and written once to `--val-data` (default
OUT/../data_val): the generator makes each subject from its number alone, so these are the
subjects a larger `make data` would have written. For other data, `--val-data` must name an
IBSR-layout directory of held-out subjects.

[refine] is no training input: --resume on a finished run with other `refine.*` settings keeps
the trained network and only scores it again (overwriting OUT/validation.json).

Writes OUT/train/ (as make train) and OUT/validation.json: the config changes, the metrics of
both pair sets (model.evaluate's; with [refine] steps, also of the network without them under
`unrefined`), those of no registration and of ANTs SyN (Table 1's
settings) on the same pairs in the same run, training minutes and the git commit. --table ROOT
prints one markdown row per ROOT/*/validation.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from model.artifacts import atomic_write_json, git_commit
from model.cli import run_cli
from model.config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from model.data import DataError, load_dataset

METRICS = ("dice", "tre_mm", "landmark_tre_mm", "folding_pct", "vanished_labels")


def apply_sets(cfg: Config, sets: list[str]) -> Config:
    """The config with each `section.key=JSON` assignment applied (validated like a TOML file)."""
    raw = config_to_dict(cfg)
    for item in sets:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in raw or name not in raw[section]:
            raise ConfigError(f"--set {item!r}: expected section.key=value with a known key")
        try:
            raw[section][name] = json.loads(value)
        except json.JSONDecodeError:
            raw[section][name] = value  # a bare string, e.g. label_sampling=one
    return config_from_dict(raw, "--set")


def ensure_val_data(data: Path, val: Path, count: int) -> Path:
    """`val` holding the generator's `count` subjects after `data`'s (written once, atomically)."""
    if val.is_dir() and any(val.iterdir()):
        return val
    man_path = data / "synth_manifest.json"
    if not man_path.is_file():
        raise DataError(f"{data}: no synth_manifest.json, so no generator to draw validation subjects from; "
                        "pass --val-data with held-out subjects")
    from model.synth import write_dataset

    man = json.loads(man_path.read_text())
    n = int(man["subjects"])
    val.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=val.parent) as tmp:
        part = Path(tmp) / "val"
        write_dataset(part, n + count, int(man["seed"]), tuple(man["shape"]), tuple(man["spacing_mm"]),
                      progress=False, variation=float(man.get("anatomy_variation", 1.0)), first=n + 1)
        part.rename(val)
    return val


def evaluate_fn(cfg: Config, ddf_fn, subjects) -> dict:
    from model.evaluate import evaluate_pairs, summarise

    rows, _ = evaluate_pairs(subjects, cfg, ddf_fn, "validation", progress=False)
    s = summarise(rows, "", 0, 0)
    return {k: s[k] for k in METRICS} | {"pairs": len(rows)}


def network_fn(cfg: Config, model_path: Path, refine: bool = True):
    from model.checkpoint import load_checkpoint, model_from_checkpoint
    from model.evaluate import network_registration, registration_fn
    from model.localnet import fold_batchnorm

    net, _ = model_from_checkpoint(load_checkpoint(model_path, cfg))
    return registration_fn(network_registration(fold_batchnorm(net), cfg), refine)


def validate(cfg: Config, sets: list[str], data: Path, val: Path, out: Path, resume: bool = False,
             progress: bool = True) -> dict:
    import numpy as np

    from benchmarks.classical import table1_peer
    from model.train import train

    val_subjects = load_dataset(val, cfg.data, "all")
    if len(val_subjects) < 2:
        raise DataError(f"{val}: need at least 2 validation subjects, found {len(val_subjects)}")
    test_subjects = load_dataset(data, cfg.data, "test")
    t0 = time.time()
    model_path = train(cfg, data, out / "train", resume=resume, progress=progress)
    result = {"set": sets, "seed": cfg.train.seed, "train_min": round((time.time() - t0) / 60, 1),
              "validation_subjects": [s.name for s in val_subjects],
              "data": str(data), "val_data": str(val), "git_commit": git_commit()}
    pair_sets = {"validation": val_subjects, "test": test_subjects}
    net = network_fn(cfg, model_path)
    result.update({k: evaluate_fn(cfg, net, subjects) for k, subjects in pair_sets.items()})
    if cfg.refine.iters:  # the same network without the test-time refinement
        bare = network_fn(cfg, model_path, refine=False)
        result["unrefined"] = {k: evaluate_fn(cfg, bare, subjects) for k, subjects in pair_sets.items()}
    # no registration, and the classical peer, on the same pairs in the same run
    for name, fn in (("identity", lambda m, f: np.zeros((3, *cfg.data.shape))), ("ants_syn", table1_peer(cfg, "SyN"))):
        result[name] = {k: evaluate_fn(cfg, fn, subjects) for k, subjects in pair_sets.items()}
    atomic_write_json(out / "validation.json", result)
    return result


def table(root: Path) -> str:
    runs = sorted(root.glob("*/validation.json"))
    if not runs:
        raise FileNotFoundError(f"{root}: no */validation.json")
    lines = ["| run | changes | seed | val Dice | val folding % | test Dice | unrefined val / test "
             "| ANTs SyN val / test | train min |", "|---|---|---|---|---|---|---|---|---|"]
    both = lambda x: f"{x['validation']['dice']:.4f} / {x['test']['dice']:.4f}" if x else ""
    for p in runs:
        r = json.loads(p.read_text())
        changes = ", ".join(s for s in r["set"] if not s.startswith("train.seed=")) or "none"
        # runs made before the peer or the refinement have no ants_syn / unrefined
        syn, bare = both(r.get("ants_syn")), both(r.get("unrefined"))
        lines.append(f"| {p.parent.name} | {changes} | {r['seed']} | {r['validation']['dice']:.4f} | "
                     f"{r['validation']['folding_pct']:.3f} | {r['test']['dice']:.4f} | {bare} | {syn} | {r['train_min']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML config (configs/demo.toml)")
    ap.add_argument("--data", type=Path, help="IBSR-layout data directory (train and test split)")
    ap.add_argument("--out", type=Path, help="output directory of this run")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON", help="a config change")
    ap.add_argument("--val-data", type=Path, help="held-out subjects (default: OUT/../data_val, generated)")
    ap.add_argument("--val-subjects", type=int, default=5, help="validation subjects to generate")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted training")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--table", type=Path, metavar="ROOT", help="print ROOT/*/validation.json as markdown")
    a = ap.parse_args(argv)

    def body():
        if a.table:
            print(table(a.table))
            return 0
        if not (a.config and a.data and a.out):
            ap.error("--config, --data and --out are required (or --table)")
        if a.val_subjects < 2:
            ap.error("--val-subjects must be at least 2")
        cfg = apply_sets(load_config(a.config), a.set)
        val = ensure_val_data(a.data, a.val_data or a.out.parent / "data_val", a.val_subjects)
        r = validate(cfg, a.set, a.data, val, a.out, a.resume, progress=not a.no_progress)
        print(json.dumps({k: r[k] for k in ("set", "validation", "test", "train_min")}))
        return 0
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
