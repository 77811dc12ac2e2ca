"""Every tensor of the integer reference against onnxruntime and Brevitas, on every test pair.

    python -m benchmarks.crosscheck --config configs/demo.toml --run runs/demo --data data/synthetic

For each ordered test pair: the reference (hw/, from weights.bin) traces every requantised
tensor; the Brevitas int8 QAT model gives the same tensors' integers (forward hooks on its
quantisers); onnxruntime runs localnet_int8.onnx with every QuantizeLinear output exposed
(named after the Brevitas module that produced it), with graph optimisations on and off.
Reports mismatching elements per source (0 is the contract) and writes
RUN/report/crosscheck.json; exits 1 on any mismatch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def crosscheck(cfg, run: Path, data_dir: Path) -> dict:
    import brevitas.nn as qnn
    import onnx
    import torch

    from export.onnx import INPUT, ort_session
    from hw.reference import Reference, quantize_input
    from model.artifacts import atomic_path
    from model.data import load_dataset, test_pairs
    from quant.qat import load_qat, pot_exponent

    ref = Reference.from_file(run / "export" / "weights.bin")
    twin, _ = load_qat(run / "qat" / "int8" / "model.pt", cfg)
    model = onnx.load(str(run / "export" / "localnet_int8.onnx"))
    exposed = {}
    for n in model.graph.node:  # Brevitas names its quantisers' nodes /<module path>/act_quant/...
        if n.op_type == "QuantizeLinear" and "/act_quant/" in n.name:
            exposed[n.output[0]] = n.name.strip("/").split("/act_quant")[0].replace("/", ".")
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.output[0]))
    quantisers = [name for name, m in twin.named_modules() if isinstance(m, (qnn.QuantIdentity, qnn.QuantReLU))]
    debug = run / "export" / ".crosscheck_debug.onnx"
    with atomic_path(debug) as tmp:
        onnx.save(model, str(tmp))
    sessions = {"onnxruntime_optimized": ort_session(debug, optimize=True),
                "onnxruntime_unoptimized": ort_session(debug, optimize=False)}
    subjects = load_dataset(data_dir, cfg.data, "test", progress=False)
    pairs = test_pairs(subjects)
    mism = {"brevitas": 0, "onnxruntime_optimized": 0, "onnxruntime_unoptimized": 0}
    first: dict[str, str] = {}
    elements = 0
    try:
        for mi, fi in pairs:
            mov, fix = subjects[mi].image, subjects[fi].image
            trace: dict = {}
            ref.run(quantize_input(mov, fix, ref.r["input"]), trace)
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
            x = np.stack([mov, fix])[None].astype(np.float32)
            for key, sess in sessions.items():
                out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {INPUT: x})))
                for oname, name in exposed.items():
                    bad = int((out[oname] != trace[name].q).sum())
                    mism[key] += bad
                    if bad:
                        first.setdefault(key, name)
    finally:
        debug.unlink(missing_ok=True)
    return {"pairs": len(pairs), "tensors_per_pair": len(quantisers), "onnx_tensors_per_pair": len(exposed),
            "elements_per_source": elements, "mismatches": mism, "first_mismatch": first}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    a = ap.parse_args(argv)
    from model.artifacts import atomic_write_json
    from model.config import ConfigError, load_config
    from model.data import DataError

    try:
        res = crosscheck(load_config(a.config), a.run, a.data)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(a.run / "report" / "crosscheck.json", res)
    print(json.dumps(res, indent=2))
    return 1 if any(res["mismatches"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
