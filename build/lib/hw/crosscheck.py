"""Every tensor of the integer reference against onnxruntime and Brevitas, on every test pair.

    python -m hw.crosscheck --config configs/demo.toml --run runs/demo --data data/synthetic

For each ordered test pair: the reference (hw/reference.py, from weights.bin) traces every
requantised tensor; the Brevitas int8 QAT model gives the same tensors' integers (forward hooks
on its quantisers); onnxruntime runs localnet_int8.onnx with every QuantizeLinear output
exposed (named after the Brevitas module that produced it), with graph optimisations on and
off. Reports mismatching elements per source (0 is the contract) and writes
RUN/report/crosscheck.json; exits 1 on any mismatch.

`OnnxDevice` is the onnxruntime half on its own (numpy + onnx + onnxruntime): `make verify`
without ACCEL runs it as the device under test against the golden vectors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from export.weights import OP_QUANT
from hw.reference import QTensor, Reference, quantize_input
from model.prealign import network_input


class OnnxDevice:
    """localnet_int8.onnx in onnxruntime with every activation QuantizeLinear exposed:
    `run(x)` maps tensor names (the Brevitas module names, as the reference's trace and the
    golden vectors use) to int8 arrays (1, C, X, Y, Z), plus `ddf` from the network output."""

    def __init__(self, onnx_path: Path, optimize: bool = True):
        import onnx

        from export.onnx import ort_session_options

        import onnxruntime as ort

        model = onnx.load(str(onnx_path))
        self.exposed = {}
        for n in model.graph.node:  # Brevitas names its quantisers' nodes /<module path>/act_quant/...
            if n.op_type == "QuantizeLinear" and "/act_quant/" in n.name:
                self.exposed[n.output[0]] = n.name.strip("/").split("/act_quant")[0].replace("/", ".")
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.output[0]))
        self.session = ort.InferenceSession(model.SerializeToString(), ort_session_options(optimize),
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def run(self, x: QTensor) -> dict[str, np.ndarray]:
        """x: the quantised input (1, 2, X, Y, Z) at 2^-e; fed as float q * 2^-e, which the
        network's input QuantizeLinear maps back to the same integers exactly."""
        xf = (x.q.astype(np.float32) * np.float32(2.0 ** -x.e))
        outs = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, {self.input: xf})))
        got = {name: outs[oname] for oname, name in self.exposed.items()}
        got["__ddf_float"] = outs[self.output]
        return got


def crosscheck(cfg, run: Path, data_dir: Path) -> dict:
    import brevitas.nn as qnn
    import torch

    from model.data import load_dataset, test_pairs
    from quant.qat import load_qat
    from quant.twin import pot_exponent

    ref = Reference.from_file(run / "export" / "weights.bin")
    twin, _ = load_qat(run / "qat" / "int8" / "model.pt", cfg)
    onnx_path = run / "export" / "localnet_int8.onnx"
    devices = {"onnxruntime_optimized": OnnxDevice(onnx_path, optimize=True),
               "onnxruntime_unoptimized": OnnxDevice(onnx_path, optimize=False)}
    quantisers = [name for name, m in twin.named_modules() if isinstance(m, (qnn.QuantIdentity, qnn.QuantReLU))]
    subjects = load_dataset(data_dir, cfg.data, "test", progress=False)
    pairs = test_pairs(subjects)
    mism = {"brevitas": 0, **{k: 0 for k in devices}}
    first: dict[str, str] = {}
    elements = 0
    for mi, fi in pairs:
        mov, fix = network_input(cfg.model.prealign, subjects[mi].image, subjects[fi].image)
        trace: dict = {}
        x = quantize_input(mov, fix, ref.rec("input", OP_QUANT))
        ref.run(x, trace)
        got = {}
        hooks = [m.register_forward_hook(lambda mod, i, o, name=name: got.__setitem__(name, o))
                 for name, m in twin.named_modules() if name in quantisers]
        with torch.no_grad():
            twin(torch.from_numpy(np.stack([mov, fix])[None]))
        for h in hooks:
            h.remove()
        for name in quantisers:
            o = got[name]
            q = torch.round(o.value / o.scale).to(torch.int64).numpy()
            bad = int((q != trace[name].q).sum()) + (pot_exponent(o.scale) != trace[name].e)
            mism["brevitas"] += bad
            elements += q.size
            if bad:
                first.setdefault("brevitas", name)
        for key, dev in devices.items():
            out = dev.run(x)
            for name in dev.exposed.values():
                bad = int((out[name] != trace[name].q).sum())
                mism[key] += bad
                if bad:
                    first.setdefault(key, name)
    dev = devices["onnxruntime_optimized"]
    return {"pairs": len(pairs), "tensors_per_pair": len(quantisers), "onnx_tensors_per_pair": len(dev.exposed),
            "elements_per_source": elements, "mismatches": mism, "first_mismatch": first}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    a = ap.parse_args(argv)
    from model.artifacts import atomic_write_json
    from model.cli import run_cli
    from model.config import load_config

    def body():
        res = crosscheck(load_config(a.config), a.run, a.data)
        atomic_write_json(a.run / "report" / "crosscheck.json", res)
        print(json.dumps(res, indent=2))
        return 1 if any(res["mismatches"].values()) else 0
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
