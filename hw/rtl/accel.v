// accel.v: int8 layer engine for the integer LocalNet of hw/SPEC.md.
//
// It executes a list of descriptors from external memory (programmer's model: hw/ACCEL.md):
// conv3d_s8 (odd cubic kernels, input optionally nearest-upsampled x2), add_s8 (exponent
// alignment by left shifts, operand A optionally nearest- or trilinear-upsampled x2, operand B
// optionally nearest-upsampled), maxpool2_s8; every result through one requantiser (round
// half to even, saturation, ReLU as the clamp). It knows operators, not LocalNet.
//
// External memory: 64-bit words, one read port and one write port, each one word per cycle
// (the read returns the word the cycle after rd_en); nothing else reaches memory.
// Datapath: LANES x LANES int8 MAC array (one weight block of 8 output x 8 input channels
// against one activation word per cycle), int32 accumulators (the compiler proves every
// bound), a 3-stage pipeline after the read issue: partial products, accumulate, requantise
// and write.
//
// Build options (fault injection, tests/test_rtl.py): FAULT_ROUND_HALF_UP rounds ties up,
// FAULT_NO_SATURATION wraps instead of saturating.
`default_nettype none

module accel #(
    parameter integer AW = 20,          // word address bits
    parameter integer WBUF_DEPTH = 512, // weight blocks per output-channel group
    parameter integer WB_AW = 9
) (
    input  wire          clk,
    input  wire          rst,
    input  wire          start,
    output reg           done,
    output reg  [63:0]   cycles,
    output reg  [AW-1:0] rd_addr,   // combinational: the word arrives on rd_data the next cycle
    output reg           rd_en,
    input  wire [63:0]   rd_data,
    output wire [AW-1:0] wr_addr,   // combinational: written at the end of this cycle
    output wire          wr_en,
    output wire [63:0]   wr_data
);
    localparam integer L = 8;
    localparam [2:0] S_IDLE = 3'd0, S_FETCH = 3'd1, S_DECODE = 3'd2, S_LOAD = 3'd3, S_RUN = 3'd4, S_DONE = 3'd5;
    localparam [7:0] OP_END = 8'd0, OP_CONV = 8'd1, OP_ADD = 8'd2, OP_MAXPOOL = 8'd3;
    localparam [1:0] K_CONV = 2'd0, K_SCALE = 2'd1, K_MAX = 2'd2;

    reg [2:0] state;
    reg [31:0] pc;
    reg [3:0] fi;
    reg [63:0] dw [0:7];

    // ---------------------------------------------------------------- descriptor fields
    wire [7:0]  op       = dw[0][7:0];
    wire [7:0]  flags    = dw[0][15:8];
    wire [9:0]  gD       = dw[0][41:32];
    wire [9:0]  gH       = dw[0][51:42];
    wire [9:0]  gW       = dw[0][61:52];
    wire [31:0] a_base   = dw[1][31:0];
    wire [31:0] a_stride = dw[1][63:32];
    wire [31:0] a_off    = dw[2][31:0];
    wire [31:0] b_base   = dw[2][63:32];
    wire [31:0] b_stride = dw[3][31:0];
    wire [31:0] b_off    = dw[3][63:32];
    wire [31:0] o_base   = dw[4][31:0];
    wire [31:0] o_stride = dw[4][63:32];
    wire [31:0] n_groups = dw[5][31:0];
    wire [31:0] n_ocg    = dw[5][63:32];
    wire [31:0] ksize    = dw[6][31:0];
    wire [31:0] wbase    = dw[6][63:32];
    wire [4:0]  sa       = dw[7][4:0];
    wire [4:0]  sb       = dw[7][12:8];
    wire signed [7:0] s_out = dw[7][23:16];
    wire relu     = flags[0];
    wire a_near   = flags[1];
    wire a_tri    = flags[2];
    wire b_near   = flags[3];
    wire has_b    = flags[4];
    wire is_conv  = (op == OP_CONV);
    wire is_pool  = (op == OP_MAXPOOL);
    wire [9:0] hD = {1'b0, gD[9:1]}, hH = {1'b0, gH[9:1]}, hW = {1'b0, gW[9:1]};
    wire [3:0] pad = ksize[4:1];

    // ---------------------------------------------------------------- weight buffer
    reg [31:0] hdr  [0:WBUF_DEPTH-1];
    reg signed [31:0] bias [0:L-1];
    reg [WB_AW:0] n_entries;
    reg [31:0] lptr, li, lnum;
    reg [WB_AW:0] lblk;
    reg [3:0] lsub;
    reg l_rcv;
    reg [31:0] ocg;

    // ---------------------------------------------------------------- iterator
    reg [9:0] vd, vh, vw;
    reg [31:0] eslot;    // conv: weight block; elementwise: slot within (voxel, group)
    reg [31:0] grp;      // elementwise: channel group
    reg iter_done;
    reg [1:0] drain;

    wire [31:0] n_slots = is_conv ? {22'd0, n_entries} : is_pool ? 32'd8 :
                          ((a_tri ? 32'd8 : 32'd1) + (has_b ? 32'd1 : 32'd0));
    wire last_slot = (eslot == n_slots - 1);
    wire last_grp  = is_conv ? 1'b1 : (grp == n_groups - 1);
    wire last_vox  = (vd == gD - 1) && (vh == gH - 1) && (vw == gW - 1);

    // conv tap of the current block
    wire [31:0] h_cur = hdr[eslot[WB_AW-1:0]];
    wire signed [11:0] cd = $signed({2'b0, vd}) + $signed({4'b0, h_cur[7:0]}) - $signed({8'b0, pad});
    wire signed [11:0] ch = $signed({2'b0, vh}) + $signed({4'b0, h_cur[15:8]}) - $signed({8'b0, pad});
    wire signed [11:0] cw = $signed({2'b0, vw}) + $signed({4'b0, h_cur[23:16]}) - $signed({8'b0, pad});
    wire conv_in = (cd >= 0) && (cd < $signed({2'b0, gD})) && (ch >= 0) && (ch < $signed({2'b0, gH})) &&
                   (cw >= 0) && (cw < $signed({2'b0, gW}));

    // trilinear corners: per axis the coarse index and weight of corner bit `hi`
    function [11:0] tri_idx(input [9:0] o, input [9:0] n, input hi);  // {weight[1:0], index[9:0]}
        reg [9:0] k;
        begin
            k = o >> 1;
            if (!o[0]) tri_idx = hi ? {2'd3, k} : {2'd1, (k == 0) ? 10'd0 : k - 10'd1};
            else       tri_idx = hi ? {2'd1, (k == n - 1) ? k : k + 10'd1} : {2'd3, k};
        end
    endfunction
    wire [11:0] td = tri_idx(vd, hD, eslot[2]);
    wire [11:0] th = tri_idx(vh, hH, eslot[1]);
    wire [11:0] tw = tri_idx(vw, hW, eslot[0]);
    wire [4:0] tcoef = {3'd0, td[11:10]} * {3'd0, th[11:10]} * {3'd0, tw[11:10]};

    // slot: coordinates in the operand's grid, its grid, base, stride, group
    reg [9:0] sd, sh, sw, sgH, sgW;
    reg [31:0] s_base, s_stride, s_grp;
    reg s_rd;
    reg [1:0] s_kind;
    reg [4:0] s_coef, s_shift;
    always @(*) begin
        sd = vd; sh = vh; sw = vw; sgH = gH; sgW = gW;
        s_base = a_base; s_stride = a_stride; s_grp = a_off + grp;
        s_rd = 1'b1; s_kind = K_SCALE; s_coef = 5'd1; s_shift = sa;
        if (is_conv) begin
            s_kind = K_CONV; s_rd = conv_in; s_grp = a_off + {8'd0, h_cur[31:24]};
            sd = cd[9:0]; sh = ch[9:0]; sw = cw[9:0];
            if (a_near) begin sd = cd[10:1]; sh = ch[10:1]; sw = cw[10:1]; sgH = hH; sgW = hW; end
        end else if (is_pool) begin
            s_kind = K_MAX; s_shift = 5'd0;
            sd = {vd[8:0], eslot[2]}; sh = {vh[8:0], eslot[1]}; sw = {vw[8:0], eslot[0]};
            sgH = {gH[8:0], 1'b0}; sgW = {gW[8:0], 1'b0};
        end else if (has_b && last_slot) begin
            s_base = b_base; s_stride = b_stride; s_grp = b_off + grp; s_shift = sb;
            if (b_near) begin sd = vd >> 1; sh = vh >> 1; sw = vw >> 1; sgH = hH; sgW = hW; end
        end else if (a_tri) begin
            sd = td[9:0]; sh = th[9:0]; sw = tw[9:0]; sgH = hH; sgW = hW; s_coef = tcoef;
        end else if (a_near) begin
            sd = vd >> 1; sh = vh >> 1; sw = vw >> 1; sgH = hH; sgW = hW;
        end
    end
    // addresses: voxel index (< 2^AW) x words per voxel (< 256) + group; narrow multipliers
    wire [AW-1:0] s_vox  = ({{(AW-10){1'b0}}, sd} * {{(AW-10){1'b0}}, sgH} + {{(AW-10){1'b0}}, sh}) * {{(AW-10){1'b0}}, sgW}
                           + {{(AW-10){1'b0}}, sw};
    wire [AW-1:0] s_addr = s_base[AW-1:0] + s_vox * {{(AW-8){1'b0}}, s_stride[7:0]} + s_grp[AW-1:0];
    wire [AW-1:0] o_vox  = ({{(AW-10){1'b0}}, vd} * {{(AW-10){1'b0}}, gH} + {{(AW-10){1'b0}}, vh}) * {{(AW-10){1'b0}}, gW}
                           + {{(AW-10){1'b0}}, vw};
    wire [AW-1:0] o_addr = o_base[AW-1:0] + o_vox * {{(AW-8){1'b0}}, o_stride[7:0]} + (is_conv ? ocg[AW-1:0] : grp[AW-1:0]);

    wire issue = (state == S_RUN) && !iter_done;

    // ---------------------------------------------------------------- pipeline
    reg p1_v, p1_rd, p1_first, p1_last;
    reg [1:0] p1_kind;
    reg [4:0] p1_coef, p1_shift;
    reg [AW-1:0] p1_oaddr;
    wire [64*L-1:0] wq;      // the weight block of the slot in P1, lane j = wq[64j +: 64]
    reg p2_v, p2_first, p2_last;
    reg [1:0] p2_kind;
    reg [AW-1:0] p2_oaddr;
    reg signed [31:0] p2_part [0:L-1];
    reg signed [31:0] acc [0:L-1];
    reg signed [31:0] fin [0:L-1];
    reg fin_v;
    reg [AW-1:0] fin_addr;

    // partial results of the slot in P1 (the read data arrives now)
    function signed [31:0] dot8(input [63:0] w, input [63:0] x);   // 8 int8 products, |sum| < 2^17
        integer i;
        reg signed [31:0] acc8;
        begin
            acc8 = 32'sd0;
            for (i = 0; i < L; i = i + 1) acc8 = acc8 + $signed(w[8*i +: 8]) * $signed(x[8*i +: 8]);
            dot8 = acc8;
        end
    endfunction
    wire [63:0] xin = p1_rd ? rd_data : 64'd0;   // a tap outside the volume reads nothing: zero
    wire signed [31:0] part [0:L-1];
    genvar gp;
    generate for (gp = 0; gp < L; gp = gp + 1) begin : g_part
        wire signed [31:0] x32 = $signed(rd_data[8*gp +: 8]);
        wire signed [31:0] c32 = $signed({27'd0, p1_coef});
        wire signed [31:0] p_conv = dot8(wq[64*gp +: 64], xin);
        wire signed [31:0] p_scale = (x32 * c32) <<< p1_shift;
        assign part[gp] = (p1_kind == K_CONV) ? p_conv : (p1_kind == K_SCALE) ? p_scale : x32;
    end endgenerate

    // requantise: round half to even on a right shift, exact left shift (<= 15), one clamp
    function [7:0] requant(input signed [31:0] a, input signed [7:0] s, input r);
        reg signed [47:0] v;
        reg signed [31:0] fl;
        reg [31:0] rem, half;
        reg up;
        reg signed [47:0] lo;
        begin
            if (s <= 0) begin
                v = $signed({{16{a[31]}}, a}) <<< (-s);
            end else begin
                fl = a >>> s;
                rem = a & ((32'd1 << s) - 32'd1);
                half = 32'd1 << (s - 1);
`ifdef FAULT_ROUND_HALF_UP
                up = (rem >= half);
`else
                up = (rem > half) || ((rem == half) && fl[0]);
`endif
                v = $signed({{16{fl[31]}}, fl}) + $signed({47'd0, up});
            end
            lo = r ? 48'sd0 : -48'sd128;
`ifdef FAULT_NO_SATURATION
            requant = (r && v < 0) ? 8'd0 : v[7:0];
`else
            requant = (v > 48'sd127) ? 8'd127 : (v < lo) ? lo[7:0] : v[7:0];
`endif
        end
    endfunction

    // ---------------------------------------------------------------- memory ports
    always @(*) begin
        rd_en = 1'b0; rd_addr = {AW{1'b0}};
        if (state == S_FETCH && fi < 4'd8) begin rd_en = 1'b1; rd_addr = {pc[AW-4:0], fi[2:0]}; end
        if (state == S_LOAD && li < lnum) begin rd_en = 1'b1; rd_addr = lptr[AW-1:0] + li[AW-1:0]; end
        if (issue && s_rd) begin rd_en = 1'b1; rd_addr = s_addr; end
    end
    assign wr_en = fin_v;
    assign wr_addr = fin_addr;
    genvar gj;
    generate for (gj = 0; gj < L; gj = gj + 1) begin : g_wr
        assign wr_data[8*gj +: 8] = requant(fin[gj], s_out, relu);
    end endgenerate

    // ---------------------------------------------------------------- control
    integer j;
    always @(posedge clk) begin
        if (rst) begin
            state <= S_IDLE; done <= 1'b0; cycles <= 64'd0;
            p1_v <= 1'b0; p2_v <= 1'b0; fin_v <= 1'b0;
        end else begin
            if (state != S_IDLE && state != S_DONE) cycles <= cycles + 64'd1;
            case (state)
            S_IDLE: if (start) begin
                state <= S_FETCH; pc <= 32'd0; fi <= 4'd0; done <= 1'b0; cycles <= 64'd1;
            end
            S_FETCH: begin
                if (fi >= 4'd1) dw[fi - 4'd1] <= rd_data;
                fi <= fi + 4'd1;
                if (fi == 4'd8) state <= S_DECODE;
            end
            S_DECODE: begin
                if (op == OP_END) begin
                    state <= S_DONE; done <= 1'b1;
                end else if (is_conv) begin
                    state <= S_LOAD; ocg <= 32'd0; lptr <= wbase; li <= 32'd0; lnum <= 32'd6; l_rcv <= 1'b0;
                    lblk <= 0; lsub <= 4'd0;
                end else begin
                    state <= S_RUN; vd <= 0; vh <= 0; vw <= 0; eslot <= 0; grp <= 0; iter_done <= 1'b0; drain <= 2'd0;
                end
            end
            S_LOAD: begin
                // read lptr + li; the word read in the previous cycle (index li - 1) arrives now
                li <= li + 32'd1;
                if (l_rcv) begin
                    if (li == 32'd1) begin
                        n_entries <= rd_data[WB_AW:0];
                        lnum <= 32'd5 + 32'd9 * {22'd0, rd_data[9:0]};
                    end else if (li <= 32'd5) begin
                        bias[2 * (li - 2)] <= $signed(rd_data[31:0]);
                        bias[2 * (li - 2) + 1] <= $signed(rd_data[63:32]);
                    end else begin
                        if (lsub == 4'd0) hdr[lblk[WB_AW-1:0]] <= rd_data[31:0];
                        if (lsub == 4'd8) begin lsub <= 4'd0; lblk <= lblk + 1'b1; end
                        else lsub <= lsub + 4'd1;
                    end
                    if (li == lnum) begin  // the last word has arrived
                        state <= S_RUN; lptr <= lptr + lnum;
                        vd <= 0; vh <= 0; vw <= 0; eslot <= 0; grp <= 0; iter_done <= 1'b0; drain <= 2'd0;
                    end
                end
                l_rcv <= 1'b1;
            end
            S_RUN: begin
                if (!iter_done) begin
                    if (!last_slot) eslot <= eslot + 32'd1;
                    else begin
                        eslot <= 32'd0;
                        if (!last_grp) grp <= grp + 32'd1;
                        else begin
                            grp <= 32'd0;
                            if (vw != gW - 1) vw <= vw + 10'd1;
                            else begin
                                vw <= 10'd0;
                                if (vh != gH - 1) vh <= vh + 10'd1;
                                else begin vh <= 10'd0; vd <= vd + 10'd1; end
                            end
                            if (last_vox) iter_done <= 1'b1;
                        end
                    end
                end else begin
                    drain <= drain + 2'd1;
                    if (drain == 2'd2) begin
                        if (is_conv && ocg + 32'd1 < n_ocg) begin
                            state <= S_LOAD; ocg <= ocg + 32'd1; li <= 32'd0; lnum <= 32'd6; l_rcv <= 1'b0;
                            lblk <= 0; lsub <= 4'd0;
                        end else begin
                            state <= S_FETCH; pc <= pc + 32'd1; fi <= 4'd0;
                        end
                    end
                end
            end
            default: ;
            endcase

            // P1: slot registered, weight block read
            p1_v <= issue; p1_rd <= issue && s_rd; p1_first <= (eslot == 0); p1_last <= last_slot;
            p1_kind <= s_kind; p1_coef <= s_coef; p1_shift <= s_shift; p1_oaddr <= o_addr;
            // P2: partial results registered
            p2_v <= p1_v; p2_first <= p1_first; p2_last <= p1_last; p2_kind <= p1_kind; p2_oaddr <= p1_oaddr;
            for (j = 0; j < L; j = j + 1) p2_part[j] <= part[j];
            // P3: accumulate; the last slot of an output word hands it to the requantiser
            fin_v <= 1'b0;
            if (p2_v) begin
                for (j = 0; j < L; j = j + 1) begin
                    if (p2_kind == K_MAX) begin
                        acc[j] <= (p2_first || p2_part[j] > acc[j]) ? p2_part[j] : acc[j];
                        fin[j] <= (p2_first || p2_part[j] > acc[j]) ? p2_part[j] : acc[j];
                    end else begin
                        acc[j] <= (p2_first ? (p2_kind == K_CONV ? bias[j] : 32'sd0) : acc[j]) + p2_part[j];
                        fin[j] <= (p2_first ? (p2_kind == K_CONV ? bias[j] : 32'sd0) : acc[j]) + p2_part[j];
                    end
                end
                fin_v <= p2_last; fin_addr <= p2_oaddr;
            end
            // P4 (combinational, memory ports above): requantise and write
        end
    end

    // weight banks, one per output lane: written while loading, read for the slot being issued
    // (the block is in wq during P1)
    wire bank_we = (state == S_LOAD) && l_rcv && (li > 32'd5);
    generate for (gj = 0; gj < L; gj = gj + 1) begin : g_bank
        reg [63:0] mem_b [0:WBUF_DEPTH-1];
        reg [63:0] q;
        always @(posedge clk) begin
            if (bank_we && lsub == gj + 1) mem_b[lblk[WB_AW-1:0]] <= rd_data;
            q <= mem_b[eslot[WB_AW-1:0]];
        end
        assign wq[64*gj +: 64] = q;
    end endgenerate
endmodule
`default_nettype wire
