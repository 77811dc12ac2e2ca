"""Table 1 of the seed study, measured: accuracy and stored size after each compression step.

    python -m benchmarks.accuracy --config configs/demo.toml --data data/synthetic --out runs/demo

Reads what make train / prune / qat left in OUT and evaluates every model on all ordered
test pairs (model.evaluate's metrics). Every network row is the whole registration as deployed
(model/registration.py: the global stage, the network, then the test-time refinement of
[refine] on the host), only the network differs:

    identity          no registration
    global_stage      the global stage alone (model.prealign, `model.prealign`; only when it is not "none")
    ants_affine       ANTs affine registration (benchmarks/classical.py: antspyx defaults, on the
                      same pairs, working grid and intensities; 1 thread and a fixed seed, since
                      ANTs' affine stage is not repeatable otherwise)
    ants_syn          ANTs SyN (affine + symmetric diffeomorphic), likewise
    trained_unrefined the trained network without the test-time refinement (only with refine.iters > 0)
    trained           fp32, BatchNorm folded               OUT/train/model.pt
    pruned            first prune.amounts step, no retraining   OUT/prune/sparsity_XX/pruned.pt
    pruned_finetuned  the same, fine-tuned with the mask held   OUT/prune/sparsity_XX/model.pt
    blocks_finetuned  with qat.int8_blocks: int8_sparsity in whole accelerator blocks, fine-tuned
                      (the int8 model's start)             OUT/prune/block_sXX/model.pt
    int8_qat          Brevitas int8 QAT                    OUT/qat/int8/model.pt
    int8_deployed_unrefined, int8_deployed
                      the exported int8 network as deployed: hw.runtime.load(OUT/export), the
                      backend `python -m hw.register` picks by default (OpenVINO where installed
                      and exact, else onnxruntime), 1 thread; without and with the refinement
    int4_qat          Brevitas int4-weight QAT             OUT/qat/int4/model.pt
    ptq_ort_int8      onnxruntime quantize_static of the trained fp32 ONNX (QDQ, s8s8,
                      per-tensor, min-max calibrated on training batches), run in onnxruntime

Weight bytes are counted as stored: fp32 rows 4 bytes per convolution weight and bias (dense,
as the fp32 ONNX holds them: a float format has no zero-skipping here); QAT rows as `make
export` wrote them in OUT/export/weights.bin and weights_int4.bin (per tensor the packed
payload, the smaller of dense and bitmask + non-zeros, int4 two per byte, plus 4 bytes per
int32 bias; export.weights.stored_bytes); the onnxruntime row the bytes of its ONNX
initializers. Non-zero parameters count integer weights and biases that are not zero. Seconds per
pair time the displacement field alone (ANTs: its registration; networks: the whole
registration, PyTorch eager, onnxruntime for the PTQ row, the runtime for int8_deployed), on
this machine in the same run.

Writes OUT/report/: table1.json / table1.md (all rows), pairs_all.csv, pruning_curve.json and
pruning_curve.png (Dice against sparsity, fp32 fine-tuned and int8 QAT; needs
`python -m quant.qat --curve`), ptq_ort_int8.onnx and the fp32 ONNX it was made from.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from export.onnx import INPUT, export_fp32
from hw.runtime import onnxruntime_network
from model.artifacts import atomic_path, atomic_write_json, git_commit
from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.cli import run_cli, stage_parser
from model.config import STAGE_SECTIONS, Config, ConfigError, config_from_dict, config_to_dict, load_config
from model.data import load_dataset, test_pairs
from model.evaluate import (evaluate_pairs, network_registration, registration_fn, rows_markdown, summarise, write_csv,
                            write_table)
from model.localnet import count_parameters, fold_batchnorm
from model.prealign import network_input
from model.registration import Registration, Settings
from model.train import Stream, load_train_data

ROWS = ["identity", "global_stage", "ants_affine", "ants_syn", "trained_unrefined", "trained", "pruned", "pruned_finetuned",
        "blocks_finetuned", "int8_qat", "int8_deployed_unrefined", "int8_deployed", "int4_qat", "ptq_ort_int8"]  # then the compression rows of qat.layer_int8 / layer_int4 / nm_int8, in that order


def load_deployed(export: Path, cfg: Config):
    """hw.runtime's registration of the export (backend auto: OpenVINO where installed, on its exact file,
    else onnxruntime), one thread, as the ANTs rows run; its settings must be `cfg`'s."""
    from hw.runtime import load, settings_config
    from model.config import config_to_dict

    if config_to_dict(settings_config(export)) != config_to_dict(cfg):
        raise ValueError(f"{export / 'registration.json'}: written from another config than this report's; "
                         "run make export (it rewrites the file when the config changes)")
    return load(export, "auto", threads=1)


def fp32_row_stats(net) -> tuple[int, int]:
    total, nonzero = count_parameters(net)
    return nonzero, 4 * total


def exported_row_stats(path: Path, cfg: Config) -> tuple[int, int]:
    """(non-zero parameters, stored bytes) of a weights.bin that `make export` wrote with `cfg`."""
    from export.weights import read_weights, stored_bytes

    wb = read_weights(need(path, "make export"))
    try:  # keys added to the toolchain since the export count at their defaults (as for checkpoints)
        have = config_from_dict(wb.meta.get("config") or {}, f"{path} config")
        # the sections the exported QAT checkpoints were made from ([refine] runs after the network)
        same = all(getattr(have, s) == getattr(cfg, s) for s in STAGE_SECTIONS["qat"])
    except ConfigError:
        same = False
    if not same:
        raise ValueError(f"{path}: exported with another config; run `make export` again")
    return stored_bytes(wb.records.values())


def accelerator_cycles(weights: Path) -> dict:
    """Cycles of the RTL engine (hw/ACCEL.md's cycle model, equal to the Verilator simulation on
    the demo network) for a weights.bin as stored (all-zero blocks skipped) and stored dense; a
    network the engine cannot map gets the compiler's reason instead."""
    from hw.compiler import CompileError, compile_weights
    from hw.engine_model import cycle_model, total_cycles

    try:
        cyc = {k: total_cycles(cycle_model(compile_weights(weights, dense=k == "dense"))) for k in ("sparse", "dense")}
    except CompileError as err:
        return {"not_mapped": str(err)}
    return cyc | {"ratio": round(cyc["sparse"] / cyc["dense"], 4)}


def export_compressed(twin, cfg: Config, out: Path, inputs: list[np.ndarray]) -> dict:
    """A report model (make report's compression rows) as a deployment gets it, and its exactness:
    OUT/weights.bin, and for 8-bit weights OUT/localnet_int8.onnx (sparse initializers where
    smaller) beside the all-dense OUT/localnet_int8_dense.onnx. Returns the ddf elements of
    `inputs` where the integer reference (from weights.bin) and onnxruntime (optimisations on
    and off) differ from the Brevitas twin (the contract: 0), and the file sizes."""
    import torch

    from export.export import ddf_exponent, weight_records, weights_meta
    from export.gate import ort_vs_brevitas_mismatches
    from export.onnx import export_int8_onnx, sparsify_initializers
    from export.weights import OP_CONV3D, write_weights
    from hw.reference import Reference

    out.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(inputs[0])
    recs = weight_records(twin, example)
    bits = max(r.bits for r in recs if r.op == OP_CONV3D)
    write_weights(out / "weights.bin", recs, weights_meta(cfg, bits))
    e_ddf = ddf_exponent(twin)
    ref = Reference.from_file(out / "weights.bin")
    mism = {"reference": 0}
    with torch.no_grad():
        for x in inputs:
            want = np.round(twin(torch.from_numpy(x)).numpy() * 2.0 ** e_ddf).astype(np.int64)
            q, e = ref.register(x[0, 0], x[0, 1])
            if e != e_ddf:
                raise AssertionError(f"{out / 'weights.bin'}: ddf exponent {e}, the twin's is {e_ddf}")
            mism["reference"] += int((q.astype(np.int64)[None] != want).sum())
    sizes = {"weights.bin": (out / "weights.bin").stat().st_size}
    if bits == 8:
        export_int8_onnx(twin, cfg, out / "localnet_int8_dense.onnx")
        sparsify_initializers(out / "localnet_int8_dense.onnx", out / "localnet_int8.onnx", "auto")
        mism |= ort_vs_brevitas_mismatches(twin, out / "localnet_int8.onnx", inputs, e_ddf)
        sizes |= {f: (out / f).stat().st_size for f in ("localnet_int8.onnx", "localnet_int8_dense.onnx")}
    return {"mismatches": mism, "pairs_checked": len(inputs), "bytes": sizes}


def compression_rows(cfg: Config) -> list[tuple[str, str]]:
    """(row name, OUT/qat sub-directory) of the layer-aware, N:M and global int4 QAT models of the
    config (Table 1's compression rows)."""
    from quant.qat import global_int4_name, layer_name, nm_layer_name, nm_name

    q = cfg.qat
    rows = [(f"int{b}_layer_s{round(a * 100):02d}", layer_name(b, a)) for b, amounts in ((8, q.layer_int8),
                                                                                         (4, q.layer_int4))
            for a in amounts]
    rows += [(f"int4_global_s{round(a * 100):02d}", global_int4_name(a)) for a in q.global_int4]
    p = cfg.prune
    for n, m in [p.nm, *p.nm_more] if p.nm else []:
        rows += [(f"int{b}_nm_{n}of{m}", nm_name(n, m, b)) for b in [8] * q.nm_int8 + [4] * q.nm_int4]
    if p.nm_layer:
        a = p.nm_layer
        rows += [(f"int{b}_nm_layer_s{round(a * 100):02d}", nm_layer_name(b, a)) for b in [8] * q.nm_int8 + [4] * q.nm_int4]
    return rows


def calibration_inputs(cfg: Config, data_dir: Path, batches: int) -> list[np.ndarray]:
    """(1, 2, X, Y, Z) float32 training pairs with augmentation, as QAT calibrates."""
    from quant.qat import calibration_batches

    data = load_train_data(cfg, data_dir, progress=False)
    return [x[k:k + 1].numpy() for x in calibration_batches(cfg, data, batches, stream=Stream.PTQ) for k in range(len(x))]


def need(path: Path, target: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `{target}` first")
    return path


def report(cfg: Config, data_dir: Path, out: Path, progress: bool = True) -> dict:
    from quant.prune import block_dir, sparsity_dir
    from quant.qat import curve_name, load_qat

    rep = out / "report"
    subjects = load_dataset(data_dir, cfg.data, "test", progress=progress)

    first = cfg.prune.amounts[0]
    trained, _ = model_from_checkpoint(load_checkpoint(need(out / "train/model.pt", "make train"), cfg))
    trained = fold_batchnorm(trained)
    models = {"trained": (trained, fp32_row_stats(trained))}
    for name, file in (("pruned", "pruned.pt"), ("pruned_finetuned", "model.pt")):
        net, _ = model_from_checkpoint(load_checkpoint(need(sparsity_dir(out / "prune", first) / file, "make prune"), cfg))
        models[name] = (net, fp32_row_stats(net))
    if cfg.qat.int8_blocks:
        path = need(block_dir(out / "prune", cfg.qat.int8_sparsity) / "model.pt", "make prune")
        net, _ = model_from_checkpoint(load_checkpoint(path, cfg))
        models["blocks_finetuned"] = (net, fp32_row_stats(net))
    for name, sub, wfile in (("int8_qat", "int8", "weights.bin"), ("int4_qat", "int4", "weights_int4.bin")):
        twin, _ = load_qat(need(out / "qat" / sub / "model.pt", "make qat"), cfg)
        models[name] = (twin, exported_row_stats(out / "export" / wfile, cfg))
    # the compression rows, each exported (weights.bin, int8 ONNX) and checked exact on 2 test pairs
    pairs2 = test_pairs(subjects)[:2]
    inputs = [np.stack(network_input(cfg.model.prealign, subjects[m].image, subjects[f].image))[None]
              for m, f in pairs2]
    exactness = {}
    for name, sub in compression_rows(cfg):
        twin, _ = load_qat(need(out / "qat" / sub / "model.pt", "python -m quant.qat --curve"), cfg)
        exactness[name] = export_compressed(twin, cfg, rep / "compressed" / name, inputs)
        if any(exactness[name]["mismatches"].values()):
            raise AssertionError(f"{name}: the exported integers differ from Brevitas: {exactness[name]}")
        models[name] = (twin, exported_row_stats(rep / "compressed" / name / "weights.bin", cfg))
        exactness[name]["accelerator_cycles"] = accelerator_cycles(rep / "compressed" / name / "weights.bin")

    fp32_onnx, ptq_onnx = rep / "localnet_fp32.onnx", rep / "ptq_ort_int8.onnx"
    rep.mkdir(parents=True, exist_ok=True)
    export_fp32(trained, cfg, fp32_onnx, dynamic=False)  # PTQ is calibrated and evaluated at the working grid
    quantize_ort_static(fp32_onnx, ptq_onnx, calibration_inputs(cfg, data_dir, cfg.qat.calib_batches))
    settings = Settings.from_config(cfg)
    ptq = Registration(settings, onnxruntime_network(ptq_onnx))
    rows, pair_rows = [], []
    from benchmarks.classical import table1_peer

    fns = {"identity": (lambda m, f: np.zeros((3, *cfg.data.shape)), (0, 0))}
    if cfg.model.prealign != "none":  # the global stage alone, beside ANTs' affine stage
        from benchmarks.global_stage import global_stage_fn
        fns["global_stage"] = (global_stage_fn(cfg.model.prealign), (0, 0))
    for kind in ("Affine", "SyN"):
        fns[f"ants_{kind.lower()}"] = (table1_peer(cfg, kind), (0, 0))
    fns.update({k: (registration_fn(network_registration(net, cfg)), stats) for k, (net, stats) in models.items()})
    fns["ptq_ort_int8"] = (registration_fn(ptq), (onnx_nonzero_params(ptq_onnx), initializer_bytes(ptq_onnx)))
    # the exported int8 network as deployed: hw.runtime's registration of OUT/export, one thread
    deployed = load_deployed(out / "export", cfg)
    fns["int8_deployed"] = (registration_fn(deployed), models["int8_qat"][1])
    if cfg.refine.iters:  # what the refinement adds: the trained and the deployed network without it
        fns["trained_unrefined"] = (registration_fn(network_registration(trained, cfg), False), models["trained"][1])
        fns["int8_deployed_unrefined"] = (registration_fn(deployed, False), models["int8_qat"][1])
    for name, (fn, (nonzero, nbytes)) in fns.items():
        pr, _ = evaluate_pairs(subjects, cfg, fn, name, progress)
        pair_rows += pr
        rows.append(summarise(pr, name, nonzero, nbytes))
    write_csv(rep / "pairs_all.csv", pair_rows)
    meta = {"dataset": str(data_dir), "pairs": len(test_pairs(subjects)), "labels": cfg.data.labels,
            "config": config_to_dict(cfg), "git_commit": git_commit(), "pruned_amount": first,
            "int8_sparsity": cfg.qat.int8_sparsity, "int4_sparsity": cfg.qat.int4_sparsity,
            "int8_deployed_backend": f"{deployed.name}, 1 thread (hw.runtime), global stage and refinement on the host",
            "int8_accelerator_cycles": accelerator_cycles(out / "export" / "weights.bin"),
            "compression_rows_exported": exactness,
            "weight_bytes_note": "fp32 dense float32; QAT rows export.pack payload + int32 biases; "
                                 "ptq_ort_int8 ONNX initializer bytes"}
    order = ROWS + [name for name, _ in compression_rows(cfg)]
    table = write_table(rep / "table1.json", {**meta, "rows": sorted(rows, key=lambda r: order.index(r["model"]))})

    # pruning curve: Dice against sparsity, fp32 fine-tuned and int8 QAT
    curve = {"sparsity": [0.0, *cfg.prune.amounts], "fp32": [], "int8": [], "git_commit": git_commit()}
    for a in curve["sparsity"]:
        net, _ = model_from_checkpoint(load_checkpoint(need(sparsity_dir(out / "prune", a) / "model.pt", "make prune"), cfg))
        reg = registration_fn(network_registration(net, cfg))
        curve["fp32"].append(summarise(evaluate_pairs(subjects, cfg, reg, f"fp32 {a:.0%}", progress)[0],
                                       "", 0, 0)["dice"])
        sub = "int8" if a == cfg.qat.int8_sparsity and not cfg.qat.int8_blocks else curve_name(a)
        twin, _ = load_qat(need(out / "qat" / sub / "model.pt", "python -m quant.qat --curve"), cfg)
        reg = registration_fn(network_registration(twin, cfg))
        curve["int8"].append(summarise(evaluate_pairs(subjects, cfg, reg, f"int8 {a:.0%}", progress)[0],
                                       "", 0, 0)["dice"])
    curve["identity_dice"] = next(r["dice"] for r in rows if r["model"] == "identity")
    atomic_write_json(rep / "pruning_curve.json", curve)
    plot_curve(rep / "pruning_curve.png", curve)
    return table


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


def initializer_bytes(path: Path) -> int:
    """Bytes of the tensors a model stores (initializers, sparse ones included), decoded."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    n = sum(numpy_helper.to_array(t).nbytes for t in g.initializer)
    for s in g.sparse_initializer:
        n += numpy_helper.to_array(s.values).nbytes + numpy_helper.to_array(s.indices).nbytes
    return n


def onnx_nonzero_params(path: Path) -> int:
    """Non-zero integer weights (int8, 5-D) and biases (int32, 1-D) of a QDQ ONNX model."""
    import onnx
    from onnx import numpy_helper

    n = 0
    for t in onnx.load(str(path)).graph.initializer:
        a = numpy_helper.to_array(t)
        if (a.dtype == np.int8 and a.ndim == 5) or (a.dtype == np.int32 and a.ndim == 1):
            n += int(np.count_nonzero(a))
    return n


def plot_curve(path: Path, curve: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [100 * a for a in curve["sparsity"]]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(s, curve["fp32"], "o-", label="fp32, fine-tuned")
    ax.plot(s, curve["int8"], "s-", label="int8 QAT")
    ax.axhline(curve["identity_dice"], color="grey", ls="--", label="identity")
    ax.set_xlabel("weight sparsity (%)")
    ax.set_ylabel("mean Dice, test pairs")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = stage_parser(__doc__)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)

    def body():
        print(rows_markdown(report(load_config(a.config), a.data, a.out, progress=not a.no_progress)))
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
