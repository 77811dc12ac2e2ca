"""Bad input to every command-line entry point: one line naming the file and the problem,
exit code 2, no traceback, nothing written."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# module, arguments ({cfg}: the tiny config, {data}: the tiny data set, {tmp}: an empty
# directory), and what the error must say
CASES = [
    ("quant.prune", "--config {cfg} --ckpt {tmp}/none.pt --data {data} --out {tmp}/prune",
     "{tmp}/none.pt: checkpoint not found"),
    ("quant.qat", "--config {cfg} --prune {tmp}/prune --data {data} --out {tmp}/qat",
     "{tmp}/prune/block_s25/model.pt: checkpoint not found"),  # the tiny config: qat.int8_blocks
    ("export.export", "--config {cfg} --run {tmp}/run --data {data}",
     "{tmp}/run/train/model.pt: checkpoint not found"),
    ("model.evaluate", "--ckpt {tmp}/none.pt --data {data} --out {tmp}/out",
     "{tmp}/none.pt: checkpoint not found"),
    ("benchmarks.accuracy", "--config {cfg} --data {data} --out {tmp}/run",
     "{tmp}/run/train/model.pt: missing; run `make train` first"),
    ("hw.crosscheck", "--config {cfg} --run {tmp}/run --data {data}",
     "{tmp}/run/export/weights.bin: cannot read"),
    ("hw.reference", "--weights {tmp}/w.bin --moving {tmp}/m.npy --fixed {tmp}/f.npy --out {tmp}/ddf.npy",
     "{tmp}/w.bin: cannot read"),
    ("hw.golden", "--weights {tmp}/w.bin --config {cfg} --data {data} --out {tmp}/golden",
     "{tmp}/w.bin: cannot read"),
    ("hw.verify", "--golden {tmp}/golden", "{tmp}/golden/manifest.json: no golden vectors"),
    ("latency", "--export {tmp}/export --out {tmp}/bench", "{tmp}/export/manifest.json: not an export directory"),
    ("model.register", "--ckpt {tmp}/none.pt --fixed {tmp}/f.nii.gz --moving {tmp}/m.nii.gz --out {tmp}/w.nii.gz",
     "{tmp}/none.pt: checkpoint not found"),
    ("model.train", "--config {cfg} --data {tmp}/nowhere --out {tmp}/train", "{tmp}/nowhere: data directory does not exist"),
]


def _main(module: str):
    if module == "latency":  # a script (runs on boards from a checkout)
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(module).main


@pytest.mark.parametrize("module, args, message", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(module, args, message, tiny_data, tiny_config, tmp_path, capsys):
    tmp = tmp_path / "work"
    tmp.mkdir()
    fill = {"cfg": tiny_config, "data": tiny_data, "tmp": tmp}
    rc = _main(module)(args.format(**fill).split())
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: {message.format(**fill)}" in err, err
    assert "Traceback" not in err and sum(ln.startswith("error:") for ln in err.splitlines()) == 1
    assert list(tmp.iterdir()) == []  # nothing written
