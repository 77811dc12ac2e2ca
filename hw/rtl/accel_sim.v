// accel_sim.v: the accelerator IP on a DRAM model, for simulation (hw/rtl_sim.py).
//
// The testbench (hw/rtl/tb_accel.py) drives the IP's AXI4-Lite registers and waits for its
// interrupt, as a host driver would. The engine is an AXI4 master (accel.v, accel_mem.v); the
// memory here is a behavioural model
// of one DRAM behind its controller (hw/ACCEL.md, "The DRAM model"): one shared port of one
// 64-bit word per DRAM_BEAT cycles, commands served in the order accepted (up to 16 queued), a
// read's first word DRAM_LAT cycles after its command at the earliest, DRAM_ROWMISS more
// when the burst's row is not the one open in its bank (8 banks of 2 KiB rows), DRAM_TURN
// more when the port turns between reading and writing. Plusargs: +DRAM_LAT=<n> (default 32),
// +DRAM_ROWMISS=<n> (6), +DRAM_TURN=<n> (4), +DRAM_BEAT=<n> (1); +MEM_IN=<file> ($readmemh
// image from hw/compiler.py), +MEM_OUT=<file> and +DUMP_WORDS=<n>: when `done` rises, words
// 0..n-1 are written with $writememh.
`default_nettype none
`include "accel_params.vh"
`include "accel_axi.vh"

module accel_sim #(
    parameter integer AW = `ACCEL_ADDR_BITS,
    parameter integer TP = `ACCEL_TP,
    parameter integer BW = `ACCEL_WINDOW_BITS,
    parameter integer WBUF_DEPTH = `ACCEL_WBUF_DEPTH,
    parameter integer MEM_WORDS = 1 << AW
) (
    // the ports are all the testbench (hw/rtl/tb_accel.py) touches: only they are visible to it
    // (hw/rtl_sim.py builds without --public-flat-rw, which made every internal signal public and
    // the build several times larger)
    input  wire        clk       /* verilator public_flat_rw */,
    input  wire        rst       /* verilator public_flat_rw */,
    output wire        irq       /* verilator public_flat_rw */,
    input  wire [7:0]  s_awaddr  /* verilator public_flat_rw */,
    input  wire        s_awvalid /* verilator public_flat_rw */,
    output wire        s_awready /* verilator public_flat_rw */,
    input  wire [31:0] s_wdata   /* verilator public_flat_rw */,
    input  wire        s_wvalid  /* verilator public_flat_rw */,
    output wire        s_wready  /* verilator public_flat_rw */,
    output wire        s_bvalid  /* verilator public_flat_rw */,
    input  wire        s_bready  /* verilator public_flat_rw */,
    input  wire [7:0]  s_araddr  /* verilator public_flat_rw */,
    input  wire        s_arvalid /* verilator public_flat_rw */,
    output wire        s_arready /* verilator public_flat_rw */,
    output wire [31:0] s_rdata   /* verilator public_flat_rw */,
    output wire        s_rvalid  /* verilator public_flat_rw */,
    input  wire        s_rready  /* verilator public_flat_rw */
);
    wire [31:0] araddr, awaddr;
    wire [7:0] arlen, awlen;
    wire arvalid, awvalid, wvalid, wlast, rready, bready;
    wire [63:0] wdata;
    reg arready, awready, rvalid, rlast, bvalid;
    reg [63:0] rdata;
    wire wready;
    reg [63:0] mem [0:MEM_WORDS-1];

    accel_ip #(.AW(AW), .TP(TP), .BW(BW), .WBUF_DEPTH(WBUF_DEPTH)) u_ip (
        .clk(clk), .rst(rst), .irq(irq),
        `ACCEL_AXIL_SLAVE_CONNECT,
        .m_araddr(araddr), .m_arlen(arlen), .m_arvalid(arvalid), .m_arready(arready),
        .m_rdata(rdata), .m_rlast(rlast), .m_rvalid(rvalid), .m_rready(rready),
        .m_awaddr(awaddr), .m_awlen(awlen), .m_awvalid(awvalid), .m_awready(awready),
        .m_wdata(wdata), .m_wlast(wlast), .m_wvalid(wvalid), .m_wready(wready),
        .m_bvalid(bvalid), .m_bready(bready));

    // ---------------------------------------------------------------- the DRAM model
    reg [63:0] lat, rowmiss, turn, beat_cycles;
    initial begin
        if (!$value$plusargs("DRAM_LAT=%d", lat)) lat = 32;
        if (!$value$plusargs("DRAM_ROWMISS=%d", rowmiss)) rowmiss = 6;
        if (!$value$plusargs("DRAM_TURN=%d", turn)) turn = 4;
        if (!$value$plusargs("DRAM_BEAT=%d", beat_cycles)) beat_cycles = 1;
    end
    localparam integer CQ = 16, WD = 64;
    reg [AW-1:0] cq_a [0:CQ-1];
    reg [8:0]    cq_len [0:CQ-1];
    reg          cq_w [0:CQ-1];
    reg [63:0]   cq_t [0:CQ-1];
    integer cq_head, cq_tail, cq_cnt;
    reg [63:0] wd [0:WD-1];
    integer wd_head, wd_tail, wd_cnt;
    reg [63:0] now, next_t;
    reg busy, last_w;
    reg [8:0] beat;
    integer k;
    reg [AW-12:0] open_row [0:7];
    reg [7:0] row_open;
    reg [63:0] t0;
    reg [AW-1:0] a;
    // one command a cycle, reads and writes by turns when both wait
    reg prefer_w;
    always @(*) begin
        arready = (cq_cnt < CQ) && !(awvalid && prefer_w);
        awready = (cq_cnt < CQ) && !(arvalid && arready);
    end
    assign wready = (wd_cnt < WD);
    always @(posedge clk) begin
        if (rst) begin
            cq_head = 0; cq_tail = 0; cq_cnt = 0; wd_head = 0; wd_tail = 0; wd_cnt = 0; now = 64'd0;
            busy = 1'b0; last_w = 1'b0; row_open = 8'd0; prefer_w = 1'b0; next_t = 64'd0;
            rvalid <= 1'b0; rlast <= 1'b0; bvalid <= 1'b0;
        end else begin
            if (rvalid && !rready) $fatal(1, "accel_sim: the engine refused a read beat (rready low)");
            if (bvalid && !bready) $fatal(1, "accel_sim: the engine refused a write response (bready low)");
            now = now + 64'd1;
            rvalid <= 1'b0; rlast <= 1'b0; bvalid <= 1'b0;
            if (arvalid && arready) begin
                cq_a[cq_tail] = araddr[AW+2:3]; cq_len[cq_tail] = {1'b0, arlen} + 9'd1; cq_w[cq_tail] = 1'b0;
                cq_t[cq_tail] = now; cq_tail = (cq_tail + 1) % CQ; cq_cnt = cq_cnt + 1; prefer_w = 1'b1;
            end else if (awvalid && awready) begin
                cq_a[cq_tail] = awaddr[AW+2:3]; cq_len[cq_tail] = {1'b0, awlen} + 9'd1; cq_w[cq_tail] = 1'b1;
                cq_t[cq_tail] = now; cq_tail = (cq_tail + 1) % CQ; cq_cnt = cq_cnt + 1; prefer_w = 1'b0;
            end
            if (wvalid && wready) begin wd[wd_tail] = wdata; wd_tail = (wd_tail + 1) % WD; wd_cnt = wd_cnt + 1; end
            // the head command's next beat
            if (busy && now >= next_t) begin
                a = cq_a[cq_head] + {{(AW-9){1'b0}}, beat};
                if (!cq_w[cq_head]) begin
                    rvalid <= 1'b1; rdata <= mem[a]; rlast <= (beat + 9'd1 == cq_len[cq_head]);
                    beat = beat + 9'd1; next_t = now + beat_cycles;
                end else if (wd_cnt > 0) begin
                    mem[a] = wd[wd_head]; wd_head = (wd_head + 1) % WD; wd_cnt = wd_cnt - 1;
                    beat = beat + 9'd1; next_t = now + beat_cycles;
                end
                if (beat == cq_len[cq_head]) begin
                    if (cq_w[cq_head]) bvalid <= 1'b1;
                    busy = 1'b0; cq_head = (cq_head + 1) % CQ; cq_cnt = cq_cnt - 1;
                end
            end
            // the next command: its row opened, the port turned, no earlier than its latency
            if (!busy && cq_cnt > 0 && cq_t[cq_head] < now) begin
                a = cq_a[cq_head];
                t0 = (next_t > now) ? next_t : now + 64'd1;
                if (!row_open[a[10:8]] || open_row[a[10:8]] != a[AW-1:11]) t0 = t0 + rowmiss;
                row_open[a[10:8]] = 1'b1; open_row[a[10:8]] = a[AW-1:11];
                if (cq_w[cq_head] != last_w) t0 = t0 + turn;
                last_w = cq_w[cq_head];
                if (!cq_w[cq_head] && t0 < cq_t[cq_head] + lat) t0 = cq_t[cq_head] + lat;
                next_t = t0; beat = 9'd0; busy = 1'b1;
            end
        end
    end

    reg [8*1024-1:0] mem_in, mem_out;
    integer dump_words;
    initial begin
        if ($value$plusargs("MEM_IN=%s", mem_in)) $readmemh(mem_in, mem);
        if (!$value$plusargs("DUMP_WORDS=%d", dump_words)) dump_words = MEM_WORDS;
        for (k = 0; k < 8; k = k + 1) open_row[k] = {(AW-11){1'b0}};
    end

    wire done = u_ip.u_accel.done;
    wire [63:0] cycles = u_ip.u_accel.cycles, waits = u_ip.u_accel.waits;
    reg done_q;
    always @(posedge clk) begin
        done_q <= done;
        if (done && !done_q && $value$plusargs("MEM_OUT=%s", mem_out)) $writememh(mem_out, mem, 0, dump_words - 1);
    end

    // +DESC_LOG=<file>: the cycle and wait counters each time the engine starts fetching a
    // descriptor, and when done rises (hw/rtl_sim.py turns the differences into cycles per descriptor)
    reg [8*1024-1:0] desc_path;
    integer desc_log;
    initial desc_log = $value$plusargs("DESC_LOG=%s", desc_path) ? $fopen(desc_path, "w") : 0;
    reg fetching_q;
    wire fetching = (u_ip.u_accel.state == 4'd1);   // S_FETCH
    always @(posedge clk) begin
        fetching_q <= fetching;
        if (desc_log != 0 && fetching && !fetching_q) $fwrite(desc_log, "%0d %0d\n", cycles, waits);
        if (desc_log != 0 && done && !done_q) begin $fwrite(desc_log, "done %0d %0d\n", cycles, waits); $fflush(desc_log); end
    end
endmodule
`default_nettype wire
