"""The deployed registration from an export directory alone, on any host: numpy at its core.

    from hw.runtime import load
    reg = load("runs/demo/export", backend="auto", threads=1)   # a model.registration.Registration
    ddf = reg.field(moving, fixed)                              # working-grid images -> voxels
    scan = reg.register_scans(fixed_path, moving_path)          # NIfTI scans of any grid

    python -m hw.runtime --config configs/demo.toml --export runs/demo/export   # writes registration.json

Why here: `hw/` already runs from the exported files with numpy alone (the integer reference),
and a board that registers scans needs exactly that: the exported network behind one interface,
and model/registration.py's steps around it (pre-alignment, composition, refinement, warps:
numpy and nibabel, no torch). The CLI for scans is `python -m hw.register`.

Backends (each runs the exported int8 network and returns its field in voxels):

    openvino             localnet_int8_openvino.onnx when the export found it exact on its CPU,
                         else the dense QCDQ file (benchmarks/latency.py: openvino_int8_file)
    onnxruntime          localnet_int8.onnx (s8s8, exact on every CPU; export/onnx.py)
    onnxruntime_qlinear  localnet_int8_qlinear.onnx (every convolution a QLinearConv on uint8
                         activations), only where export.onnx's u8s8_exact_cpu() holds
    reference            hw/reference.py on weights.bin (integer numpy: slow, the definition)
    rtl                  the RTL engine (hw/rtl/) simulated in Verilator, one run per pair
    board                the engine on a board (hw/soc.py's SoC) through hw/board.py: options
                         port (the UART), csr (the SoC's csr.json), baud
    auto                 openvino where installed (its file as above: exact either way), else
                         onnxruntime

The settings around the network (working grid, intensity percentiles, global stage, [refine])
come from EXPORT/registration.json, written from the config by this module's CLI (`make export`
runs it; it is rewritten only when they change, so editing [refine] re-runs the report and the
benchmark but not the export). It must describe the network manifest.json was exported with.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from model.config import STAGE_SECTIONS, Config, config_from_dict, config_to_dict
from model.registration import Registration, Settings

SETTINGS_FILE, SETTINGS_FORMAT = "registration.json", 1
BACKENDS = ("auto", "openvino", "onnxruntime", "onnxruntime_qlinear", "reference", "rtl", "board")


class Network:
    """One backend running one network file. `raw(moving, fixed)` is the backend's own output (a
    float field, or (int8 field, e) from an integer engine: voxels = q 2^-e); calling the object
    gives the float64 field (3, X, Y, Z) in voxels."""

    def __init__(self, name: str, path: Path, raw):
        self.name, self.path, self.raw = name, Path(path), raw

    @property
    def model_bytes(self) -> int:
        return self.path.stat().st_size

    def __call__(self, moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        out = self.raw(np.asarray(moving, np.float32), np.asarray(fixed, np.float32))
        if isinstance(out, tuple):
            return out[0].astype(np.float64) * 2.0 ** -out[1]
        return np.asarray(out, np.float64)


def onnxruntime_network(path: Path, threads: int | None = None, **options) -> Network:
    """An ONNX file of the network (input moving_fixed (1, 2, X, Y, Z)) in onnxruntime;
    `options` as export.onnx.ort_session takes them (qdq_fusion, optimize, keep_s8)."""
    from export.onnx import INPUT, ort_session

    sess = ort_session(path, threads=threads or 0, **options)
    return Network("onnxruntime", path, lambda m, f: sess.run(None, {INPUT: np.stack([m, f])[None]})[0][0])


def openvino_network(path: Path, threads: int | None, shape, quantiser: Path | None = None) -> Network:
    """An ONNX file in OpenVINO, compiled for `shape` at f32 inference precision. With
    `quantiser` (a weights.bin), the input is quantised on the host first."""
    import openvino as ov

    core = ov.Core()
    net = core.read_model(str(path))
    net.reshape({0: [1, 2, *shape]})  # compile for the grid: static shapes run faster
    # on CPUs with bf16 support (AVX-512 BF16, AMX) OpenVINO's default inference precision is
    # bf16, which breaks int8 exactness (measured: 24,595 of 122,880 ddf elements off by up to
    # 3 LSB); f32 keeps the QDQ graph's arithmetic exact
    props = {"INFERENCE_PRECISION_HINT": "f32"} | ({"INFERENCE_NUM_THREADS": threads} if threads else {})
    model = core.compile_model(net, "CPU", props)
    req = model.create_infer_request()
    host_input = lambda m, f: np.stack([m, f])[None]  # noqa: E731
    if quantiser is not None:
        # the input quantised on the host (hw.reference.quantize_input: x 2^e, round half to even):
        # OpenVINO's FakeQuantize shifts by its low bound before rounding, in float32, and so
        # rounds a value within ~1e-7 of a tie the wrong way (measured: one input element of
        # 81,920, x 2^6 = 9.4999924 -> 10, which then spread to 47,845 ddf elements). Values
        # already on the grid pass through it exactly.
        from hw.reference import Reference, quantize_input

        rec = Reference.from_file(quantiser).r["input"]
        host_input = lambda m, f: (lambda x: (x.q * 2.0 ** -x.e).astype(np.float32))(quantize_input(m, f, rec))  # noqa: E731
    return Network("openvino", path, lambda m, f: req.infer({0: host_input(m, f)})[model.output(0)][0])


def openvino_int8_file(export: Path) -> str:
    """The int8 file OpenVINO runs: localnet_int8_openvino.onnx (every convolution on int8,
    export.onnx.openvino_graph) when the export found it exact on its CPU, else the dense QCDQ
    file (its convolutions run in f32: slower, exact everywhere). OpenVINO's ONNX reader does not
    take the sparse_initializers of localnet_int8.onnx, so that file is the last resort."""
    manifest = export / "manifest.json"
    checked = json.loads(manifest.read_text()).get("openvino_vs_brevitas_mismatches") if manifest.is_file() else None
    for name, ok in (("localnet_int8_openvino.onnx", checked == 0), ("localnet_int8_dense.onnx", True)):
        if ok and (export / name).is_file():
            return name
    return "localnet_int8.onnx"


def reference_network(weights: Path) -> Network:
    from hw.reference import Reference

    ref = Reference.from_file(weights)
    return Network("reference", weights, ref.register)


def rtl_network(weights: Path, e_ddf: int, work: Path | None = None) -> Network:
    """The RTL engine in Verilator (hw/rtl_sim.py), one simulation per pair (minutes on the demo
    grid): the memory image of weights.bin and the quantised input, the ddf read back."""
    from hw.compiler import compile_weights, get_tensor
    from hw.reference import Reference, quantize_input
    from hw.rtl_sim import build, simulate

    work = Path(work or tempfile.mkdtemp(prefix="rtl_backend_"))
    prog = compile_weights(weights)
    runner = build(work / "sim_build")
    rec = Reference.from_file(weights).r["input"]

    def run(m, f):
        mem, _ = simulate(runner, work / "sim_build", prog.image(quantize_input(m, f, rec).q), work / "pair")
        return get_tensor(mem, prog.tensors["ddf"])[0], e_ddf
    return Network("rtl", weights, run)


def board_network(weights: Path, e_ddf: int, port: str | None = None, csr: Path | None = None,
                  baud: int = 1_000_000, link=None) -> Network:
    """The engine on a board (hw/board.py Session): weights.bin's program loaded once, each pair's
    input written and its field read back over the UART (`link`: another byte link, for tests)."""
    from hw.board import Accel, SerialLink, Session, UartBone
    from hw.reference import Reference, quantize_input

    if csr is None or (link is None and port is None):
        raise ValueError("backend board: needs the board's UART (--port) and the SoC's csr.json (--csr)")
    init = Path(csr).parent / "sdram_init.json" if not isinstance(csr, dict) else None   # hw/soc.py writes it there
    session = Session(Accel(UartBone(link or SerialLink(port, baud)), csr), weights,
                      init if init is not None and init.is_file() else None)
    rec = Reference.from_file(weights).r["input"]
    return Network("board", weights, lambda m, f: (session.run(quantize_input(m, f, rec).q)[0], e_ddf))


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def open_network(backend: str, export: Path, threads: int | None = None, **options) -> Network:
    """The exported int8 network of `export` on `backend` (module docstring); `options` go to
    onnxruntime's session."""
    export = Path(export)
    manifest = read_manifest(export)
    if backend == "auto":
        # OpenVINO runs an exact file on every CPU (openvino_int8_file), and even its dense QCDQ
        # file, where the int8 one is not exact, runs faster than onnxruntime's exact s8s8 route
        # (docs/experiments.md, 2026-12-08: an AVX2 CPU without VNNI, 29 ms against 175 ms)
        backend = "openvino" if openvino_available() else "onnxruntime"
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    weights = need(export / "weights.bin")
    if backend == "openvino":
        if not openvino_available():
            raise ValueError("backend openvino: the openvino package is not installed here")
        shape = manifest["config"]["data"]["shape"]
        return openvino_network(need(export / openvino_int8_file(export)), threads, shape, quantiser=weights)
    if backend in ("onnxruntime", "onnxruntime_qlinear"):
        if backend == "onnxruntime_qlinear":
            from export.onnx import u8s8_exact_cpu

            if not u8s8_exact_cpu():
                raise ValueError("backend onnxruntime_qlinear: this CPU's U8S8 kernels do not sum exactly "
                                 "(export.onnx.u8s8_exact_cpu); use onnxruntime")
        name = "localnet_int8.onnx" if backend == "onnxruntime" else "localnet_int8_qlinear.onnx"
        net = onnxruntime_network(need(export / name), threads, **options)
        net.name = backend
        return net
    if backend == "reference":
        return reference_network(weights)
    if backend == "board":
        return board_network(weights, int(manifest["ddf_exponent"]), options.get("port"), options.get("csr"),
                             options.get("baud") or 1_000_000, options.get("link"))
    return rtl_network(weights, int(manifest["ddf_exponent"]), options.get("work"))


def need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the export directory (make export)")
    return path


def read_manifest(export: Path) -> dict:
    """EXPORT/manifest.json, with the keys the runtime reads checked."""
    path = Path(export) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an export directory (make export)")
    try:
        m = json.loads(path.read_text())
        config_from_dict(m["config"], f"{path} config")
        int(m["ddf_exponent"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except (KeyError, TypeError):
        raise ValueError(f"{path}: lacks config or ddf_exponent (an export of another format)") from None
    return m


def check_against_network(cfg: Config, export: Path, where: str, manifest: dict | None = None) -> None:
    """Refuse settings whose network sections differ from those the export was made with
    (`manifest`: EXPORT/manifest.json if already read)."""
    manifest = read_manifest(export) if manifest is None else manifest
    net_cfg = config_from_dict(manifest["config"], f"{Path(export) / 'manifest.json'} config")
    differ = [s for s in STAGE_SECTIONS["qat"] if getattr(cfg, s) != getattr(net_cfg, s)]
    if differ:
        raise ValueError(f"{where}: its [{'], ['.join(differ)}] differ from the exported network's "
                         f"({Path(export) / 'manifest.json'}): the config changed since the export; run make export")


def settings_config(export: Path) -> Config:
    """The validated config of EXPORT/registration.json, checked against the network's manifest."""
    path = Path(export) / SETTINGS_FILE
    manifest = read_manifest(export)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing: the export predates it or was not finished "
                                "(make export writes it: python -m hw.runtime --config C --export E)")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != SETTINGS_FORMAT or not isinstance(raw.get("config"), dict):
        raise ValueError(f"{path}: expected {{'format': {SETTINGS_FORMAT}, 'config': {{...}}}} (a file of "
                         "another format version: make export again)")
    cfg = config_from_dict(raw["config"], f"{path} config")
    check_against_network(cfg, export, str(path), manifest)
    return cfg


def load(export: Path, backend: str = "auto", threads: int | None = None, **options) -> Registration:
    """The deployed registration of an export directory (module docstring)."""
    cfg = settings_config(export)
    net = open_network(backend, export, threads, **options)
    return Registration(Settings.from_config(cfg), net, net.name)


def write_settings(cfg: Config, export: Path, where: str = "config") -> bool:
    """EXPORT/registration.json from `cfg` (checked against the exported network first); rewritten
    only when its content changes (so make's dependants re-run only then). True if written."""
    from model.artifacts import atomic_write_json

    check_against_network(cfg, export, where)
    path = Path(export) / SETTINGS_FILE
    new = json.loads(json.dumps({"format": SETTINGS_FORMAT, "config": config_to_dict(cfg)}))
    try:
        if json.loads(path.read_text()) == new:
            return False
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass  # missing or damaged: written
    atomic_write_json(path, new)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="TOML config the export was made with")
    ap.add_argument("--export", required=True, type=Path, help="OUT/export of make export")
    a = ap.parse_args(argv)
    from model.cli import run_cli
    from model.config import load_config

    def body():
        changed = write_settings(load_config(a.config), a.export, a.config)
        print(f"[runtime] {a.export / SETTINGS_FILE} {'written' if changed else 'unchanged'}", file=sys.stderr)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
