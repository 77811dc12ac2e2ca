"""What every command-line entry point shares: the error handling, and a stage's common arguments.

    def main(argv=None) -> int:
        a = parser.parse_args(argv)
        return run_cli(lambda: do_the_work(a))

Bad input (a missing or corrupted file, a config or data error: every such error of this
toolchain is a ValueError or an OSError carrying the file name) becomes one line
`error: <message>` on stderr and exit code 2, without a traceback. Standard library only:
board-side tools use it too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


def stage_parser(doc: str, resume: str | None = None) -> argparse.ArgumentParser:
    """The arguments every pipeline stage takes: --config, --data, --no-progress; with `resume`
    (its help text), a training stage's --out and --resume too."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="TOML config (configs/demo.toml)")
    ap.add_argument("--data", required=True, type=Path, help="IBSR-layout data directory")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    if resume:
        ap.add_argument("--out", required=True, type=Path, help="output directory of the stage")
        ap.add_argument("--resume", action="store_true", help=resume)
    return ap


def run_cli(body: Callable[[], int | None]) -> int:
    """Run `body`; its return value (None: 0) is the exit code; bad input exits 2 with one line."""
    try:
        return body() or 0
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
