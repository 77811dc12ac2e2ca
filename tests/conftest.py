"""Shared fixtures: a tiny synthetic IBSR-layout set, a tiny config, and its trained, pruned,
quantised and exported run (session-scoped, each made once by its own fixture, so no test
depends on another having run first)."""
from __future__ import annotations

from pathlib import Path

import pytest

from model.synth import write_dataset

TINY_TOML = """
[data]
shape = [16, 16, 16]
spacing_mm = [10.0, 12.0, 10.0]
labels = [2, 41, 3, 42, 4, 43]
n_train = 3
n_test = 2

[model]
base_channels = 4
levels = 2
ddf_levels = [0, 1, 2]

[train]
steps = 3
batch_size = 2
lr = 1e-3
log_every = 1
ckpt_every = 1

[prune]
amounts = [0.25, 0.5]
steps = 2
lr = 1e-3
layer_amounts = [0.5]
probe_levels = [0.5, 0.75]
probe_batches = 1
nm = [2, 4]
nm_more = [[1, 4]]
nm_layer = 0.5
block_amounts = [0.25]
gradual_steps = 2

[qat]
steps = 2
distill_weight = 1.0
lr = 1e-4
calib_batches = 2
int8_sparsity = 0.25
int4_sparsity = 0.5
int8_blocks = true
curve_steps = 1
layer_int8 = [0.5]
layer_int4 = [0.5]
nm_int8 = true
nm_int4 = true
global_int4 = [0.5]
weight_scale = "channel"
"""


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, subjects=5, seed=3, shape=(40, 24, 40), spacing=(6.0, 8.0, 6.0), progress=False)
    return out


@pytest.fixture()
def tiny_config(tmp_path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_TOML)
    return p


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """(config, OUT) after train -> prune -> qat (with the curve models) on the tiny config."""
    from model.config import load_config
    from model.train import train
    from quant.prune import prune
    from quant.qat import qat

    out = tmp_path_factory.mktemp("run")
    cfg_path = out / "tiny.toml"
    cfg_path.write_text(TINY_TOML)
    cfg = load_config(cfg_path)
    train(cfg, tiny_data, out / "train", progress=False)
    prune(cfg, out / "train" / "model.pt", tiny_data, out / "prune", progress=False)
    qat(cfg, out / "prune", tiny_data, out / "qat", curve=True, progress=False)
    return cfg_path, out


@pytest.fixture(scope="session")
def tiny_export(tiny_data, tiny_run) -> tuple[Path, Path, dict]:
    """(config, OUT, manifest) after `make export` on the tiny run (registration.json included)."""
    from export.export import export
    from hw.runtime import write_settings
    from model.config import load_config

    cfg_path, out = tiny_run
    manifest = export(load_config(cfg_path), out, tiny_data, progress=False)
    write_settings(load_config(cfg_path), out / "export", str(cfg_path))
    return cfg_path, out, manifest


@pytest.fixture()
def tiny_cfg():
    """A fresh Config of the tiny TOML (a test may change it)."""
    import tomllib

    from model.config import config_from_dict

    return config_from_dict(tomllib.loads(TINY_TOML))


@pytest.fixture(scope="session")
def tiny_toml() -> str:
    """The tiny config's TOML text (for session- and module-scoped fixtures)."""
    return TINY_TOML
