"""Typed configuration: one dataclass tree loaded from TOML.

    from model.config import load_config
    cfg = load_config("configs/demo.toml")

Unknown sections or keys are an error (a typo must not be silently ignored);
values are checked against the field's type. The resolved config (every field,
defaults included) is what goes into checkpoints, manifests and reports, via
`config_to_dict`.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    # working grid: canonical RAS, axis-aligned, array order (x, y, z) = (R, A, S)
    shape: list[int] = field(default_factory=lambda: [128, 160, 128])
    spacing_mm: list[float] = field(default_factory=lambda: [1.2, 1.2, 1.2])
    # CMA codes used for training and evaluation
    labels: list[int] = field(default_factory=lambda: [2, 41, 3, 42, 4, 43, 10, 49, 11, 50, 12, 51, 17, 53])
    # the seed's split: 13 train / 5 test of 18 subjects; scaled for other counts
    n_train: int = 13
    n_test: int = 5
    # robust intensity normalisation: percentiles mapped to [0, 1], then clipped
    intensity_percentiles: list[float] = field(default_factory=lambda: [1.0, 99.5])


@dataclass
class ModelConfig:
    base_channels: int = 32
    levels: int = 4  # number of down-sampling blocks (label-reg: 4)
    ddf_levels: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # the global stage before the network: "none", "moments" or "affine" (model/prealign.py)
    prealign: str = "none"


@dataclass
class LossConfig:
    dice_scales: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    bending_weight: float = 0.5
    # weight of an image term, 1 - local NCC of the warped moving and the fixed image in cubic
    # windows of `image_window` voxels (0: labels only, as label-reg)
    image_weight: float = 0.0
    image_window: int = 5


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    # cosine decay of the learning rate from `lr` to `lr_final` over the steps (equal: constant)
    lr_final: float = 1e-4
    warmup_steps: int = 0  # linear learning-rate warm-up from lr / warmup_steps over the first steps
    seed: int = 0
    # random affine augmentation, per volume: rotation (deg), scale (fraction), translation (voxels)
    aug_rotation_deg: float = 5.0
    aug_scale: float = 0.05
    aug_translation_vox: float = 2.0
    # per-volume contrast randomisation of the training images (model.train.random_contrast):
    # strength of the remap, gamma, bias field and noise; 0: none
    aug_intensity: float = 0.0
    log_every: int = 10
    ckpt_every: int = 50
    threads: int = 0  # 0: torch's default
    # labels in the loss per pair and step: "one" random label present in both (label-reg's
    # choice) or "all" configured labels present in both, each its own multi-scale Dice, averaged
    label_sampling: str = "one"
    # "bf16": the network's forward pass in training under bf16 autocast (model/device.py); the
    # loss, the warp's sampling grid and the Dice sums stay float32. Fine-tuning stays float32.
    precision: str = "fp32"
    # fraction of pairs whose moving and fixed volumes are the same subject in two independent
    # augmented poses (the field must undo the relative affine; self-registration gives zero)
    same_subject_prob: float = 0.0
    # those same-subject pairs get a random smooth deformation on the fixed volume: each
    # component N(0, self_elastic_vox^2) at control points every 8 voxels, interpolated
    # trilinearly (a registration problem with a known answer that no training anatomy explains)
    self_elastic_vox: float = 0.0
    # the trained network is an exponential moving average of the weights (and BatchNorm
    # statistics), ema <- d ema + (1 - d) w after every step from the first; 0: the last step's
    ema_decay: float = 0.0


@dataclass
class PruneConfig:
    # global magnitude pruning of all convolution weights (biases kept: quant/prune.py says why);
    # each amount is the total sparsity after that step, reached from the previous one and
    # fine-tuned with the mask held: the seed's 25 % in one step, then an iterative schedule
    amounts: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])
    steps: int = 200  # fine-tuning steps after each pruning step
    lr: float = 1e-4
    # layer-aware allocation (quant/allocate.py): per-layer sparsity from each layer's measured Dice
    # cost when pruned alone at `probe_levels` (on `probe_batches` training batches), the heads
    # and the first convolution kept at >= `protected_density`; reached gradually (cubic) over
    # `gradual_steps` with the trained network's field distilled (`distill_weight`)
    layer_amounts: list[float] = field(default_factory=list)
    probe_levels: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9, 0.95])
    probe_batches: int = 4
    protected_density: float = 0.5
    # N:M over the accelerator's weight blocks (hw.engine.block_index): of every M consecutive
    # blocks of an output group at most N are non-zero; [] for none
    nm: list[int] = field(default_factory=list)
    nm_more: list[list[int]] = field(default_factory=list)  # further [N, M] ratios (the pruning curve)
    nm_protected_dense: bool = False  # N:M leaves the heads and the first convolution dense
    # N:M with each layer's own N, from the layer-aware allocation at this amount (one of
    # `layer_amounts`): N = max(1, round(M x the layer's allocated density)); 0: none
    nm_layer: float = 0.0
    nm_layer_m: int = 4
    # block pruning: each layer loses the given fraction of its weights in whole accelerator
    # blocks (8x8 weights at one tap, hw.engine.block_index), smallest RMS first, so every
    # layer's engine cycles fall by about that fraction; reached gradually with distillation
    block_amounts: list[float] = field(default_factory=list)
    gradual_steps: int = 150
    gradual_lr: float = 1e-4     # cosine to gradual_lr / 10
    distill_weight: float = 1.0  # x mean squared displacement difference (voxels^2) to the trained field


@dataclass
class QATConfig:
    # Brevitas quantisation-aware fine-tuning of a pruned, BatchNorm-folded network:
    # power-of-two scales, zero-point 0, masks held
    steps: int = 200
    lr: float = 1e-4
    calib_batches: int = 8  # training batches that set the activation scales before fine-tuning
    int8_sparsity: float = 0.25  # pruned checkpoint the int8 model starts from (0.0: unpruned)
    int4_sparsity: float = 0.5  # pruned checkpoint the int4-weight model starts from
    # the int8 model (the deployed one: export, golden vectors, RTL) starts from the block-pruned
    # checkpoint at int8_sparsity (prune.block_amounts) instead of the global one; the pruning
    # curve's int8 point at that sparsity is then a global QAT of its own
    int8_blocks: bool = False
    curve_steps: int = 200  # QAT steps of the int8 models at the other sparsities (pruning curve)
    # report models (make report): int8 / int4 QAT of the layer-aware amounts listed, and of the
    # N:M model; `curve_steps` steps each
    layer_int8: list[float] = field(default_factory=list)
    layer_int4: list[float] = field(default_factory=list)
    nm_int8: bool = False
    nm_int4: bool = False  # int4 QAT of every N:M model too
    global_int4: list[float] = field(default_factory=list)  # int4 QAT of these global prune.amounts
    # weight scales of every QAT model: "tensor" (one power of two per layer) or "channel" (one
    # per output channel; weights.bin format 2 and later carry the exponents)
    weight_scale: str = "tensor"
    # x mean squared displacement difference (voxels^2) to the trained fp32 network's field, added
    # to the label loss of every QAT model (0: none)
    distill_weight: float = 0.0


@dataclass
class RefineConfig:
    """The test-time refinement after the network (model/refine.py): at most `iters` Adam steps
    of size `lr` (voxels) on 1 - squared local NCC (`window` cells of the half-resolution grid)
    plus `bending` x the bending energy; 0 steps: none. It stops early once a step changes the
    similarity (the mean squared local NCC) by less than `tol` relative to its value (0: never),
    or, with `budget_ms` > 0, once that many milliseconds have passed (a deployment's time
    budget: the result then depends on the machine's speed, so reports leave it 0). Not a
    training input, so editing it keeps every checkpoint valid (STAGE_SECTIONS)."""
    iters: int = 0
    lr: float = 0.2
    bending: float = 0.5
    window: int = 3
    tol: float = 0.0
    budget_ms: float = 0.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def validate(self) -> None:
        """Every key's range (RANGES), then the rules between keys; a ConfigError names the key."""
        for key, (lo, hi, lo_open, hi_open) in RANGES.items():
            sec, name = key.split(".")
            v = getattr(getattr(self, sec), name)
            for x in (v if isinstance(v, list) else [v]):
                for y in (x if isinstance(x, list) else [x]):
                    if (not math.isfinite(y) or y < lo or y > hi or (lo_open and y == lo)
                            or (hi_open and y == hi)):
                        raise ConfigError(f"{key} = {v!r}: each value must lie in {'(' if lo_open else '['}"
                                          f"{lo}, {hi}{')' if hi_open else ']'}")
        p0 = self.data.intensity_percentiles
        if len(p0) != 2 or p0[0] >= p0[1]:
            raise ConfigError(f"data.intensity_percentiles = {p0!r}: need [low, high] with low < high")
        d, m, r = self.data, self.model, self.refine
        if len(d.shape) != 3 or len(d.spacing_mm) != 3:
            raise ConfigError("data.shape and data.spacing_mm need 3 entries each")
        if r.iters < 0 or r.lr <= 0 or r.bending < 0 or r.window < 1 or r.window % 2 == 0:
            raise ConfigError(f"refine: need iters >= 0, lr > 0, bending >= 0 and an odd window >= 1, got {r}")
        if r.iters and min(d.shape) < 10:
            raise ConfigError(f"refine: the working grid {d.shape} needs at least 10 voxels per axis")
        step = 2 ** m.levels
        if any(s % step for s in d.shape):
            raise ConfigError(f"data.shape {d.shape} must be divisible by 2**model.levels = {step}")
        if not d.labels:
            raise ConfigError("data.labels is empty")
        if not m.ddf_levels or any(not 0 <= lv <= m.levels for lv in m.ddf_levels):
            raise ConfigError(f"model.ddf_levels {m.ddf_levels} must lie in [0, {m.levels}]")
        if m.base_channels < 2 or m.base_channels % 2:
            raise ConfigError("model.base_channels must be even (additive up-sampling halves channels)")
        if self.train.batch_size < 1 or self.train.steps < 0:
            raise ConfigError("train.batch_size must be >= 1 and train.steps >= 0")
        if self.loss.image_weight < 0 or self.loss.image_window < 1 or self.loss.image_window % 2 == 0:
            raise ConfigError(f"loss.image_weight {self.loss.image_weight} must be >= 0 and loss.image_window "
                              f"{self.loss.image_window} an odd number of voxels")
        if m.prealign not in ("none", "moments", "affine"):
            raise ConfigError(f"model.prealign {m.prealign!r} must be 'none', 'moments' or 'affine'")
        if self.train.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision {self.train.precision!r} must be 'fp32' or 'bf16'")
        if self.train.label_sampling not in ("one", "all"):
            raise ConfigError(f"train.label_sampling {self.train.label_sampling!r} must be 'one' or 'all'")
        a = self.prune.amounts
        if not a or any(not 0 < x < 1 for x in a) or any(x >= y for x, y in zip(a, a[1:])):
            raise ConfigError(f"prune.amounts {a} must be increasing fractions in (0, 1)")
        for key in ("int8_sparsity", "int4_sparsity"):
            v = getattr(self.qat, key)
            if v != 0.0 and v not in a:
                raise ConfigError(f"qat.{key} {v} must be 0.0 or one of prune.amounts {a}")
        p = self.prune
        la = p.layer_amounts
        if any(not 0 < x < 1 for x in la) or any(x >= y for x, y in zip(la, la[1:])):
            raise ConfigError(f"prune.layer_amounts {la} must be increasing fractions in (0, 1)")
        if any(not 0 < x < 1 for x in p.probe_levels) or sorted(set(p.probe_levels)) != p.probe_levels:
            raise ConfigError(f"prune.probe_levels {p.probe_levels} must be increasing fractions in (0, 1)")
        if la and (not p.probe_levels or max(la) > max(p.probe_levels)):
            raise ConfigError(f"prune.layer_amounts {la} go past the highest of prune.probe_levels {p.probe_levels}")
        if not 0 <= p.protected_density <= 1 or p.probe_batches < 1 or p.gradual_steps < 0:
            raise ConfigError("prune.protected_density must lie in [0, 1], probe_batches >= 1, gradual_steps >= 0")
        if p.nm and not (len(p.nm) == 2 and 0 < p.nm[0] < p.nm[1]):
            raise ConfigError(f"prune.nm {p.nm} must be [N, M] with 0 < N < M, or []")
        if p.nm_layer and p.nm_layer not in p.layer_amounts:
            raise ConfigError(f"prune.nm_layer {p.nm_layer} must be one of prune.layer_amounts {p.layer_amounts}")
        b = p.block_amounts
        if any(not 0 < x < 1 for x in b) or any(x >= y for x, y in zip(b, b[1:])):
            raise ConfigError(f"prune.block_amounts {b} must be increasing fractions in (0, 1)")
        if self.qat.int8_blocks and self.qat.int8_sparsity not in b:
            raise ConfigError(f"qat.int8_blocks needs qat.int8_sparsity {self.qat.int8_sparsity} in "
                              f"prune.block_amounts {b}")
        if p.nm_more and not p.nm:
            raise ConfigError("prune.nm_more needs prune.nm")
        for r in p.nm_more:
            if not (isinstance(r, list) and len(r) == 2 and 0 < r[0] < r[1]) or r == p.nm or p.nm_more.count(r) > 1:
                raise ConfigError(f"prune.nm_more {p.nm_more}: each entry must be a new [N, M] with 0 < N < M")
        for key in ("layer_int8", "layer_int4"):
            bad = [x for x in getattr(self.qat, key) if x not in la]
            if bad:
                raise ConfigError(f"qat.{key} {bad} not in prune.layer_amounts {la}")
        if self.qat.weight_scale not in ("tensor", "channel"):
            raise ConfigError(f"qat.weight_scale {self.qat.weight_scale!r} must be \"tensor\" or \"channel\"")
        if (self.qat.nm_int8 or self.qat.nm_int4) and not (p.nm or p.nm_layer):
            raise ConfigError("qat.nm_int8 and qat.nm_int4 need prune.nm or prune.nm_layer")
        bad = [x for x in self.qat.global_int4 if x not in p.amounts]
        if bad:
            raise ConfigError(f"qat.global_int4 {bad} not in prune.amounts {p.amounts}")


INF = float("inf")
# the range of every numeric key (and of each item of a numeric list): (low, high, low open,
# high open); Config.validate applies it after every override, so no value reaches a stage
# unchecked. Counts of steps may be 0 (none); intervals between events must be >= 1.
RANGES = {
    "data.shape": (1, 4096, False, False),
    "data.spacing_mm": (0, 100, True, False),
    "data.labels": (1, 65535, False, False),
    "data.n_train": (1, 100_000, False, False),
    "data.n_test": (1, 100_000, False, False),
    "data.intensity_percentiles": (0, 100, False, False),
    "model.base_channels": (2, 1024, False, False),
    "model.levels": (1, 8, False, False),
    "model.ddf_levels": (0, 8, False, False),
    "loss.dice_scales": (0, 1000, False, False),
    "loss.bending_weight": (0, INF, False, True),
    "loss.image_weight": (0, INF, False, True),
    "loss.image_window": (1, 99, False, False),
    "train.steps": (0, 10**9, False, False),
    "train.batch_size": (1, 4096, False, False),
    "train.lr": (0, 10, True, False),
    "train.lr_final": (0, 10, True, False),
    "train.warmup_steps": (0, 10**9, False, False),
    "train.seed": (0, 2**63 - 1, False, False),
    "train.aug_rotation_deg": (0, 180, False, False),
    "train.aug_scale": (0, 1, False, True),
    "train.aug_translation_vox": (0, 4096, False, False),
    "train.aug_intensity": (0, 4, False, False),
    "train.log_every": (1, 10**9, False, False),
    "train.ckpt_every": (1, 10**9, False, False),
    "train.threads": (0, 4096, False, False),
    "train.same_subject_prob": (0, 1, False, False),
    "train.self_elastic_vox": (0, 4096, False, False),
    "train.ema_decay": (0, 1, False, True),
    "prune.amounts": (0, 1, True, True),
    "prune.steps": (0, 10**9, False, False),
    "prune.lr": (0, 10, True, False),
    "prune.layer_amounts": (0, 1, True, True),
    "prune.probe_levels": (0, 1, True, True),
    "prune.probe_batches": (1, 10**6, False, False),
    "prune.protected_density": (0, 1, False, False),
    "prune.nm": (1, 4096, False, False),
    "prune.nm_more": (1, 4096, False, False),
    "prune.nm_layer": (0, 1, False, True),
    "prune.nm_layer_m": (2, 4096, False, False),
    "prune.block_amounts": (0, 1, True, True),
    "prune.gradual_steps": (0, 10**9, False, False),
    "prune.gradual_lr": (0, 10, True, False),
    "prune.distill_weight": (0, INF, False, True),
    "qat.steps": (0, 10**9, False, False),
    "qat.lr": (0, 10, True, False),
    "qat.calib_batches": (1, 10**6, False, False),
    "qat.int8_sparsity": (0, 1, False, True),
    "qat.int4_sparsity": (0, 1, False, True),
    "qat.curve_steps": (0, 10**9, False, False),
    "qat.layer_int8": (0, 1, True, True),
    "qat.layer_int4": (0, 1, True, True),
    "qat.global_int4": (0, 1, True, True),
    "qat.distill_weight": (0, INF, False, True),
    "refine.iters": (0, 10**6, False, False),
    "refine.lr": (0, 100, True, False),
    "refine.bending": (0, INF, False, True),
    "refine.window": (1, 99, False, False),
    "refine.tol": (0, 1, False, False),
    "refine.budget_ms": (0, INF, False, True),
}

# the config sections each stage's artifacts depend on: a checkpoint is refused only when one
# of these differs, so that editing, say, [qat] does not invalidate a trained network
STAGE_SECTIONS = {
    "train": ("data", "model", "loss", "train"),
    "prune": ("data", "model", "loss", "train", "prune"),
    "qat": ("data", "model", "loss", "train", "prune", "qat"),
}


def _check_type(value, tp, where: str):
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls, raw: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: expected a table")
            kwargs[name] = _build(tp, value, f"{where}.{name}")
        else:
            kwargs[name] = _check_type(value, tp, f"{where}.{name}")
    return cls(**kwargs)


def config_from_dict(raw: dict, where: str = "config") -> Config:
    cfg = _build(Config, raw, where)
    cfg.validate()
    return cfg


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return config_from_dict(raw, where=str(path))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def write_stamp(cfg: Config, stage: str, path: Path) -> bool:
    """Write the resolved sections a stage reads (STAGE_SECTIONS; `all`: every section) to `path`
    as JSON, only when they differ from what it holds: make's prerequisite for that stage, so
    that editing a section re-runs the stages that read it and no other. True if written."""
    import json

    from model.artifacts import atomic_write_text

    sections = STAGE_SECTIONS.get(stage) or (tuple(f.name for f in dataclasses.fields(Config)) if stage == "all" else None)
    if sections is None:
        raise ConfigError(f"stage {stage!r}: expected one of {[*STAGE_SECTIONS, 'all']}")
    text = json.dumps({s: dataclasses.asdict(getattr(cfg, s)) for s in sections}, indent=1, sort_keys=True) + "\n"
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def main(argv=None) -> int:
    """python -m model.config CONFIG --stamp STAGE --out FILE  (write_stamp; validates CONFIG)."""
    import argparse
    import sys

    from model.cli import run_cli

    ap = argparse.ArgumentParser(description=write_stamp.__doc__)
    ap.add_argument("config")
    ap.add_argument("--stamp", required=True, metavar="STAGE", help=f"one of {[*STAGE_SECTIONS, 'all']}")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    return run_cli(lambda: print(f"[config] {a.out} {'written' if write_stamp(load_config(a.config), a.stamp, a.out) else 'unchanged'}",
                                 file=sys.stderr))


if __name__ == "__main__":
    import sys

    sys.exit(main())
