// MULT18X18D.v: a behavioural model of the ECP5 18x18 multiplier block, for simulating the
// engine's ECP5_DSP build (hw/rtl_sim.py adds it when that define is set; synthesis uses the
// real primitive). It models what accel_mul8 uses and refuses the rest: the A and B input
// registers, the pipeline register and the output register, each clocked by CLK0, enabled by
// CE0 and reset synchronously by RST0 (or bypassed with "NONE"); signed or unsigned operands by
// SIGNEDA / SIGNEDB; the 36-bit product on P; B from the B pins (SOURCEB_MODE "B_SHIFT", the
// primitive's default and what Yosys's own multipliers use, with SOURCEB low; ecppack cannot
// pack "B_INPUT", which an earlier accel_mul8 set). Cascades (SOURCEA/B, the C input's SRI/SRO
// shifts) and the other clocks are not modelled: a configuration that needs them stops the
// simulation at time 0.
`default_nettype none

module MULT18X18D #(
    parameter REG_INPUTA_CLK = "NONE", parameter REG_INPUTA_CE = "CE0", parameter REG_INPUTA_RST = "RST0",
    parameter REG_INPUTB_CLK = "NONE", parameter REG_INPUTB_CE = "CE0", parameter REG_INPUTB_RST = "RST0",
    parameter REG_INPUTC_CLK = "NONE", parameter REG_INPUTC_CE = "CE0", parameter REG_INPUTC_RST = "RST0",
    parameter REG_PIPELINE_CLK = "NONE", parameter REG_PIPELINE_CE = "CE0", parameter REG_PIPELINE_RST = "RST0",
    parameter REG_OUTPUT_CLK = "NONE", parameter REG_OUTPUT_CE = "CE0", parameter REG_OUTPUT_RST = "RST0",
    parameter CLK0_DIV = "ENABLED", parameter CLK1_DIV = "ENABLED", parameter CLK2_DIV = "ENABLED",
    parameter CLK3_DIV = "ENABLED", parameter HIGHSPEED_CLK = "NONE", parameter GSR = "ENABLED",
    parameter CAS_MATCH_REG = "FALSE", parameter SOURCEB_MODE = "B_SHIFT", parameter MULT_BYPASS = "DISABLED",
    parameter RESETMODE = "SYNC"
) (
    input  wire A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15, A16, A17,
    input  wire B0, B1, B2, B3, B4, B5, B6, B7, B8, B9, B10, B11, B12, B13, B14, B15, B16, B17,
    input  wire C0, C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13, C14, C15, C16, C17,
    input  wire SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input  wire CLK0, CLK1, CLK2, CLK3, CE0, CE1, CE2, CE3, RST0, RST1, RST2, RST3,
    output wire P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11, P12, P13, P14, P15, P16, P17,
    output wire P18, P19, P20, P21, P22, P23, P24, P25, P26, P27, P28, P29, P30, P31, P32, P33, P34, P35
);
    function clk0(input [8*4-1:0] v); clk0 = (v == "CLK0"); endfunction   // the clock names are 4 characters
    localparam RA = clk0(REG_INPUTA_CLK), RB = clk0(REG_INPUTB_CLK);
    localparam RP = clk0(REG_PIPELINE_CLK), RO = clk0(REG_OUTPUT_CLK);
    initial begin
        if ((!RA && REG_INPUTA_CLK != "NONE") || (!RB && REG_INPUTB_CLK != "NONE") ||
            (!RP && REG_PIPELINE_CLK != "NONE") || (!RO && REG_OUTPUT_CLK != "NONE") ||
            REG_INPUTC_CLK != "NONE" || MULT_BYPASS != "DISABLED" || RESETMODE != "SYNC" ||
            SOURCEB_MODE != "B_SHIFT" ||
            (RA && REG_INPUTA_CE != "CE0") || (RB && REG_INPUTB_CE != "CE0") ||
            (RP && REG_PIPELINE_CE != "CE0") || (RO && REG_OUTPUT_CE != "CE0") ||
            (RA && REG_INPUTA_RST != "RST0") || (RB && REG_INPUTB_RST != "RST0") ||
            (RP && REG_PIPELINE_RST != "RST0") || (RO && REG_OUTPUT_RST != "RST0"))
            $fatal(1, "MULT18X18D model: only CLK0 / CE0 / RST0 registers with synchronous reset, B from its pins, are modelled");
    end

    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    reg [17:0] ar, br;
    reg sar, sbr;
    always @(posedge CLK0) begin
        if (RST0) begin ar <= 18'd0; br <= 18'd0; sar <= 1'b0; sbr <= 1'b0; end
        else if (CE0) begin ar <= a; br <= b; sar <= SIGNEDA; sbr <= SIGNEDB; end
    end
    wire [17:0] am = RA ? ar : a, bm = RB ? br : b;
    wire sa = RA ? sar : SIGNEDA, sb = RB ? sbr : SIGNEDB;
    // each operand extended by its sign (signed) or by zero, then a 36-bit product
    wire [35:0] ax = {{18{sa & am[17]}}, am}, bx = {{18{sb & bm[17]}}, bm};
    wire [35:0] prod = ax * bx;
    reg [35:0] pp, po;
    always @(posedge CLK0) begin
        if (RST0) begin pp <= 36'd0; po <= 36'd0; end
        else if (CE0) begin pp <= prod; po <= RP ? pp : prod; end
    end
    wire [35:0] p = RO ? po : (RP ? pp : prod);
    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18,
            P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = p;
endmodule
`default_nettype wire
