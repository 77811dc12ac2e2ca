// accel_skid.v: a register slice for one valid/ready channel (hw/ACCEL.md, "Memory"). Both
// sides see only registers: the output's valid and data come from flip-flops, and the input's
// ready is a flip-flop too, so neither side's handshake logic reaches the other's (accel_ip puts
// one on each of the AXI4 master's AR, AW and W channels, where the bus's ready arriving from
// outside the IP was the critical path). Full throughput: a second register takes the beat
// that arrives in the cycle the output stalls, and the input's ready falls only while it is
// full. Each beat leaves one cycle after it was taken, in order; valid and data hold until
// taken, as AXI requires.
`default_nettype none

module accel_skid #(
    parameter integer W = 8
) (
    input  wire         clk,
    input  wire         rst,
    input  wire [W-1:0] in_data,
    input  wire         in_valid,
    output wire         in_ready,
    output reg  [W-1:0] out_data,
    output reg          out_valid,
    input  wire         out_ready
);
    reg [W-1:0] sk_data;
    reg sk_valid;
    assign in_ready = !sk_valid;
    wire move = out_ready || !out_valid;   // the output register is free (or frees) this cycle
    always @(posedge clk) begin
        if (move) out_data <= sk_valid ? sk_data : in_data;
        if (!move && in_valid && !sk_valid) sk_data <= in_data;
        if (rst) begin
            out_valid <= 1'b0; sk_valid <= 1'b0;
        end else if (move) begin
            out_valid <= sk_valid || in_valid; sk_valid <= 1'b0;
        end else if (in_valid && !sk_valid) sk_valid <= 1'b1;
    end
endmodule
`default_nettype wire
