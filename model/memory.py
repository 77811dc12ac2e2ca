"""What a training step needs in memory, known before training starts.

    python -m model.memory --config configs/ibsr.toml [--batch 2] [--device-gib 24]

The network and one training step are run on torch's meta device, which computes every shape
and allocates nothing, so the paper-scale network at 128x160x128 is sized in a second on any
machine. Counted per device (a data-parallel process holds a whole copy of the network and its
slice of the batch):

- parameters, their gradients and Adam's two moments: 4 x the parameter bytes;
- the tensors autograd saves for the backward pass (the activation memory), per batch element:
  every tensor saved by the network's layers and the loss (warp, Gaussian smoothing, Dice,
  bending energy), counted once however often it is saved; parameters excluded;
- the batch itself (images and labels, moving and fixed, before and after augmentation) and
  the largest single tensor made during the step (a working buffer that is alive beside the
  saved ones).

`model.train` prints this before the first step. tests/test_memory.py compares it with the
peak resident memory of a real step on the CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from model.config import Config, load_config

GIB = 2**30


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def training_memory(cfg: Config, batch: int | None = None) -> dict:
    """The memory a training step of `cfg` needs per device for a batch of `batch` (default
    train.batch_size divided over WORLD_SIZE processes), in bytes (see the module's docstring)."""
    from model.localnet import LocalNet
    from model.train import loss_terms

    world = int(os.environ.get("WORLD_SIZE", "1"))
    b = batch if batch is not None else max(1, cfg.train.batch_size // world)
    labels = len(cfg.data.labels) if cfg.train.label_sampling == "all" else 1
    meta = torch.device("meta")
    with meta:
        net = LocalNet(cfg.model)
    params = {id(p) for p in net.parameters()}
    param_bytes = sum(_bytes(p) for p in net.parameters())
    shape = tuple(cfg.data.shape)
    img = torch.empty(b, 1, *shape, device=meta)
    lab = torch.empty(b, labels, *shape, device=meta)
    weight = torch.empty(b, labels, device=meta) if labels > 1 else None
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # holds every saved tensor, so that no id is reused

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in params and not isinstance(base, torch.nn.Parameter):
            keep.append(base)
            saved[id(base)] = _bytes(base)
        return t

    largest = [0]

    class Widest(torch.overrides.TorchFunctionMode):  # the largest tensor any op of the step makes
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                largest[0] = max(largest[0], _bytes(out))
            return out

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), Widest():
        loss, _, _ = loss_terms(net, cfg, img, img, lab, lab, weight, precision=cfg.train.precision)
    activations = sum(saved.values())
    batch_bytes = 2 * 2 * (_bytes(img) + _bytes(lab))  # moving and fixed, drawn and augmented
    total = 4 * param_bytes + activations + batch_bytes + largest[0]
    return {"parameters": sum(p.numel() for p in net.parameters()), "parameter_bytes": param_bytes,
            "batch": b, "grid": list(shape), "activation_bytes": activations,
            "activation_bytes_per_element": activations // b, "batch_bytes": batch_bytes,
            "largest_tensor_bytes": largest[0], "step_bytes": activations + batch_bytes + largest[0],
            "total_bytes": total}


def describe(m: dict, device_bytes: int | None = None) -> str:
    """One paragraph for a user about to train."""
    g = "x".join(map(str, m["grid"]))
    text = (f"{m['parameters']:,} parameters ({m['parameter_bytes'] / 2**20:.1f} MiB; with gradients and Adam's "
            f"moments {4 * m['parameter_bytes'] / 2**20:.1f} MiB); activations {m['activation_bytes_per_element'] / GIB:.2f}"
            f" GiB per batch element at {g}; a step with {m['batch']} per device needs about "
            f"{m['total_bytes'] / GIB:.2f} GiB")
    if device_bytes:
        fits = "fits" if m["total_bytes"] <= device_bytes else "does NOT fit"
        text += f" of the device's {device_bytes / GIB:.1f} GiB: it {fits}"
    return text


def device_bytes(device: torch.device) -> int | None:
    """The memory of `device`: a GPU's total, the machine's RAM for the CPU (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--batch", type=int, help="batch elements per device (default: train.batch_size)")
    ap.add_argument("--device-gib", type=float, help="the memory of the device to check against")
    a = ap.parse_args(argv)
    if a.batch is not None and a.batch < 1:
        ap.error("--batch must be at least 1")
    from model.cli import run_cli

    def body():
        m = training_memory(load_config(a.config), a.batch)
        print(describe(m, int(a.device_gib * GIB) if a.device_gib else None))
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
