"""Host driver for the accelerator SoC (hw/soc.py): load a program and a pair into the board's
DRAM, start the engine through its registers, wait for it, read every tensor back.

    python -m hw.board --port /dev/ttyUSB1 --csr build/soc_ecpix5/csr.json \\
        --golden runs/demo/golden --out runs/demo/board
    python -m hw.verify --golden runs/demo/golden --accel runs/demo/board

The host link is LiteX's UARTBone: the host sends a command byte (1: write, 2: read), a word
count (1..255), a 32-bit word address (big-endian), and for a write the 32-bit words
(big-endian); a read answers with its words. `UartBone` speaks that over any byte link with
`write(bytes)`, `read(n)` and `idle(seconds)`: a serial port on a board (pyserial), the
simulated UART's byte streams in hw/soc.py's simulation (hw/rtl/tb_soc.py), which runs this
same code. Numpy and the link only: no torch, no LiteX.

For registering scans (`python -m hw.register --backend board`), `Session` keeps one network on
the board: each pair moves its input and its field only.

The engine's memory is the DRAM from its first byte (the SoC's `main_ram` region on the host's
side); a 64-bit engine word is two 32-bit bus words, low half first. The registers are
hw/ACCEL.md's "Registers", in the SoC's `accel` region.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CMD_WRITE, CMD_READ = 0x01, 0x02
MAX_BURST = 255                    # words per UARTBone command
CTRL, STATUS, DESC_BASE, MEM_LIMIT = 0x00, 0x04, 0x08, 0x0C
COUNTERS = {"cycles": 0x10, "waits": 0x18, "reads": 0x20, "writes": 0x28, "macs": 0x30}
ID, CONFIG = 0x38, 0x3C
ACCEL_ID = 0x4C4E4131
START, IRQ_ENABLE, BUSY, DONE = 0b1, 0b10, 0b1, 0b10
# LiteDRAM's DFI injector: its control register's and its command register's bits (LiteDRAM's
# names; hw/soc.py writes sdram_init.json's steps with them)
DFII_BITS = {"DFII_CONTROL_SEL": 0x01, "DFII_CONTROL_CKE": 0x02, "DFII_CONTROL_ODT": 0x04, "DFII_CONTROL_RESET_N": 0x08,
             "DFII_COMMAND_CS": 0x01, "DFII_COMMAND_WE": 0x02, "DFII_COMMAND_CAS": 0x04, "DFII_COMMAND_RAS": 0x08,
             "DFII_COMMAND_WRDATA": 0x10, "DFII_COMMAND_RDDATA": 0x20}


def _dfii(*names: str) -> int:
    return sum(DFII_BITS[f"DFII_{n}"] for n in names)


# the host drives the DFI (SEL clear); the commands the read levelling issues
DFII_SOFTWARE = _dfii("CONTROL_CKE", "CONTROL_ODT", "CONTROL_RESET_N")
DFI_ACTIVATE = _dfii("COMMAND_RAS", "COMMAND_CS")
DFI_WRITE = _dfii("COMMAND_CAS", "COMMAND_WE", "COMMAND_CS", "COMMAND_WRDATA")
DFI_READ = _dfii("COMMAND_CAS", "COMMAND_CS", "COMMAND_RDDATA")
DFI_PRECHARGE_ALL = _dfii("COMMAND_RAS", "COMMAND_WE", "COMMAND_CS")   # with address bit 10 set


def _runs(taps: list[int]) -> list[list[int]]:
    """Consecutive runs in a sorted list of taps: [0, 1, 2, 5, 6] -> [[0, 1, 2], [5, 6]]."""
    out = []
    for t in taps:
        if out and t == out[-1][-1] + 1:
            out[-1].append(t)
        else:
            out.append([t])
    return out


class BoardError(OSError):
    pass


class UartBone:
    """Bus reads and writes of 32-bit words over a byte link (the protocol above)."""

    def __init__(self, link, batch: int = 16):
        self.link = link
        self.batch = batch   # read commands sent before their answers are collected
        self.bytes_out = self.bytes_in = 0

    def _send(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.link.write(data)

    def _recv(self, n: int) -> bytes:
        data = self.link.read(n)
        if len(data) != n:
            raise BoardError(f"host link: {len(data)} of {n} bytes answered (is the board's UARTBone there?)")
        self.bytes_in += n
        return data

    def write(self, addr: int, words) -> None:
        """Write 32-bit words from byte address `addr` on."""
        w = np.asarray(words, dtype=np.uint32).ravel()
        for off in range(0, len(w), MAX_BURST):
            chunk = w[off:off + MAX_BURST]
            head = bytes([CMD_WRITE, len(chunk)]) + ((addr >> 2) + off).to_bytes(4, "big")
            self._send(head + chunk.astype(">u4").tobytes())

    def read(self, addr: int, n: int) -> np.ndarray:
        """n 32-bit words from byte address `addr` on."""
        out = []
        offs = list(range(0, n, MAX_BURST))
        for i in range(0, len(offs), self.batch):
            group = offs[i:i + self.batch]
            counts = [min(MAX_BURST, n - o) for o in group]
            self._send(b"".join(bytes([CMD_READ, k]) + ((addr >> 2) + o).to_bytes(4, "big")
                                for o, k in zip(group, counts)))
            out.append(np.frombuffer(self._recv(4 * sum(counts)), dtype=">u4"))
        return np.concatenate(out).astype(np.uint32) if out else np.zeros(0, np.uint32)


class Accel:
    """The engine in the SoC, through a UartBone and the SoC's csr.json (its memory regions)."""

    def __init__(self, bus: UartBone, csr: dict | Path):
        where = "csr"
        if not isinstance(csr, dict):
            where = str(csr)
            path = Path(csr)
            try:
                csr = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise BoardError(f"{path}: not a LiteX csr.json ({e})") from None
        self.csr = csr
        try:
            self.ram = int(csr["memories"]["main_ram"]["base"])
            self.ram_size = int(csr["memories"]["main_ram"]["size"])
            self.regs = int(csr["memories"]["accel"]["base"])
        except (KeyError, TypeError, ValueError):
            raise BoardError(f"{where}: no main_ram and accel regions (a csr.json written by hw/soc.py?)") from None
        self.bus = bus

    def reg(self, off: int) -> int:
        return int(self.bus.read(self.regs + off, 1)[0])

    def set_reg(self, off: int, value: int) -> None:
        self.bus.write(self.regs + off, [value & 0xFFFFFFFF])

    def counter(self, off: int) -> int:
        lo = self.reg(off)       # reading LO latches HI
        return lo | self.reg(off + 4) << 32

    def check(self) -> dict:
        ident = self.reg(ID)
        if ident != ACCEL_ID:
            raise BoardError(f"the accel region answers ID {ident:#010x}, not {ACCEL_ID:#010x}: wrong csr.json or bitstream?")
        cfg = self.reg(CONFIG)
        return {"tp": cfg & 0xF, "window_bits": (cfg >> 4) & 0xFF, "addr_bits": (cfg >> 12) & 0xFF}

    def _csr(self, name: str) -> tuple[int, int]:
        try:
            reg = self.csr["csr_registers"][name]
            return int(reg["addr"]), int(reg.get("size", 1))
        except (KeyError, TypeError, ValueError):
            raise BoardError(f"csr.json has no register {name} (a SoC without LiteDRAM's DFI injector "
                             "or this PHY?)") from None

    def csr_write(self, name: str, value: int) -> None:
        """A LiteX CSR of `size` 32-bit words, the most significant word first (LiteX's order)."""
        addr, size = self._csr(name)
        self.bus.write(addr, [(value >> 32 * (size - 1 - k)) & 0xFFFFFFFF for k in range(size)])

    def csr_read(self, name: str) -> int:
        addr, size = self._csr(name)
        value = 0
        for w in self.bus.read(addr, size):
            value = value << 32 | int(w)
        return value

    def init_dram(self, init: dict | Path) -> dict:
        """Initialise the DRAM as LiteDRAM's sequence for this SoC says (hw/soc.py write_sdram_init:
        sdram_init.json beside csr.json): the DFI injector under software control, each step's
        control write or phase-0 command and its wait, then (where the PHY needs it: the ECP5's)
        the reads levelled (level_reads), then the controller back in charge.
        Returns {"steps": n, "read_leveling": "not needed" | level_reads' report}."""
        if not isinstance(init, dict):
            path = Path(init)
            try:
                init = json.loads(path.read_text())
                init["steps"], float(init["clk_hz"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise BoardError(f"{path}: not an sdram_init.json of hw/soc.py ({e})") from None
        steps, clk = init["steps"], float(init["clk_hz"])
        self.csr_write("sdram_dfii_control", DFII_SOFTWARE)
        for st in steps:
            if st["kind"] == "control":
                self.csr_write("sdram_dfii_control", st["bits"])
            else:
                self._dfi_command(0, st["bits"], st["address"], st["bank"])
            if st["wait_cycles"]:
                self.bus.link.idle(st["wait_cycles"] / clk)
        levelled = "not needed"
        if init.get("read_leveling"):
            self.csr_write("sdram_dfii_control", DFII_SOFTWARE)
            levelled = self.level_reads(init)
        self.csr_write("sdram_dfii_control", DFII_BITS["DFII_CONTROL_SEL"])   # the controller drives the DFI again
        return {"steps": len(steps), "read_leveling": levelled}

    def _dfi_command(self, phase: int, bits: int, address: int = 0, bank: int = 0) -> None:
        pi = f"sdram_dfii_pi{phase}"
        self.csr_write(f"{pi}_address", address)
        self.csr_write(f"{pi}_baddress", bank)
        self.csr_write(f"{pi}_command", bits)
        self.csr_write(f"{pi}_command_issue", 1)

    def _lane_action(self, lanes: int, action: str, times: int = 1) -> None:
        """A PHY delay action (rdly_dq_rst, rdly_dq_inc, rdly_dq_bitslip_rst, rdly_dq_bitslip) on
        the byte lanes of the bit mask `lanes`; the lanes are deselected after (a selected lane's
        read strobe logic is paused)."""
        self.csr_write("ddrphy_dly_sel", lanes)
        for _ in range(times):
            self.csr_write(f"ddrphy_{action}", 1)
        self.csr_write("ddrphy_dly_sel", 0)

    def _lane_errors(self, phy: dict, seed: int) -> list[int]:
        """Write a pseudo-random burst to row 0, bank 0, column 0 through the DFI injector and read
        it back: the wrong bits per byte lane, plus one for a lane whose read burst the PHY did not
        detect (burstdet). A lane's bytes are those at (byte index within a 64-bit phase word) mod
        lanes: each phase word holds 4 DQ beats of 16 bits, beat k at bits 16k .. 16k + 15."""
        nph, lanes = int(phy["nphases"]), int(phy["modules"])
        words = np.random.default_rng(seed).integers(0, 1 << 64, size=nph, dtype=np.uint64)
        self._dfi_command(0, DFI_ACTIVATE)
        for p in range(nph):
            self.csr_write(f"sdram_dfii_pi{p}_wrdata", int(words[p]))
        self._dfi_command(int(phy["wrphase"]), DFI_WRITE)
        self.csr_write("ddrphy_burstdet_clr", 1)
        self._dfi_command(int(phy["rdphase"]), DFI_READ)
        self._dfi_command(0, DFI_PRECHARGE_ALL, address=1 << 10)
        errors = [0] * lanes
        for p in range(nph):
            diff = int(words[p]) ^ self.csr_read(f"sdram_dfii_pi{p}_rddata")
            for byte in range(8):
                errors[byte % lanes] += bin(diff >> 8 * byte & 0xFF).count("1")
        seen = self.csr_read("ddrphy_burstdet_seen")
        return [e + (0 if seen >> m & 1 else 1) for m, e in enumerate(errors)]

    def _pattern_errors(self, phy: dict, seeds) -> list[int]:
        """_lane_errors summed over the seeds' bursts, per byte lane."""
        return [sum(e) for e in zip(*(self._lane_errors(phy, s) for s in seeds))]

    def level_reads(self, phy: dict, seeds=(42, 84, 36)) -> dict:
        """Level the ECP5 PHY's reads, every byte lane at once: for each read bitslip (0 ..
        bitslips - 1) and input delay tap (0 .. delays - 1), write and read back a burst per seed
        (_lane_errors); a setting passes for a lane when no bit is wrong and the burst was
        detected. Each lane then takes the bitslip with the longest run of passing taps (the
        lowest bitslip on a tie) and the run's middle tap, and is checked there once more.
        Returns {"lanes": [{"bitslip", "delay", "passing": [[taps that passed] per bitslip]}]};
        a lane where nothing passes is a BoardError that shows the scan."""
        lanes, slips, taps = int(phy["modules"]), int(phy["bitslips"]), int(phy["delays"])
        every = (1 << lanes) - 1
        passing = [[[] for _ in range(slips)] for _ in range(lanes)]
        self._lane_action(every, "rdly_dq_bitslip_rst")
        for b in range(slips):
            self._lane_action(every, "rdly_dq_rst")
            for d in range(taps):
                errs = self._pattern_errors(phy, seeds)
                for m in range(lanes):
                    if errs[m] == 0:
                        passing[m][b].append(d)
                self._lane_action(every, "rdly_dq_inc")
            self._lane_action(every, "rdly_dq_bitslip")
        report = []
        for m in range(lanes):
            runs = [(len(r), -b, r) for b in range(slips) for r in _runs(passing[m][b])]
            if not runs:
                raise BoardError(f"DRAM read levelling: byte lane {m} passed at no bitslip and delay "
                                 f"(bitslips 0..{slips - 1} x taps 0..{taps - 1}); is the DRAM there and initialised?")
            _, neg_b, run = max(runs)
            b, d = -neg_b, run[len(run) // 2]
            self._lane_action(1 << m, "rdly_dq_bitslip_rst")
            self._lane_action(1 << m, "rdly_dq_bitslip", b)
            self._lane_action(1 << m, "rdly_dq_rst")
            self._lane_action(1 << m, "rdly_dq_inc", d)
            report.append({"lane": m, "bitslip": b, "delay": d, "passing": passing[m]})
        bad = [m for m, e in enumerate(self._pattern_errors(phy, seeds)) if e]
        if bad:
            raise BoardError(f"DRAM read levelling: byte lane(s) {bad} fail at the chosen settings {report}")
        return {"lanes": report}

    def load(self, image: np.ndarray, at: int = 0) -> None:
        """Write 64-bit words into the engine's memory from word `at` on."""
        words = np.ascontiguousarray(image, dtype="<u8")
        if 8 * (at + len(words)) > self.ram_size:
            raise BoardError(f"{len(words)} words do not fit the board's {self.ram_size} bytes of DRAM")
        self.bus.write(self.ram + 8 * at, words.view("<u4"))

    def dump(self, words: int, at: int = 0) -> np.ndarray:
        return self.bus.read(self.ram + 8 * at, 2 * words).astype("<u4").view("<u8").astype(np.uint64)

    def run(self, mem_limit: int, desc_base: int = 0, timeout_s: float = 600.0, poll_s: float = 1e-6) -> dict:
        """Start the program at `desc_base`, poll STATUS until the engine stops (the poll interval
        doubles from `poll_s` to 1 ms), acknowledge, and return {error, cycles, waits, reads,
        writes, macs} from its registers. A timeout is a BoardError; an error code is returned."""
        status = self.reg(STATUS)
        if status & BUSY:
            raise BoardError(f"the engine is busy before START (STATUS {status:#x})")
        self.set_reg(DESC_BASE, desc_base)
        self.set_reg(MEM_LIMIT, mem_limit)
        self.set_reg(CTRL, START | IRQ_ENABLE)
        waited, interval = 0.0, poll_s
        while True:
            status = self.reg(STATUS)
            if status & DONE and not status & BUSY:
                break
            if waited > timeout_s:
                raise BoardError(f"the engine did not finish in {timeout_s} s (STATUS {status:#x})")
            self.bus.link.idle(interval)
            waited += interval
            interval = min(2 * interval, 1e-3)
        self.set_reg(STATUS, DONE)   # acknowledge the interrupt
        res = {"error": (status >> 4) & 0xF}
        for name, off in COUNTERS.items():
            res[name] = self.counter(off)
        return res


def run_image(accel: Accel, image: np.ndarray, mem_limit: int | None = None,
              load: list[tuple[int, int]] | None = None, keep: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """Load a compiled memory image (hw.compiler Program.image), run it, read it back. `load`: the
    word ranges [a, b) written (default all of it); `keep`: the range read back (default all of
    it); words outside it come back as the image had them. What the engine writes before it
    reads (every tensor but the input) need not be loaded: `program_ranges` gives the ranges."""
    limit = len(image) if mem_limit is None else mem_limit
    b0 = (accel.bus.bytes_out, accel.bus.bytes_in)
    for a, b in load or [(0, len(image))]:
        accel.load(image[a:b], at=a)
    res = accel.run(limit)
    a, b = keep or (0, len(image))
    mem = np.array(image, dtype=np.uint64)
    mem[a:b] = accel.dump(b - a, at=a)
    res["link_bytes_out"] = accel.bus.bytes_out - b0[0]
    res["link_bytes_in"] = accel.bus.bytes_in - b0[1]
    return mem, res


def program_ranges(prog) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(words to load, words to read back) of a compiled program: its descriptors and weights
    and its input tensor in; every activation out. The engine writes every other tensor whole
    before reading it, so the DRAM's earlier contents there never matter (hw/soc.py's
    simulation starts its DRAM with random bits and checks every tensor)."""
    t = prog.tensors["input"]
    end = prog.act_base + prog.act_words
    return [(0, prog.act_base), (t.base, t.base + t.words)], (prog.act_base, end)


class Session:
    """One network on the board for many pairs (the runtime's `board` backend, hw/runtime.py):
    the descriptors and weights are written once; each pair then writes its input, runs, and
    reads back the field alone."""

    def __init__(self, accel: Accel, weights, sdram_init: Path | None = None):
        from hw.compiler import compile_weights
        self.accel, self.prog = accel, compile_weights(weights)
        self.info = accel.check()
        self.dram_init = accel.init_dram(sdram_init) if sdram_init is not None else None
        self.words = self.prog.act_base + self.prog.act_words
        accel.load(self.prog.image()[:self.prog.act_base])

    def run(self, xq: np.ndarray) -> tuple[np.ndarray, dict]:
        """The int8 field (C, D, H, W) of one quantised input (1, 2, D, H, W), and the counters."""
        from dataclasses import replace

        from hw.compiler import get_tensor, put_tensor
        t, f = self.prog.tensors["input"], self.prog.tensors["ddf"]
        words = np.zeros(t.words, dtype=np.uint64)   # the input alone, laid out as at its base
        put_tensor(words, replace(t, base=0), xq)
        self.accel.load(words, at=t.base)
        res = self.accel.run(self.words)
        if res["error"]:
            raise BoardError(f"the engine stopped with error code {res['error']} (hw/ACCEL.md)")
        return get_tensor(self.accel.dump(f.words, at=f.base), replace(f, base=0))[0], res


def store_pair(prog, mem: np.ndarray, res: dict, pair: dict, out: Path, error=None) -> dict:
    """A golden pair's run on a device: an error code is an `error` (BoardError by default), else
    its dumps are written to out/<pair dir> and {dir, **res} returned."""
    if res["error"]:
        raise (error or BoardError)(f"{pair['dir']}: the engine stopped with error code {res['error']} (hw/ACCEL.md)")
    write_pair_dumps(prog, mem, pair["tensors"], out / pair["dir"])
    return {"dir": pair["dir"], **res}


def write_pair_dumps(prog, mem: np.ndarray, tensors: dict, d: Path) -> None:
    """Every tensor the program keeps in memory, as <name>.npy in the golden layout (the outputs
    of fused CONVs are never written: prog.fused names them)."""
    from hw.compiler import get_tensor
    d.mkdir(parents=True, exist_ok=True)
    for name in tensors:
        if name not in prog.fused:
            np.save(d / f"{name}.npy", get_tensor(mem, prog.tensors[name]))


def run_golden(accel: Accel, golden: Path, out: Path, weights: Path | None = None, progress: bool = True,
               sdram_init: Path | None = None) -> dict:
    """Every golden pair through the board: dumps in OUT/pair_XX (hw.verify reads them), and
    OUT/board.json with the engine's counters and the link's bytes per pair."""
    from hw.compiler import compile_weights
    from hw.verify import check_weights, load_dump, read_manifest
    from model.artifacts import atomic_write_json

    manifest = read_manifest(golden)
    prog = compile_weights(check_weights(golden, weights))
    info = accel.check()
    report = {"engine": info, "pairs": []}
    if sdram_init is not None:
        report["dram_init"] = accel.init_dram(sdram_init)
        if progress and isinstance(report["dram_init"]["read_leveling"], dict):
            print("[board] DRAM reads levelled: " + ", ".join(
                f"lane {x['lane']} bitslip {x['bitslip']} delay {x['delay']}"
                for x in report["dram_init"]["read_leveling"]["lanes"]), file=sys.stderr)
    load, keep = program_ranges(prog)
    for pair in manifest["pairs"]:
        x = load_dump(golden / pair["dir"] / "input.npy", pair["tensors"]["input"]["shape"])
        t0 = time.perf_counter()
        mem, res = run_image(accel, prog.image(x), load=load, keep=keep)
        res["host_s"] = round(time.perf_counter() - t0, 2)
        report["pairs"].append(store_pair(prog, mem, res, pair, out))
        if progress:
            print(f"[board] {pair['dir']}: {res['cycles']:,} engine cycles ({res['waits']:,} waiting for memory), "
                  f"{res['reads']:,} words read, {res['writes']:,} written; link {res['link_bytes_out']:,} bytes out, "
                  f"{res['link_bytes_in']:,} in", file=sys.stderr)
    atomic_write_json(out / "fused.json", {"fused": prog.fused})
    atomic_write_json(out / "board.json", report)
    return report


class SerialLink:
    """A board's UART through pyserial."""

    def __init__(self, port: str, baudrate: int):
        try:
            import serial
        except ImportError:
            raise BoardError("the serial link needs pyserial: pip install pyserial") from None
        try:
            self.s = serial.Serial(port, baudrate, timeout=5)
        except (OSError, ValueError) as e:
            raise BoardError(f"{port}: {e}") from None

    def write(self, data: bytes) -> None:
        self.s.write(data)

    def read(self, n: int) -> bytes:
        return self.s.read(n)

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", required=True, help="the board's UART, e.g. /dev/ttyUSB1")
    ap.add_argument("--baud", type=int, default=1_000_000)
    ap.add_argument("--csr", required=True, type=Path, help="the SoC's csr.json (hw/soc.py)")
    ap.add_argument("--golden", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--weights", type=Path, help="default: the golden manifest's weights.bin")
    ap.add_argument("--no-dram-init", action="store_true",
                    help="skip the DRAM's initialisation (sdram_init.json beside csr.json): it is already done")
    a = ap.parse_args(argv)
    from model.cli import check_dump_dir, run_cli

    def body():
        check_dump_dir(a.out, a.golden)
        accel = Accel(UartBone(SerialLink(a.port, a.baud)), a.csr)
        init = None if a.no_dram_init else a.csr.parent / "sdram_init.json"
        run_golden(accel, a.golden, a.out, a.weights, sdram_init=init)
        return 0
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
