"""Which device torch runs on, and how its precision is chosen.

    device = resolve_device("auto")        # cuda:LOCAL_RANK under torchrun on GPUs, else cuda, else cpu

Every training stage (train, prune, QAT) and the float evaluation take `--device
auto|cpu|cuda|cuda:N`. The model, the training set and every tensor the training makes live on
that device; checkpoints are written with CPU tensors and load on any device.
"""
from __future__ import annotations

import contextlib
import os

import torch

from model.config import ConfigError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device `spec` names, checked: an error naming the flag when it is not there."""
    spec = (spec or "auto").strip().lower()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: this torch sees no CUDA device (torch {torch.__version__}, "
                              f"built for CUDA {torch.version.cuda}); use --device cpu")
        index = local if spec == "cuda" else spec[5:]
        try:
            index = int(index)
        except ValueError:
            raise ConfigError(f"--device {spec}: not a device ({DEVICE_FORMS})") from None
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices")
        return torch.device("cuda", index)
    raise ConfigError(f"--device {spec}: not a device ({DEVICE_FORMS})")


def autocast(device: torch.device, precision: str):
    """The forward pass's autocast context for `precision` ("fp32": none, "bf16"); none on the
    meta device (model/memory.py sizes a step there in float32, an upper bound for bf16)."""
    if precision != "bf16" or device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
