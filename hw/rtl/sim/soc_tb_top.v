// soc_tb_top.v: the simulated SoC (hw/soc.py writes accel_soc_sim.v) with its ports made visible
// to the cocotb testbench (hw/rtl/tb_soc.py); the model is built without --public-flat-rw.
`default_nettype none
module soc_tb_top (
    input  wire       sys_clk             /* verilator public_flat_rw */,
    input  wire       sys_rst             /* verilator public_flat_rw */,
    output wire       irq                 /* verilator public_flat_rw */,
    input  wire [7:0] serial_sink_data    /* verilator public_flat_rw */,
    output wire       serial_sink_ready   /* verilator public_flat_rw */,
    input  wire       serial_sink_valid   /* verilator public_flat_rw */,
    output wire [7:0] serial_source_data  /* verilator public_flat_rw */,
    input  wire       serial_source_ready /* verilator public_flat_rw */,
    output wire       serial_source_valid /* verilator public_flat_rw */
);
    accel_soc_sim u_soc (
        .sys_clk(sys_clk), .sys_rst(sys_rst), .irq(irq),
        .serial_sink_data(serial_sink_data), .serial_sink_ready(serial_sink_ready),
        .serial_sink_valid(serial_sink_valid), .serial_source_data(serial_source_data),
        .serial_source_ready(serial_source_ready), .serial_source_valid(serial_source_valid));
endmodule
`default_nettype wire
