"""Global magnitude pruning of LocalNet with held masks, and fine-tuning of the pruned network.

    python -m quant.prune --config configs/demo.toml --ckpt runs/demo/train/model.pt \\
        --data data/synthetic --out runs/demo/prune [--resume]

The trained network's BatchNorm is folded into its convolutions first (model.localnet.
fold_batchnorm), so the magnitudes ranked are those of the weights actually deployed, and
the fine-tuned network is the one quantisation starts from.

For each amount in `prune.amounts` (the seed's 25 % in one step, then 50, 75, 90 %), the
smallest-magnitude weights over all convolutions together are set to zero until that
fraction of all convolution weights is zero, and the network is fine-tuned for
`prune.steps` steps with the mask re-applied after every optimiser step, so pruned weights
stay exactly zero. Each step starts from the previous one, so the masks are nested.

Biases are not pruned (the seed pruned them too): they are under 0.5 % of the parameters,
live at the int32 accumulator scale where their magnitude is not comparable with the
weights', and zeroing a folded BatchNorm shift moves a whole channel.

Two more allocations (issue 12), each fine-tuned for `prune.gradual_steps` with the trained
network's displacement field distilled into the loss (model.train.loss_terms):

- layer-aware (`prune.layer_amounts`): each layer is pruned alone to every `probe_levels`
  amount and the rise of the Dice loss on fixed training batches measured
  (OUT/sensitivity.json); `allocate` climbs those cost curves greedily, cheapest Dice per
  pruned weight first, the displacement heads and the first convolution held at
  >= `protected_density`; the per-layer amounts are reached gradually (cubic schedule over
  the first three quarters of the steps, masks recomputed after every step, then held). Each
  amount starts from the previous one;
- N:M over the accelerator's weight blocks (`prune.nm`): of every M consecutive 8x8 blocks
  (hw.engine.block_index) of an output group, the N of largest norm are kept; the engine
  skips an all-zero block, so cycles fall with the sparsity whatever the weights are
  (`prune.nm_protected_dense` leaves the heads and the first convolution dense); with
  `prune.nm_layer` one more N:M model takes each layer's N from the layer-aware allocation
  (a layer the allocation prunes to 75 % or more gets 1 of 4, one it leaves dense 4 of 4);
- blocks (`prune.block_amounts`): every layer loses that fraction of its weights in whole
  accelerator blocks, smallest RMS first (`layer_block_masks`), reached gradually like the
  layer-aware amounts; the deployed int8 model starts here with `qat.int8_blocks`, so the
  engine's cycles fall with its sparsity (unstructured 25 % almost never empties a block).

Writes OUT/sparsity_XX/pruned.pt (pruned, no retraining) and OUT/sparsity_XX/model.pt
(fine-tuned), OUT/sparsity_00/model.pt (folded, unpruned, all-keep masks), OUT/layer_XX/model.pt,
OUT/nm_NofM/model.pt, OUT/nm_layer_sXX/model.pt and OUT/block_sXX/model.pt, each with the masks, the measured sparsity,
the resolved config and the git commit; a checkpoint whose pruned weights are not all zero is refused when loaded.
OUT/prune.json lists them with the per-layer sparsity of every model.
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from model.artifacts import atomic_write_json, git_commit
from model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from model.cli import run_cli, stage_parser
from model.config import Config, ConfigError, config_to_dict, load_config
from model.localnet import LocalNet, fold_batchnorm
from model.train import Stream, TrainData, fit, load_train_data, setup_torch
from quant.allocate import allocate, cubic_ramp, layer_sensitivity
from quant.masks import (Masks, apply_masks, check_masks, global_magnitude_masks, layer_block_masks,
                         layer_magnitude_masks, layer_sparsity, mask_sparsity, nm_block_masks, nm_layer_ratios,
                         prunable_weights, protected_layers, weight_sparsity)


def sparsity_dir(out: Path, amount: float) -> Path:
    return out / f"sparsity_{round(amount * 100):02d}"


def layer_dir(out: Path, amount: float) -> Path:
    return out / f"layer_{round(amount * 100):02d}"


def nm_dir(out: Path, n: int, m: int) -> Path:
    return out / f"nm_{n}of{m}"


def block_dir(out: Path, amount: float) -> Path:
    return out / f"block_s{round(amount * 100):02d}"


def nm_layer_dir(out: Path, amount: float) -> Path:
    return out / f"nm_layer_s{round(amount * 100):02d}"


@dataclass(frozen=True)
class PruneJob:
    """One model of the pruning stage.

    kind: "global" (one shot, fine-tuned for prune.steps), "layer" (layer-aware), "block" or
    "nm" (N:M; `nm_layer` set: each layer's N from the layer-aware allocation at that amount),
    the last three reached gradually or in one shot and fine-tuned with distillation for
    prune.gradual_steps. `start` is the directory of the job whose model it starts from (None:
    the folded, unpruned network), `stream` its batches' random stream."""
    dir: Path
    kind: str
    amount: float
    start: Path | None
    stream: int
    n: int = 0
    m: int = 0
    nm_layer: float | None = None

    @property
    def desc(self) -> str:
        pct = f"{round(self.amount * 100)}%"
        return {"global": f"prune {pct}", "layer": f"layer-aware {pct}", "block": f"blocks {pct}",
                "nm": f"N:M {self.what}"}[self.kind]

    @property
    def what(self) -> str:  # the N:M model's ratio in words
        if self.nm_layer is None:
            return f"{self.n}:{self.m}"
        return f"per-layer N of {self.m} (layer-aware {round(self.nm_layer * 100)} %)"


def prune_jobs(cfg: Config, out: Path) -> list[PruneJob]:
    """The pruning stage's models in the order they are made: the global amounts (each from the
    previous one), the layer-aware amounts (likewise), the block amounts (likewise), then the
    N:M ratios (each from the unpruned network)."""
    p = cfg.prune
    jobs: list[PruneJob] = []

    def chain(kind: str, stream: Stream, amounts: list[float], where) -> None:
        prev = None
        for i, a in enumerate(amounts):
            jobs.append(PruneJob(where(out, a), kind, a, prev, Stream.of(stream, i)))
            prev = jobs[-1].dir

    chain("global", Stream.PRUNE, p.amounts, sparsity_dir)
    chain("layer", Stream.LAYER_AWARE, p.layer_amounts, layer_dir)
    chain("block", Stream.BLOCKS, p.block_amounts, block_dir)
    ratios = [tuple(r) for r in ([p.nm, *p.nm_more] if p.nm else [])]
    for i, (n, m) in enumerate(ratios):
        jobs.append(PruneJob(nm_dir(out, n, m), "nm", 1 - n / m, None, Stream.of(Stream.NM, i), n, m))
    if p.nm_layer:
        jobs.append(PruneJob(nm_layer_dir(out, p.nm_layer), "nm", p.nm_layer, None, Stream.of(Stream.NM, len(ratios)),
                             m=p.nm_layer_m, nm_layer=p.nm_layer))
    return jobs


def load_pruned(path: Path, cfg: Config | None = None) -> tuple[LocalNet, Config, Masks]:
    """A pruned checkpoint as (folded network, config, masks), masks checked."""
    ck = load_checkpoint(path, cfg)
    if ck.get("stage") != "prune" or "masks" not in ck:
        raise ValueError(f"{path}: not a pruned checkpoint (stage {ck.get('stage', 'train')!r})")
    check_masks(ck["model"], ck["masks"], str(path))
    net, ck_cfg = model_from_checkpoint(ck)
    return net, ck_cfg, ck["masks"]


class _Pruning:
    """What the jobs share: the config, the training data, the unpruned network's checkpoint,
    and, made once when first needed, the distillation teacher and the layer sensitivities."""

    def __init__(self, cfg: Config, data: TrainData, out: Path, unpruned: Path, ckpt: Path, resume: bool,
                 progress: bool):
        self.cfg, self.data, self.out, self.unpruned, self.ckpt = cfg, data, out, unpruned, ckpt
        self.resume, self.progress = resume, progress
        self._allocations: dict[float, dict[str, float]] = {}

    def meta(self, kind: str, amount: float, masks: Masks) -> dict:
        return {"stage": "prune", "folded": True, "mode": kind,
                "masks": masks, "amount": amount, "sparsity": mask_sparsity(masks), "source": str(self.ckpt)}

    @functools.cached_property
    def teacher(self) -> LocalNet:
        return load_pruned(self.unpruned, self.cfg)[0].eval().requires_grad_(False)

    @functools.cached_property
    def sizes(self) -> dict[str, int]:
        return {k: w.numel() for k, w in prunable_weights(self.teacher).items()}

    @functools.cached_property
    def costs(self) -> dict[str, list[float]]:
        """Each layer's Dice-loss rise at every probe level (OUT/sensitivity.json, kept on resume)."""
        p, path = self.cfg.prune, self.out / "sensitivity.json"
        if self.resume and path.exists():
            return json.loads(path.read_text())["dice_loss_rise"]
        net = load_pruned(self.unpruned, self.cfg)[0].to(self.data.device)
        costs = layer_sensitivity(net, self.cfg, self.data, p.probe_levels, p.probe_batches, progress=self.progress)
        atomic_write_json(path, {"levels": p.probe_levels, "batches": p.probe_batches, "dice_loss_rise": costs})
        return costs

    def allocation(self, amount: float) -> dict[str, float]:
        """The layer-aware per-layer sparsity for a total `amount` (0: every layer dense)."""
        if amount not in self._allocations:
            p = self.cfg.prune
            caps = {k: 1.0 - p.protected_density for k in protected_layers(self.teacher)}
            try:
                self._allocations[amount] = ({k: 0.0 for k in self.sizes} if amount == 0 else
                                             allocate(self.costs, p.probe_levels, self.sizes, amount, caps))
            except ValueError as err:
                raise ConfigError(f"prune.layer_amounts {amount}: {err}; lower it, add a higher probe level "
                                  "or lower prune.protected_density") from None
        return self._allocations[amount]

    def dense(self) -> list[str]:
        return protected_layers(self.teacher) if self.cfg.prune.nm_protected_dense else []

    def nm_n(self, job: PruneJob) -> int | dict[str, int]:
        """An N:M job's N: the job's own, or each layer's from the layer-aware allocation."""
        return job.n if job.nm_layer is None else nm_layer_ratios(self.allocation(job.nm_layer), job.m, self.dense())

    def schedule(self, job: PruneJob, start: PruneJob | None, net: nn.Module):
        """The job's masks as a function of (network, fine-tuning steps done): at step 0 they are
        the start's, so applying them first changes nothing the start did not already zero."""
        ramp = max(1, round(0.75 * self.cfg.prune.gradual_steps))  # then held for the last quarter
        if job.kind == "layer":
            a0, a1 = self.allocation(start.amount if start else 0.0), self.allocation(job.amount)
            return lambda n, t: layer_magnitude_masks(n, {k: cubic_ramp(t, ramp, a0[k], a1[k]) for k in a1})
        if job.kind == "block":
            a0 = start.amount if start else 0.0
            return lambda n, t: layer_block_masks(n, cubic_ramp(t, ramp, a0, job.amount))
        if job.kind == "nm":  # one shot, held
            masks = nm_block_masks(net, self.nm_n(job), job.m)
            masks.update({k: torch.ones_like(masks[k]) for k in self.dense()})
            return lambda _n, _t: masks
        masks = global_magnitude_masks(net, job.amount)  # one shot, held
        return lambda _n, _t: masks

    def run(self, job: PruneJob, start: PruneJob | None) -> LocalNet:
        """Prune and fine-tune the job's model from its start's; returns it, its masks checked."""
        cfg, p = self.cfg, self.cfg.prune
        net = load_pruned(start.dir / "model.pt" if start else self.unpruned, cfg)[0]
        masks_at = self.schedule(job, start, net)
        info = self.meta(job.kind, job.amount, masks_at(net, 0))
        apply_masks(net, info["masks"])
        if job.kind == "global":
            save_checkpoint(job.dir / "pruned.pt", cfg, {"model": net.state_dict(), "step": 0, **info})
            path = fit(net, cfg, self.data, job.dir, steps=p.steps, lr=p.lr, stream=job.stream, resume=self.resume,
                       progress=self.progress, desc=job.desc, after_step=lambda n, _, mk=info["masks"]: apply_masks(n, mk),
                       extra=info)
            return load_pruned(path, cfg)[0]  # asserts the held mask in the saved checkpoint
        if self.resume and (job.dir / "ckpt.pt").exists():  # the masks in force at the checkpoint
            info["masks"] = load_checkpoint(job.dir / "ckpt.pt", cfg, resume=True)["masks"]

        def after_step(n, step):
            masks = masks_at(n, step)
            apply_masks(n, masks)
            info["masks"] = masks  # fit reads `info` at each save
            info["sparsity"] = mask_sparsity(masks)

        path = fit(net, cfg, self.data, job.dir, steps=p.gradual_steps, lr=p.gradual_lr, lr_final=p.gradual_lr / 10,
                   stream=job.stream, resume=self.resume, progress=self.progress, desc=job.desc, after_step=after_step,
                   extra=info, teacher=self.teacher, distill_weight=p.distill_weight)
        return load_pruned(path, cfg)[0]

    def check(self, job: PruneJob, net: nn.Module) -> None:
        """The model reached what the job asked for."""
        if job.kind == "global":
            s = weight_sparsity(net)
            if abs(s - job.amount) > 1e-3:
                raise AssertionError(f"{job.dir}: sparsity {s:.4f} after fine-tuning, expected {job.amount}")
        elif job.kind == "layer":  # the allocation exactly (up to rounding to whole weights)
            got = layer_sparsity(net)
            for k, a in self.allocation(job.amount).items():
                if abs(got[k] - a) > 1.0 / self.sizes[k] + 1e-4:
                    raise AssertionError(f"{job.dir}: {k} sparsity {got[k]} after fine-tuning, allocated {a:.4f}")

    def summary(self, job: PruneJob, net: nn.Module, summary: dict) -> None:
        """The job's entry in prune.json."""
        path = str(job.dir / "model.pt")
        if job.kind == "global":
            summary["checkpoints"][str(job.amount)] = path
            summary["layer_sparsity"][str(job.amount)] = layer_sparsity(net)
        elif job.kind == "layer":
            summary.setdefault("layer_aware", {})[str(job.amount)] = {
                "checkpoint": path, "allocation": {k: round(v, 4) for k, v in self.allocation(job.amount).items()},
                "layer_sparsity": layer_sparsity(net)}
        elif job.kind == "block":
            summary.setdefault("blocks", {})[str(job.amount)] = {
                "checkpoint": path, "sparsity": round(weight_sparsity(net), 4), "layer_sparsity": layer_sparsity(net)}
        else:
            entry = {"n": self.nm_n(job), "m": job.m, "checkpoint": path, "sparsity": round(weight_sparsity(net), 4),
                     "layer_sparsity": layer_sparsity(net)}
            if job.nm_layer is not None:
                summary["nm_layer"] = {**entry, "amount": job.nm_layer}
            elif "nm" not in summary:
                summary["nm"] = entry
            else:
                summary.setdefault("nm_more", {})[f"{job.n}of{job.m}"] = entry


def prune(cfg: Config, ckpt: Path, data_dir: Path, out: Path, resume: bool = False,
          progress: bool = True, device: str = "auto") -> list[Path]:
    """Run the pruning jobs (prune_jobs) on `device`; returns the fine-tuned checkpoint of each
    global amount."""
    dev = setup_torch(cfg, device)
    net, _ = model_from_checkpoint(load_checkpoint(ckpt, cfg))
    net = fold_batchnorm(net)
    data = load_train_data(cfg, data_dir, progress, dev)
    # sparsity 0: the folded, unpruned network, the start of the pruning curve and of unpruned QAT
    unpruned = sparsity_dir(out, 0.0) / "model.pt"
    run = _Pruning(cfg, data, out, unpruned, ckpt, resume, progress)
    save_checkpoint(unpruned, cfg, {"model": net.state_dict(), "step": 0, **run.meta(
        "global", 0.0, {k: torch.ones_like(w, dtype=torch.bool) for k, w in prunable_weights(net).items()})})
    summary: dict = {"checkpoints": {}, "unpruned": str(unpruned), "layer_sparsity": {}}
    jobs = prune_jobs(cfg, out)
    by_dir = {j.dir: j for j in jobs}
    for job in jobs:
        if resume and (job.dir / "model.pt").exists():
            net = load_pruned(job.dir / "model.pt", cfg)[0]
        else:
            net = run.run(job, by_dir.get(job.start))
            run.check(job, net)
        label = "" if job.kind == "global" else {"layer": " layer-aware,", "block": " blocks,",
                                                  "nm": f" N:M {job.what},"}[job.kind]
        print(f"[prune] {job.dir / 'model.pt'}:{label} sparsity {weight_sparsity(net):.3f}", file=sys.stderr)
        run.summary(job, net, summary)
    atomic_write_json(out / "prune.json", {  # written last: make's mark that the stage finished
        **summary, "config": config_to_dict(cfg), "git_commit": git_commit()})
    return [Path(p) for p in summary["checkpoints"].values()]


def main(argv=None) -> int:
    ap = stage_parser(__doc__, resume="keep finished amounts, continue the current one")
    ap.add_argument("--ckpt", required=True, type=Path, help="trained fp32 checkpoint (make train)")
    a = ap.parse_args(argv)

    def body():
        prune(load_config(a.config), a.ckpt, a.data, a.out, a.resume, progress=not a.no_progress, device=a.device)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
