"""Pruning masks: which weights a pruning keeps, and the bookkeeping around them.

A mask is a bool tensor per convolution weight (parameter name -> tensor of the weight's
shape, True = kept). The rules that choose them:

- `global_magnitude_masks`: the smallest |w| over all convolutions together (the seed's rule);
- `layer_magnitude_masks`: the smallest |w| of each layer to its own amount (layer-aware);
- `nm_block_masks`: N of every M consecutive accelerator blocks of an output group (N:M);
- `layer_block_masks`: whole accelerator blocks of each layer, smallest RMS first (blocks).

Every rule ranks weights already zero first and breaks ties by position, so a higher amount
applied to a pruned network keeps the earlier mask (masks nest) and the result is
deterministic. The accelerator's block (hw.engine.block_index) is the one description of the
engine that pruning reads (tests/test_layout.py allows that import).
"""
from __future__ import annotations

import torch
import torch.nn as nn

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor, True = kept


def prunable_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every convolution weight of the network, by parameter name."""
    return {f"{name}.weight": m.weight for name, m in net.named_modules() if isinstance(m, nn.Conv3d)}


def magnitude_keep(w: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask of `w` without its `n_prune` smallest |w| (ties by position, zeros first)."""
    order = torch.argsort(w.detach().abs().flatten(), stable=True)
    keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
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
    keep = magnitude_keep(flat, round(amount * flat.numel()))
    masks, at = {}, 0
    for name, w in weights.items():
        masks[name] = keep[at:at + w.numel()].view_as(w).clone()
        at += w.numel()
    return masks


def layer_magnitude_masks(net: nn.Module, amounts: dict[str, float]) -> Masks:
    """Keep-masks pruning round(amounts[name] x size) smallest-|w| weights of each layer on its
    own (layers not named keep everything). Zeros rank first, so masks nest as amounts grow."""
    return {name: magnitude_keep(w, round(amounts.get(name, 0.0) * w.numel()))
            for name, w in prunable_weights(net).items()}


def block_squares(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the engine block id of every weight of `w`, flattened (hw.engine.block_index), and
    each block's sum of squared weights, float64)."""
    from hw.engine import block_index

    idx = torch.from_numpy(block_index(tuple(w.shape))).flatten().to(w.device)
    square = torch.zeros(int(idx.max()) + 1, dtype=torch.float64, device=w.device)
    return idx, square.index_add_(0, idx, w.detach().double().flatten().square())


def nm_block_masks(net: nn.Module, n: int | dict[str, int], m: int) -> Masks:
    """N:M over the accelerator's weight blocks: in every output group, of each run of `m`
    consecutive blocks (hw.engine.block_index order; a last, shorter run keeps
    round(n / m x its length)) the `n` with the largest L2 norm are kept (ties by position)
    and the others zeroed whole. The engine skips an all-zero block, so the cycles of every
    convolution drop to about n/m of dense, whatever the weights. `n` may be per layer (by
    weight name; n = m keeps the layer dense)."""
    from hw.engine import nm_runs

    masks = {}
    for name, w in prunable_weights(net).items():
        n_layer = n[name] if isinstance(n, dict) else n
        if n_layer >= m:
            masks[name] = torch.ones_like(w, dtype=torch.bool)
            continue
        idx, norm = block_squares(w)
        keep_block = torch.zeros(len(norm), dtype=torch.bool, device=w.device)
        for r0, r1, k in nm_runs(len(norm), w.shape[0], n_layer, m):
            top = torch.argsort(-norm[r0:r1], stable=True)[:k]
            keep_block[r0 + top] = True
        masks[name] = keep_block[idx].view_as(w)
    return masks


def layer_block_masks(net: nn.Module, amount: float) -> Masks:
    """Block pruning: in each layer on its own, whole accelerator blocks (hw.engine.block_index)
    are zeroed in order of rising RMS (ties by position) while that brings the layer's pruned
    weights nearer `amount` of its size; the engine skips an all-zero block, so each layer's
    cycles fall by about `amount`. All-zero blocks rank first, so masks nest as amounts grow."""
    masks = {}
    for name, w in prunable_weights(net).items():
        idx, square = block_squares(w)
        nb = len(square)
        count = torch.bincount(idx, minlength=nb).double()
        order = torch.argsort(square / count, stable=True)
        size = count[order]
        pruned = order[torch.cumsum(size, 0) - size / 2 <= amount * w.numel()]  # a prefix: cumsum rises
        keep = torch.ones(nb, dtype=torch.bool, device=w.device)
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
            params[name].mul_(m.to(params[name].device))


def check_masks(state: dict[str, torch.Tensor], masks: Masks, where: str) -> None:
    """Raise if any pruned weight in `state` (a state_dict) is not exactly zero."""
    for name, m in masks.items():
        if name not in state:
            raise ValueError(f"{where}: mask for {name}, which the model does not have")
        bad = int(torch.count_nonzero(state[name][~m.to(state[name].device)]))
        if bad:
            raise ValueError(f"{where}: {bad} pruned weights of {name} are not zero")


def weight_sparsity(net: nn.Module) -> float:
    ws = prunable_weights(net).values()
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / total


def layer_sparsity(net: nn.Module) -> dict[str, float]:
    return {k: round(float((w == 0).float().mean()), 4) for k, w in prunable_weights(net).items()}


def nm_layer_ratios(alloc: dict[str, float], m: int, dense: list[str]) -> dict[str, int]:
    """Each layer's N of M from its allocated sparsity: max(1, round(M x density)); `dense`
    layers keep N = M."""
    return {k: m if k in dense else max(1, min(m, round(m * (1.0 - a)))) for k, a in alloc.items()}


def protected_layers(net: nn.Module) -> list[str]:
    """The displacement heads and the first convolution: global ranking empties the heads first
    (label-reg initialises them near zero) and the first layer sees the raw images."""
    names = list(prunable_weights(net))
    return [names[0], *[k for k in names if k.startswith("heads.")]]
