"""cocotb testbench: reset, start, wait for `done` (the clock runs inside the simulator; no
per-cycle Python), then record the engine's cycle count and memory traffic.

Run by hw/rtl_sim.py (cocotb_tools.runner); the memory image and the dump are plusargs of
accel_sim.v, the results file is the environment variable ACCEL_RESULT.
"""
import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer


@cocotb.test()
async def run_program(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.start.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 1)
    dut.start.value = 1
    await ClockCycles(dut.clk, 1)
    dut.start.value = 0
    limit_ns = int(os.environ.get("ACCEL_MAX_CYCLES", "400000000")) * 10
    fired = await First(RisingEdge(dut.done), Timer(limit_ns, unit="ns"))
    assert dut.done.value == 1, f"engine not done after {limit_ns // 10} cycles"
    await ClockCycles(dut.clk, 2)  # the dump is written on the edge after done rises
    res = {"cycles": int(dut.cycles.value), "reads": int(dut.reads.value), "writes": int(dut.writes.value)}
    with open(os.environ["ACCEL_RESULT"], "w") as f:
        json.dump(res, f)
