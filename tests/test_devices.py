"""Devices, precision and memory (model/device.py, model/memory.py): every tensor the training,
pruning and QAT steps make lives on the model's device; bf16 autocast keeps the loss in float32;
the memory estimate against a measured peak."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from model.config import ConfigError
from model.device import resolve_device
from model.localnet import LocalNet, fold_batchnorm
from model.train import Stream, fit, load_train_data, loss_terms

ROOT = Path(__file__).resolve().parents[1]


class MetaDefault(TorchFunctionMode):
    """torch's default device set to meta for every tensor factory called without a device,
    except those Brevitas's IntQuantTensor makes for its `signed` and `training` flags (0-d
    bools it reads back with .item(), harmless on any device, and not our code to change).
    `exempt` records those calls, so the test can show the exemption is that narrow."""

    def __init__(self):
        super().__init__()
        self.exempt: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _device_constructors() and kwargs.get("device") is None:
            caller = sys._getframe(1).f_code.co_filename
            if caller.endswith("brevitas/quant_tensor/int_quant_tensor.py"):
                self.exempt.add(caller)
            else:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def test_meta_default_catches_a_tensor_made_without_a_device():
    """The check itself can fail: a tensor made without a device meets the CPU model's."""
    with MetaDefault(), pytest.raises((RuntimeError, NotImplementedError)):
        float((torch.zeros(3) + torch.ones(3, device="cpu")).sum())


@pytest.fixture()
def every_branch(tiny_cfg):
    """The tiny config with every augmentation and loss branch on."""
    t = tiny_cfg.train
    t.aug_intensity, t.same_subject_prob, t.self_elastic_vox, t.label_sampling = 0.5, 0.5, 1.0, "all"
    tiny_cfg.loss.image_weight = 0.5
    return tiny_cfg


def test_training_step_makes_every_tensor_on_the_model_device(every_branch, tiny_data, tmp_path):
    cfg = every_branch
    data = load_train_data(cfg, tiny_data, progress=False)
    net = LocalNet(cfg.model)
    with MetaDefault():
        fit(net, cfg, data, tmp_path / "t", steps=1, lr=1e-3, progress=False, channels_last=False)
    assert (tmp_path / "t" / "model.pt").is_file()


def test_pruning_step_makes_every_tensor_on_the_model_device(every_branch, tiny_data, tmp_path):
    """Every mask rule, the sensitivity probe and a distilled fine-tuning step."""
    from quant.allocate import layer_sensitivity
    from quant.masks import (apply_masks, global_magnitude_masks, layer_block_masks, layer_magnitude_masks,
                             nm_block_masks)

    cfg = every_branch
    data = load_train_data(cfg, tiny_data, progress=False)
    net, teacher = fold_batchnorm(LocalNet(cfg.model)), fold_batchnorm(LocalNet(cfg.model)).eval()
    with MetaDefault():
        apply_masks(net, global_magnitude_masks(net, 0.25))
        layer_sensitivity(net, cfg, data, [0.5], 1, progress=False)
        names = list(layer_magnitude_masks(net, {}))
        fit(net, cfg, data, tmp_path / "p", steps=1, lr=1e-3, progress=False, stream=Stream.PRUNE,
            teacher=teacher, distill_weight=1.0,
            after_step=lambda n, t: (apply_masks(n, layer_block_masks(n, 0.25)), apply_masks(n, nm_block_masks(n, 2, 4)),
                                     apply_masks(n, layer_magnitude_masks(n, {names[1]: 0.5}))))
    assert (tmp_path / "p" / "model.pt").is_file()


def test_qat_step_makes_every_tensor_on_the_model_device(tiny_cfg, tiny_data, tmp_path):
    from quant.qat import calibration_batches
    from quant.twin import calibrate, quant_twin

    data = load_train_data(tiny_cfg, tiny_data, progress=False)
    twin = quant_twin(fold_batchnorm(LocalNet(tiny_cfg.model)), tiny_cfg.model, 8, weight_scale="channel")
    mode = MetaDefault()
    with mode:
        calibrate(twin, calibration_batches(tiny_cfg, data, 1, Stream.QAT))
        fit(twin, tiny_cfg, data, tmp_path / "q", steps=1, lr=1e-4, progress=False, stream=Stream.QAT)
    assert (tmp_path / "q" / "model.pt").is_file()
    assert len(mode.exempt) <= 1  # only Brevitas's flag tensors were let through


def test_bf16_autocast_keeps_the_field_and_loss_float32(tiny_cfg, tiny_data):
    """bf16 runs the network in bf16 on this CPU; the field returns to float32 before the warp,
    and the loss and its gradient are float32. The two precisions' losses differ by bf16's
    rounding only (8 significant bits: 2^-8 relative per operation; 5 % covers the network's
    depth on a random initialisation)."""
    data = load_train_data(tiny_cfg, tiny_data, progress=False)
    torch.manual_seed(0)
    net = LocalNet(tiny_cfg.model)
    batch = data.batch(tiny_cfg, 0)
    seen = []
    hook = net.heads["0"].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loss16, dice16, _ = loss_terms(net, tiny_cfg, *batch, precision="bf16")
    loss32, _, _ = loss_terms(net, tiny_cfg, *batch, precision="fp32")
    hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert loss16.dtype == dice16.dtype == torch.float32
    loss16.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in net.parameters())
    assert abs(float(loss16) - float(loss32)) <= 0.05 * abs(float(loss32))


def test_resolve_device_refuses_what_is_not_there():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ConfigError, match="--device tpu: not a device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda:1: this torch sees no CUDA device"):
            resolve_device("cuda:1")


_PEAK = r"""
import json, sys, tomllib, torch
from pathlib import Path
sys.path.insert(0, {root!r})
from model.config import config_from_dict
from model.memory import training_memory
from model.localnet import LocalNet
from model.train import load_train_data, loss_terms

cfg = config_from_dict(json.loads({cfg!r}))
torch.set_num_threads(1)
def status(key):
    for ln in open("/proc/self/status"):
        if ln.startswith(key):
            return int(ln.split()[1]) * 1024
data = load_train_data(cfg, Path({data!r}), progress=False)
net = LocalNet(cfg.model)
opt = torch.optim.Adam(net.parameters(), 1e-3)
estimate = training_memory(cfg)
for step in range(2):  # the first step pages in code and makes the optimiser's state; the second is measured
    if step == 1:
        open("/proc/self/clear_refs", "w").write("5")  # VmHWM from here: the step's own peak
        base = status("VmRSS")
    loss, _, _ = loss_terms(net, cfg, *data.batch(cfg, step))
    opt.zero_grad()
    loss.backward()
    opt.step()
print(json.dumps({{"estimate": estimate["step_bytes"], "peak": status("VmHWM") - base}}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_memory_estimate_within_20_percent_of_the_measured_peak(tiny_toml, tiny_data):
    """model.memory's estimate of a step's working memory (saved activations, the batch, the
    largest transient tensor), made on the meta device, against the rise of the resident memory
    over one real training step (batch, forward, backward, Adam) on the CPU at a small grid with
    the demo network's channels. The step measured is the second: the first pages in the code
    and makes the optimiser's state (the parameters' 4 copies: 5 MiB here, in the estimate's
    total). glibc's malloc is told to map every block over 64 KiB on its own
    (MALLOC_MMAP_THRESHOLD_), so memory freed during the step goes back to the system and the
    peak is that of the live tensors, not of the allocator's free lists."""
    import tomllib

    d = tomllib.loads(tiny_toml)
    d["data"]["shape"] = [32, 40, 32]
    d["model"].update(base_channels=8, levels=3, ddf_levels=[0, 1, 2, 3])
    d["train"]["batch_size"] = 4
    script = _PEAK.format(root=str(ROOT), cfg=json.dumps(d), data=str(tiny_data))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["peak"] > 50 * 2**20  # a step this size holds tens of MiB of activations
    assert abs(got["estimate"] - got["peak"]) <= 0.2 * got["peak"], got


def test_cli_refuses_a_device_that_is_not_there(tiny_config, tiny_data, tmp_path):
    """A bad --device is one line naming it, exit 2, before anything is written."""
    out = tmp_path / "train"
    r = subprocess.run([sys.executable, "-m", "model.train", "--config", str(tiny_config), "--data", str(tiny_data),
                        "--out", str(out), "--device", "tpu", "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--device tpu: not a device" in r.stderr and not out.exists()
    r = subprocess.run([sys.executable, "-m", "model.memory", "--config", str(tmp_path / "none.toml")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "none.toml: config file not found" in r.stderr
