"""cocotb testbench of the simulated SoC (hw/soc.py): the host driver (hw/board.py) runs as it
would against a board, in a thread (cocotb's bridge), and its byte link is the SoC's simulated
UART: a byte a cycle at most each way, the SoC's ready and valid obeyed. While the driver
thread runs the simulation waits; `idle(seconds)` lets simulated time pass.

The job is the JSON file SOC_JOB: {"csr": csr.json, "image": the program's memory image (.npy,
uint64), "mem": where to save the memory read back (.npy), "result": the counters (.json)}.
"""
import json
import os
from collections import deque

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, ReadOnly, RisingEdge

from cocotb._bridge import bridge, resume

from hw.board import Accel, UartBone, run_image

CLK_HZ = float(os.environ.get("SOC_CLK_HZ", "75e6"))   # the SoC's clock: converts the driver's seconds to cycles
CLK_NS = 10
DEBUG = bool(os.environ.get("SOC_DEBUG"))   # one cycle of simulated time (the SDRAM controller's timings are in cycles of CLK_HZ)


class SimLink:
    """The byte link on the SoC's serial_sink (host to SoC) and serial_source (SoC to host) ports."""

    def __init__(self, dut):
        self.dut = dut
        self.tx = deque()     # bytes still to hand to the SoC
        self.rx = bytearray()
        self.rx_wanted = 0
        self.rx_event = Event()
        self.tx_done = Event()
        self.wake = Event()

    async def pump(self):
        """Move bytes while the driver has some to send or waits for some; otherwise hold the
        SoC off (source_ready low: what it has to say waits in its stream) and sleep."""
        dut = self.dut
        while True:
            if not self.tx and len(self.rx) >= self.rx_wanted:
                dut.serial_sink_valid.value = 0
                dut.serial_source_ready.value = 0
                self.tx_done.set()
                self.rx_event.set()
                self.wake.clear()
                await self.wake.wait()
                await RisingEdge(dut.sys_clk)
            dut.serial_source_ready.value = 1
            if self.tx:
                dut.serial_sink_valid.value = 1
                dut.serial_sink_data.value = self.tx[0]
            else:
                dut.serial_sink_valid.value = 0
            await ReadOnly()   # this cycle's settled values: what moves at the coming edge
            sent = bool(self.tx) and int(dut.serial_sink_ready.value)
            got = int(dut.serial_source_data.value) if int(dut.serial_source_valid.value) else None
            await RisingEdge(dut.sys_clk)
            if sent:
                self.tx.popleft()
            if got is not None:
                self.rx.append(got)

    async def _write(self, data: bytes):
        self.tx_done.clear()
        self.tx.extend(data)
        self.wake.set()
        await self.tx_done.wait()

    async def _read(self, n: int) -> bytes:
        self.rx_wanted = n
        while len(self.rx) < n:
            self.rx_event.clear()
            self.wake.set()
            await self.rx_event.wait()
        self.rx_wanted = 0
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    async def _idle(self, seconds: float):
        await ClockCycles(self.dut.sys_clk, max(1, round(seconds * CLK_HZ)))

    # the driver's side (its thread): each call hands control to the simulation until it is done
    def write(self, data: bytes) -> None:
        if DEBUG:
            self.dut._log.info(f"host -> soc {len(data)} bytes: {data[:12].hex()}")
        resume(self._write)(data)

    def read(self, n: int) -> bytes:
        data = resume(self._read)(n)
        if DEBUG:
            self.dut._log.info(f"soc -> host {len(data)} bytes: {data[:12].hex()}")
        return data

    def idle(self, seconds: float) -> None:
        resume(self._idle)(seconds)


@cocotb.test()
async def soc_run(dut):
    with open(os.environ["SOC_JOB"]) as f:
        job = json.load(f)
    Clock(dut.sys_clk, CLK_NS, unit="ns").start()
    dut.sys_rst.value = 1
    link = SimLink(dut)
    cocotb.start_soon(link.pump())
    await ClockCycles(dut.sys_clk, 4)
    dut.sys_rst.value = 0
    await ClockCycles(dut.sys_clk, 200)   # the SoC's power-on reset and the SDRAM controller's init

    def host():
        accel = Accel(UartBone(link), job["csr"])
        engine = accel.check()
        mem, res = run_image(accel, np.load(job["image"]), job.get("mem_limit"))
        return mem, {**res, "engine": engine}

    mem, res = await bridge(host)()
    res["sim_cycles"] = round(cocotb.utils.get_sim_time("ns") / CLK_NS)
    np.save(job["mem"], mem)
    with open(job["result"], "w") as f:
        json.dump(res, f)
