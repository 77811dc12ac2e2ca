"""cocotb testbench of the simulated SoC (hw/soc.py): the host driver (hw/board.py) runs as it
would against a board, in a thread (cocotb's bridge), and its byte link is the SoC's simulated
UART (hw/rtl/sim/soc_tb_top.v moves the bytes: a byte a cycle at most each way, the SoC's ready
and valid obeyed). While the driver thread runs the simulation waits; `idle(seconds)` lets
simulated time pass.

The job is the JSON file SOC_JOB: {"csr": csr.json, "image": the program's memory image (.npy,
uint64), "mem": where to save the memory read back (.npy), "result": the counters (.json), and
optionally "load" (word ranges written) and "keep" (the range read back): hw.board.run_image;
"sdram_init": the DRAM's initialisation, run first by hw.board.Accel.init_dram}.
"""
import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from cocotb._bridge import bridge, resume

from hw.board import Accel, UartBone, run_image

CLK_HZ = float(os.environ.get("SOC_CLK_HZ", "75e6"))   # the SoC's clock: converts the driver's seconds to cycles
CLK_NS = 10
DEBUG = bool(os.environ.get("SOC_DEBUG"))
TXD = 65536   # bytes soc_tb_top.v takes per load   # one cycle of simulated time (the SDRAM controller's timings are in cycles of CLK_HZ)


class SimLink:
    """The host's end of the SoC's UART in hw/rtl/sim/soc_tb_top.v: bytes handed over through
    the files it reads and writes, moved by the Verilog a byte a cycle at most."""

    def __init__(self, dut, work: Path):
        self.dut = dut
        self.tx_file, self.rx_file = work / "soc_tx.hex", work / "soc_rx.hex"
        self.rx = bytearray()

    async def _write(self, data: bytes):
        dut = self.dut
        for off in range(0, len(data), TXD):
            chunk = data[off:off + TXD]
            self.tx_file.write_text("".join(f"{b:02x}\n" for b in chunk))
            await RisingEdge(dut.sys_clk)
            dut.tx_len.value, dut.tx_load.value = len(chunk), 1
            await RisingEdge(dut.sys_clk)
            dut.tx_load.value = 0
            await RisingEdge(dut.sys_clk)
            if not int(dut.tx_done.value):
                await RisingEdge(dut.tx_done)

    async def _read(self, n: int) -> bytes:
        dut = self.dut
        while len(self.rx) < n:
            dut.rx_want.value = n - len(self.rx)
            await RisingEdge(dut.sys_clk)
            if not int(dut.rx_have.value):
                await RisingEdge(dut.rx_have)
                await RisingEdge(dut.sys_clk)
            dut.rx_dump.value = 1
            await RisingEdge(dut.sys_clk)
            dut.rx_dump.value = 0
            await ReadOnly()   # the dump was written at that edge
            self.rx.extend(bytes.fromhex("".join(ln.strip() for ln in self.rx_file.read_text().splitlines()
                                                  if ln.strip() and not ln.startswith("//"))))
            await RisingEdge(dut.sys_clk)
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
    dut.tx_load.value, dut.tx_len.value, dut.rx_want.value, dut.rx_dump.value = 0, 0, 0, 0
    link = SimLink(dut, Path(job["mem"]).parent)
    await ClockCycles(dut.sys_clk, 4)
    dut.sys_rst.value = 0
    await ClockCycles(dut.sys_clk, 200)   # the SoC's power-on reset and the SDRAM controller's init

    def host():
        accel = Accel(UartBone(link), job["csr"])
        engine = accel.check()
        dram = accel.init_dram(Path(job["sdram_init"])) if "sdram_init" in job else None
        if DEBUG and "keep" in job:   # what the DRAM holds before the load, where the activations go
            dut._log.info(f"DRAM before the load: {[hex(w) for w in accel.dump(4, at=job['keep'][0])]}")
        mem, res = run_image(accel, np.load(job["image"]), job.get("mem_limit"),
                             load=[tuple(r) for r in job["load"]] if "load" in job else None,
                             keep=tuple(job["keep"]) if "keep" in job else None)
        return mem, {**res, "engine": engine, **({"dram_init": dram} if dram else {})}

    mem, res = await bridge(host)()
    res["sim_cycles"] = round(cocotb.utils.get_sim_time("ns") / CLK_NS)
    np.save(job["mem"], mem)
    with open(job["result"], "w") as f:
        json.dump(res, f)
