"""ONNX export of LocalNet and its post-training-quantised onnxruntime peer.

    from export.onnx import export_fp32, quantize_ort_static
    export_fp32(fold_batchnorm(net), cfg, "localnet_fp32.onnx")

Input `moving_fixed` (1, 2, X, Y, Z) float32 (moving, fixed), output `ddf` (1, 3, X, Y, Z)
float32 in voxels, as model.localnet. Exported with the TorchScript exporter
(dynamo=False), opset 17, the batch size fixed to 1 (one pair per registration); the
spatial axes are dynamic (any X, Y, Z divisible by 2^levels), so one file serves any grid.
Importing this module needs numpy and onnxruntime only (torch is imported by the exporters),
so the board-side benchmarks open their sessions through `ort_session` too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.artifacts import atomic_path, git_commit
from model.config import Config, config_to_dict

OPSET = 17
INPUT, OUTPUT = "moving_fixed", "ddf"
DYNAMIC_AXES = {INPUT: {2: "X", 3: "Y", 4: "Z"}, OUTPUT: {2: "X", 3: "Y", 4: "Z"}}


def export_fp32(folded, cfg: Config, path: Path, dynamic: bool = True) -> Path:
    """Write the BatchNorm-folded float network as ONNX, with the resolved config in its metadata;
    `dynamic=False` fixes the spatial axes to the working grid (onnxruntime's quantisation
    pre-processing cannot infer the Resize shapes of the dynamic graph)."""
    import onnx
    import torch

    x = torch.zeros(1, 2, *cfg.data.shape)
    with atomic_path(path) as tmp:
        torch.onnx.export(folded.eval(), (x,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=DYNAMIC_AXES if dynamic else None)
        model = onnx.load(str(tmp))
        _set_metadata(model, {"config": json.dumps(config_to_dict(cfg)), "git_commit": git_commit(),
                              "ddf_units": "voxels of the working grid, channel k along array axis k"})
        onnx.save(model, str(tmp))
    return path


def _set_metadata(model, entries: dict[str, str]) -> None:
    for k, v in entries.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v


def quantize_ort_static(fp32_path: Path, out_path: Path, calib_inputs: list[np.ndarray]) -> Path:
    """onnxruntime's post-training static quantisation: QDQ format, int8 activations and weights
    (s8s8), per-tensor, calibrated (min-max) on `calib_inputs`, each (1, 2, X, Y, Z) float32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib_inputs)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT: x.astype(np.float32)}

    with atomic_path(out_path) as tmp:
        quant_pre_process(str(fp32_path), str(tmp))  # shape inference + graph clean-up, as ORT advises
        quantize_static(str(tmp), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=False)
    return out_path


# onnxruntime on x86 rewrites a QDQ graph's int8 activations to uint8 (zero-point 128) to use
# its U8S8 kernels; on CPUs without VNNI those sum pairs of u8 x s8 products in int16 with
# saturation (AVX2 vpmaddubsw: 2 x 255 x 127 > 32767), which breaks exactness for large
# weights. Keeping the graph s8s8 avoids it (tests/test_export.py shows both).
ORT_INT8_CONFIG = {"session.qdqisint8allowed": "1"}


def ort_session_options(optimize: bool = True, threads: int = 0, keep_s8: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
    if keep_s8:
        for k, v in ORT_INT8_CONFIG.items():
            so.add_session_config_entry(k, v)
    return so


def ort_session(path: Path, optimize: bool = True, threads: int = 0, keep_s8: bool = True):
    import onnxruntime as ort

    so = ort_session_options(optimize, threads, keep_s8)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def initializer_bytes(path: Path) -> int:
    """Bytes of the tensors a model stores (initializers, sparse ones included), decoded."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    n = sum(numpy_helper.to_array(t).nbytes for t in g.initializer)
    for s in g.sparse_initializer:
        n += numpy_helper.to_array(s.values).nbytes + numpy_helper.to_array(s.indices).nbytes
    return n
