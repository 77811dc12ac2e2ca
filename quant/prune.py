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

Writes OUT/sparsity_XX/pruned.pt (pruned, no retraining) and OUT/sparsity_XX/model.pt
(fine-tuned), and OUT/sparsity_00/model.pt (folded, unpruned, all-keep masks), each with the masks, the measured sparsity, the resolved config and the git
commit; a checkpoint whose pruned weights are not all zero is refused when loaded.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

from model.artifacts import atomic_write_json, git_commit
from model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from model.cli import run_cli, stage_parser
from model.config import Config, config_to_dict, load_config
from model.localnet import LocalNet, fold_batchnorm
from model.train import fit, load_train_data, setup_torch

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor, True = kept


def prunable_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every convolution weight of the network, by parameter name."""
    return {f"{name}.weight": m.weight for name, m in net.named_modules() if isinstance(m, nn.Conv3d)}


def global_magnitude_masks(net: nn.Module, amount: float) -> Masks:
    """Keep-masks zeroing the `amount` fraction of all convolution weights with the smallest |w|.

    Exactly round(amount * total) weights are pruned; ties are broken by position
    (stable sort), so the result is deterministic. Weights already zero rank first, so a
    higher amount applied to a pruned network keeps the earlier mask (masks nest).
    """
    weights = prunable_weights(net)
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    n_prune = round(amount * flat.numel())
    order = torch.argsort(flat, stable=True)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:n_prune]] = False
    masks, at = {}, 0
    for name, w in weights.items():
        masks[name] = keep[at:at + w.numel()].view_as(w).clone()
        at += w.numel()
    return masks


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


def load_pruned(path: Path, cfg: Config | None = None) -> tuple[LocalNet, Config, Masks]:
    """A pruned checkpoint as (folded network, config, masks), masks checked."""
    ck = load_checkpoint(path, cfg)
    if ck.get("stage") != "prune" or "masks" not in ck:
        raise ValueError(f"{path}: not a pruned checkpoint (stage {ck.get('stage', 'train')!r})")
    check_masks(ck["model"], ck["masks"], str(path))
    net, ck_cfg = model_from_checkpoint(ck)
    return net, ck_cfg, ck["masks"]


def prune(cfg: Config, ckpt: Path, data_dir: Path, out: Path, resume: bool = False,
          progress: bool = True) -> list[Path]:
    """Run the pruning schedule; returns the fine-tuned checkpoint of each amount."""
    setup_torch(cfg)
    net, _ = model_from_checkpoint(load_checkpoint(ckpt, cfg))
    net = fold_batchnorm(net)
    data = load_train_data(cfg, data_dir, progress)

    def meta(amount: float, masks: Masks) -> dict:
        return {"stage": "prune", "folded": True, "masks": masks, "amount": amount,
                "sparsity": weight_sparsity(net), "source": str(ckpt)}

    def save_untrained(path: Path, info: dict) -> None:  # a pruned network before any fine-tuning
        save_checkpoint(path, cfg, {"model": net.state_dict(), "step": 0, **info})

    # sparsity 0: the folded, unpruned network, the start of the pruning curve and of unpruned QAT
    d0 = sparsity_dir(out, 0.0)
    save_untrained(d0 / "model.pt", meta(0.0, {k: torch.ones_like(w, dtype=torch.bool)
                                               for k, w in prunable_weights(net).items()}))
    done, layers = [], {}
    for i, amount in enumerate(cfg.prune.amounts):
        d = sparsity_dir(out, amount)
        if resume and (d / "model.pt").exists():
            net, _, masks = load_pruned(d / "model.pt", cfg)
            layers[str(amount)] = layer_sparsity(net)
            done.append(d / "model.pt")
            continue
        masks = global_magnitude_masks(net, amount)
        apply_masks(net, masks)
        m = meta(amount, masks)
        save_untrained(d / "pruned.pt", m)
        path = fit(net, cfg, data, d, steps=cfg.prune.steps, lr=cfg.prune.lr, stream=100 + i, resume=resume,
                   progress=progress, desc=f"prune {round(amount * 100)}%",
                   after_step=lambda n, mk=masks: apply_masks(n, mk), extra=m)
        net, _, _ = load_pruned(path, cfg)  # asserts the held mask in the saved checkpoint
        s = weight_sparsity(net)
        if abs(s - amount) > 1e-3:
            raise AssertionError(f"{path}: sparsity {s:.4f} after fine-tuning, expected {amount}")
        print(f"[prune] {path}: sparsity {s:.3f}", file=sys.stderr)
        layers[str(amount)] = layer_sparsity(net)
        done.append(path)
    atomic_write_json(out / "prune.json", {  # written last: make's mark that the stage finished
        "checkpoints": {str(a): str(p) for a, p in zip(cfg.prune.amounts, done)}, "unpruned": str(d0 / "model.pt"),
        "layer_sparsity": layers,
        "config": config_to_dict(cfg), "git_commit": git_commit()})
    return done


def main(argv=None) -> int:
    ap = stage_parser(__doc__, resume="keep finished amounts, continue the current one")
    ap.add_argument("--ckpt", required=True, type=Path, help="trained fp32 checkpoint (make train)")
    a = ap.parse_args(argv)

    def body():
        prune(load_config(a.config), a.ckpt, a.data, a.out, a.resume, progress=not a.no_progress)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
