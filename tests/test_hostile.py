"""The attacks and careless mistakes of issue 30, each through its command-line entry point:
every one ends in exit code 2 (1 for a benchmark that measured nothing) with one line naming
the file or config key and the problem, no code run from a file, and nothing overwritten or
deleted."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _run(main, args, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _nifti(path: Path, shift_mm: float = 0.0, seed: int = 0) -> Path:
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = [-30.0 + shift_mm, -30.0, -30.0]
    img = np.random.default_rng(seed).random((16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, aff), str(path))
    return path


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("module", ["model.register", "quant.prune", "model.evaluate"])
def test_checkpoint_cannot_run_code(module, tmp_path, tiny_config, tiny_data, capsys):
    import importlib

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": _Payload(marker), "stage": "train"}, evil)
    f, m = _nifti(tmp_path / "f.nii.gz"), _nifti(tmp_path / "m.nii.gz", seed=1)
    args = {"model.register": ["--ckpt", evil, "--fixed", f, "--moving", m, "--out", tmp_path / "w.nii.gz"],
            "quant.prune": ["--config", tiny_config, "--ckpt", evil, "--data", tiny_data, "--out", tmp_path / "p"],
            "model.evaluate": ["--ckpt", evil, "--data", tiny_data, "--out", tmp_path / "e"]}[module]
    rc, err = _run(importlib.import_module(module).main, args, capsys)
    assert rc == 2 and not marker.exists()
    line = _one_error(err)
    assert f"{evil}: refused: it holds objects other than tensors and plain data" in line


@pytest.mark.parametrize("out, ddf, message", [
    ("moving", None, "--out {moving}: is the input --moving {moving}; refusing to overwrite an input"),
    ("fixed", None, "--out {fixed}: is the input --fixed {fixed}"),
    ("ckpt", None, "--out {ckpt}: is the input --ckpt {ckpt}"),
    ("link", None, "--out {link}: is the input --moving {moving}"),          # the same inode
    ("w", "moving", "--ddf {moving}: is the input --moving {moving}"),
    ("w", "w", "--out and --ddf name the same file {w}"),
    ("w", "dir", "--ddf {dir}: is a directory"),
])
def test_register_never_overwrites_an_input(out, ddf, message, tmp_path, capsys):
    from model.register import main

    p = {"moving": _nifti(tmp_path / "m.nii.gz"), "fixed": _nifti(tmp_path / "f.nii.gz", seed=1),
         "ckpt": tmp_path / "model.pt", "w": tmp_path / "w.nii.gz", "dir": tmp_path / "d", "link": tmp_path / "l.nii.gz"}
    p["ckpt"].write_bytes(b"a checkpoint")
    p["dir"].mkdir()
    os.link(p["moving"], p["link"])
    before = {k: v.read_bytes() for k, v in p.items() if v.is_file()}
    args = ["--ckpt", p["ckpt"], "--fixed", p["fixed"], "--moving", p["moving"], "--out", p[out]]
    rc, err = _run(main, args + (["--ddf", p[ddf]] if ddf else []), capsys)
    assert rc == 2 and message.format(**p) in _one_error(err)
    assert {k: v.read_bytes() for k, v in p.items() if v.is_file()} == before
    assert not p["w"].exists() and list(p["dir"].iterdir()) == []


def test_register_refuses_volumes_that_do_not_overlap(tiny_run, tmp_path, capsys):
    from model.register import main

    _, run = tiny_run
    f, m = _nifti(tmp_path / "f.nii.gz"), _nifti(tmp_path / "m.nii.gz", shift_mm=10_000.0, seed=1)
    rc, err = _run(main, ["--ckpt", run / "train" / "model.pt", "--fixed", f, "--moving", m,
                          "--out", tmp_path / "w.nii.gz"], capsys)
    assert rc == 2 and not (tmp_path / "w.nii.gz").exists()
    assert f"{f} and {m}: their fields of view do not overlap in world space (centres 10000 mm apart)" in _one_error(err)


def _weights(path: Path, edit=None, meta=None) -> Path:
    """A structurally valid weights.bin (levels 2, 4 channels), `edit(records)` applied first."""
    from export.weights import OP_CONV3D, write_weights
    from hw.compiler import structural_weights

    rng = np.random.default_rng(0)
    wb = structural_weights(4, 2, [0, 1, 2], first_kernel=3)
    for r in wb.records.values():
        r.e0 = 4 if r.op != OP_CONV3D else 7
        if r.op == OP_CONV3D:
            r.e1 = 4
            r.weight = rng.integers(-20, 21, r.weight.shape).astype(np.int8)
    if edit:
        edit(wb.records)
    graph = isinstance(meta, dict) and "graph" in meta   # the writer refuses a bad graph: spliced in after
    write_weights(path, list(wb.records.values()), wb.meta if meta is None or graph else meta)
    raw = path.read_bytes()
    if graph:
        from export.weights import HEADER
        from test_fuzz import _recrc

        f = list(HEADER.unpack_from(raw))
        new = json.dumps(meta).encode()
        new += b" " * (-len(new) % 16)
        data = bytearray(raw[:HEADER.size] + new + raw[HEADER.size + f[5]:])
        f[5] = len(new)
        HEADER.pack_into(data, 0, *f)
        raw = bytes(_recrc(data))
        path.write_bytes(raw)
    marker = bytes([0x81, 0x7E, 0x81, 0x7D])
    if marker in raw:  # a weight of -128, every CRC recomputed: only the range check can refuse it
        from test_fuzz import _recrc

        path.write_bytes(bytes(_recrc(bytearray(raw.replace(marker, b"\x80" + marker[1:], 1)))))
    return path


def _graph(base: int = 4, swap: tuple[int, int] | None = None) -> dict:
    """The graph of _weights' network (other base channels; two nodes swapped) as JSON."""
    from model.graph import localnet_graph

    g = localnet_graph(2, [0, 1, 2], base, first_kernel=3).to_json()
    if swap:
        i, j = swap
        g["nodes"][i], g["nodes"][j] = g["nodes"][j], g["nodes"][i]
    return g


def _set(name, **kw):
    def edit(recs):
        for k, v in kw.items():
            if k == "weight_min":  # the writer refuses -128: a marker the file is patched at
                recs[name].weight.flat[:4] = [-127, 126, -127, 125]
            elif k == "bias0":
                recs[name].bias[0] = v
            else:
                setattr(recs[name], k, v)
    return edit


@pytest.mark.parametrize("edit, meta, message", [
    (_set("down.0.c1.conv", weight_min=-128), None,
     "record {i} (down.0.c1.conv): weight -128 outside the narrow int8 range [-127, 127]"),
    (_set("down.0.c1.conv", e_ch=np.full(4, 127), e0=0), None,
     "down.0.c1.conv: requantisation shift 127..127 outside [-15, 31]"),
    (_set("down.0.c1.conv", bias0=2**31 - 1), None, "down.0.c1.conv: accumulator bound"),
    (None, {"levels": 2}, "no 'graph' in the metadata"),
    (None, {"graph": _graph(base=8)}, "node 1 (down.0.c0.act): record down.0.c0.conv has weights (4, 2, 3, 3, 3), "
                                      "the graph needs (8, 2, 3, 3, 3)"),
    (None, {"graph": _graph(swap=(1, 2))}, "node 1 (down.0.c1.act): operand 'down.0.c0.act' is not the output of "
                                           "an earlier node"),
    (None, [1, 2], "metadata must be a JSON object, got list"),
])
def test_reference_refuses_crafted_weights(edit, meta, message, tmp_path, capsys):
    from hw.reference import main

    w = _weights(tmp_path / "w.bin", edit, meta)
    x = np.random.default_rng(0).random((8, 8, 8))
    np.save(tmp_path / "m.npy", x)
    np.save(tmp_path / "f.npy", x)
    rc, err = _run(main, ["--weights", w, "--moving", tmp_path / "m.npy", "--fixed", tmp_path / "f.npy",
                          "--out", tmp_path / "o.npy"], capsys)
    line = _one_error(err)
    assert rc == 2 and str(w) in line, line
    assert message.replace("record {i} (", "") in line, line
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("case, message", [
    ("out_is_input", "--out {m}: is the input --moving {m}"),
    ("nan", "{m}: 1 NaN or inf value(s)"),
    ("complex", "{m}: dtype complex128 is not allowed here"),
    ("empty", "{m}: not a readable .npy file"),
    ("huge", "{m}: the header says [1000000000, 1000000, 4] int8 (4000000000000000 bytes), the file holds"),
    ("shape", "{m}: shape (8, 8, 8), {f}: shape (16, 8, 8): they must be equal"),
])
def test_reference_cli_refuses_bad_arrays(case, message, tmp_path, capsys):
    from hw.reference import main

    w = _weights(tmp_path / "w.bin")
    m, f = tmp_path / "m.npy", tmp_path / "f.npy"
    x = np.random.default_rng(0).random((8, 8, 8))
    np.save(m, x)
    np.save(f, x)
    out = tmp_path / "o.npy"
    if case == "out_is_input":
        out = m
    elif case == "nan":
        x[1, 2, 3] = np.nan
        np.save(m, x)
    elif case == "complex":
        np.save(m, x.astype(np.complex128))
    elif case == "empty":
        m.write_bytes(b"")
    elif case == "huge":  # a header claiming 10^15 elements on a small file
        np.save(m, np.zeros((4, 4, 4), np.int8))
        raw = m.read_bytes().replace(b"(4, 4, 4)", b"(1000000000, 1000000, 4)")
        m.write_bytes(raw)
    elif case == "shape":
        np.save(f, np.zeros((16, 8, 8)))
    before = m.read_bytes()
    rc, err = _run(main, ["--weights", w, "--moving", m, "--fixed", f, "--out", out], capsys)
    assert rc == 2 and message.format(m=m, f=f) in _one_error(err)
    assert m.read_bytes() == before and not (tmp_path / "o.npy").exists()


def _golden(tmp_path: Path, pairs) -> tuple[Path, Path]:
    g = tmp_path / "golden"
    g.mkdir(parents=True)
    w = tmp_path / "w.bin"
    w.write_bytes(b"weights")
    (g / "manifest.json").write_text(json.dumps({"weights": str(w), "pairs": pairs,
                                                 "weights_sha256": hashlib.sha256(b"weights").hexdigest()}))
    return g, w


def test_verify_refuses_vacuous_and_escaping_manifests(tmp_path, capsys):
    from hw.verify import main

    t = {"shape": [1, 2, 2, 2, 2], "exponent": 4, "dtype": "int8"}
    g, _ = _golden(tmp_path, [])
    rc, err = _run(main, ["--golden", g, "--accel", tmp_path], capsys)
    assert rc == 2 and f"{g}/manifest.json: pairs is empty or not a list: nothing to verify" in _one_error(err)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for p in (["input", "ddf"]):
        np.save(elsewhere / f"{p}.npy", np.zeros(t["shape"], np.int8))
    g2, _ = _golden(tmp_path / "b", [{"dir": str(elsewhere), "tensors": {"input": t, "ddf": t}}])
    rc, err = _run(main, ["--golden", g2, "--accel", "/nonexistent"], capsys)
    assert rc == 2 and f"must be a new plain directory name inside {g2}" in _one_error(err)
    g3, _ = _golden(tmp_path / "c", [{"dir": "pair_00", "tensors": {"input": t, "ddf": t}}])
    rc, err = _run(main, ["--golden", g3, "--accel", "/nonexistent"], capsys)
    assert rc == 2 and "--accel /nonexistent: no such directory of device dumps" in _one_error(err)
    rc, err = _run(main, ["--golden", g3, "--accel", g3], capsys)
    assert rc == 2 and "is the golden directory" in _one_error(err)
    g4, _ = _golden(tmp_path / "d", [{"dir": "pair_00", "tensors": {"../../x": t, "input": t, "ddf": t}}])
    rc, err = _run(main, ["--golden", g4], capsys)
    assert rc == 2 and "tensor name '../../x' is not a plain file name" in _one_error(err)


def test_golden_force_deletes_only_its_own_files(tmp_path, tiny_config, tiny_data, capsys):
    from hw.golden import main

    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "train" / "model.pt").write_bytes(b"precious")
    rc, err = _run(main, ["--weights", tmp_path / "w.bin", "--config", tiny_config, "--data", tiny_data,
                          "--out", run, "--force"], capsys)
    assert rc == 2 and f"{run}: holds train, which are not golden vectors" in _one_error(err)
    assert (run / "train" / "model.pt").read_bytes() == b"precious"


@pytest.mark.parametrize("pairs", ["0", "-1", "100"])
def test_golden_pairs_range(pairs, tiny_export, tiny_data, tmp_path, capsys):
    from hw.golden import main

    cfg, out, _ = tiny_export
    rc, err = _run(main, ["--weights", out / "export" / "weights.bin", "--config", cfg, "--data", tiny_data,
                          "--out", tmp_path / "g", "--pairs", pairs], capsys)
    assert rc == 2 and f"--pairs {pairs}: must lie in [1, 2]" in _one_error(err)
    assert not (tmp_path / "g").exists()


def test_latency_that_measured_nothing_fails_and_keeps_results(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from latency import main

    from hw.runtime import write_settings
    from model.config import config_from_dict, config_to_dict

    export = tmp_path / "export"
    export.mkdir()
    cfg = config_from_dict({"data": {"shape": [16, 16, 16]}, "model": {"levels": 2, "ddf_levels": [0, 1, 2]}})
    (export / "manifest.json").write_text(json.dumps({"config": config_to_dict(cfg), "ddf_exponent": 4}))
    write_settings(cfg, export)  # an export without weights.bin: the reference_int worker fails
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "latency.json").write_text('{"earlier": "results"}')
    rc, err = _run(main, ["--export", export, "--out", bench, "--backends", "reference_int", "--runs", "1",
                          "--warmup", "0"], capsys)
    assert rc == 1 and "no backend was measured" in _one_error(err)
    assert (bench / "latency.json").read_text() == '{"earlier": "results"}' and len(list(bench.iterdir())) == 1
    (export / "registration.json").unlink()  # an export of the format before it: refused before any run
    rc, err = _run(main, ["--export", export, "--out", bench, "--backends", "reference_int"], capsys)
    assert rc == 2 and "registration.json: missing" in _one_error(err)


def test_train_refuses_negative_steps_and_another_data_dir(tiny_config, tiny_data, tmp_path, capsys):
    import shutil

    from model.train import main

    rc, err = _run(main, ["--config", tiny_config, "--data", tiny_data, "--out", tmp_path / "t", "--steps", "-5"], capsys)
    assert rc == 2 and "train.steps = -5: each value must lie in [0, " in _one_error(err)
    assert not (tmp_path / "t" / "model.pt").exists()
    rc, _ = _run(main, ["--config", tiny_config, "--data", tiny_data, "--out", tmp_path / "t", "--steps", "1",
                        "--no-progress"], capsys)
    assert rc == 0
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    rc, err = _run(main, ["--config", tiny_config, "--data", other, "--out", tmp_path / "t", "--resume",
                          "--steps", "2", "--no-progress"], capsys)
    assert rc == 2 and f"was trained on data {Path(tiny_data).resolve()}, resumed with {other.resolve()}" in _one_error(err)
