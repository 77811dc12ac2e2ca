"""Brevitas quantisation-aware fine-tuning of the pruned LocalNet (the twin: quant/twin.py).

    python -m quant.qat --config configs/demo.toml --prune runs/demo/prune --data data/synthetic \\
        --out runs/demo/qat [--resume] [--curve]

Each model starts from a pruned checkpoint of `make prune`, loaded into QuantLocalNet; its
activation scales are calibrated on `qat.calib_batches` training batches, then it is
fine-tuned for `qat.steps` steps with the pruning masks re-applied after every step (a zero
weight quantises to zero, so the sparsity carries into the integers).

Writes OUT/int8/model.pt (from the `qat.int8_sparsity` pruned checkpoint: the global one, or
the block-pruned one with `qat.int8_blocks`), OUT/int4/model.pt
(4-bit weights, from `qat.int4_sparsity`) and, with --curve, OUT/curve/int8_sXX/model.pt
(`qat.curve_steps` steps) for sparsity 0 and every other pruning amount; OUT/qat.json after
the first two, OUT/curve/curve.json after the curve's.
A killed run resumes with --resume; a checkpoint of another stage, another config or one whose
pruned weights are not zero is refused.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch

from model.artifacts import atomic_write_json, git_commit
from model.checkpoint import load_checkpoint
from model.cli import run_cli, stage_parser
from model.config import Config, config_from_dict, config_to_dict, load_config
from model.train import Stream, TrainData, fit, load_train_data, setup_torch
from quant.masks import apply_masks, check_masks, weight_sparsity
from quant.prune import block_dir, layer_dir, load_pruned, nm_dir, nm_layer_dir, sparsity_dir
from quant.twin import QuantLocalNet, calibrate, quant_twin


def calibration_batches(cfg: Config, data: TrainData, batches: int, stream: int):
    """`batches` augmented training batches as network inputs (B, 2, X, Y, Z): (moving, fixed)."""
    for b in range(batches):
        mi, fi, *_ = data.batch(cfg, b, stream=stream)
        yield torch.cat([mi, fi], 1)


def qat_from_pruned(cfg: Config, pruned_ckpt: Path, data: TrainData, out: Path, weight_bits: int, steps: int,
                    stream: int, resume: bool, progress: bool, teacher=None) -> Path:
    """Brevitas QAT of a pruned checkpoint, masks held; with `teacher` (a function returning the
    trained fp32 network, called once the checkpoint has loaded, and only if qat.distill_weight
    > 0) its field is distilled at qat.distill_weight."""
    folded, _, masks = load_pruned(pruned_ckpt, cfg)
    distill = cfg.qat.distill_weight if teacher is not None else 0.0
    teacher = teacher() if distill > 0 else None
    twin = quant_twin(folded, cfg.model, weight_bits, weight_scale=cfg.qat.weight_scale).to(data.device)
    calibrate(twin, calibration_batches(cfg, data, cfg.qat.calib_batches, stream))
    meta = {"stage": "qat", "weight_bits": weight_bits, "masks": masks, "sparsity": weight_sparsity(folded),
            "source": str(pruned_ckpt), "distill_weight": distill}
    path = fit(twin, cfg, data, out, steps=steps, lr=cfg.qat.lr, stream=stream, resume=resume,
               progress=progress, desc=f"qat int{weight_bits}", after_step=lambda n, _: apply_masks(n, masks), extra=meta,
               teacher=teacher, distill_weight=distill)
    load_qat(path, cfg)  # asserts the held masks in the saved checkpoint
    return path


def load_qat(path: Path, cfg: Config | None = None) -> tuple[QuantLocalNet, dict]:
    """A QAT checkpoint as (twin in eval mode, checkpoint dict); masks checked."""
    ck = load_checkpoint(path, cfg)
    if ck.get("stage") != "qat":
        raise ValueError(f"{path}: not a QAT checkpoint (stage {ck.get('stage')!r})")
    check_masks(ck["model"], ck["masks"], str(path))
    ck_cfg = config_from_dict(ck["config"], f"{path} config")
    twin = QuantLocalNet(ck_cfg.model, ck["weight_bits"], weight_scale=ck_cfg.qat.weight_scale)
    twin.load_state_dict(ck["model"])
    return twin.eval(), ck


def curve_name(sparsity: float) -> str:
    return f"curve/int8_s{round(sparsity * 100):02d}"


def layer_name(bits: int, sparsity: float) -> str:
    return f"layer/int{bits}_s{round(sparsity * 100):02d}"


def nm_name(n: int, m: int, bits: int = 8) -> str:
    return f"nm/int{bits}_{n}of{m}"


def nm_layer_name(bits: int, amount: float) -> str:
    return f"nm/int{bits}_layer_s{round(amount * 100):02d}"


def global_int4_name(sparsity: float) -> str:
    return f"curve/int4_s{round(sparsity * 100):02d}"


def qat_jobs(cfg: Config, prune_dir: Path, curve: bool) -> dict[str, tuple[int, Path, int]]:
    """name -> (weight bits, pruned checkpoint it starts from, steps); the curve adds int8 at every
    other global sparsity, int4 at `qat.global_int4`, and the report models of the layer-aware
    and N:M pruning (every N:M ratio, int8 and/or int4)."""
    q, p = cfg.qat, cfg.prune
    src = lambda a: sparsity_dir(prune_dir, a) / "model.pt"  # noqa: E731
    int8_src = block_dir(prune_dir, q.int8_sparsity) / "model.pt" if q.int8_blocks else src(q.int8_sparsity)
    jobs = {"int8": (8, int8_src, q.steps), "int4": (4, src(q.int4_sparsity), q.steps)}
    if curve:  # the curve is the global ranking's: its own int8 at int8_sparsity when int8 is block-pruned
        jobs.update({curve_name(a): (8, src(a), q.curve_steps) for a in [0.0, *p.amounts]
                     if a != q.int8_sparsity or q.int8_blocks})
        for bits, amounts in ((8, q.layer_int8), (4, q.layer_int4)):
            jobs.update({layer_name(bits, a): (bits, layer_dir(prune_dir, a) / "model.pt", q.curve_steps)
                         for a in amounts})
        jobs.update({global_int4_name(a): (4, src(a), q.curve_steps) for a in q.global_int4})
        for n, m in [p.nm, *p.nm_more] if p.nm else []:
            for bits in [8] * q.nm_int8 + [4] * q.nm_int4:
                jobs[nm_name(n, m, bits)] = (bits, nm_dir(prune_dir, n, m) / "model.pt", q.curve_steps)
        if p.nm_layer:
            for bits in [8] * q.nm_int8 + [4] * q.nm_int4:
                jobs[nm_layer_name(bits, p.nm_layer)] = (bits, nm_layer_dir(prune_dir, p.nm_layer) / "model.pt",
                                                         q.curve_steps)
    return jobs


def qat(cfg: Config, prune_dir: Path, data_dir: Path, out: Path, resume: bool = False, curve: bool = False,
        progress: bool = True, device: str = "auto") -> dict[str, Path]:
    """The int8 and int4 models, then (with `curve`) the pruning curve's. OUT/qat.json lists the
    first two and is written after them, only when one of them was (re)made: make's mark that
    the stage finished, which a later --curve run must not renew (that would make every
    export stale); OUT/curve/curve.json lists the curve's models."""
    dev = setup_torch(cfg, device)
    data = load_train_data(cfg, data_dir, progress, dev)
    done, made = {}, set()
    jobs = qat_jobs(cfg, prune_dir, curve)
    # the trained network, folded and unpruned (every pruning's start), loaded once when first needed
    teacher = functools.cache(lambda: load_pruned(sparsity_dir(prune_dir, 0.0) / "model.pt", cfg)[0]
                              .eval().requires_grad_(False))
    for i, (name, (bits, src, steps)) in enumerate(jobs.items()):
        d = out / name
        if resume and (d / "model.pt").exists():
            load_qat(d / "model.pt", cfg)
        else:
            qat_from_pruned(cfg, src, data, d, bits, steps, Stream.of(Stream.QAT, i), resume, progress, teacher)
            made.add(name)
        done[name] = d / "model.pt"
        if name == "int4" and (made or not (out / "qat.json").exists()):
            _summary(out / "qat.json", cfg, {k: v for k, v in done.items() if k in ("int8", "int4")})
    if curve:
        _summary(out / "curve" / "curve.json", cfg, {k: v for k, v in done.items() if k not in ("int8", "int4")})
    return done


def _summary(path: Path, cfg: Config, done: dict[str, Path]) -> None:
    atomic_write_json(path, {"checkpoints": {k: str(v) for k, v in done.items()}, "config": config_to_dict(cfg),
                             "git_commit": git_commit()})


def main(argv=None) -> int:
    ap = stage_parser(__doc__, resume="keep finished models, continue the current one")
    ap.add_argument("--prune", required=True, type=Path, help="OUT/prune of make prune")
    ap.add_argument("--curve", action="store_true", help="also the int8 models of the pruning curve")
    a = ap.parse_args(argv)

    def body():
        done = qat(load_config(a.config), a.prune, a.data, a.out, a.resume, a.curve, progress=not a.no_progress,
                   device=a.device)
        for name, path in done.items():
            print(f"[qat] {name}: {path}", file=sys.stderr)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
