// accel_top.v: the synthesis top (hw/rtl_synth.py): the engine with its AXI4 master port as the
// top's ports (the SoC's interconnect or a DRAM controller sits there) and its reset
// synchronised; the cycle, wait and traffic counters stay inside.
`default_nettype none

module accel_top #(
    parameter integer TP = 2
) (
    input  wire        clk,
    input  wire        rst,
    input  wire        start,
    output wire        done,
    output wire [3:0]  error,
    output wire [31:0] m_araddr,
    output wire [7:0]  m_arlen,
    output wire        m_arvalid,
    input  wire        m_arready,
    input  wire [63:0] m_rdata,
    input  wire        m_rlast,
    input  wire        m_rvalid,
    output wire        m_rready,
    output wire [31:0] m_awaddr,
    output wire [7:0]  m_awlen,
    output wire        m_awvalid,
    input  wire        m_awready,
    output wire [63:0] m_wdata,
    output wire        m_wlast,
    output wire        m_wvalid,
    input  wire        m_wready,
    input  wire        m_bvalid,
    output wire        m_bready
);
    // the reset pin is asynchronous to clk: two flops (set at power-up) bring it into the clock
    // domain, so its fan-out across the engine is a timed register-to-register path
    reg [1:0] rst_sync;
    initial rst_sync = 2'b11;   // the FPGA's power-up value: in reset until two edges after the pin falls
    always @(posedge clk) rst_sync <= {rst_sync[0], rst};
    /* verilator lint_off PINCONNECTEMPTY */
    accel #(.AW(20), .TP(TP)) u_accel (
        .clk(clk), .rst(rst_sync[1]), .start(start), .done(done), .error(error), .cycles(), .waits(),
        .n_reads(), .n_writes(),
        .m_araddr(m_araddr), .m_arlen(m_arlen), .m_arvalid(m_arvalid), .m_arready(m_arready),
        .m_rdata(m_rdata), .m_rlast(m_rlast), .m_rvalid(m_rvalid), .m_rready(m_rready),
        .m_awaddr(m_awaddr), .m_awlen(m_awlen), .m_awvalid(m_awvalid), .m_awready(m_awready),
        .m_wdata(m_wdata), .m_wlast(m_wlast), .m_wvalid(m_wvalid), .m_wready(m_wready),
        .m_bvalid(m_bvalid), .m_bready(m_bready));
    /* verilator lint_on PINCONNECTEMPTY */
endmodule
`default_nettype wire
