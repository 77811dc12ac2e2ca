// soc_tb_top.v: the simulated SoC (hw/soc.py writes accel_soc_sim.v) and the host's end of its
// byte link, for the cocotb testbench (hw/rtl/tb_soc.py).
//
// The testbench does not move the UART's bytes one cycle at a time from Python: it writes what
// the host sends to the file +SOC_TX (one hex byte a line), sets tx_len and raises tx_load for a
// cycle; this module offers the bytes to the SoC in order, a byte a cycle at most, as the SoC's
// ready allows (tx_done when all are taken). Every byte the SoC sends is kept in order (up to
// RXD; the SoC waits while the buffer is full); rx_have rises when at least rx_want are kept,
// and rx_dump writes them to +SOC_RX and empties the buffer. The bytes the SoC sees are the
// host driver's (hw/board.py), in its order; only their transport into the simulation differs.
`default_nettype none
module soc_tb_top #(
    parameter integer TXD = 65536,
    parameter integer RXD = 65536
) (
    input  wire        sys_clk /* verilator public_flat_rw */,
    input  wire        sys_rst /* verilator public_flat_rw */,
    output wire        irq     /* verilator public_flat_rw */,
    input  wire        tx_load /* verilator public_flat_rw */,
    input  wire [31:0] tx_len  /* verilator public_flat_rw */,
    output wire        tx_done /* verilator public_flat_rw */,
    input  wire [31:0] rx_want /* verilator public_flat_rw */,
    output wire        rx_have /* verilator public_flat_rw */,
    output wire [31:0] rx_count_o /* verilator public_flat_rw */,
    input  wire        rx_dump /* verilator public_flat_rw */
);
    reg [8*1024-1:0] tx_file, rx_file;
    initial begin
        if (!$value$plusargs("SOC_TX=%s", tx_file)) tx_file = "soc_tx.hex";
        if (!$value$plusargs("SOC_RX=%s", rx_file)) rx_file = "soc_rx.hex";
    end
    reg [7:0] tx_mem [0:TXD-1];
    reg [7:0] rx_mem [0:RXD-1];
    reg [31:0] tx_pos, rx_count;
    wire [7:0] sink_data, source_data;
    wire sink_ready, source_valid;
    wire sink_valid = !tx_load && tx_pos < tx_len;
    wire source_ready = !rx_dump && rx_count < RXD;
    assign sink_data = tx_mem[tx_pos[15:0]];
    assign tx_done = !tx_load && tx_pos >= tx_len;
    assign rx_have = rx_count >= rx_want;
    assign rx_count_o = rx_count;
    always @(posedge sys_clk) begin
        if (tx_load) begin
            $readmemh(tx_file, tx_mem, 0, tx_len - 1);
            tx_pos <= 32'd0;
        end else if (sink_valid && sink_ready) tx_pos <= tx_pos + 32'd1;
        if (rx_dump) begin
            if (rx_count != 0) $writememh(rx_file, rx_mem, 0, rx_count - 1);
            rx_count <= 32'd0;
        end else if (source_valid && source_ready) begin
            rx_mem[rx_count[15:0]] <= source_data;
            rx_count <= rx_count + 32'd1;
        end
        if (sys_rst) begin tx_pos <= 32'd0; rx_count <= 32'd0; end
    end
    accel_soc_sim u_soc (
        .sys_clk(sys_clk), .sys_rst(sys_rst), .irq(irq),
        .serial_sink_data(sink_data), .serial_sink_ready(sink_ready), .serial_sink_valid(sink_valid),
        .serial_source_data(source_data), .serial_source_ready(source_ready), .serial_source_valid(source_valid));
endmodule
`default_nettype wire
