"""The accelerator in a LiteX SoC (hw/soc.py) driven by the host driver (hw/board.py): the
driver's bytes by hand, its errors, and a small network through the simulated SoC (LiteDRAM on
a DDR3 model, the UART bridge, the 64-to-128-bit adapter) against the reference."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hw.board import Accel, BoardError, UartBone
from hw.soc import SOC_TP

ROOT = Path(__file__).resolve().parent.parent
CSR = {"memories": {"main_ram": {"base": 0x40000000, "size": 1 << 27}, "accel": {"base": 0x80000000, "size": 256}}}


class FakeLink:
    """Records what the driver sends; answers reads from a dict of 32-bit words by address."""

    def __init__(self, words: dict | None = None):
        self.sent = bytearray()
        self.words = words or {}
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data
        i = 0
        while i < len(data):
            cmd, n, adr = data[i], data[i + 1], int.from_bytes(data[i + 2:i + 6], "big")
            i += 6
            if cmd == 2:
                for k in range(n):
                    self.pending += self.words.get(4 * (adr + k), 0).to_bytes(4, "big")
            else:
                for k in range(n):
                    self.store(4 * (adr + k), int.from_bytes(data[i + 4 * k:i + 4 * k + 4], "big"))
                i += 4 * n

    def store(self, addr: int, value: int) -> None:
        self.words[addr] = value

    def read(self, n: int) -> bytes:
        out, self.pending = bytes(self.pending[:n]), self.pending[n:]
        return out

    def idle(self, seconds: float) -> None:
        pass


def test_uartbone_bytes_by_hand():
    """LiteX's UARTBone protocol: command, word count, big-endian word address, big-endian data;
    a write longer than 255 words is split; reads are sent in batches, then answered."""
    link = FakeLink()
    bus = UartBone(link)
    bus.write(0x40000010, [0x11223344, 0x55667788])
    assert bytes(link.sent) == bytes([1, 2, 0x10, 0, 0, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88])
    link.sent.clear()
    bus.write(0x40000000, np.arange(300, dtype=np.uint32))
    assert link.sent[:6] == bytes([1, 255, 0x10, 0, 0, 0]) and len(link.sent) == 6 + 4 * 255 + 6 + 4 * 45
    assert link.sent[6 + 4 * 255:6 + 4 * 255 + 6] == bytes([1, 45, 0x10, 0, 0, 255])
    link.sent.clear()
    got = bus.read(0x40000000, 300)
    assert bytes(link.sent) == bytes([2, 255, 0x10, 0, 0, 0, 2, 45, 0x10, 0, 0, 255])   # one batch
    assert np.array_equal(got, np.arange(300))


def test_engine_words_are_two_bus_words_low_half_first():
    link = FakeLink()
    accel = Accel(UartBone(link), CSR)
    accel.load(np.array([0x0102030405060708, 0xFFFFFFFF00000001], dtype=np.uint64), at=1)
    assert link.words[0x40000008] == 0x05060708 and link.words[0x4000000C] == 0x01020304
    assert link.words[0x40000010] == 0x00000001 and link.words[0x40000014] == 0xFFFFFFFF
    assert list(accel.dump(2, at=1)) == [0x0102030405060708, 0xFFFFFFFF00000001]


def test_driver_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(BoardError, match="answers ID 0x00000000, not 0x4c4e4131"):
        Accel(UartBone(FakeLink()), CSR).check()
    bad = tmp_path / "csr.json"
    bad.write_text("{}")
    with pytest.raises(BoardError, match="csr.json: no main_ram and accel regions"):
        Accel(UartBone(FakeLink()), bad)
    bad.write_text("{")
    with pytest.raises(BoardError, match="csr.json: not a LiteX csr.json"):
        Accel(UartBone(FakeLink()), bad)
    small = {"memories": {**CSR["memories"], "main_ram": {"base": 0x40000000, "size": 4096}}}
    with pytest.raises(BoardError, match="513 words do not fit the board's 4096 bytes"):
        Accel(UartBone(FakeLink()), small).load(np.zeros(513, dtype=np.uint64))

    class Silent(FakeLink):
        def read(self, n):
            return b""
    with pytest.raises(BoardError, match="0 of 4 bytes answered"):
        UartBone(Silent()).read(0, 1)
    # a busy engine is not started again; one that never finishes times out
    regs = {0x80000004: 1}
    with pytest.raises(BoardError, match="busy before START"):
        Accel(UartBone(FakeLink(regs)), CSR).run(100)
    regs = {0x80000004: 0}
    with pytest.raises(BoardError, match="did not finish in 0.01 s"):
        Accel(UartBone(FakeLink(regs)), CSR).run(100, timeout_s=0.01, poll_s=0.001)


@pytest.mark.rtl
def test_soc_sim_equals_reference(tmp_path):
    """One golden pair of the RTL tests' small network through the simulated SoC by the host
    driver, the DRAM initialised by it first: 0 mismatching elements in every tensor, the engine's busy cycles and traffic those
    of the cycle model (its waits are the DRAM controller's), the bytes on the link counted."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_rtl import make_golden, random_weights

    from hw.compiler import compile_weights
    from hw.engine_model import cycle_model, total_cycles, total_traffic
    from export.weights import read_weights

    w = random_weights(tmp_path / "weights.bin")
    golden = tmp_path / "golden"
    make_golden(w, golden, pairs=1)
    out = tmp_path / "soc"
    r = subprocess.run([sys.executable, "-m", "hw.soc", "sim", "--golden", str(golden), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    v = subprocess.run([sys.executable, "-m", "hw.verify", "--golden", str(golden), "--accel", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert v.returncode == 0 and "0 mismatching elements" in v.stdout + v.stderr, v.stdout + v.stderr
    rep = json.loads((out / "soc.json").read_text())
    per = cycle_model(compile_weights(read_weights(w)), SOC_TP)
    p = rep["pairs"][0]
    assert rep["tp"] == p["engine"]["tp"] == SOC_TP   # the engine built is the board's, and says so
    assert p["error"] == 0 and p["cycles"] - p["waits"] == total_cycles(per) == rep["busy_model_cycles"]
    assert (p["reads"], p["writes"]) == total_traffic(per)
    assert p["waits"] > 0 and p["link_bytes_out"] > 8 * 2 * p["writes"]
    # the driver initialised the DRAM first, by LiteDRAM's sequence (the model needs no levelling)
    assert p["dram_init"] == {"steps": 7, "read_leveling": "not needed"}


def test_board_files_have_the_pins_and_the_engine(tmp_path):
    """The ECPIX-5 SoC as LiteX writes it for the bitstream flow (no place and route here): the
    pin constraints place the UART, the DDR3 and the clock; the Verilog instantiates the engine
    (with the SoC's TP) and the 64-to-128-bit adapter; csr.json has the regions hw/board.py needs."""
    from hw.soc import ACCEL_REGION, BOARD_TOP, board_files

    gw = board_files(tmp_path / "b")
    lpf = (gw / f"{BOARD_TOP}.lpf").read_text()
    for pin in ('"clk100"', '"serial_tx"', '"serial_rx"', '"ddram_dq[15]"', '"ddram_a[0]"'):
        assert f"LOCATE COMP {pin}" in lpf, pin
    v = (gw / f"{BOARD_TOP}.v").read_text()
    assert f"accel_ip #(\n\t// Parameters.\n\t.TP ({SOC_TP}'d{SOC_TP})\n) accel_ip (" in v and "accel_axi_up accel_axi_up(" in v and "ECP5" in v
    csr = json.loads((tmp_path / "b" / "csr.json").read_text())
    assert csr["memories"]["accel"]["base"] == ACCEL_REGION and csr["memories"]["main_ram"]["size"] == 512 << 20
    assert all((gw / n).is_file() for n in ("accel.v", "accel_faults.vh", "accel_axi_up.v"))
    # what the driver's read levelling needs, and every register it touches
    init = json.loads((tmp_path / "b" / "sdram_init.json").read_text())
    assert init["read_leveling"] and {k: init[k] for k in ("modules", "bitslips", "delays", "nphases")} == \
        {"modules": 2, "bitslips": 4, "delays": 8, "nphases": 2} and {init["rdphase"], init["wrphase"]} <= {0, 1}
    assert set(PhyBoard.NAMES) <= set(csr["csr_registers"])
    assert {n: csr["csr_registers"][n]["size"] for n in PhyBoard.NAMES} == {n: r["size"] for n, r in PhyBoard([{}, {}]).regs.items()}


class EngineBoard(FakeLink):
    """A board in software for the driver's flow: UARTBone's bus over a dict of 32-bit words, the
    registers of hw/ACCEL.md, and START running hw/engine_model.py (which the RTL equals bit for
    bit and cycle for cycle, tests/test_rtl.py) on the memory the host wrote."""
    RAM, REGS = 0x40000000, 0x80000000

    def __init__(self):
        super().__init__({self.REGS + 0x38: 0x4C4E4131})   # ID
        self.status, self.starts = 0, 0

    def write(self, data: bytes) -> None:
        super().write(data)
        ctrl = self.words.pop(self.REGS, None)
        self.words.pop(self.REGS + 4, None)   # an acknowledgement: DONE stays readable until the next START
        limit = self.words.get(self.REGS + 0xC, 0)
        if ctrl is not None and ctrl & 1:
            from hw.engine_model import run_image
            self.starts += 1
            image = np.array([self.words.get(self.RAM + 8 * i, 0) | self.words.get(self.RAM + 8 * i + 4, 0) << 32
                              for i in range(limit)], dtype=np.uint64)
            mem, per = run_image(image)
            for i in np.flatnonzero(mem != image):
                self.words[self.RAM + 8 * i], self.words[self.RAM + 8 * i + 4] = int(mem[i]) & 0xFFFFFFFF, int(mem[i]) >> 32
            self.status = 2
            from hw.engine_model import total_cycles
            self.words[self.REGS + 0x10] = total_cycles(per)
        self.words[self.REGS + 4] = self.status


def test_board_backend_equals_the_reference(tmp_path):
    """The runtime's board backend (hw/runtime.py, hw/board.py Session) against a board in
    software: the program goes over once, each pair then moves its input and its field only,
    and the field equals the integer reference's, element for element."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_rtl import random_weights

    from hw.runtime import board_network, reference_network

    w = random_weights(tmp_path / "weights.bin")
    link = EngineBoard()
    net = board_network(w, 5, csr=CSR, link=link)
    ref = reference_network(w)
    sent0 = len(link.sent)
    rng = np.random.default_rng(3)
    for k in range(2):
        m, f = rng.random((8, 8, 8)), rng.random((8, 8, 8))
        before = len(link.sent)
        q, e = net.raw(m, f)
        rq, _ = ref.raw(m, f)
        assert np.array_equal(q, rq) and e == 5
        assert len(link.sent) - before < sent0 / 2   # a pair sends far less than the program
    assert link.starts == 2
    with pytest.raises(ValueError, match=r"backend board: needs the board's UART \(--port\) and the SoC's csr.json"):
        board_network(w, 5, port="/dev/ttyUSB1")


@pytest.mark.parametrize("cli", [["hw.rtl_sim"], ["hw.soc", "sim"], ["hw.board", "--port", "/dev/null", "--csr", "c.json"]])
def test_dump_clis_refuse_to_write_over_the_golden_vectors(tmp_path, cli):
    """A device's dumps written into the golden directory would replace the golden tensors and
    make any verify pass: each CLI that writes dumps refuses, before it writes anything."""
    golden = tmp_path / "golden"
    golden.mkdir()
    (golden / "marker").write_text("x")
    r = subprocess.run([sys.executable, "-m", *cli, "--golden", str(golden), "--out", str(golden) + "/"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "is the golden directory" in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in golden.iterdir()) == ["marker"]


def test_dram_init_writes_the_dfi_registers_in_order(tmp_path):
    """Accel.init_dram by hand: software control (CKE | ODT | RESET_N), each step's control write
    or phase-0 command (address, bank, command, issue), then SEL (the controller) again; a file
    that is not an sdram_init.json is named."""
    regs = {"sdram_dfii_control": 0x1800, "sdram_dfii_pi0_command": 0x1804, "sdram_dfii_pi0_command_issue": 0x1808,
            "sdram_dfii_pi0_address": 0x180C, "sdram_dfii_pi0_baddress": 0x1810}
    csr = {**CSR, "csr_registers": {k: {"addr": v, "size": 1} for k, v in regs.items()}}

    class Log(FakeLink):
        def __init__(self):
            super().__init__()
            self.log = []

        def write(self, data):
            super().write(data)
            self.log.append((int.from_bytes(data[2:6], "big") * 4, int.from_bytes(data[6:10], "big")))
    link = Log()
    init = {"clk_hz": 60e6, "read_leveling": False, "steps": [
        {"kind": "control", "bits": 0x0C, "address": 0, "bank": 0, "wait_cycles": 0},
        {"kind": "command", "bits": 0x0F, "address": 512, "bank": 2, "wait_cycles": 0}]}
    assert Accel(UartBone(link), csr).init_dram(init) == {"steps": 2, "read_leveling": "not needed"}
    assert link.log == [(0x1800, 0x0E), (0x1800, 0x0C), (0x180C, 512), (0x1810, 2), (0x1804, 0x0F), (0x1808, 1),
                        (0x1800, 0x01)]
    bad = tmp_path / "sdram_init.json"
    bad.write_text("{}")
    with pytest.raises(BoardError, match="sdram_init.json: not an sdram_init.json of hw/soc.py"):
        Accel(UartBone(link), csr).init_dram(bad)


class PhyBoard(FakeLink):
    """LiteDRAM's DFI injector and the ECP5 PHY's read-delay controls, with a DRAM whose reads
    come back right on a byte lane only inside that lane's window of (bitslip, delay tap)
    settings: elsewhere the lane's bytes come back inverted, and its burst is detected only at a
    good bitslip."""
    NAMES = ["ddrphy_dly_sel", "ddrphy_rdly_dq_rst", "ddrphy_rdly_dq_inc", "ddrphy_rdly_dq_bitslip_rst",
             "ddrphy_rdly_dq_bitslip", "ddrphy_burstdet_clr", "ddrphy_burstdet_seen", "sdram_dfii_control"]
    NAMES += [f"sdram_dfii_pi{p}_{r}" for p in (0, 1) for r in ("command", "command_issue", "address", "baddress",
                                                                 "wrdata", "rddata")]

    def __init__(self, windows: list[dict]):
        super().__init__()
        self.regs, addr = {}, 0x800
        for name in self.NAMES:
            size = 2 if name.endswith("data") else 1
            self.regs[name] = {"addr": addr, "size": size}
            addr += 4 * size
        self.by_addr = {v["addr"]: k for k, v in self.regs.items()}
        self.windows, self.slip, self.tap = windows, [0, 0], [0, 0]
        self.row, self.seen, self.commands = [0, 0], 0, []

    def csr_value(self, name):
        a, n = self.regs[name]["addr"], self.regs[name]["size"]
        v = 0
        for k in range(n):
            v = v << 32 | self.words.get(a + 4 * k, 0)
        return v

    def store(self, addr, value):
        super().store(addr, value)
        name = self.by_addr.get(addr)
        sel = self.csr_value("ddrphy_dly_sel")
        for m in range(2):
            if sel >> m & 1:
                if name == "ddrphy_rdly_dq_rst":
                    self.tap[m] = 0
                elif name == "ddrphy_rdly_dq_inc":
                    self.tap[m] = (self.tap[m] + 1) % 8
                elif name == "ddrphy_rdly_dq_bitslip_rst":
                    self.slip[m] = 0
                elif name == "ddrphy_rdly_dq_bitslip":
                    self.slip[m] = (self.slip[m] + 1) % 4
        if name == "ddrphy_burstdet_clr":
            self.seen = 0
        if name and name.endswith("command_issue"):
            p = int(name[len("sdram_dfii_pi")])
            cmd = self.csr_value(f"sdram_dfii_pi{p}_command")
            self.commands.append((p, cmd))
            if cmd == 0x17:   # write (CAS | WE | CS | WRDATA)
                self.row = [self.csr_value(f"sdram_dfii_pi{q}_wrdata") for q in (0, 1)]
            elif cmd == 0x25:  # read (CAS | CS | RDDATA)
                for q in (0, 1):
                    v = self.row[q]
                    for m in range(2):
                        w = self.windows[m]
                        if w.get(self.slip[m], ()) and self.tap[m] in w.get(self.slip[m], ()):
                            continue
                        v ^= sum(0xFF << 8 * b for b in range(8) if b % 2 == m)
                    a = self.regs[f"sdram_dfii_pi{q}_rddata"]["addr"]
                    self.words[a], self.words[a + 4] = v >> 32, v & 0xFFFFFFFF
                self.seen = sum(1 << m for m in range(2) if self.slip[m] in self.windows[m])
                self.words[self.regs["ddrphy_burstdet_seen"]["addr"]] = self.seen


PHY = {"modules": 2, "bitslips": 4, "delays": 8, "nphases": 2, "rdphase": 1, "wrphase": 0}


def test_read_levelling_finds_each_lane_window():
    """Accel.level_reads against a PHY whose lanes read right only in their own windows: lane 0
    at bitslip 1, taps 2..6 (the middle, 4, chosen); lane 1 at bitslip 2, taps 0..2, and at
    bitslip 3, taps 5..6 (the longer run wins: bitslip 2, tap 1). Both lanes are left at those
    settings, writes go on the write phase and reads on the read phase; a lane that reads wrong
    everywhere is named."""
    board = PhyBoard([{1: range(2, 7)}, {2: range(0, 3), 3: range(5, 7)}])
    accel = Accel(UartBone(board), {**CSR, "csr_registers": board.regs})
    rep = accel.level_reads(PHY)
    assert [(x["bitslip"], x["delay"]) for x in rep["lanes"]] == [(1, 4), (2, 1)]
    assert rep["lanes"][0]["passing"] == [[], [2, 3, 4, 5, 6], [], []]
    assert (board.slip, board.tap) == ([1, 2], [4, 1])
    assert {c for p, c in board.commands if p == 0} == {0x09, 0x0B, 0x17} and {c for p, c in board.commands if p == 1} == {0x25}
    board = PhyBoard([{1: range(2, 7)}, {}])
    with pytest.raises(BoardError, match="byte lane 1 passed at no bitslip and delay"):
        Accel(UartBone(board), {**CSR, "csr_registers": board.regs}).level_reads(PHY)


def test_routed_clocks_reads_padded_names_and_keeps_the_last_report():
    """nextpnr pads clock names to one width when there are several; the report after routing
    comes last and wins over the placer's estimate."""
    from hw.soc import routed_clocks

    log = ("Info: Max frequency for clock '$glbnet$crg_clkout1': 400.00 MHz (PASS at 25.00 MHz)\n"
           "Info: Max frequency for clock        '$glbnet$sys_clk': 69.66 MHz (PASS at 60.00 MHz)\n"
           "Info: Max frequency for clock '$glbnet$crg_clkout1': 310.75 MHz (PASS at 25.00 MHz)\n"
           "Info: Max frequency for clock        '$glbnet$sys_clk': 55.10 MHz (FAIL at 60.00 MHz)\n")
    assert routed_clocks(log) == {"$glbnet$crg_clkout1": {"fmax_mhz": 310.75, "target_mhz": 25.0, "meets": True},
                                  "$glbnet$sys_clk": {"fmax_mhz": 55.1, "target_mhz": 60.0, "meets": False}}
