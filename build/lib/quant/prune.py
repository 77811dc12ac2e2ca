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
  (hw.compiler.block_index) of an output group, the N of largest norm are kept; the engine
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

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from model.artifacts import atomic_write_json, git_commit
from model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from model.cli import run_cli, stage_parser
from model.config import Config, ConfigError, config_to_dict, load_config
from model.localnet import LocalNet, fold_batchnorm
from model.train import fit, load_train_data, setup_torch

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor, True = kept


def prunable_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every convolution weight of the network, by parameter name."""
    return {f"{name}.weight": m.weight for name, m in net.named_modules() if isinstance(m, nn.Conv3d)}


def _magnitude_keep(w: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask of `w` without its `n_prune` smallest |w| (ties by position, zeros first)."""
    order = torch.argsort(w.detach().abs().flatten(), stable=True)
    keep = torch.ones(w.numel(), dtype=torch.bool)
    keep[order[:n_prune]] = False
    return keep.view_as(w)


def global_magnitude_masks(net: nn.Module, amount: float) -> Masks:
    """Keep-masks zeroing the `amount` fraction of all convolution weights with the smallest |w|.

    Exactly round(amount * total) weights are pruned; ties are broken by position
    (stable sort), so the result is deterministic. Weights already zero rank first, so a
    higher amount applied to a pruned network keeps the earlier mask (masks nest).
    """
    weights = prunable_weights(net)
    flat = torch.cat([w.detach().flatten() for w in weights.values()])
    keep = _magnitude_keep(flat, round(amount * flat.numel()))
    masks, at = {}, 0
    for name, w in weights.items():
        masks[name] = keep[at:at + w.numel()].view_as(w).clone()
        at += w.numel()
    return masks


def layer_magnitude_masks(net: nn.Module, amounts: dict[str, float]) -> Masks:
    """Keep-masks pruning round(amounts[name] x size) smallest-|w| weights of each layer on its
    own (layers not named keep everything). Zeros rank first, so masks nest as amounts grow."""
    return {name: _magnitude_keep(w, round(amounts.get(name, 0.0) * w.numel()))
            for name, w in prunable_weights(net).items()}


def _block_squares(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the engine block id of every weight of `w`, flattened (hw.compiler.block_index), and
    each block's sum of squared weights, float64)."""
    from hw.compiler import block_index

    idx = torch.from_numpy(block_index(tuple(w.shape))).flatten()
    square = torch.zeros(int(idx.max()) + 1, dtype=torch.float64)
    return idx, square.index_add_(0, idx, w.detach().double().flatten().square())


def nm_block_masks(net: nn.Module, n: int | dict[str, int], m: int) -> Masks:
    """N:M over the accelerator's weight blocks: in every output group, of each run of `m`
    consecutive blocks (hw.compiler.block_index order; a last, shorter run keeps
    round(n / m x its length)) the `n` with the largest L2 norm are kept (ties by position)
    and the others zeroed whole. The engine skips an all-zero block, so the cycles of every
    convolution drop to about n/m of dense, whatever the weights. `n` may be per layer (by
    weight name; n = m keeps the layer dense)."""
    from hw.compiler import LANES

    masks = {}
    for name, w in prunable_weights(net).items():
        n_layer = n[name] if isinstance(n, dict) else n
        if n_layer >= m:
            masks[name] = torch.ones_like(w, dtype=torch.bool)
            continue
        idx, norm = _block_squares(w)
        nb = len(norm)
        per_group = nb // -(-w.shape[0] // LANES)  # blocks per output group (ids are contiguous per group)
        keep_block = torch.zeros(nb, dtype=torch.bool)
        for g0 in range(0, nb, per_group):
            for r0 in range(g0, g0 + per_group, m):
                r1 = min(r0 + m, g0 + per_group)
                k = n_layer if r1 - r0 == m else round(n_layer * (r1 - r0) / m)
                top = torch.argsort(-norm[r0:r1], stable=True)[:k]
                keep_block[r0 + top] = True
        masks[name] = keep_block[idx].view_as(w)
    return masks


def layer_block_masks(net: nn.Module, amount: float) -> Masks:
    """Block pruning: in each layer on its own, whole accelerator blocks (hw.compiler.block_index)
    are zeroed in order of rising RMS (ties by position) while that brings the layer's pruned
    weights nearer `amount` of its size; the engine skips an all-zero block, so each layer's
    cycles fall by about `amount`. All-zero blocks rank first, so masks nest as amounts grow."""
    masks = {}
    for name, w in prunable_weights(net).items():
        idx, square = _block_squares(w)
        nb = len(square)
        count = torch.bincount(idx, minlength=nb).double()
        order = torch.argsort(square / count, stable=True)
        size = count[order]
        pruned = order[torch.cumsum(size, 0) - size / 2 <= amount * w.numel()]  # a prefix: cumsum rises
        keep = torch.ones(nb, dtype=torch.bool)
        keep[pruned] = False
        masks[name] = keep[idx].view_as(w)
    return masks


def mask_sparsity(masks: Masks) -> float:
    """The fraction of all masked weights that are pruned."""
    return sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def apply_masks(net: nn.Module, masks: Masks) -> None:
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m)


def check_masks(state: dict[str, torch.Tensor], masks: Masks, where: str) -> None:
    """Raise if any pruned weight in `state` (a state_dict) is not exactly zero."""
    for name, m in masks.items():
        if name not in state:
            raise ValueError(f"{where}: mask for {name}, which the model does not have")
        bad = int(torch.count_nonzero(state[name][~m]))
        if bad:
            raise ValueError(f"{where}: {bad} pruned weights of {name} are not zero")


def weight_sparsity(net: nn.Module) -> float:
    ws = prunable_weights(net).values()
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / total


def layer_sparsity(net: nn.Module) -> dict[str, float]:
    return {k: round(float((w == 0).float().mean()), 4) for k, w in prunable_weights(net).items()}


def sparsity_dir(out: Path, amount: float) -> Path:
    return out / f"sparsity_{round(amount * 100):02d}"


def layer_sensitivity(net: nn.Module, cfg: Config, data, levels: list[float], batches: int,
                      stream: int = 90, progress: bool = True) -> dict[str, list[float]]:
    """Per layer, the rise of the multi-scale Dice loss (on `batches` fixed training batches)
    when that layer alone is pruned by magnitude to each of `levels`, the rest untouched."""
    from model.train import loss_terms

    probe = [data.batch(cfg, b, stream=stream) for b in range(batches)]

    def dice_loss() -> float:
        with torch.no_grad():
            return sum(float(loss_terms(net, cfg, *b)[1]) for b in probe) / len(probe)

    was_training = net.training
    net.eval()
    base = dice_loss()
    out = {}
    weights = prunable_weights(net)
    it = weights.items()
    if progress:
        from tqdm import tqdm
        it = tqdm(it, total=len(weights), desc="sensitivity", unit="layer", dynamic_ncols=True)
    for name, w in it:
        orig = w.detach().clone()
        costs = []
        for lv in levels:
            with torch.no_grad():
                w.mul_(_magnitude_keep(w, round(lv * w.numel())))
            costs.append(round(dice_loss() - base, 6))
            with torch.no_grad():
                w.copy_(orig)
        out[name] = costs
    net.train(was_training)
    return out


def allocate(costs: dict[str, list[float]], levels: list[float], sizes: dict[str, int], target: float,
             caps: dict[str, float]) -> dict[str, float]:
    """Per-layer sparsity reaching `target` of all weights at the least summed Dice cost.

    Each layer's measured cost curve (0 at level 0, clipped at 0, made non-decreasing) is
    climbed greedily: the next level of whichever layer costs least per weight pruned, layers
    held at or below `caps[name]`; the last move stops part-way so that the total is exact.
    The moves do not depend on the target, so a higher target's allocation contains a lower
    one's (masks nest)."""
    lv = [0.0, *levels]
    curve = {k: np.maximum.accumulate(np.maximum(0.0, np.array([0.0, *v]))) for k, v in costs.items()}
    at = {k: 0 for k in costs}
    amounts = {k: 0.0 for k in costs}
    need, pruned = target * sum(sizes.values()), 0.0
    while pruned < need:
        best = None
        for k in costs:
            j = at[k] + 1
            if j >= len(lv) or lv[j] > caps.get(k, 1.0) + 1e-9:
                continue
            score = (curve[k][j] - curve[k][j - 1]) / (sizes[k] * (lv[j] - lv[j - 1]))
            if best is None or score < best[0]:
                best = (score, k)
        if best is None:
            raise ValueError(f"sparsity {target} is out of reach with these caps and probe levels "
                             f"(at most {pruned / sum(sizes.values()):.3f})")
        k = best[1]
        j = at[k] + 1
        dn = sizes[k] * (lv[j] - lv[j - 1])
        if pruned + dn >= need:
            amounts[k] = lv[j - 1] + (need - pruned) / sizes[k]
            break
        at[k], amounts[k], pruned = j, lv[j], pruned + dn
    return amounts


def cubic_ramp(step: int, steps: int, start: float, end: float) -> float:
    """The gradual schedule: from `start` at step 0 to `end` at `steps`, fast first, then
    slowing (the cubic schedule: start + (end - start) (1 - (1 - t)^3), t = step / steps)."""
    t = min(1.0, step / steps) if steps > 0 else 1.0
    return end if t == 1.0 else start + (end - start) * (1.0 - (1.0 - t) ** 3)


def load_pruned(path: Path, cfg: Config | None = None) -> tuple[LocalNet, Config, Masks]:
    """A pruned checkpoint as (folded network, config, masks), masks checked."""
    ck = load_checkpoint(path, cfg)
    if ck.get("stage") != "prune" or "masks" not in ck:
        raise ValueError(f"{path}: not a pruned checkpoint (stage {ck.get('stage', 'train')!r})")
    check_masks(ck["model"], ck["masks"], str(path))
    net, ck_cfg = model_from_checkpoint(ck)
    return net, ck_cfg, ck["masks"]


def layer_dir(out: Path, amount: float) -> Path:
    return out / f"layer_{round(amount * 100):02d}"


def nm_dir(out: Path, n: int, m: int) -> Path:
    return out / f"nm_{n}of{m}"


def block_dir(out: Path, amount: float) -> Path:
    return out / f"block_s{round(amount * 100):02d}"


def nm_layer_dir(out: Path, amount: float) -> Path:
    return out / f"nm_layer_s{round(amount * 100):02d}"


def nm_layer_ratios(alloc: dict[str, float], m: int, dense: list[str]) -> dict[str, int]:
    """Each layer's N of M from its allocated sparsity: max(1, round(M x density)); `dense`
    layers keep N = M."""
    return {k: m if k in dense else max(1, min(m, round(m * (1.0 - a)))) for k, a in alloc.items()}


def protected_layers(net: nn.Module) -> list[str]:
    """The displacement heads and the first convolution: global ranking empties the heads first
    (label-reg initialises them near zero) and the first layer sees the raw images."""
    names = list(prunable_weights(net))
    return [names[0], *[k for k in names if k.startswith("heads.")]]


def prune(cfg: Config, ckpt: Path, data_dir: Path, out: Path, resume: bool = False,
          progress: bool = True) -> list[Path]:
    """Run the pruning schedules; returns the fine-tuned checkpoint of each global amount."""
    setup_torch(cfg)
    net, _ = model_from_checkpoint(load_checkpoint(ckpt, cfg))
    net = fold_batchnorm(net)
    data = load_train_data(cfg, data_dir, progress)
    p = cfg.prune

    def meta(mode: str, amount: float, masks: Masks) -> dict:
        return {"stage": "prune", "folded": True, "mode": mode, "masks": masks, "amount": amount,
                "sparsity": mask_sparsity(masks), "source": str(ckpt)}

    def save_untrained(path: Path, info: dict) -> None:  # a pruned network before any fine-tuning
        save_checkpoint(path, cfg, {"model": net.state_dict(), "step": 0, **info})

    # sparsity 0: the folded, unpruned network, the start of the pruning curve and of unpruned QAT
    d0 = sparsity_dir(out, 0.0)
    save_untrained(d0 / "model.pt", meta("global", 0.0, {k: torch.ones_like(w, dtype=torch.bool)
                                                         for k, w in prunable_weights(net).items()}))
    done, layers = [], {}
    for i, amount in enumerate(p.amounts):
        d = sparsity_dir(out, amount)
        if resume and (d / "model.pt").exists():
            net, _, masks = load_pruned(d / "model.pt", cfg)
            layers[str(amount)] = layer_sparsity(net)
            done.append(d / "model.pt")
            continue
        masks = global_magnitude_masks(net, amount)
        apply_masks(net, masks)
        m = meta("global", amount, masks)
        save_untrained(d / "pruned.pt", m)
        path = fit(net, cfg, data, d, steps=p.steps, lr=p.lr, stream=100 + i, resume=resume,
                   progress=progress, desc=f"prune {round(amount * 100)}%",
                   after_step=lambda n, _, mk=masks: apply_masks(n, mk), extra=m)
        net, _, _ = load_pruned(path, cfg)  # asserts the held mask in the saved checkpoint
        s = weight_sparsity(net)
        if abs(s - amount) > 1e-3:
            raise AssertionError(f"{path}: sparsity {s:.4f} after fine-tuning, expected {amount}")
        print(f"[prune] {path}: sparsity {s:.3f}", file=sys.stderr)
        layers[str(amount)] = layer_sparsity(net)
        done.append(path)
    summary = {"checkpoints": {str(a): str(q) for a, q in zip(p.amounts, done)}, "unpruned": str(d0 / "model.pt"),
               "layer_sparsity": layers}
    if p.layer_amounts or p.nm or p.block_amounts:
        summary.update(structured_and_layer_aware(cfg, data, out, d0 / "model.pt", resume, progress, meta))
    atomic_write_json(out / "prune.json", {  # written last: make's mark that the stage finished
        **summary, "config": config_to_dict(cfg), "git_commit": git_commit()})
    return done


def _recover(cfg: Config, data, d: Path, net: nn.Module, teacher: nn.Module, info: dict, masks_at, stream: int,
             resume: bool, progress: bool, desc: str) -> LocalNet:
    """Fine-tune `net` for prune.gradual_steps with distillation from `teacher`; after every
    step the weights are masked by `masks_at(net, steps_done)` (the schedule), which also
    becomes the checkpoints' masks. Returns the fine-tuned network, masks checked."""
    p = cfg.prune
    if resume and (d / "ckpt.pt").exists():  # the masks in force at the checkpoint
        info["masks"] = load_checkpoint(d / "ckpt.pt", cfg, resume=True)["masks"]

    def after_step(n, step):
        masks = masks_at(n, step)
        apply_masks(n, masks)
        info["masks"] = masks  # fit reads `info` at each save
        info["sparsity"] = mask_sparsity(masks)

    path = fit(net, cfg, data, d, steps=p.gradual_steps, lr=p.gradual_lr, lr_final=p.gradual_lr / 10, stream=stream,
               resume=resume, progress=progress, desc=desc, after_step=after_step, extra=info,
               teacher=teacher, distill_weight=p.distill_weight)
    return load_pruned(path, cfg)[0]


def structured_and_layer_aware(cfg: Config, data, out: Path, unpruned: Path, resume: bool, progress: bool,
                               meta) -> dict:
    """The layer-aware amounts (sensitivity -> allocation -> gradual, distilled fine-tuning, each
    amount from the previous one) and the N:M models (one shot each, distilled fine-tuning)."""
    p = cfg.prune
    teacher, _, _ = load_pruned(unpruned, cfg)
    teacher.eval().requires_grad_(False)
    sizes = {k: w.numel() for k, w in prunable_weights(teacher).items()}
    caps = {k: 1.0 - p.protected_density for k in protected_layers(teacher)}
    summary: dict = {}
    allocs: dict[float, dict[str, float]] = {}  # layer-aware amount -> per-layer sparsity
    if p.layer_amounts:
        sens_path = out / "sensitivity.json"
        net, _, _ = load_pruned(unpruned, cfg)
        if resume and sens_path.exists():
            costs = json.loads(sens_path.read_text())["dice_loss_rise"]
        else:  # leaves `net` as it was: every probed layer is restored
            costs = layer_sensitivity(net, cfg, data, p.probe_levels, p.probe_batches, progress=progress)
            atomic_write_json(sens_path, {"levels": p.probe_levels, "batches": p.probe_batches,
                                          "dice_loss_rise": costs})
        prev = {k: 0.0 for k in sizes}
        summary["layer_aware"] = {}
        for i, amount in enumerate(p.layer_amounts):
            try:
                alloc = allocate(costs, p.probe_levels, sizes, amount, caps)
            except ValueError as err:
                raise ConfigError(f"prune.layer_amounts {amount}: {err}; lower it, add a higher probe level "
                                  "or lower prune.protected_density") from None
            d = layer_dir(out, amount)
            if resume and (d / "model.pt").exists():
                net, _, _ = load_pruned(d / "model.pt", cfg)
            else:
                start = prev
                ramp = max(1, round(0.75 * p.gradual_steps))  # then held for the last quarter
                info = meta("layer", amount, layer_magnitude_masks(net, start))
                net = _recover(cfg, data, d, net, teacher, info,
                               lambda n, t, s0=start, s1=alloc: layer_magnitude_masks(
                                   n, {k: cubic_ramp(t, ramp, s0[k], s1[k]) for k in s1}),
                               300 + i, resume, progress, f"layer-aware {round(amount * 100)}%")
            allocs[amount] = alloc
            got = layer_sparsity(net)
            for k, a in alloc.items():  # the allocation exactly (up to rounding to whole weights)
                if abs(got[k] - a) > 1.0 / sizes[k] + 1e-4:
                    raise AssertionError(f"{d}: {k} sparsity {got[k]} after fine-tuning, allocated {a:.4f}")
            print(f"[prune] {d / 'model.pt'}: layer-aware, sparsity {weight_sparsity(net):.3f}", file=sys.stderr)
            summary["layer_aware"][str(amount)] = {"checkpoint": str(d / "model.pt"),
                                                   "allocation": {k: round(v, 4) for k, v in alloc.items()},
                                                   "layer_sparsity": got}
            prev = alloc
    prev = 0.0
    for i, amount in enumerate(p.block_amounts):  # each from the previous one, masks nested
        d = block_dir(out, amount)
        if resume and (d / "model.pt").exists():
            net, _, _ = load_pruned(d / "model.pt", cfg)
        else:
            net, _, _ = load_pruned(unpruned, cfg) if i == 0 else (net, None, None)
            ramp = max(1, round(0.75 * p.gradual_steps))
            net = _recover(cfg, data, d, net, teacher, meta("block", amount, layer_block_masks(net, prev)),
                           lambda n, t, a0=prev, a1=amount: layer_block_masks(n, cubic_ramp(t, ramp, a0, a1)),
                           500 + i, resume, progress, f"blocks {round(amount * 100)}%")
        print(f"[prune] {d / 'model.pt'}: blocks, sparsity {weight_sparsity(net):.3f}", file=sys.stderr)
        summary.setdefault("blocks", {})[str(amount)] = {"checkpoint": str(d / "model.pt"),
                                                         "sparsity": round(weight_sparsity(net), 4),
                                                         "layer_sparsity": layer_sparsity(net)}
        prev = amount
    dense = protected_layers(teacher) if p.nm_protected_dense else []
    ratios = [(p.nm, None), *[(r, None) for r in p.nm_more]] if p.nm else []
    if p.nm_layer:  # each layer its own N, from the layer-aware allocation
        ratios.append(([nm_layer_ratios(allocs[p.nm_layer], p.nm_layer_m, dense), p.nm_layer_m], p.nm_layer))
    for i, ((n, m), amount) in enumerate(ratios):
        d = nm_dir(out, n, m) if amount is None else nm_layer_dir(out, amount)
        what = f"{n}:{m}" if amount is None else f"per-layer N of {m} (layer-aware {round(amount * 100)} %)"
        if resume and (d / "model.pt").exists():
            net, _, _ = load_pruned(d / "model.pt", cfg)
        else:
            net, _, _ = load_pruned(unpruned, cfg)
            masks = nm_block_masks(net, n, m)
            masks.update({k: torch.ones_like(masks[k]) for k in dense})
            apply_masks(net, masks)
            net = _recover(cfg, data, d, net, teacher, meta("nm", 1 - n / m if amount is None else amount, masks),
                           lambda _n, _t, mk=masks: mk, 400 + i, resume, progress, f"N:M {what}")
        print(f"[prune] {d / 'model.pt'}: N:M {what}, sparsity {weight_sparsity(net):.3f}", file=sys.stderr)
        entry = {"n": n, "m": m, "checkpoint": str(d / "model.pt"), "sparsity": round(weight_sparsity(net), 4),
                 "layer_sparsity": layer_sparsity(net)}
        if amount is not None:
            summary["nm_layer"] = {**entry, "amount": amount}
        elif i == 0:
            summary["nm"] = entry
        else:
            summary.setdefault("nm_more", {})[f"{n}of{m}"] = entry
    return summary


def main(argv=None) -> int:
    ap = stage_parser(__doc__, resume="keep finished amounts, continue the current one")
    ap.add_argument("--ckpt", required=True, type=Path, help="trained fp32 checkpoint (make train)")
    a = ap.parse_args(argv)

    def body():
        prune(load_config(a.config), a.ckpt, a.data, a.out, a.resume, progress=not a.no_progress)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
