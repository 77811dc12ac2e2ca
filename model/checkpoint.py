"""Checkpoint files of every stage: save with provenance, load with the config checked.

    from model.checkpoint import save_checkpoint, load_checkpoint, model_from_checkpoint
    save_checkpoint(path, cfg, {"model": net.state_dict(), "step": 10, "stage": "train"})
    ck = load_checkpoint(path, cfg)            # refuses a checkpoint made with another config
    net, cfg = model_from_checkpoint(ck)       # LocalNet (BatchNorm-folded if the checkpoint is)

A checkpoint is a dict written atomically by torch.save: the stage's own entries plus
`config` (the resolved config, a plain dict), `git_commit` and `versions`. It holds tensors
and plain data only, and is read with `torch.load(weights_only=True)`: a file that needs
anything else to unpickle (a class, a function: code that would run on load) is refused.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from model.artifacts import atomic_torch_save, git_commit, tool_versions
from model.config import STAGE_SECTIONS, Config, ConfigError, config_from_dict, config_to_dict
from model.localnet import LocalNet, fold_batchnorm


def _on_cpu(obj):
    """`obj` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: Path, cfg: Config, entries: dict) -> None:
    """Write `entries` with the resolved config and provenance, atomically; every tensor is
    written from the CPU, so the file loads on any device."""
    atomic_torch_save(path, {**_on_cpu(entries), "config": config_to_dict(cfg), "git_commit": git_commit(),
                             "versions": tool_versions()})


def load_checkpoint(path: Path, cfg: Config | None = None, resume: bool = False) -> dict:
    """A checkpoint dict; with `cfg`, refuse one made with another config.

    Only the sections the checkpoint's stage depends on are compared (STAGE_SECTIONS);
    with `resume`, the `steps` of any stage may differ. A key the checkpoint's config lacks
    (added to the toolchain later) counts at its default, which keeps the earlier behaviour.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: refused: it holds objects other than tensors and plain data, which "
                         f"would run code when loaded ({first[:200]}); this toolchain's checkpoints never "
                         "do: re-create it with the stage that makes it") from None
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("config"), dict) or not isinstance(ck.get("model"), dict):
        raise ValueError(f"{path}: not a checkpoint of this toolchain (no config/model tables)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ck["model"].items()):
        raise ValueError(f"{path}: 'model' must map parameter names to tensors")
    if cfg is not None:
        sections = STAGE_SECTIONS[ck.get("stage", "train")]
        want = {k: v for k, v in config_to_dict(cfg).items() if k in sections}
        try:  # keys added since the checkpoint was written take their defaults (the old behaviour)
            full = config_to_dict(config_from_dict(ck["config"], f"{path}: checkpoint config"))
        except ConfigError:
            full = ck["config"]
        have = {k: v for k, v in full.items() if k in sections}
        if resume:  # continuing to more (or fewer) steps is allowed
            for sec, vals in want.items():
                if "steps" in vals and sec in have:
                    vals["steps"] = have[sec].get("steps", vals["steps"])
        if have != want:
            raise ConfigError(f"{path}: checkpoint was made with another config ({config_diff(have, want)})")
    return ck


def config_diff(a: dict, b: dict, prefix: str = "") -> str:
    """The keys where two config dicts differ, as 'section.key: checkpoint A vs config B'."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = config_diff(va, vb, f"{prefix}{k}.")
            if d:
                out.append(d)
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint {va!r} vs config {vb!r}")
    return "; ".join(out)


def model_from_checkpoint(ck: dict, where: str = "checkpoint") -> tuple[LocalNet, Config]:
    """The float network of a train or prune checkpoint, in eval mode, and its config; `where`
    (the file) starts every error message."""
    cfg = config_from_dict(ck["config"], f"{where}: config")
    net = LocalNet(cfg.model)
    if ck.get("folded"):  # pruned checkpoints hold the BatchNorm-folded network
        net = fold_batchnorm(net)
    try:
        net.load_state_dict(ck["model"])
    except RuntimeError as e:  # missing, unexpected or mis-shaped parameters
        raise ValueError(f"{where}: parameters do not fit its config's network: {str(e)[:300]}") from None
    return net.eval(), cfg
