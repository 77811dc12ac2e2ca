"""Training precision and processes: float32 against bf16 autocast, one process against
torchrun's two, trained from the same config and seed and scored on the same pairs.

    python -m benchmarks.precision --config configs/demo.toml --data data/synthetic \\
        --out runs/precision [--torchrun]

The float32 and bf16 trainings run at the same time, one process and one thread each, so that
they share the machine alike (`benchmarks.validation` runs each: the training as `make train`
does, then Dice on the validation subjects and the test pairs, with ANTs SyN on the same pairs).
With --torchrun, a float32 training by `torchrun --standalone --nproc_per_node 2` follows
alone (gloo, one thread per process, each rank half of every batch) and is scored the same way.
A finished run is kept and only read (delete its directory to run it again).

Writes OUT/precision.json and OUT/precision.md: per run, steps per second (the training log's
last step over its elapsed seconds) and training minutes (those seconds), and validation and test Dice and folding,
stamped with the commit.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from model.artifacts import atomic_write_json, atomic_write_text, git_commit
from model.cli import run_cli

# one thread each (the two trainings share the 2 cores); the torchrun run keeps the config's own
# threads setting (its processes split the cores between them)
RUNS = {"fp32": ["train.threads=1", "train.precision=\"fp32\""], "bf16": ["train.threads=1", "train.precision=\"bf16\""]}


def _validation(config: Path, data: Path, val: Path, out: Path, sets: list[str], resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.validation", "--config", str(config), "--data", str(data),
           "--val-data", str(val), "--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def _row(name: str, out: Path) -> dict:
    v = json.loads((out / "validation.json").read_text())
    log = [json.loads(ln) for ln in (out / "train" / "log.jsonl").read_text().splitlines() if ln]
    last = log[-1]
    return {"run": name, "steps": last["step"], "steps_per_s": round(last["step"] / last["elapsed_s"], 4),
            "train_min": round(last["elapsed_s"] / 60, 1), "validation_dice": v["validation"]["dice"], "test_dice": v["test"]["dice"],
            "test_folding_pct": v["test"]["folding_pct"], "ants_syn_test_dice": v["ants_syn"]["test"]["dice"],
            "git_commit": v["git_commit"]}


def run(config: Path, data: Path, out: Path, torchrun: bool) -> dict:
    from benchmarks.validation import ensure_val_data

    val = ensure_val_data(data, out / "data_val", 5)  # once, before two processes would both write it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    todo = {k: sets for k, sets in RUNS.items() if not (out / k / "validation.json").exists()}
    procs = {k: subprocess.Popen(_validation(config, data, val, out / k, sets), env=env) for k, sets in todo.items()}
    for k, p in procs.items():
        if p.wait():
            raise RuntimeError(f"{out / k}: benchmarks.validation exited {p.returncode}")
    rows = [_row(k, out / k) for k in RUNS]
    if torchrun:
        d = out / "fp32_torchrun2"
        if not (d / "validation.json").exists():
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "model.train", "--config", str(config), "--data", str(data), "--out", str(d / "train"),
                            "--resume", "--no-progress", "--device", "cpu"], env=env, check=True)
            subprocess.run(_validation(config, data, val, d, [], resume=True), env=env, check=True)
        rows.append(_row("fp32_torchrun2", d))
    result = {"config": str(config), "data": str(data), "rows": rows, "git_commit": git_commit()}
    atomic_write_json(out / "precision.json", result)
    atomic_write_text(out / "precision.md", table(result))
    return result


def table(result: dict) -> str:
    lines = [f"Training precision and processes ({result['config']}, commit {result['git_commit']}; "
             "`python -m benchmarks.precision`)", "",
             "| run | steps/s | train min | validation Dice | test Dice | test folding % | ANTs SyN test Dice |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['run']} | {r['steps_per_s']:.3f} | {r['train_min']} | {r['validation_dice']:.3f} | "
                     f"{r['test_dice']:.3f} | {r['test_folding_pct']:.3f} | {r['ants_syn_test_dice']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--torchrun", action="store_true", help="also a float32 training by torchrun, 2 processes")
    a = ap.parse_args(argv)
    return run_cli(lambda: print(table(run(a.config, a.data, a.out, a.torchrun))))


if __name__ == "__main__":
    sys.exit(main())
