// accel_top.v: the synthesis top (hw/rtl_synth.py): the accelerator IP (accel_ip.v) with its
// AXI4-Lite register port, its interrupt and its AXI4 master port as the top's ports (a SoC's
// interconnect sits there: hw/rtl_synth.py places it out of context) and its reset synchronised.
`default_nettype none
`include "accel_params.vh"
`include "accel_axi.vh"

module accel_top #(
    parameter integer TP = `ACCEL_TP
) (
    input  wire        clk,
    input  wire        rst,
    output wire        irq,
    `ACCEL_AXIL_SLAVE_PORTS,
    `ACCEL_AXI_MASTER_PORTS
);
    // the reset pin is asynchronous to clk: two flops (set at power-up) bring it into the clock
    // domain, so its fan-out across the engine is a timed register-to-register path
    reg [1:0] rst_sync;
    initial rst_sync = 2'b11;   // the FPGA's power-up value: in reset until two edges after the pin falls
    always @(posedge clk) rst_sync <= {rst_sync[0], rst};
    accel_ip #(.TP(TP)) u_ip (
        .clk(clk), .rst(rst_sync[1]), .irq(irq),
        `ACCEL_AXIL_SLAVE_CONNECT,
        `ACCEL_AXI_MASTER_CONNECT);
endmodule
`default_nettype wire
