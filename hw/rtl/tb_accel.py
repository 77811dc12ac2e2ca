"""cocotb testbench: reset, start, wait for `done` (the clock runs inside the simulator; no
per-cycle Python), then record the engine's cycle and wait counts, error code and memory traffic.

Run by hw/rtl_sim.py (cocotb_tools.runner); the memory image and the dump are plusargs of
accel_sim.v, the results file is the environment variable ACCEL_RESULT. ACCEL_RUNS=n starts
the engine n times without a reset between runs (the dump is the last run's; cycles, reads and
writes are the last run's, the traffic counters being read before and after it).
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
    limit_ns = int(os.environ.get("ACCEL_MAX_CYCLES", "400000000")) * 10
    for run in range(int(os.environ.get("ACCEL_RUNS", "1"))):
        reads, writes = int(dut.reads.value), int(dut.writes.value)
        dut.start.value = 1
        await ClockCycles(dut.clk, 1)
        dut.start.value = 0
        await ClockCycles(dut.clk, 1)
        assert dut.done.value == 0, f"run {run + 1}: start did not start the engine (done stayed high)"
        await First(RisingEdge(dut.done), Timer(limit_ns, unit="ns"))
        assert dut.done.value == 1, f"run {run + 1}: engine not done after {limit_ns // 10} cycles"
        await ClockCycles(dut.clk, 2)  # the dump is written on the edge after done rises
    res = {"cycles": int(dut.cycles.value), "waits": int(dut.waits.value), "error": int(dut.error.value),
           "reads": int(dut.reads.value) - reads, "writes": int(dut.writes.value) - writes}
    with open(os.environ["ACCEL_RESULT"], "w") as f:
        json.dump(res, f)
