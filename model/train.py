"""Label-driven training of LocalNet (label-reg's weak supervision).

    python -m model.train --config configs/demo.toml --data data/synthetic --out runs/demo/train
    python -m model.train ... --resume                     # continue after a kill
    torchrun --standalone --nproc_per_node 2 -m model.train ...   # data-parallel (gloo on CPU, NCCL on GPU)

Each step draws `batch_size` random ordered pairs (moving, fixed) of training subjects
(13 x 12 = 156 for IBSR), one random configured label per pair, and a random affine
augmentation per volume applied to image and label together. The loss is the
multi-scale Dice of the warped moving label against the fixed label plus
`bending_weight` x bending energy; inference needs no labels.

All randomness of step s comes from numpy's generator seeded with (seed, s), so a run
is deterministic for a seed, resumes to the same result, and data-parallel ranks draw
the same global batch and each take their slice of it.

Writes OUT/ckpt.pt (every ckpt_every steps, atomically: model, optimiser, step,
resolved config, git commit), OUT/log.jsonl, and OUT/model.pt when finished.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from enum import IntEnum
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from model.artifacts import atomic_write_text
from model.checkpoint import load_checkpoint, save_checkpoint
from model.cli import run_cli, stage_parser
from model.config import Config, ConfigError, load_config
from model.data import DataError, Subject, load_dataset
from model.device import autocast, resolve_device
from model.localnet import LocalNet
from model.losses import bending_energy, local_ncc, multiscale_dice_loss
from model.warp import random_affine_ddf, random_smooth_ddf, warp_grid_sample


class Stream(IntEnum):
    """The random streams of training batches (TrainData.batch's `stream`). Each fine-tuning job
    draws a sequence of its own, its kind's base plus its index among the jobs of that kind
    (`Stream.of`), so that no stage replays another's batches."""
    TRAIN = 0  # training itself
    SENSITIVITY = 90  # the fixed batches on which layer-aware pruning probes each layer
    PRUNE = 100  # global magnitude pruning, one job per amount
    QAT = 200  # quantisation-aware fine-tuning and its calibration, one per model
    LAYER_AWARE = 300  # layer-aware pruning, one per amount
    NM = 400  # N:M block pruning, one per ratio
    BLOCKS = 500  # block pruning, one per amount
    PTQ = 600  # the post-training quantisation rows' calibration (benchmarks/accuracy.py)

    @classmethod
    def of(cls, kind: "Stream", index: int) -> int:
        """The stream of the `index`-th job of `kind`; an error past the next kind's base."""
        if not 0 <= index < 100:
            raise ValueError(f"{kind.name} job {index}: a kind has streams for 100 jobs")
        return int(kind) + index


class TrainData:
    """Training subjects as tensors on the training device, and the per-step batch drawn from
    (seed, step) and augmented there: the whole set is in memory, so no loader process would
    pay; the random draws are numpy's on the CPU, the warps run on the device."""

    def __init__(self, subjects: list[Subject], labels: list[int], device: torch.device | str = "cpu"):
        if len(subjects) < 2:
            raise DataError("training needs at least 2 subjects")
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.stack([s.image for s in subjects]))[:, None].to(self.device)  # (S, 1, X, Y, Z)
        self.labels = [torch.from_numpy(s.label.astype(np.int32)).to(self.device) for s in subjects]
        self.present = [set(np.unique(s.label).tolist()) for s in subjects]
        self.codes = labels
        n = len(subjects)
        self.pairs = [(i, j) for i in range(n) for j in range(n) if i != j]  # (moving, fixed)

    def batch(self, cfg: Config, step: int, rank: int = 0, world: int = 1, stream: int = 0):
        """(moving_img, fixed_img, moving_lab, fixed_lab, weight), augmented: images (B/world, 1, X, Y, Z);
        labels (B/world, 1, ...) of one random label, or with `train.label_sampling = "all"`
        (B/world, L, ...) of every configured label and weight (B/world, L), 1 where the label is
        in both volumes (None for one label).

        `stream` > 0 draws an independent sequence (fine-tuning stages must not replay training's).
        """
        t = cfg.train
        rng = np.random.default_rng([t.seed, step] if stream == 0 else [t.seed, stream, step])
        b = t.batch_size
        pick = rng.integers(0, len(self.pairs), b)
        mov_i = [self.pairs[k][0] for k in pick]
        fix_i = [self.pairs[k][1] for k in pick]
        if t.same_subject_prob > 0:  # drawn only when used: the default sequence stays as it was
            same = rng.random(b) < t.same_subject_prob
            fix_i = [m if s else f for m, f, s in zip(mov_i, fix_i, same)]
        codes = []
        for m, f in zip(mov_i, fix_i):
            both = [c for c in self.codes if c in self.present[m] and c in self.present[f]]
            if t.label_sampling == "all":
                codes.append(both)
            else:
                codes.append(both[rng.integers(len(both))] if both else self.codes[rng.integers(len(self.codes))])
        dev = self.device
        aug = random_affine_ddf(self.images.shape[2:], rng, 2 * b, t.aug_rotation_deg, t.aug_scale,
                                t.aug_translation_vox, device=dev)
        if t.same_subject_prob > 0 and t.self_elastic_vox > 0:
            aug[b:] += random_smooth_ddf(self.images.shape[2:], rng, b, t.self_elastic_vox, device=dev) * \
                torch.tensor(same, dtype=torch.float32, device=dev).view(b, 1, 1, 1, 1)
        sl = slice(rank * b // world, (rank + 1) * b // world)
        mov_i, fix_i, codes, aug_m, aug_f = mov_i[sl], fix_i[sl], codes[sl], aug[:b][sl], aug[b:][sl]
        mi = self.images[mov_i]
        fi = self.images[fix_i]
        if t.aug_intensity > 0:  # a generator of its own: the default sequence stays as it was
            irng = np.random.default_rng([t.seed, stream, step, 1])
            mi, fi = random_contrast(mi, irng, t.aug_intensity), random_contrast(fi, irng, t.aug_intensity)
        weight = None
        if t.label_sampling == "all":  # (B, L) one-hot of every configured label; absent ones weigh 0
            ml = torch.stack([torch.stack([(self.labels[i] == c).float() for c in self.codes]) for i in mov_i])
            fl = torch.stack([torch.stack([(self.labels[i] == c).float() for c in self.codes]) for i in fix_i])
            weight = torch.tensor([[float(c in both) for c in self.codes] for both in codes], device=dev)
        else:
            ml = torch.stack([(self.labels[i] == c).float() for i, c in zip(mov_i, codes)])[:, None]
            fl = torch.stack([(self.labels[i] == c).float() for i, c in zip(fix_i, codes)])[:, None]
        # one warp per volume moves image and label together
        f = warp_grid_sample(torch.cat([fi, fl], 1), aug_f)
        if cfg.model.prealign != "none":  # the global stage on the augmented pair, composed with
            aug_m = prealigned_field(cfg.model.prealign, warp_grid_sample(mi, aug_m), f[:, :1], aug_m)  # one warp
        m = warp_grid_sample(torch.cat([mi, ml], 1), aug_m)
        return m[:, :1], f[:, :1], m[:, 1:], f[:, 1:], weight


def random_contrast(images: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """Each volume of `images` (B, 1, X, Y, Z), intensities in [0, 1], seen in a contrast of its
    own (SynthMorph's lesson: a network that never sees one contrast twice cannot overfit to
    it), all scaled by `strength`:
    - a monotone piecewise-linear remap through 6 knots at 0, 0.2, ..., 1, each moved by up to
      +-0.12 x strength and then sorted (tissue classes change their relative brightness);
    - a gamma exp(N(0, 0.25 x strength));
    - a smooth multiplicative bias, exp(0.1 x strength x a linear + quadratic field of the
      normalised coordinates with N(0, 1) coefficients);
    - Gaussian noise of sd 0.02 x strength; then clipped to [0, 1]."""
    b, _, *shape = images.shape
    dev = images.device
    knots = np.linspace(0.0, 1.0, 6)
    g = [torch.linspace(-1.0, 1.0, n, device=dev) for n in shape]
    x, y, z = torch.meshgrid(*g, indexing="ij")
    terms = torch.stack([x, y, z, x * y, y * z, z * z])  # (6, X, Y, Z)
    out = []
    for k in range(b):
        v = np.sort(np.clip(knots + rng.uniform(-0.12, 0.12, 6) * strength, 0.0, 1.0))
        img = images[k, 0]
        seg = torch.clamp((img * 5).long(), 0, 4)   # the knot interval of each voxel
        lo, hi = torch.tensor(v[:-1], dtype=img.dtype, device=dev), torch.tensor(v[1:], dtype=img.dtype, device=dev)
        frac = img * 5 - seg.to(img.dtype)
        img = lo[seg] + (hi[seg] - lo[seg]) * frac
        img = img.clamp(0, 1) ** float(np.exp(rng.normal(0, 0.25 * strength)))
        coef = torch.tensor(rng.normal(0, 1, 6), dtype=img.dtype, device=dev)
        img = img * torch.exp(0.1 * strength * torch.einsum("t,txyz->xyz", coef, terms))
        img = img + torch.from_numpy(rng.normal(0, 0.02 * strength, img.shape).astype(np.float32)).to(dev)
        out.append(img.clamp(0, 1))
    return torch.stack(out)[:, None]


def prealigned_field(kind: str, mov_img: torch.Tensor, fix_img: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """`field` (the augmentation of the moving volumes) followed by the global stage fitted to the
    augmented pair: sampling the result reads moving at A(x) + field(A(x)), so the moving
    volumes are interpolated once."""
    from model.prealign import affine_ddf, global_affine

    out = []
    for k in range(field.shape[0]):
        M, t = global_affine(kind, mov_img[k, 0].cpu().numpy(), fix_img[k, 0].cpu().numpy())
        a = torch.from_numpy(affine_ddf(M, t, field.shape[2:])).float()[None].to(field.device)
        out.append(a + warp_grid_sample(field[k:k + 1], a))
    return torch.cat(out)


def loss_terms(net, cfg: Config, mov_img, fix_img, mov_lab, fix_lab, weight=None, teacher=None,
               distill_weight: float = 0.0, precision: str = "fp32"):
    """(loss, multi-scale Dice loss, bending energy) of a batch of TrainData.batch. With a
    `teacher` network the loss adds `distill_weight` x the mean squared difference between the
    two displacement fields (voxels^2): the compressed network is pulled towards the field of
    the trained one, not only towards the labels. `precision` "bf16" runs the network's forward
    pass under bf16 autocast; its field is taken back to float32 before the warp, so the
    sampling grid, the Dice sums and the loss stay float32."""
    x = torch.cat([mov_img, fix_img], 1)
    if next(net.parameters()).is_contiguous(memory_format=torch.channels_last_3d):
        x = x.contiguous(memory_format=torch.channels_last_3d)  # the layout fit gave the network
    with autocast(x.device, precision):
        ddf = net(x)
    ddf = ddf.float()
    dice = multiscale_dice_loss(warp_grid_sample(mov_lab, ddf), fix_lab, cfg.loss.dice_scales, weight)
    bend = bending_energy(ddf)
    loss = dice + cfg.loss.bending_weight * bend
    if cfg.loss.image_weight > 0:
        loss = loss + cfg.loss.image_weight * (1 - local_ncc(warp_grid_sample(mov_img, ddf), fix_img, cfg.loss.image_window))
    if teacher is not None and distill_weight > 0:
        with torch.no_grad():
            target = teacher(x)
        loss = loss + distill_weight * (ddf - target).square().mean()
    return loss, dice, bend


def cosine_lr(step: int, steps: int, lr: float, lr_final: float) -> float:
    """Learning rate of `step` (0-based): cosine from `lr` at step 0 to `lr_final` at the last step."""
    if steps <= 1 or lr == lr_final:
        return lr
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * step / (steps - 1)))


def fit(net: torch.nn.Module, cfg: Config, data: TrainData, out: Path, *, steps: int, lr: float,
        lr_final: float | None = None, stream: int = 0, resume: bool = False, progress: bool = True, desc: str = "train",
        after_step=None, extra: dict | None = None, teacher=None, distill_weight: float = 0.0,
        channels_last: bool = True, ema_decay: float = 0.0, precision: str = "fp32") -> Path:
    """The training loop shared by training, pruned fine-tuning and QAT; returns OUT/model.pt.

    `stream` selects an independent sequence of batches (0: training's own), `after_step(net,
    steps_done)` runs after every optimiser step (pruning holds its masks there), `extra` goes
    into every checkpoint (read at each save: a caller may update it in place), `teacher` and
    `distill_weight` as in loss_terms. With `ema_decay` d > 0, OUT/model.pt holds the moving
    average ema <- d ema + (1 - d) w of the weights and buffers after each step (from the
    first step's), ckpt.pt the last weights and the average. The network (and the teacher) run
    on the training data's device (TrainData.device); `precision` as in loss_terms.
    Data-parallel when launched by torchrun (the process group must be set up).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path, final_path = out / "ckpt.pt", out / "log.jsonl", out / "model.pt"
    # `channels_last`: NDHWC activations and weights, in which oneDNN's 3-D convolutions run a
    # training step faster, the float network and the Brevitas twin alike (docs/experiments.md,
    # "Training speed"). Checkpoints are written in the default layout either way.
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    dev = data.device
    net.to(device=dev, memory_format=layout)
    if teacher is not None:
        teacher.to(device=dev, memory_format=layout)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    start = 0
    log_lines: list[str] = []
    ema: dict[str, torch.Tensor] | None = None
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, cfg, resume=True)
        was, now = ck.get("data"), (extra or {}).get("data")
        if was is not None and now is not None and Path(was).resolve() != Path(now).resolve():
            raise ConfigError(f"{ckpt_path}: was trained on data {was}, resumed with {now}: resume with "
                              "the same --data, or start afresh without --resume")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start = min(ck["step"], steps)
        if ema_decay and ck.get("ema") is not None:
            ema = ck["ema"]
        if log_path.exists():  # drop log lines past the checkpoint: they will be redone
            log_lines = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
        if rank == 0:
            print(f"[{desc}] resumed from {ckpt_path} at step {start}", file=sys.stderr)
    elif rank == 0:
        ckpt_path.unlink(missing_ok=True)
    model = (torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
             if world > 1 else net)

    def save(step: int, path: Path, final: bool = False):
        state = {k: v.contiguous() for k, v in (ema if final and ema else net.state_dict()).items()}
        more = {"ema": {k: v.contiguous() for k, v in ema.items()}} if ema and not final else {}
        save_checkpoint(path, cfg, {"model": state, "optimizer": opt.state_dict(), "step": step,
                                    "world_size": world, **more, **(extra or {})})

    def update_ema():
        nonlocal ema
        with torch.no_grad():
            if ema is None:
                ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
                return
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    ema[k].mul_(ema_decay).add_(v.detach(), alpha=1 - ema_decay)
                else:
                    ema[k].copy_(v)

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    t0 = time.time()
    model.train()
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, lr if lr_final is None else lr_final)
            if cfg.train.warmup_steps and step < cfg.train.warmup_steps and stream == 0:
                group["lr"] *= (step + 1) / cfg.train.warmup_steps
        batch = data.batch(cfg, step, rank, world, stream)
        loss, dice, bend = loss_terms(model, cfg, *batch, teacher=teacher, distill_weight=distill_weight,
                                      precision=precision)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema_decay:
            update_ema()
        if after_step is not None:
            after_step(net, step + 1)
        if world > 1:  # report the mean over ranks
            stats = torch.stack([loss.detach(), dice.detach(), bend.detach()])
            dist.all_reduce(stats)
            loss, dice, bend = stats / world
        done = step + 1
        if rank == 0:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", ms_dice=f"{1 - dice.item():.3f}")
            if done % cfg.train.log_every == 0 or done == steps:
                log_lines.append(json.dumps({"step": done, "loss": loss.item(), "dice_loss": dice.item(),
                                             "bending": bend.item(), "elapsed_s": round(time.time() - t0, 2)}))
                atomic_write_text(log_path, "\n".join(log_lines) + "\n")
            if done % cfg.train.ckpt_every == 0 or done == steps:
                save(done, ckpt_path)
    if bar is not None:
        bar.close()
    # a finished run is left as it is (make re-runs a stage whose config sections changed; this
    # one had nothing to do, so nothing downstream should see a new file)
    finished = start == steps and final_path.exists() and load_checkpoint(final_path, cfg, resume=True)["step"] == steps
    if rank == 0 and not finished:
        save(steps, final_path, final=True)
        if steps == start and not ckpt_path.exists():
            save(start, ckpt_path)
    return final_path


def setup_torch(cfg: Config, device: str = "auto") -> torch.device:
    """Threads and seed; the process group when launched by torchrun (NCCL on GPUs, one per
    process, gloo on CPUs). Returns the device `device` names (model.device.resolve_device)."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if cfg.train.batch_size % world:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} must divide by the {world} processes")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.train.seed)
    return dev


def load_train_data(cfg: Config, data_dir: Path, progress: bool = True, device="cpu") -> TrainData:
    show = progress and int(os.environ.get("RANK", "0")) == 0
    return TrainData(load_dataset(data_dir, cfg.data, "train", progress=show), cfg.data.labels, device)


def train(cfg: Config, data_dir: Path, out: Path, resume: bool = False, progress: bool = True,
          device: str = "auto") -> Path:
    cfg.validate()  # whatever the command line overrode
    if cfg.train.steps < 1:
        raise ConfigError(f"train.steps = {cfg.train.steps}: training needs at least 1 step")
    dev = setup_torch(cfg, device)
    if int(os.environ.get("RANK", "0")) == 0:  # before any work: will the batch fit?
        from model.memory import describe, device_bytes, training_memory
        print(f"[train] {describe(training_memory(cfg), device_bytes(dev))} ({dev}, {cfg.train.precision})",
              file=sys.stderr)
    data = load_train_data(cfg, data_dir, progress, dev)
    # the default layout: the float path the demo's configuration was chosen on (changing only
    # the layout trains another network of the same seed: docs/experiments.md); the later
    # stages fine-tune from it in channels-last
    path = fit(LocalNet(cfg.model), cfg, data, out, steps=cfg.train.steps, lr=cfg.train.lr,
               lr_final=cfg.train.lr_final, resume=resume, channels_last=False, ema_decay=cfg.train.ema_decay,
               precision=cfg.train.precision, progress=progress, extra={"data": str(Path(data_dir).resolve()), "stage": "train"})
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return path


def main(argv=None) -> int:
    ap = stage_parser(__doc__, resume="continue from OUT/ckpt.pt if it exists")
    ap.add_argument("--steps", type=int, help="override train.steps")
    ap.add_argument("--precision", choices=("fp32", "bf16"), help="override train.precision")
    a = ap.parse_args(argv)

    def body():
        cfg = load_config(a.config)
        if a.steps is not None:
            cfg.train.steps = a.steps
        if a.precision is not None:
            cfg.train.precision = a.precision
        final = a.out / "model.pt"
        before = final.stat().st_mtime_ns if final.exists() else None
        path = train(cfg, a.data, a.out, a.resume, progress=not a.no_progress, device=a.device)
        if int(os.environ.get("RANK", "0")) == 0:
            same = before is not None and path.stat().st_mtime_ns == before
            print(f"[train] {path} {'unchanged: the run had finished' if same else 'written'}", file=sys.stderr)
    return run_cli(body)

if __name__ == "__main__":
    sys.exit(main())
