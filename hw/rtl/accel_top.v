// accel_top.v: the synthesis top (hw/rtl_synth.py): the engine with its external memory ports
// as the device's pins (a memory controller would sit there) and its reset synchronised; the
// cycle counter stays inside.
`default_nettype none

module accel_top #(
    parameter integer TP = 2
) (
    input  wire        clk,
    input  wire        rst,
    input  wire        start,
    output wire        done,
    output wire [3:0]  error,
    output wire [20*TP-1:0] rd_addr,
    output wire [TP-1:0]    rd_en,
    input  wire [64*TP-1:0] rd_data,
    output wire [19:0] wr_addr,
    output wire        wr_en,
    output wire [63:0] wr_data
);
    // the reset pin is asynchronous to clk: two flops (set at power-up) bring it into the clock
    // domain, so its fan-out across the engine is a timed register-to-register path
    reg [1:0] rst_sync;
    initial rst_sync = 2'b11;   // the FPGA's power-up value: in reset until two edges after the pin falls
    always @(posedge clk) rst_sync <= {rst_sync[0], rst};
    wire [63:0] cycles_unused;
    accel #(.AW(20), .TP(TP)) u_accel (
        .clk(clk), .rst(rst_sync[1]), .start(start), .done(done), .error(error), .cycles(cycles_unused),
        .rd_addr(rd_addr), .rd_en(rd_en), .rd_data(rd_data),
        .wr_addr(wr_addr), .wr_en(wr_en), .wr_data(wr_data));
endmodule
`default_nettype wire
