// accel_sim.v: the engine with a behavioural external memory, for simulation (hw/rtl_sim.py).
//
// The memory has TP read ports and one write port of one 64-bit word per cycle each, exactly
// the interface accel.v is specified for (hw/ACCEL.md); reads return the word the next cycle.
// Plusargs: +MEM_IN=<file> ($readmemh image from hw/compiler.py), +MEM_OUT=<file> and
// +DUMP_WORDS=<n>: when `done` rises, words 0..n-1 are written with $writememh.
`default_nettype none

module accel_sim #(
    parameter integer AW = 20,
    parameter integer TP = 2,
    parameter integer MEM_WORDS = 1 << 20
) (
    // the ports are all the testbench (hw/rtl/tb_accel.py) touches: only they are visible to it
    // (hw/rtl_sim.py builds without --public-flat-rw, which made every internal signal public and
    // the build several times larger)
    input  wire        clk    /* verilator public_flat_rw */,
    input  wire        rst    /* verilator public_flat_rw */,
    input  wire        start  /* verilator public_flat_rw */,
    output wire        done   /* verilator public_flat_rw */,
    output wire [3:0]  error  /* verilator public_flat_rw */,
    output wire [63:0] cycles /* verilator public_flat_rw */,
    output reg  [63:0] reads  /* verilator public_flat_rw */,
    output reg  [63:0] writes /* verilator public_flat_rw */
);
    wire [TP*AW-1:0] rd_addr;
    wire [AW-1:0] wr_addr;
    wire [TP-1:0] rd_en;
    wire wr_en;
    wire [63:0] wr_data;
    reg  [64*TP-1:0] rd_data;
    reg  [63:0] mem [0:MEM_WORDS-1];

    accel #(.AW(AW), .TP(TP)) u_accel (
        .clk(clk), .rst(rst), .start(start), .done(done), .error(error), .cycles(cycles),
        .rd_addr(rd_addr), .rd_en(rd_en), .rd_data(rd_data),
        .wr_addr(wr_addr), .wr_en(wr_en), .wr_data(wr_data));

    integer t;
    function [63:0] ones(input [TP-1:0] v);   // reads requested this cycle
        integer k;
        begin
            ones = 64'd0;
            for (k = 0; k < TP; k = k + 1) ones = ones + {63'd0, v[k]};
        end
    endfunction
    wire [63:0] nrd = ones(rd_en);
    always @(posedge clk) begin
        for (t = 0; t < TP; t = t + 1)
            if (rd_en[t]) rd_data[64*t +: 64] <= mem[rd_addr[AW*t +: AW]];
        if (wr_en) mem[wr_addr] <= wr_data;
`ifdef DEBUG_WATCH
        if (wr_en && wr_addr == `DEBUG_WATCH) $display("WATCH write %h at cycle %0d state %0d pc %0d", wr_data, cycles, u_accel.state, u_accel.pc);
`endif
        if (rst) begin reads <= 64'd0; writes <= 64'd0; end
        else begin reads <= reads + nrd; writes <= writes + {63'd0, wr_en}; end
    end

    reg [8*1024-1:0] mem_in, mem_out;
    integer dump_words;
    initial begin
        if ($value$plusargs("MEM_IN=%s", mem_in)) $readmemh(mem_in, mem);
        if (!$value$plusargs("DUMP_WORDS=%d", dump_words)) dump_words = MEM_WORDS;
    end

    reg done_q;
    always @(posedge clk) begin
        done_q <= done;
        if (done && !done_q && $value$plusargs("MEM_OUT=%s", mem_out)) $writememh(mem_out, mem, 0, dump_words - 1);
    end

    // +DESC_LOG=<file>: the cycle counter each time the engine starts fetching a descriptor, and
    // when done rises (hw/rtl_sim.py turns the differences into cycles per descriptor)
    reg [8*1024-1:0] desc_path;
    integer desc_log;
    initial desc_log = $value$plusargs("DESC_LOG=%s", desc_path) ? $fopen(desc_path, "w") : 0;
    reg fetching_q;
    wire fetching = (u_accel.state == 3'd1);   // S_FETCH
    always @(posedge clk) begin
        fetching_q <= fetching;
        if (desc_log != 0 && fetching && !fetching_q) $fwrite(desc_log, "%0d\n", cycles);
        if (desc_log != 0 && done && !done_q) begin $fwrite(desc_log, "done %0d\n", cycles); $fflush(desc_log); end
    end
endmodule
`default_nettype wire
