"""Compare an accelerator's tensor dumps with the golden vectors, element for element.

    python -m hw.verify --golden runs/demo/golden --accel DUMPS     # a device's dumps
    python -m hw.verify --golden runs/demo/golden                   # onnxruntime as the device

DUMPS has the golden layout: DUMPS/pair_XX/<tensor>.npy (int8, NCDHW), for every tensor the
golden manifest lists. Per pair and tensor it reports the number of mismatching elements,
the first mismatch as (n, c, d, h, w) with expected and actual values, and the largest
difference in LSB; exits 1 on any mismatch, 2 on unusable input (a missing tensor, a dump
of the wrong shape or dtype, an unreadable file, a weights.bin whose sha256 is not the one
the golden vectors were made from).

Without --accel the device is onnxruntime running the exported localnet_int8.onnx (beside
weights.bin; --onnx to name another) on the golden inputs: an implementation independent of
the reference (Brevitas' QCDQ graph, onnxruntime's kernels), so a PASS there is evidence, not
the reference compared with itself. Comparing dumps needs numpy only; that mode needs onnx
and onnxruntime too.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from hw.npy import NpyError, read_npy


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
    """A device's (or the golden) int8 dump of the expected shape (hw.npy.read_npy checks)."""
    if not path.is_file():
        raise DumpError(f"{path}: missing dump")
    try:
        return read_npy(path, dtypes=("int8",), shape=shape, kinds="i")
    except NpyError as e:
        raise DumpError(str(e)) from None


# a pair directory or tensor name in a manifest: one plain path component, so that every
# path the manifest names stays inside the golden (and the device's) directory
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_MAX_ELEMENTS = 1 << 31


def read_manifest(golden: Path) -> dict:
    """The golden manifest of `golden`, checked: weights, weights_sha256 and a non-empty list of
    pairs, each with a plain directory name and a table of tensors (plain names, positive
    integer shapes, integer exponents) that includes `input` and `ddf`. A DumpError names the file and the key."""
    path = golden / "manifest.json"
    if not path.is_file():
        raise DumpError(f"{path}: no golden vectors (make golden)")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DumpError(f"{path}: not a readable JSON manifest ({e})") from None
    if not isinstance(m, dict):
        raise DumpError(f"{path}: not a golden-vector manifest (a JSON object is expected)")
    missing = [k for k in ("weights", "weights_sha256", "pairs") if k not in m]
    if missing:
        raise DumpError(f"{path}: not a golden-vector manifest (no {', '.join(missing)}; make golden)")
    if not isinstance(m["weights"], str) or not isinstance(m["weights_sha256"], str):
        raise DumpError(f"{path}: weights and weights_sha256 must be strings")
    if not isinstance(m["pairs"], list) or not m["pairs"]:
        raise DumpError(f"{path}: pairs is empty or not a list: nothing to verify")
    dirs = set()
    for i, p in enumerate(m["pairs"]):
        where = f"{path}: pairs[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("dir"), str) or not isinstance(p.get("tensors"), dict):
            raise DumpError(f"{where}: needs a 'dir' string and a 'tensors' table")
        if not _NAME.match(p["dir"]) or p["dir"] in (".", "..") or p["dir"] in dirs:
            raise DumpError(f"{where}: dir {p['dir']!r} must be a new plain directory name inside {golden}")
        dirs.add(p["dir"])
        if "input" not in p["tensors"] or "ddf" not in p["tensors"]:
            raise DumpError(f"{where}: lists no 'input' or no 'ddf' tensor")
        for name, t in p["tensors"].items():
            if not _NAME.match(name):
                raise DumpError(f"{where}: tensor name {name!r} is not a plain file name")
            shp = t.get("shape") if isinstance(t, dict) else None
            if (not isinstance(shp, list) or not shp or any(type(n) is not int or n < 1 for n in shp)
                    or math.prod(shp) > _MAX_ELEMENTS or type(t.get("exponent")) is not int):
                raise DumpError(f"{where}: tensor {name}: needs a shape of positive integers "
                                f"(at most 2^31 elements) and an integer exponent")
    return m


def read_fused(accel: Path, manifest: dict) -> dict[str, str]:
    """The tensors a device never holds in memory, from ACCEL/fused.json ({"fused": {tensor: the
    tensor it was fused into}}; none without the file): each a golden tensor whose fused-into
    tensor is compared, never the input or the displacement field."""
    path = accel / "fused.json"
    if not path.is_file():
        return {}
    try:
        fused = json.loads(path.read_text()).get("fused")
    except (ValueError, AttributeError) as e:
        raise DumpError(f"{path}: not a fused-tensor list ({e})") from None
    names = {n for p in manifest["pairs"] for n in p["tensors"]}
    if not isinstance(fused, dict):
        raise DumpError(f"{path}: needs {{\"fused\": {{tensor: tensor it was fused into}}}}")
    for k, v in fused.items():
        if k in ("input", "ddf") or k not in names or v not in names or v in fused:
            raise DumpError(f"{path}: {k!r} -> {v!r}: a fused tensor must be a golden tensor other than input and "
                            "ddf, fused into one that is compared")
    return fused


def compared(lines: list[str]) -> int:
    """How many of verify's report lines are tensors compared (the rest: fused away by the device)."""
    return sum(not ln.startswith("fused") for ln in lines)


def verify(golden: Path, accel: Path) -> tuple[int, list[str]]:
    """(total mismatches, report lines: one per tensor compared, or fused away by the device)."""
    manifest = read_manifest(golden)
    fused = read_fused(accel, manifest)
    total, lines = 0, []
    for pair in manifest["pairs"]:
        for name, meta in pair["tensors"].items():
            if name in fused:
                lines.append(f"fused    {pair['dir']}/{name}: not in the device's memory (its add is fused: "
                             f"{fused[name]} is compared)")
                continue
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
    if not lines:  # read_manifest refuses this already; a PASS must have compared something
        raise DumpError(f"{golden}/manifest.json: no tensor compared")
    return total, lines


def check_weights(golden: Path, weights: Path | None = None) -> Path:
    """The weights.bin the golden vectors were made from (or `weights`), its sha256 checked
    against the golden manifest's: a device loading other weights cannot be verified."""
    from model.artifacts import sha256_file

    manifest = read_manifest(golden)
    path = Path(weights or manifest["weights"])
    if not path.is_file():
        raise DumpError(f"{path}: weights file of the golden vectors not found (--weights to name it)")
    if sha256_file(path) != manifest["weights_sha256"]:
        raise DumpError(f"{path}: sha256 differs from the one in {golden}/manifest.json: the golden vectors "
                        "were made from other weights (make golden FORCE=1 regenerates them)")
    return path


def onnx_dumps(golden: Path, onnx_path: Path, out: Path) -> None:
    """Run onnxruntime (hw.crosscheck.OnnxDevice) on the golden inputs; dumps in the golden layout."""
    from hw.crosscheck import OnnxDevice
    from hw.reference import QTensor

    manifest = read_manifest(golden)
    dev = OnnxDevice(onnx_path)
    for pair in manifest["pairs"]:
        tensors = pair["tensors"]
        x = QTensor(load_dump(golden / pair["dir"] / "input.npy", tensors["input"]["shape"]),
                    tensors["input"]["exponent"])
        got = dev.run(x)
        e = tensors["ddf"]["exponent"]  # the float ddf is q * 2^-e exactly
        got["ddf"] = np.clip(np.rint(got.pop("__ddf_float").astype(np.float64) * 2.0**e), -128, 127)
        d = out / pair["dir"]
        d.mkdir(parents=True, exist_ok=True)
        for name in tensors:
            if name in got:
                np.save(d / f"{name}.npy", got[name].astype(np.int8))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", required=True, type=Path)
    ap.add_argument("--accel", type=Path, help="the device's dumps; default: onnxruntime as the device")
    ap.add_argument("--weights", type=Path, help="the weights.bin the device ran (default: the golden manifest's)")
    ap.add_argument("--onnx", type=Path, help="without --accel: the int8 ONNX (default: beside weights.bin)")
    ap.add_argument("--quiet", action="store_true", help="print mismatches and the summary only")
    a = ap.parse_args(argv)
    from model.cli import run_cli

    def body():
        weights = check_weights(a.golden, a.weights)
        if a.accel is not None:
            if not a.accel.is_dir():
                raise DumpError(f"--accel {a.accel}: no such directory of device dumps")
            if a.accel.resolve() == a.golden.resolve():
                raise DumpError(f"--accel {a.accel} is the golden directory: the vectors would be compared "
                                "with themselves")
        if a.accel is None:
            onnx_path = a.onnx or weights.parent / "localnet_int8.onnx"
            if not onnx_path.is_file():
                raise DumpError(f"{onnx_path}: int8 ONNX not found (make export, or --onnx)")
            with tempfile.TemporaryDirectory() as tmp:
                onnx_dumps(a.golden, onnx_path, Path(tmp))
                total, lines = verify(a.golden, Path(tmp))
            print(f"device: onnxruntime running {onnx_path}")
        else:
            total, lines = verify(a.golden, a.accel)
        for ln in lines:
            if not (a.quiet and ln.startswith(("ok", "fused"))):
                print(ln)
        n = compared(lines)
        note = f" ({len(lines) - n} fused away, not in the device's memory)" if n < len(lines) else ""
        print(f"{'FAIL' if total else 'PASS'}: {total} mismatching elements in {n} tensors{note}")
        return 1 if total else 0
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
