"""What every command-line entry point shares: the error handling, a stage's common arguments,
and the guard that keeps an output from overwriting an input.

    def main(argv=None) -> int:
        a = parser.parse_args(argv)
        return run_cli(lambda: do_the_work(a))

Bad input (a missing or corrupted file, a config or data error: every such error of this
toolchain is a ValueError or an OSError carrying the file name) becomes one line
`error: <message>` on stderr and exit code 2, without a traceback. Anything else is a bug of
the toolchain and keeps its traceback: readers validate what they read, so no crafted file
reaches one. Standard library only: board-side tools use it too.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable


class UsageError(ValueError):
    """A command line that contradicts itself (an output that is one of the inputs, ...)."""


DEVICE_HELP = ("where torch runs: auto (a GPU when there is one; under torchrun the process's own), "
               "cpu, cuda or cuda:N")


def stage_parser(doc: str, resume: str | None = None) -> argparse.ArgumentParser:
    """The arguments every pipeline stage takes: --config, --data, --no-progress; with `resume`
    (its help text), a training stage's --out, --resume and --device too."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="TOML config (configs/demo.toml)")
    ap.add_argument("--data", required=True, type=Path, help="IBSR-layout data directory")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    if resume:
        ap.add_argument("--device", default="auto", help=DEVICE_HELP)
        ap.add_argument("--out", required=True, type=Path, help="output directory of the stage")
        ap.add_argument("--resume", action="store_true", help=resume)
    return ap


def _same(a: Path, b: Path) -> bool:
    """The same file: equal resolved paths, or (both existing) the same inode."""
    if Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Refuse, before anything is written, an output file that is one of the inputs (by path or
    inode), that is named twice, or that is an existing directory. Keys are the option names."""
    outs = {k: Path(v) for k, v in outputs.items() if v is not None}
    ins = {k: Path(v) for k, v in inputs.items() if v is not None}
    for k, p in outs.items():
        if p.is_dir():
            raise UsageError(f"{k} {p}: is a directory, expected a file name")
        for ki, q in ins.items():
            if _same(p, q):
                raise UsageError(f"{k} {p}: is the input {ki} {q}; refusing to overwrite an input")
    names = list(outs.items())
    for i, (k, p) in enumerate(names):
        for k2, p2 in names[i + 1:]:
            if _same(p, p2):
                raise UsageError(f"{k} and {k2} name the same file {p}")


def check_dump_dir(out: Path, golden: Path) -> None:
    """Refuse a device's dump directory that is the golden directory it is checked against: its
    pair_XX/<tensor>.npy would replace the golden ones, and a verify would then pass on anything."""
    if Path(out).resolve() == Path(golden).resolve():
        raise UsageError(f"--out {out}: is the golden directory --golden {golden}; refusing to overwrite it")


def run_cli(body: Callable[[], int | None]) -> int:
    """Run `body`; its return value (None: 0) is the exit code; bad input exits 2 with one line."""
    try:
        return body() or 0
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
