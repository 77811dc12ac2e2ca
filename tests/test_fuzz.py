"""Crafted input for every file reader: each case must end in a clean refusal (a ValueError or
OSError whose message names the file, as the CLIs print it with exit code 2) or a result that
honours the reader's promises. Any other exception fails the test with its traceback.

Seeded generators, no Hypothesis database: a failure names its seed and case and reproduces.
The default suite runs CASES cases per reader (a few seconds); the opt-in run
(`make test-fuzz`, `-m fuzz`) runs FUZZ_CASES per reader (>= 1,000 in all).

Readers and what a valid file must still give:
- weights.bin (export.weights.read_weights + hw.reference): fields mutated one at a time with
  every CRC recomputed, so the semantic checks are what is tested, not the CRC; an accepted
  file runs through the integer reference to an int8 field.
- golden manifests (hw.verify.read_manifest + verify): an accepted manifest is verified
  against a copy of itself, and no file appears outside the golden directory.
- .npy dumps and images (hw.npy.read_npy): an accepted file gives the array its header
  describes, as numpy reads it.
- configs (model.config.load_config): an accepted config passes its own validation again.
- NIfTI headers (model.data.read_volume): an accepted volume is 3-D with a finite,
  invertible affine and finite voxels.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = 40                                               # per reader, default suite
FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "250"))    # per reader, opt-in run (5 readers)
INTERESTING = [0, 1, -1, 2, 7, 8, 15, 16, 127, 128, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1]


def refused_or_ok(fn, path: Path, named: str | None = None):
    """'ok' with fn's result, or 'refused' when fn raised a ValueError/OSError naming `path`'s
    file name (or `named`, a directory whose files the reader may name instead)."""
    try:
        return "ok", fn()
    except (ValueError, OSError) as e:
        msg = str(e)
        want = named or path.name
        assert want in msg, f"refusal does not name {want}: {msg}"
        return "refused", msg


# ---------------------------------------------------------------- weights.bin

def _valid_weights(path: Path, rng) -> None:
    from export.weights import OP_CONV3D, write_weights
    from hw.compiler import structural_weights

    wb = structural_weights(4, 2, [0, 1, 2], first_kernel=3)
    for r in wb.records.values():
        if r.op == OP_CONV3D:
            r.weight = rng.integers(-127, 128, r.weight.shape).astype(np.int8)
            r.weight[rng.random(r.weight.shape) < 0.3] = 0
            r.bias = rng.integers(-1000, 1000, r.bias.shape).astype(np.int32)
            r.e0, r.e1 = 7, 4
        else:
            r.e0 = 4
    meta = {**wb.meta, "format": "fuzz"}
    write_weights(path, list(wb.records.values()), meta)


def _recrc(data: bytearray) -> bytearray:
    """Recompute every CRC (and the file-size and meta fields) of a weights.bin after a mutation."""
    from export.weights import HEADER, RECORD

    if len(data) < HEADER.size:
        return data
    f = list(HEADER.unpack_from(data))
    f[4] = len(data)
    meta_end = min(len(data), f[2] + f[5])
    f[6] = zlib.crc32(bytes(data[f[2]:meta_end]))
    HEADER.pack_into(data, 0, *f)
    struct.pack_into("<I", data, HEADER.size - 4, zlib.crc32(bytes(data[:HEADER.size - 4])))
    at = f[2] + f[5]
    while at + RECORD.size <= len(data):
        size = struct.unpack_from("<I", data, at)[0]
        if size < RECORD.size or at + size > len(data):
            break
        struct.pack_into("<I", data, at + 4, zlib.crc32(bytes(data[at + 8:at + size])))
        at += size
    return data


def _mutate_weights(good: bytes, rng) -> bytes:
    from export.weights import HEADER, RECORD

    data = bytearray(good)
    meta_len = HEADER.unpack_from(data)[5]
    rec_starts, at = [], HEADER.size + meta_len
    while at < len(data):
        rec_starts.append(at)
        at += struct.unpack_from("<I", data, at)[0]
    kind = rng.integers(6)
    if kind == 0:    # a file-header field
        fmt = "<4sHHIIIIII"
        offs = [0, 4, 6, 8, 12, 16, 20, 24]
        i = int(rng.integers(1, len(offs)))
        size = struct.calcsize(fmt[1 + i] if i else "4s")
        val = int(rng.choice(INTERESTING)) % (1 << (8 * size))
        data[offs[i]:offs[i] + size] = val.to_bytes(size, "little")
        if i == 4:   # the file size: keep the mutation (not recomputed)
            struct.pack_into("<I", data, HEADER.size - 4, zlib.crc32(bytes(data[:HEADER.size - 4])))
            return bytes(data)
    elif kind == 1:  # a record-header field
        at = int(rng.choice(rec_starts))
        offs = [8, 9, 10, 11, 12, 13, 14, 16, 18, 20, 21, 22, 24, 28]
        widths = [1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 4, 4]
        j = int(rng.integers(len(offs)))
        val = int(rng.choice(INTERESTING)) % (1 << (8 * widths[j]))
        data[at + offs[j]:at + offs[j] + widths[j]] = val.to_bytes(widths[j], "little")
    elif kind == 2:  # bytes of a record's body (bias, exponents, payload)
        at = int(rng.choice(rec_starts))
        size = struct.unpack_from("<I", data, at)[0]
        for _ in range(int(rng.integers(1, 4))):
            p = at + RECORD.size + int(rng.integers(size - RECORD.size))
            data[p] = int(rng.integers(256))
    elif kind == 3:  # the metadata replaced by other JSON
        choices = ['[1, 2]', '{}', '{"model": 3}', '{"model": {"levels": 2}}',
                   '{"model": {"levels": 40, "ddf_levels": [0]}}', '{"model": {"levels": 2, "ddf_levels": [5]}}',
                   '{"model": {"levels": 1, "ddf_levels": [0, 1]}}', '"text"', '{"model": {"levels": 2, "ddf_levels": []}}',
                   '\xff\xfe', '{"model": {"levels": true, "ddf_levels": [0]}}']
        if rng.random() < 0.5:   # the graph edited: a node's field, an operand, a shape
            meta = json.loads(bytes(data[HEADER.size:HEADER.size + meta_len]))
            choices = [json.dumps({**meta, "graph": _mutate_json(meta["graph"], rng)})]
        raw = str(rng.choice(choices)).encode("latin-1")
        raw += b" " * ((-len(raw)) % 16)
        f = list(HEADER.unpack_from(data))
        data = data[:HEADER.size] + raw + data[HEADER.size + meta_len:]
        f[5] = len(raw)
        HEADER.pack_into(data, 0, *f)
    elif kind == 4:  # truncated or extended (sizes recomputed: the records must catch it)
        cut = int(rng.integers(HEADER.size, len(data) + 64))
        data = data[:cut] + bytes(max(0, cut - len(data)))
    else:            # a record's exponent or bias set to an extreme
        at = int(rng.choice(rec_starts))
        data[at + 13 + int(rng.integers(2))] = int(rng.choice([0x7F, 0x80, 0x40, 0xC0]))
        name_len = data[at + 12]
        if data[at + 8] == 1:
            p = at + RECORD.size + (name_len + 3) // 4 * 4
            struct.pack_into("<i", data, p, int(rng.choice([2**31 - 1, -2**31])))
    return bytes(_recrc(data))


def _fuzz_weights(tmp: Path, n: int, seed: int) -> dict:
    from hw.reference import Reference

    rng = np.random.default_rng(seed)
    good = tmp / "good.bin"
    _valid_weights(good, rng)
    x = np.random.default_rng(1).random((2, 8, 8, 8))
    counts = {"ok": 0, "refused": 0}
    for k in range(n):
        p = tmp / f"w{k}.bin"
        p.write_bytes(_mutate_weights(good.read_bytes(), rng))
        res, val = refused_or_ok(lambda: Reference.from_file(p).register(x[0], x[1]), p)
        if res == "ok":
            q, e = val
            assert q.dtype == np.int8 and q.shape == (3, 8, 8, 8), (seed, k)
        counts[res] += 1
        p.unlink()
    return counts


# ---------------------------------------------------------------- golden manifests

def _golden_dir(tmp: Path) -> Path:
    g = tmp / "golden"
    rng = np.random.default_rng(0)
    pairs = []
    for k in range(2):
        d = g / f"pair_{k:02d}"
        d.mkdir(parents=True)
        tensors = {}
        for name, shape in (("input", [1, 2, 4, 4, 4]), ("a.act", [1, 3, 2, 2, 2]), ("ddf", [1, 3, 4, 4, 4])):
            np.save(d / f"{name}.npy", rng.integers(-128, 128, shape).astype(np.int8))
            tensors[name] = {"shape": shape, "exponent": 4, "dtype": "int8"}
        pairs.append({"dir": d.name, "tensors": tensors})
    (g / "manifest.json").write_text(json.dumps({"weights": "w.bin", "weights_sha256": "0" * 64, "pairs": pairs}))
    return g


def _mutate_json(obj, rng, depth=0):
    """One random change somewhere in a JSON value: a key removed, a value replaced by another
    type, a path-like string (absolute, '..', separators)."""
    nasty = [None, -1, 0, 1.5, "", "..", "/tmp", "../../etc", "a/b", "pair_00", [], {}, [0], [-3, 2], 2**40,
             [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], True, "x" * 300, [2**31, 2**31]]
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        k = str(rng.choice(sorted(obj)))
        r = rng.random()
        if r < 0.2:
            obj = dict(obj)
            del obj[k]
            return obj
        if r < 0.35 and depth > 0:
            obj = dict(obj)
            obj[str(rng.choice(["..", "/abs", "a/b", "", "ok_name"]))] = obj.pop(k)
            return obj
        return {**obj, k: _mutate_json(obj[k], rng, depth + 1)}
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        i = int(rng.integers(len(obj)))
        if rng.random() < 0.2:
            return obj[:i] + obj[i + 1:]
        return obj[:i] + [_mutate_json(obj[i], rng, depth + 1)] + obj[i + 1:]
    return nasty[int(rng.integers(len(nasty)))]


def _fuzz_manifests(tmp: Path, n: int, seed: int) -> dict:
    from hw.verify import read_manifest, verify

    rng = np.random.default_rng(seed)
    g = _golden_dir(tmp)
    accel = tmp / "accel"
    shutil.copytree(g, accel)
    outside = tmp / "outside"
    outside.mkdir()
    good = json.loads((g / "manifest.json").read_text())
    before = sorted(str(p) for p in tmp.rglob("*"))
    counts = {"ok": 0, "refused": 0}
    man = g / "manifest.json"
    for k in range(n):
        bad = _mutate_json(good, rng)
        if rng.random() < 0.1:   # not JSON at all
            man.write_bytes(json.dumps(bad).encode()[: int(rng.integers(1, 40))])
        else:
            man.write_text(json.dumps(bad))
        res, val = refused_or_ok(lambda: (read_manifest(g), verify(g, accel)), man, named=str(tmp))
        if res == "ok":
            m, (total, lines) = val
            assert total == 0 and len(lines) == sum(len(p["tensors"]) for p in m["pairs"]) > 0, (seed, k)
        counts[res] += 1
    man.write_text(json.dumps(good))
    assert sorted(str(p) for p in tmp.rglob("*")) == before  # nothing written anywhere
    return counts


# ---------------------------------------------------------------- .npy

def _fuzz_npy(tmp: Path, n: int, seed: int) -> dict:
    from hw.npy import read_npy

    rng = np.random.default_rng(seed)
    counts = {"ok": 0, "refused": 0}
    for k in range(n):
        a = rng.integers(-128, 128, tuple(rng.integers(1, 5, int(rng.integers(1, 5))))).astype(
            rng.choice(["int8", "int16", "float32", "float64", "complex64", "uint8"]))
        b = io.BytesIO()
        np.save(b, a)
        raw = bytearray(b.getvalue())
        hlen = 10 + struct.unpack_from("<H", raw, 8)[0]
        r = int(rng.integers(5))
        if r == 0:      # header text rewritten: shape, dtype, order
            head = raw[10:hlen].decode("latin-1")
            head = head.replace(str(a.shape).replace(",)", ",)"), str(rng.choice(
                ["(10**15,)", "(-1, 2)", "(1000000, 1000000)", "()", "(2, 'a')", "(0,)"])), 1) if rng.random() < 0.5 \
                else head.replace(np.lib.format.dtype_to_descr(a.dtype), str(rng.choice(["|O", "<c16", "<f8", "|V8", "xx"])))
            head = head.ljust(hlen - 10)[: max(hlen - 10, len(head))]
            raw = raw[:10] + head.encode("latin-1") + raw[hlen:]
            struct.pack_into("<H", raw, 8, len(head))
        elif r == 1:    # truncated
            raw = raw[: int(rng.integers(0, len(raw)))]
        elif r == 2:    # extended
            raw += bytes(int(rng.integers(1, 9)))
        elif r == 3:    # a header byte flipped
            raw[int(rng.integers(0, hlen))] ^= 1 << int(rng.integers(8))
        else:           # data bytes replaced (float NaN/inf possible)
            for _ in range(3):
                if len(raw) > hlen:
                    raw[int(rng.integers(hlen, len(raw)))] = 0xFF
        p = tmp / f"a{k}.npy"
        p.write_bytes(bytes(raw))
        res, val = refused_or_ok(lambda: read_npy(p), p)
        if res == "ok":   # what the header describes, as numpy itself reads it
            ref = np.load(p, allow_pickle=False)
            assert val.dtype == ref.dtype and np.array_equal(val, ref), (seed, k)
            assert val.dtype.kind in "biuf" and (val.dtype.kind != "f" or np.all(np.isfinite(val)))
        counts[res] += 1
        p.unlink()
    return counts


# ---------------------------------------------------------------- configs

def _fuzz_configs(tmp: Path, n: int, seed: int) -> dict:
    from model.config import ConfigError, load_config

    rng = np.random.default_rng(seed)
    base = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())
    values = [0, -1, 1, 2**40, -(2**40), 0.0, -0.5, 0.5, 1.5, 1e30, -1e30, math.inf, -math.inf, math.nan, "x",
              "moments", "none", True, False, [], [0], [-1, 2], [1.0, 1.0, 1.0], [[1, 4]], [0.9, 0.5], {"a": 1}]
    counts = {"ok": 0, "refused": 0}
    for k in range(n):
        raw = json.loads(json.dumps(base))
        for _ in range(int(rng.integers(1, 3))):
            sec = str(rng.choice(sorted(raw)))
            key = str(rng.choice(sorted(raw[sec]))) if rng.random() < 0.9 else "no_such_key"
            raw[sec][key] = values[int(rng.integers(len(values)))]
        text = "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in kv.items()) for s, kv in raw.items())
        if rng.random() < 0.05:
            text = text[: int(rng.integers(len(text)))]
        p = tmp / f"c{k}.toml"
        p.write_text(text)
        res, val = refused_or_ok(lambda: load_config(p), p)
        if res == "ok":
            val.validate()
        else:
            try:
                load_config(p)
            except ConfigError:
                pass   # every refusal of a config is a ConfigError (names the key as well as the file)
        counts[res] += 1
        p.unlink()
    return counts


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    return str(v)


# ---------------------------------------------------------------- NIfTI headers

def _fuzz_nifti(tmp: Path, n: int, seed: int) -> dict:
    import gzip

    import nibabel as nib

    from model.data import read_volume

    rng = np.random.default_rng(seed)
    img = nib.Nifti1Image(rng.random((6, 5, 4)).astype(np.float32), np.diag([2.0, 3.0, 2.0, 1.0]))
    good = img.to_bytes()
    # (offset, struct format) of the header fields a crafted file would change
    fields = [(40 + 2 * i, "<h") for i in range(8)] + [(70, "<h"), (72, "<h")] + \
             [(76 + 4 * i, "<f") for i in range(8)] + [(108, "<f"), (112, "<f"), (116, "<f"), (252, "<h"),
                                                       (254, "<h")] + [(256 + 4 * i, "<f") for i in range(6)] + \
             [(280 + 4 * i, "<f") for i in range(12)] + [(0, "<i"), (344, "<4s")]
    counts = {"ok": 0, "refused": 0}
    for k in range(n):
        raw = bytearray(good)
        for _ in range(int(rng.integers(1, 3))):
            off, fmt = fields[int(rng.integers(len(fields)))]
            if fmt == "<4s":
                val = bytes(rng.integers(0, 256, 4).astype(np.uint8))
            elif fmt == "<f":
                val = float(rng.choice([0.0, -1.0, 1e30, np.nan, np.inf, 1e-30, 7.0]))
            else:
                val = int(rng.choice([0, 1, -1, 2, 3, 4, 7, 8, 16, 32767, -32768, 64, 1024, 2]))
            struct.pack_into(fmt, raw, off, val)
        if rng.random() < 0.2:
            raw = raw[: int(rng.integers(0, len(raw)))]
        gz = rng.random() < 0.5
        p = tmp / f"v{k}.nii{'.gz' if gz else ''}"
        p.write_bytes(gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw))
        with np.errstate(all="ignore"):
            res, val = refused_or_ok(lambda: read_volume(p), p)
        if res == "ok":
            data, aff = val
            assert data.ndim == 3 and np.all(np.isfinite(aff)) and abs(np.linalg.det(aff[:3, :3])) > 0, (seed, k)
            assert not np.issubdtype(data.dtype, np.floating) or np.all(np.isfinite(data))
        counts[res] += 1
        p.unlink()
    return counts


READERS = {"weights": _fuzz_weights, "manifest": _fuzz_manifests, "npy": _fuzz_npy, "config": _fuzz_configs,
           "nifti": _fuzz_nifti}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_fuzz_quick(reader, tmp_path):
    counts = READERS[reader](tmp_path, CASES, seed=12345)
    assert counts["refused"] > 0, counts   # the generator does reach the checks


@pytest.mark.fuzz
@pytest.mark.parametrize("reader", sorted(READERS))
def test_fuzz_long(reader, tmp_path):
    counts = READERS[reader](tmp_path, FUZZ_CASES, seed=int(os.environ.get("FUZZ_SEED", "1")))
    print(f"\n[fuzz] {reader}: {counts}")
    assert counts["refused"] > 0, counts
