import tomllib
from pathlib import Path

import pytest

from model.config import ConfigError, config_from_dict, config_to_dict, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["demo.toml", "ibsr.toml", "curve.toml"])
def test_shipped_configs_load(name):
    """Every key the file sets reaches the Config (read independently with tomllib); the
    resolved config survives its dict form (what every artifact stores)."""
    path = ROOT / "configs" / name
    cfg = load_config(path)
    raw = tomllib.loads(path.read_text())
    for section, values in raw.items():
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            assert (list(got) if isinstance(got, (list, tuple)) else got) == value, (section, key)
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("text, msg", [
    ("[data]\nshap = [16, 16, 16]\n", "unknown key"),
    ("[dta]\n", "unknown key"),
    ("[train]\nsteps = 'ten'\n", "expected int"),
    ("[train]\nema_decay = 1.0\n", "train.ema_decay = 1.0: each value must lie in \\[0, 1\\)"),
    ("[qat]\ndistill_weight = -1.0\n", "qat.distill_weight = -1.0: each value must lie in \\[0, inf\\)"),
    # the ranges of issue 30: each once accepted, then divided by zero or trained silently wrong
    ("[train]\nlog_every = 0\n", "train.log_every = 0: each value must lie in \\[1, "),
    ("[train]\nckpt_every = 0\n", "train.ckpt_every = 0"),
    ("[train]\nwarmup_steps = -10\n", "train.warmup_steps = -10"),
    ("[train]\nsteps = -5\n", "train.steps = -5"),
    ("[train]\naug_rotation_deg = 1e30\n", "train.aug_rotation_deg = 1e\\+30: each value must lie in \\[0, 180\\]"),
    ("[train]\nlr = 0.0\n", "train.lr = 0.0: each value must lie in \\(0, 10\\]"),
    ("[train]\nlr = nan\n", "train.lr = nan"),
    ("[loss]\ndice_scales = [0.0, -1.0]\n", "loss.dice_scales = \\[0.0, -1.0\\]"),
    ("[prune]\ndistill_weight = -1.0\n", "prune.distill_weight = -1.0"),
    ("[data]\nintensity_percentiles = [99.0, 1.0]\n", "data.intensity_percentiles = \\[99.0, 1.0\\]: need"),
    ("[data]\nintensity_percentiles = [1.0, 200.0]\n", "data.intensity_percentiles = \\[1.0, 200.0\\]: each"),
    ("[data]\nshape = [17, 16, 16]\n", "divisible"),
    ("[model]\nddf_levels = [9]\n", "ddf_levels"),
    ("[data\n", "not valid TOML"),
    ("[prune]\nlayer_amounts = [0.9, 0.75]\n", "layer_amounts"),
    ("[prune]\nlayer_amounts = [0.99]\n", "highest of prune.probe_levels"),
    ("[prune]\nprobe_levels = [0.9, 0.5]\n", "probe_levels"),
    ("[prune]\nnm = [4, 2]\n", "prune.nm"),
    ("[prune]\nprotected_density = 1.5\n", "protected_density"),
    ("[prune]\nlayer_amounts = [0.75]\n[qat]\nlayer_int8 = [0.9]\n", "qat.layer_int8"),
    ("[qat]\nnm_int8 = true\n", "need prune.nm"),
    ("[qat]\nnm_int4 = true\n", "need prune.nm"),
    ("[prune]\nnm_more = [[1, 4]]\n", "prune.nm_more needs prune.nm"),
    ("[prune]\nnm = [2, 4]\nnm_more = [[2, 4]]\n", "prune.nm_more"),
    ("[prune]\nnm = [2, 4]\nnm_more = [[1, 4], [4, 1]]\n", "prune.nm_more"),
    ("[prune]\nnm = [2, 4]\nnm_more = [1, 4]\n", "expected a list"),
    ("[prune]\nlayer_amounts = [0.75]\nnm_layer = 0.75\nnm_layer_m = 1\n", "prune.nm_layer_m"),
    ("[prune]\nlayer_amounts = [0.75]\nnm_layer = 0.9\n", "prune.nm_layer"),
    ("[qat]\nglobal_int4 = [0.3]\n", "qat.global_int4"),
    ("[prune]\nblock_amounts = [0.5, 0.25]\n", "prune.block_amounts"),
    ("[prune]\nblock_amounts = [1.0]\n", "prune.block_amounts"),
    ("[qat]\nint8_blocks = true\n", "qat.int8_blocks needs"),
    ("[qat]\nweight_scale = \"row\"\n", "qat.weight_scale"),
    ("[loss]\nimage_weight = -1.0\n", "loss.image_weight"),
    ("[loss]\nimage_window = 4\n", "loss.image_window"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, msg):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_every_numeric_key_has_a_range():
    """RANGES covers every int and float field (and numeric list), so a new key cannot skip
    validation; a value just outside each range is refused by name (the range's own ends read
    from the table, the refusal from Config.validate)."""
    import dataclasses
    import math
    import typing

    from model.config import RANGES, Config

    cfg = Config()
    numeric = []
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(cfg, sec.name)):
            tp = typing.get_type_hints(type(getattr(cfg, sec.name)))[f.name]
            if tp in (int, float) or typing.get_origin(tp) is list:
                numeric.append(f"{sec.name}.{f.name}")
    assert sorted(numeric) == sorted(RANGES)
    for key, (lo, hi, lo_open, _) in RANGES.items():
        sec, name = key.split(".")
        c = Config()
        v = getattr(getattr(c, sec), name)
        bad = lo if lo_open else lo - 1
        if isinstance(v, list):
            bad = [[bad, bad]] if v and isinstance(v[0], list) or key == "prune.nm_more" else [bad]
        elif isinstance(v, float) or key.endswith(("lr", "weight")):
            bad = float(bad)
        setattr(getattr(c, sec), name, bad)
        with pytest.raises(ConfigError, match=f"^{key} = "):
            c.validate()


def test_ints_accepted_for_floats(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[loss]\nbending_weight = 1\n")
    cfg = load_config(p)
    assert cfg.loss.bending_weight == 1.0 and isinstance(cfg.loss.bending_weight, float)


def test_curve_config_reuses_the_demo_training():
    """make curve copies the demo's trained network: the sections training depends on must match."""
    demo, curve = load_config(ROOT / "configs" / "demo.toml"), load_config(ROOT / "configs" / "curve.toml")
    for section in ("data", "model", "loss", "train"):
        assert getattr(curve, section) == getattr(demo, section), section
    assert max(curve.prune.layer_amounts) == 0.95 and max(curve.prune.amounts) == 0.95
