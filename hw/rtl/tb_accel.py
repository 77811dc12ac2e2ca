"""cocotb testbench: drives the accelerator IP as a host driver would, through its AXI4-Lite
registers (hw/rtl/accel_ip.v): reset, DESC_BASE and MEM_LIMIT, START with the interrupt enabled,
wait for the interrupt (the clock runs inside the simulator; no per-cycle Python while the
engine runs), then read STATUS and the counters and acknowledge.

Run by hw/rtl_sim.py (cocotb_tools.runner); the memory image and the dump are plusargs of
accel_sim.v, the results file is the environment variable ACCEL_RESULT, the memory plan's size
ACCEL_MEM_LIMIT (words). ACCEL_RUNS=n starts the engine n times without a reset between runs
(the dump and the counters are the last run's).
"""
import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer

CTRL, STATUS, DESC_BASE, MEM_LIMIT = 0x00, 0x04, 0x08, 0x0C
COUNTERS = {"cycles": 0x10, "waits": 0x18, "reads": 0x20, "writes": 0x28, "macs": 0x30}
ID, CONFIG = 0x38, 0x3C


async def _until(dut, signal) -> None:
    await ReadOnly()
    while not signal.value:
        await RisingEdge(dut.clk)
        await ReadOnly()


async def reg_write(dut, addr: int, value: int) -> None:
    await RisingEdge(dut.clk)
    dut.s_awaddr.value, dut.s_awvalid.value = addr, 1
    dut.s_wdata.value, dut.s_wvalid.value = value, 1
    await _until(dut, dut.s_awready)
    await RisingEdge(dut.clk)
    dut.s_awvalid.value, dut.s_wvalid.value = 0, 0
    await _until(dut, dut.s_bvalid)
    await RisingEdge(dut.clk)


async def reg_read(dut, addr: int) -> int:
    await RisingEdge(dut.clk)
    dut.s_araddr.value, dut.s_arvalid.value = addr, 1
    await _until(dut, dut.s_arready)
    await RisingEdge(dut.clk)
    dut.s_arvalid.value = 0
    await _until(dut, dut.s_rvalid)
    value = int(dut.s_rdata.value)
    await RisingEdge(dut.clk)
    return value


async def reg_read64(dut, addr: int) -> int:
    lo = await reg_read(dut, addr)
    return lo | (await reg_read(dut, addr + 4)) << 32


@cocotb.test()
async def run_program(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for s in ("s_awvalid", "s_wvalid", "s_arvalid", "s_awaddr", "s_wdata", "s_araddr"):
        getattr(dut, s).value = 0
    dut.s_bready.value, dut.s_rready.value = 1, 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 1)
    assert await reg_read(dut, ID) == 0x4C4E4131, "the register block's ID"
    await reg_write(dut, DESC_BASE, 0)
    await reg_write(dut, MEM_LIMIT, int(os.environ["ACCEL_MEM_LIMIT"]))
    limit_ns = int(os.environ.get("ACCEL_MAX_CYCLES", "400000000")) * 10
    for run in range(int(os.environ.get("ACCEL_RUNS", "1"))):
        await reg_write(dut, CTRL, 0b11)   # IRQ_ENABLE | START
        status = await reg_read(dut, STATUS)
        assert status & 1 or status & 2, f"run {run + 1}: START left the engine neither busy nor done ({status:#x})"
        await First(RisingEdge(dut.irq), Timer(limit_ns, unit="ns"))
        assert dut.irq.value == 1, f"run {run + 1}: no interrupt after {limit_ns // 10} cycles"
        status = await reg_read(dut, STATUS)
        assert status & 0b11 == 0b10, f"run {run + 1}: the interrupt came with STATUS {status:#x}, not done"
        await reg_write(dut, STATUS, 0b10)   # acknowledge
        await ReadOnly()
        assert dut.irq.value == 0, f"run {run + 1}: the interrupt stayed up after the acknowledgement"
        await ClockCycles(dut.clk, 2)   # the dump is written on the edge after done rises
    res = {"error": (status >> 4) & 0xF, "config": await reg_read(dut, CONFIG)}
    for name, addr in COUNTERS.items():
        res[name] = await reg_read64(dut, addr)
    with open(os.environ["ACCEL_RESULT"], "w") as f:
        json.dump(res, f)
