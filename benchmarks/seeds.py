"""The spread over training runs: benchmarks.domains' rows of several runs of one config that
differ in the training seed (or thread count), side by side with their mean and range.

    python -m benchmarks.seeds --runs runs/demo runs/seed1 runs/seed2 --out runs/demo/report/seeds.json

Each RUN must hold report/domains.json (make domains) and config/train.json (its resolved
[train] section, written by make). Every run's ANTs rows ran on the same pairs in that run;
their spread shows what run-to-run timing and ANTs' own determinism add. Writes OUT (JSON:
per set and row, the values of each run, mean, min, max, sample standard deviation) and OUT
with .md; the README's `seeds` block is rendered from it (benchmarks.docs_tables).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.domains import METRICS

SHOWN = ["global_stage", "ants_affine", "ants_syn", "ants_synlong", "trained", "int8_qat", "int8_deployed", "int4_qat",
         "int8_layer_s90", "int4_layer_s90"]


def _read(path: Path, where: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: missing ({where})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None


def summarise(runs: list[Path]) -> dict:
    """The runs' domains.json rows by set and row: per metric the values (run order), mean,
    min, max and sample standard deviation; the runs' seeds, threads and commits."""
    if len(runs) < 2:
        raise ValueError("--runs: at least two run directories (a spread needs two)")
    res, meta = [], []
    for run in runs:
        d = _read(run / "report" / "domains.json", "make domains")
        train = _read(run / "config" / "train.json", "make train writes it").get("train", {})
        if not isinstance(d.get("sets"), dict) or not d["sets"]:
            raise ValueError(f"{run / 'report' / 'domains.json'}: no 'sets' table")
        res.append(d)
        meta.append({"run": str(run), "seed": train.get("seed"), "threads": train.get("threads"),
                     "domains_commit": d.get("git_commit")})
    sets = list(res[0]["sets"])
    out: dict = {}
    for s in sets:
        out[s] = {}
        for row in res[0]["sets"][s]:
            vals = {}
            for m in METRICS:
                try:
                    v = [float(r["sets"][s][row][m]) for r in res]
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"set {s!r} row {row!r}: metric {m} missing in one of the runs") from None
                vals[m] = {"values": v, "mean": statistics.fmean(v), "min": min(v), "max": max(v),
                           "sd": statistics.stdev(v)}
            out[s][row] = vals
    return {"runs": meta, "sets": out}


def markdown(summary: dict) -> str:
    sets = list(summary["sets"])
    seeds = ", ".join(f"{m['seed']}" + (f" ({m['threads']} thread)" if m.get("threads") == 1 else "")
                      for m in summary["runs"])
    head = "| registration | " + " | ".join(f"{s}: Dice mean (min .. max) | {s}: vanished (max)" for s in sets) + " |"
    lines = [f"Training seeds {seeds}; each run's rows from its own `make domains`.", "", head,
             "|---|" + "---|" * (2 * len(sets))]
    for row in [r for r in SHOWN if all(r in summary["sets"][s] for s in sets)]:
        cells = []
        for s in sets:
            d, v = summary["sets"][s][row]["dice"], summary["sets"][s][row]["vanished_labels"]
            cells += [f"{d['mean']:.3f} ({d['min']:.3f} .. {d['max']:.3f})", f"{int(v['max'])}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, nargs="+", type=Path, help="run directories (make domains done in each)")
    ap.add_argument("--out", required=True, type=Path, help="the summary JSON (beside it: .md)")
    a = ap.parse_args(argv)
    from model.artifacts import atomic_write_json, atomic_write_text, git_commit
    from model.cli import run_cli

    def body():
        s = {"git_commit": git_commit(), **summarise(a.runs)}
        atomic_write_json(a.out, s)
        atomic_write_text(a.out.with_suffix(".md"), markdown(s))
        print(markdown(s))
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
