"""The deployed registration's speed against ANTs SyN, interleaved so that both see the same machine.

    python -m benchmarks.speed --config configs/demo.toml --data data/synthetic --out runs/demo [--rounds 3]

Table 1 times each row in its own pass over the pairs, minutes apart; on a shared or virtual
machine the speed of the whole machine drifts by 10-20 % over that time, and the two rows of a
ratio can land in different phases. Here every ordered test pair is registered by ANTs SyN
(Table 1's settings: one thread, benchmarks.classical.table1_peer) and then at once by the
deployed registration (hw.runtime's backend for OUT/export, one thread: global stage, network,
composition, refinement), `--rounds` times over all pairs. Per round: the mean seconds per pair
of each and their ratio (SyN / deployed); the summary gives the median ratio with its min .. max
over rounds. Writes OUT/report/speed.json and .md (the README's `speed` block).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from model.artifacts import atomic_write_json, atomic_write_text, git_commit
from model.cli import run_cli, stage_parser
from model.config import load_config


def measure(subjects: list, cfg, deployed, syn, rounds: int, progress: bool = True) -> dict:
    """Per round, the seconds of `syn` and `deployed` on every ordered pair, back to back per pair."""
    from model.data import test_pairs

    pairs = test_pairs(subjects)
    out = []
    for r in range(rounds):
        times = {"ants_syn": [], "int8_deployed": []}
        for mi, fi in pairs:
            m, f = subjects[mi], subjects[fi]
            for name, fn in (("ants_syn", syn), ("int8_deployed", deployed)):
                t0 = time.perf_counter()
                fn(m, f)
                times[name].append(time.perf_counter() - t0)
        row = {k: statistics.fmean(v) for k, v in times.items()}
        row["ratio"] = row["ants_syn"] / row["int8_deployed"]
        out.append(row)
        if progress:
            print(f"[speed] round {r + 1}/{rounds}: SyN {row['ants_syn'] * 1e3:.1f} ms, deployed "
                  f"{row['int8_deployed'] * 1e3:.1f} ms per pair, {row['ratio']:.2f}x", file=sys.stderr)
    return {"pairs": len(pairs), "rounds": out, **{
        k: {"median": statistics.median(x[k] for x in out), "min": min(x[k] for x in out),
            "max": max(x[k] for x in out)} for k in ("ants_syn", "int8_deployed", "ratio")}}


def markdown(res: dict) -> str:
    s, d, q = res["ants_syn"], res["int8_deployed"], res["ratio"]
    ms = lambda x: f"{x['median'] * 1e3:.1f} ({x['min'] * 1e3:.1f} .. {x['max'] * 1e3:.1f})"  # noqa: E731
    return (f"{res['pairs']} ordered test pairs, {len(res['rounds'])} rounds, each pair registered by SyN and "
            f"then by the deployed registration, both on one thread; median (min .. max) over rounds.\n\n"
            "| | ms per pair |\n|---|---|\n"
            f"| ANTs SyN (1 thread) | {ms(s)} |\n"
            f"| int8 deployed ({res.get('backend', '?')}, 1 thread, global stage + network + refinement) | {ms(d)} |\n"
            f"| SyN / deployed | {q['median']:.1f}x ({q['min']:.1f}x .. {q['max']:.1f}x) |\n")


def main(argv=None) -> int:
    ap = stage_parser(__doc__)
    ap.add_argument("--out", required=True, type=Path, help="the run directory (OUT of make demo)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)

    def body():
        from benchmarks.accuracy import load_deployed
        from benchmarks.classical import table1_peer
        from model.data import load_dataset
        from model.evaluate import registration_fn

        if a.rounds < 1:
            raise ValueError(f"--rounds {a.rounds}: expected at least 1")
        cfg = load_config(a.config)
        subjects = load_dataset(a.data, cfg.data, "test", progress=not a.no_progress)
        reg = load_deployed(a.out / "export", cfg)
        res = {"git_commit": git_commit(), "config": str(a.config), "backend": reg.name,
               **measure(subjects, cfg, registration_fn(reg), table1_peer(cfg, "SyN"), a.rounds, not a.no_progress)}
        atomic_write_json(a.out / "report" / "speed.json", res)
        atomic_write_text(a.out / "report" / "speed.md", markdown(res))
        print(markdown(res))
        return 0
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
