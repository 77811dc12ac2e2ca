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
    input  wire        clk,
    input  wire        rst,
    input  wire        start,
    output wire        done,
    output wire [3:0]  error,
    output wire [63:0] cycles,
    output reg  [63:0] reads,
    output reg  [63:0] writes
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
    reg [63:0] nrd;
    always @(posedge clk) begin
        nrd = 64'd0;
        for (t = 0; t < TP; t = t + 1) begin
            if (rd_en[t]) rd_data[64*t +: 64] <= mem[rd_addr[AW*t +: AW]];
            nrd = nrd + {63'd0, rd_en[t]};
        end
        if (wr_en) mem[wr_addr] <= wr_data;
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
endmodule
`default_nettype wire
