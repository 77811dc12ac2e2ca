"""The error handling every command-line entry point shares.

    def main(argv=None) -> int:
        a = parser.parse_args(argv)
        return run_cli(lambda: do_the_work(a))

Bad input (a missing or corrupted file, a config or data error: every such error of this
toolchain is a ValueError or an OSError carrying the file name) becomes one line
`error: <message>` on stderr and exit code 2, without a traceback. Standard library only:
board-side tools use it too.
"""
from __future__ import annotations

import sys
from typing import Callable


def run_cli(body: Callable[[], int | None]) -> int:
    """Run `body`; its return value (None: 0) is the exit code; bad input exits 2 with one line."""
    try:
        return body() or 0
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
