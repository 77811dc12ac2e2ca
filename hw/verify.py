"""Compare an accelerator's tensor dumps with the golden vectors, element for element.

    python -m hw.verify --golden runs/demo/golden --accel DUMPS     # a device's dumps
    python -m hw.verify --golden runs/demo/golden                   # the reference as the device

DUMPS has the golden layout: DUMPS/pair_XX/<tensor>.npy (int8, NCDHW), for every tensor the
golden manifest lists. Per pair and tensor it reports the number of mismatching elements,
the first mismatch as (n, c, d, h, w) with expected and actual values, and the largest
difference in LSB; exits 1 on any mismatch, 2 on unusable input (a missing tensor, a dump
of the wrong shape or dtype, an unreadable file). numpy only.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


class DumpError(ValueError):
    pass


def compare(expected: np.ndarray, actual: np.ndarray) -> dict:
    """Mismatch count, first mismatch (index tuple, expected, actual) and max |diff| in LSB."""
    diff = expected.astype(np.int16) - actual.astype(np.int16)
    bad = np.flatnonzero(diff)
    out = {"elements": int(expected.size), "mismatches": int(bad.size), "max_lsb": int(np.abs(diff).max(initial=0))}
    if bad.size:
        idx = tuple(int(i) for i in np.unravel_index(bad[0], expected.shape))
        out["first"] = {"index": idx, "expected": int(expected[idx]), "actual": int(actual[idx])}
    return out


def load_dump(path: Path, shape: list[int]) -> np.ndarray:
    if not path.is_file():
        raise DumpError(f"{path}: missing dump")
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DumpError(f"{path}: not a readable .npy ({e})") from None
    if a.dtype != np.int8:
        raise DumpError(f"{path}: dtype {a.dtype}, expected int8")
    if list(a.shape) != shape:
        raise DumpError(f"{path}: shape {list(a.shape)}, expected {shape}")
    return a


def verify(golden: Path, accel: Path) -> tuple[int, list[str]]:
    """(total mismatches, report lines)."""
    manifest = json.loads((golden / "manifest.json").read_text())
    total, lines = 0, []
    for pair in manifest["pairs"]:
        for name, meta in pair["tensors"].items():
            exp = load_dump(golden / pair["dir"] / f"{name}.npy", meta["shape"])
            act = load_dump(accel / pair["dir"] / f"{name}.npy", meta["shape"])
            c = compare(exp, act)
            total += c["mismatches"]
            if c["mismatches"]:
                f = c["first"]
                lines.append(f"MISMATCH {pair['dir']}/{name}: {c['mismatches']} of {c['elements']} elements; "
                             f"first at (n, c, d, h, w) = {f['index']}: expected {f['expected']}, "
                             f"actual {f['actual']}; max |diff| {c['max_lsb']} LSB")
            else:
                lines.append(f"ok       {pair['dir']}/{name}: {c['elements']} elements")
    return total, lines


def reference_dumps(golden: Path, out: Path) -> None:
    """Run the integer reference on the golden inputs, writing dumps in the golden layout."""
    from hw.reference import QTensor, Reference

    manifest = json.loads((golden / "manifest.json").read_text())
    ref = Reference.from_file(manifest["weights"])
    for pair in manifest["pairs"]:
        x = QTensor(np.load(golden / pair["dir"] / "input.npy"), pair["tensors"]["input"]["exponent"])
        trace: dict = {}
        ref.run(x, trace)
        d = out / pair["dir"]
        d.mkdir(parents=True, exist_ok=True)
        for name, t in trace.items():
            np.save(d / f"{name}.npy", t.q)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", required=True, type=Path)
    ap.add_argument("--accel", type=Path, help="the device's dumps; default: run the reference as the device")
    ap.add_argument("--quiet", action="store_true", help="print mismatches and the summary only")
    a = ap.parse_args(argv)
    if not (a.golden / "manifest.json").is_file():
        print(f"error: {a.golden}/manifest.json: no golden vectors (make golden)", file=sys.stderr)
        return 2
    try:
        if a.accel is None:
            with tempfile.TemporaryDirectory() as tmp:
                reference_dumps(a.golden, Path(tmp))
                total, lines = verify(a.golden, Path(tmp))
        else:
            total, lines = verify(a.golden, a.accel)
    except (DumpError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for ln in lines:
        if not (a.quiet and ln.startswith("ok")):
            print(ln)
    print(f"{'FAIL' if total else 'PASS'}: {total} mismatching elements in {len(lines)} tensors")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
