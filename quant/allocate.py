"""Layer-aware pruning: each layer's measured sensitivity, the allocation of a total sparsity
over the layers, and the gradual schedule that reaches it.

`layer_sensitivity` prunes one layer at a time to each probe level and measures the rise of the
Dice loss on fixed training batches; `allocate` climbs those cost curves greedily, cheapest
Dice per pruned weight first; `cubic_ramp` is the schedule that fine-tuning follows to the
allocated amounts.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from model.config import Config
from model.train import Stream
from quant.masks import magnitude_keep, prunable_weights


def layer_sensitivity(net: nn.Module, cfg: Config, data, levels: list[float], batches: int,
                      stream: int = Stream.SENSITIVITY, progress: bool = True) -> dict[str, list[float]]:
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
                w.mul_(magnitude_keep(w, round(lv * w.numel())))
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
