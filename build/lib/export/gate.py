"""The export's exactness gate: onnxruntime's int8 ddf against the Brevitas twin's integers.

    from export.gate import ort_vs_brevitas_mismatches
    ort_vs_brevitas_mismatches(twin, "localnet_int8.onnx", inputs, e_out)   # {"optimized": 0, ...}
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.onnx import INPUT, ort_session


def ort_vs_brevitas_mismatches(twin, onnx_path: Path, inputs: list[np.ndarray], e_out: int,
                               keep_s8: bool = True, modes: dict[str, dict] | None = None) -> dict:
    """Integer ddf of onnxruntime against the Brevitas model: mismatching elements per session
    mode. Both outputs are dequantised q * 2^-e_out, exact in float32. `modes` maps a name to
    the keyword arguments of `export.onnx.ort_session` (optimize, keep_s8, qdq_fusion); the
    default is optimisations on and off with `keep_s8` (False: onnxruntime's x86 default, int8
    activations rewritten to uint8)."""
    modes = modes or {"optimized": {"optimize": True, "keep_s8": keep_s8},
                      "unoptimized": {"optimize": False, "keep_s8": keep_s8}}
    result = {}
    with torch.no_grad():  # the Brevitas integers once, for every mode
        ref = [np.round(twin(torch.from_numpy(x)).numpy() * 2.0 ** e_out).astype(np.int64) for x in inputs]
    for name, kwargs in modes.items():
        sess = ort_session(onnx_path, **kwargs)
        bad = 0
        for x, r in zip(inputs, ref):
            y = sess.run(None, {INPUT: x})[0]
            q = np.round(y * 2.0 ** e_out).astype(np.int64)
            bad += int((q != r).sum())
        result[name] = bad
    return result


def openvino_vs_brevitas_mismatches(twin, onnx_path: Path, inputs: list[np.ndarray], e_out: int,
                                    threads: int = 1) -> int:
    """Integer ddf of OpenVINO (CPU, f32 inference precision) against the Brevitas model: the
    number of mismatching elements over `inputs`. The input is quantised on the host at the
    graph's own input scale (round half to even, int8 saturation), as benchmarks/latency.py
    feeds it: OpenVINO's FakeQuantize rounds values within ~1e-7 of a tie the wrong way."""
    import onnx
    import openvino as ov
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    q_in = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT)
    scale = float(numpy_helper.to_array(inits[q_in.input[1]]))
    core = ov.Core()
    net = core.read_model(str(onnx_path))
    net.reshape({0: list(inputs[0].shape)})
    req = core.compile_model(net, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                          "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    bad = 0
    with torch.no_grad():
        for x in inputs:
            want = np.round(twin(torch.from_numpy(x)).numpy() * 2.0 ** e_out).astype(np.int64)
            xq = (np.clip(np.rint(x / scale), -128, 127) * scale).astype(np.float32)
            y = next(iter(req.infer({0: xq}).values()))
            bad += int((np.round(y * 2.0 ** e_out).astype(np.int64) != want).sum())
    return bad
