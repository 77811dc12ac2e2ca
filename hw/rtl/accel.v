// accel.v: int8 layer engine for the integer LocalNet of hw/SPEC.md.
//
// It executes a list of descriptors from external memory (programmer's model: hw/ACCEL.md):
// conv3d_s8 (odd cubic kernels, input optionally nearest-upsampled x2), add_s8 (exponent
// alignment by left shifts, operand A optionally nearest- or trilinear-upsampled x2, operand B
// optionally nearest-upsampled), maxpool2_s8, and a conv3d_s8 with an add_s8 fused into its
// output stage; every result through a requantiser per output lane (its own shift: per-channel
// weight scales; round half to even, saturation, ReLU as the clamp). It knows operators, not
// LocalNet.
//
// External memory: 64-bit words, TP read ports and one write port, each one word per cycle;
// requests leave registered, a read's word is on rd_data the cycle after the memory sees the
// request; nothing else reaches memory.
// Datapath: TP x LANES x LANES int8 MACs (TP weight blocks of 8 output x 8 input channels, each
// against its own activation word, per cycle: the parallelism parameter), int32 accumulators
// (the compiler proves every bound). Pipeline per slot (hw/ACCEL.md): I0-I1 slot and block
// headers, A0 operand coordinates, A1-A2 voxel index, A3-A4 address (registered request), M
// memory, P0 operands registered, P1 products, P2a-P2c lane sums, P3 accumulate, P4-P5
// requantise (registered write); a fused add's F1-F2, its requantiser's P4-P5, the write.
//
// Fault injection (tests/test_rtl.py; hw/ACCEL.md lists them): the f_ switches of
// accel_faults.vh, 0 except in a FAULT_SELECT simulation build, break the requantiser, address
// generation, tap offsets, bounds, the up-sampling reads, the loads, the control, the max-pool and
// the fused add, each at the line marked "fault".
`default_nettype none

`include "accel_params.vh"   // the defaults: hw/engine.py (ENGINE), one description for RTL and Python
`include "accel_axi.vh"

module accel #(
    parameter integer AW = `ACCEL_ADDR_BITS,          // word address bits
    parameter integer TP = `ACCEL_TP,                 // weight blocks per slot (1 or 2): TP x 64 MACs, TP read ports
    parameter integer WBUF_DEPTH = `ACCEL_WBUF_DEPTH, // weight blocks per output-channel group (a power of two)
    parameter integer BW = `ACCEL_WINDOW_BITS         // log2 of the operand window buffer's words (accel_mem.v)
) (
    input  wire          clk,
    input  wire          rst,
    input  wire          start,
    input  wire [31:0]   desc_base, // word address of the first descriptor (read at start)
    input  wire [31:0]   mem_limit, // words of the memory plan: nothing at or above it is read or written
    output reg           done,
    output reg  [3:0]    error,     // with done: why the run stopped (E_*; 0: the END descriptor)
    output reg  [63:0]   cycles,
    output reg  [63:0]   waits,     // cycles spent waiting for memory (hw/ACCEL.md, cycle model)
    output wire [63:0]   n_reads,   // read and write beats on the bus since reset
    output wire [63:0]   n_writes,
    output reg  [63:0]   macs,      // products the MAC array computed (64 per block read), this run
    // AXI4 master: one ID, INCR bursts of 8-byte beats, byte addresses
    `ACCEL_AXI_MASTER_PORTS
);
`include "accel_faults.vh"
    localparam integer L = `ACCEL_LANES;
    localparam integer WB_AW = $clog2(WBUF_DEPTH);   // the weight buffer's address bits
    localparam integer TPL = (TP == 2) ? 1 : 0;    // log2(TP)
    localparam integer XP = (TP > 1) ? TP - 1 : 1; // ports beyond 0 (vectors need a width >= 1)
    // the memory unit's side (accel_mem.v): the run's reads and writes, the descriptor and
    // weight stream (rd0: its word when sq_valid), the operand windows
    wire [TP*AW-1:0] rd_addr;
    wire [TP-1:0]    rd_en;
    wire [64*TP-1:0] rd_data;
    reg  [AW-1:0]    wr_addr;
    wire             wr_en;
    reg  [63:0]      wr_data;
    wire sq_valid;
    wire [63:0] rd0;
    reg sq_req;
    reg [AW-1:0] sq_addr;
    reg [15:0] sq_len;
    wire wr_room, mem_idle;
    wire [AW-1:0] a_fill, b_fill;
    localparam [3:0] S_IDLE = 4'd0, S_FETCH = 4'd1, S_DECODE = 4'd2, S_LOAD = 4'd3, S_RUN = 4'd4, S_DONE = 4'd5,
                     S_CHECK = 4'd6,   // decode registers the descriptor's checks, check branches on them
                     S_FLUSH = 4'd7,   // after a run: until every result is in memory
                     S_ABORT = 4'd8,   // an error during a load or run: until the bus is quiet
                     S_PLAN = 4'd9,    // the descriptor's regions' ends computed
                     S_GO = 4'd10,     // ... and checked against the memory plan
                     S_START = 4'd11;  // a run's first cycle: the first descriptor checked against the plan
    localparam [7:0] OP_END = 8'd0, OP_CONV = 8'd1, OP_ADD = 8'd2, OP_MAXPOOL = 8'd3;
    localparam [1:0] K_CONV = 2'd0, K_SCALE = 2'd1, K_MAX = 2'd2;
    // error codes (hw/ACCEL.md): a descriptor the engine cannot run stops it in S_DONE with one
    localparam [3:0] E_NONE = 4'd0, E_OPCODE = 4'd1, E_GRID = 4'd2, E_STRIDE = 4'd3, E_KERNEL = 4'd4,
                     E_BLOCKS = 4'd5, E_GROUPS = 4'd6, E_WINDOW = 4'd7, E_ADDRESS = 4'd8;

    reg [3:0] state;
    // the memory requests are held off while rst is high, whatever the registers hold: before
    // the first clock edge of a reset they are whatever the device powered up with, and a write
    // then lands anywhere (found by the random-initial-state simulation)
    reg wr_en_q;
    assign wr_en = wr_en_q & !rst;
    reg [3:0] dec_err;   // the decoded descriptor's error code (registered in S_DECODE)
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
    wire [15:0] a_stride = dw[1][47:32];   // (bits 31..16 of the field reserved)
    wire [31:0] a_off    = dw[2][31:0];
    wire [31:0] b_base   = dw[2][63:32];
    wire [15:0] b_stride = dw[3][15:0];
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
    wire relu_b   = flags[5];   // CONV with B: the fused add's clamp
    wire b_tri    = flags[6];   // CONV with B: B trilinear-upsampled
    wire is_conv  = (op == OP_CONV);
    wire fused    = is_conv && has_b;   // an ADD fused into the CONV's output stage (hw/ACCEL.md)
    wire is_pool  = (op == OP_MAXPOOL);
    wire [9:0] hD = {1'b0, gD[9:1]}, hH = {1'b0, gH[9:1]}, hW = {1'b0, gW[9:1]};
    wire [3:0] pad = ksize[4:1];
    // spatial tiling (hw/ACCEL.md): field 15 holds the output tensor's rows and A's and B's view
    // rows (0: untiled, the rows the output grid gives), bits 15..8 of A's and B's words per
    // voxel their row offsets (output row h is taken as h + offset before halving or doubling)
    wire [9:0] t_orows = dw[7][41:32], t_arows = dw[7][51:42], t_brows = dw[7][61:52];
    wire [7:0] a_roff = a_stride[15:8], b_roff = b_stride[15:8];
    wire a_half = a_near || (a_tri && !is_conv), b_half = b_near || (is_conv && b_tri);
    // what word 0 (op, flags, grid) gives is registered while the other words arrive (pd_*), and
    // whether the tile fields are set as word 7 arrives: the products at decode then follow a
    // mux or two, not the op's and flags' decoding (that chain into a multiplier was the SoC's
    // critical path)
    reg pd_pool, pd_a_half, pd_b_half, pd_o_set, pd_a_set, pd_b_set;
    reg [9:0] pd_a_rows, pd_b_rows, pd_a_W, pd_b_W;   // the operands' derived (untiled) rows, their W
    wire [9:0] o_rows = pd_o_set ? t_orows : gH;   // the output tensor's rows
    wire [9:0] wa_Wc = pd_a_W, wb_Wc = pd_b_W;
    // each operand's rows in its view and in memory (its tensor's)
    wire [9:0] a_rows_v = pd_a_set ? t_arows : pd_a_rows, b_rows_v = pd_b_set ? t_brows : pd_b_rows;
    wire [9:0] a_rows_m = !pd_a_set ? pd_a_rows : pd_pool ? {o_rows[8:0], 1'b0} : pd_a_half ? {1'b0, o_rows[9:1]} : o_rows;
    wire [9:0] b_rows_m = !pd_b_set ? pd_b_rows : pd_b_half ? {1'b0, o_rows[9:1]} : o_rows;
    // the last output row (+ offset) a reach may touch: untiled the output's, else the view's
    wire [9:0] a_hl = (t_arows == 10'd0) ? gH - 10'd1 : is_pool ? {1'b0, t_arows[9:1]} - 10'd1 :
                      a_half ? {t_arows[8:0], 1'b0} - 10'd1 : t_arows - 10'd1;
    wire [9:0] b_hl = (t_brows == 10'd0) ? gH - 10'd1 : b_half ? {t_brows[8:0], 1'b0} - 10'd1 : t_brows - 10'd1;

    // the descriptor's own consistency, checked when it is decoded
    function pow2w(input [31:0] n);   // words per voxel: a power of two, 1 .. 128
        pow2w = (n != 32'd0) && (n <= 32'd128) && ((n & (n - 32'd1)) == 32'd0);
    endfunction
    wire [3:0] decode_error =
        !(op == OP_END || op == OP_CONV || op == OP_ADD || op == OP_MAXPOOL) ? E_OPCODE :
        (op == OP_END)                                                 ? E_NONE   :
        (gD == 10'd0 || gH == 10'd0 || gW == 10'd0)                    ? E_GRID   :
        (!pow2w({24'd0, a_stride[7:0]}) || !pow2w(o_stride) || (has_b && !pow2w({24'd0, b_stride[7:0]}))) ? E_STRIDE :
        (is_conv && (ksize[0] == 1'b0 || ksize > 32'd31))              ? E_KERNEL :
        ((is_conv ? n_ocg : n_groups) == 32'd0)                        ? E_GROUPS : E_NONE;

    // words per voxel are a power of two (1 .. 128): the address shifts by its log2
    function [2:0] log2w(input [7:0] n);
        integer b;
        begin
            log2w = 3'd0;
            for (b = 1; b < 8; b = b + 1) if (n[b]) log2w = b[2:0];
        end
    endfunction

    // ---------------------------------------------------------------- weight buffer
    reg [31:0] hdr  [0:WBUF_DEPTH/TP-1];   // port 0's block headers (block e in bank e % TP at e / TP)
    reg signed [31:0] bias [0:L-1];
    reg [WB_AW:0] n_entries;
    reg [31:0] lptr;
    reg [15:0] li, lnum;   // load: words taken and the index of the group's last (5 + 9E < 2^16: hw/engine.py)
    wire [15:0] e_cnt = {{(15 - WB_AW){1'b0}}, rd0[WB_AW:0]};   // a group's block count as loaded (<= WBUF_DEPTH)
    wire ld_word = (state == S_LOAD) && sq_valid;
    reg [WB_AW:0] lblk;
    localparam [WB_AW:0] TP_MASK = {{WB_AW{1'b0}}, TPL == 1};   // TP - 1 (TP is 1 or 2): lblk & TP_MASK is the port whose bank holds block lblk
    reg [3:0] lsub;
    reg [31:0] ocg;
    reg more_ocg;       // CONV: another output group follows this one (registered when its run starts)

    // ---------------------------------------------------------------- iterator
    reg [9:0] vd, vh, vw;
    reg [31:0] eslot;    // conv: weight block; elementwise: slot within (voxel, group)
    reg [31:0] grp;      // elementwise: channel group
    reg iter_done;
    reg [4:0] drain;
    // I0, I1, A0 .. A4, M, P0, P1a .. P1c, P2a .. P2c, P3, a fused add's F1, F2, P4, P5 after the
    // last slot, then the write (fault: the next group's load starts with 12 stages still in flight)
    wire [4:0] DRAIN = f_drain_short ? 5'd6 : 5'd20;

    // the iterator's limits, registered when a run starts (constant during it)
    reg [WB_AW:0] slot_last;       // slots per output word - 1
    localparam [WB_AW:0] SL_0 = 0, SL_1 = 1, SL_7 = 7;
    reg [WB_AW:0] conv_last;       // CONV: the last slot of weight blocks (a fused add's B slots follow)
    reg [2:0] bk;                  // a fused trilinear B's corner: counts its slots (8 a voxel)
    reg [3:0] b_slots;             // a fused add's B slots a voxel (0, 1 or 8), registered at decode
    reg [15:0] grp_last;           // ADD / MAXPOOL: groups - 1 (CONV: 0)
    reg [9:0] d_last, h_last, w_last;
    wire last_slot = (eslot[WB_AW:0] == slot_last);
    wire b_slot = fused && (eslot[WB_AW:0] > conv_last);   // a slot of the fused add's B
    wire last_grp  = (grp[15:0] == grp_last);
    wire last_vox  = (vd == d_last) && (vh == h_last) && (vw == w_last);

    reg ok;   // the iterator's row has its operand words on chip and the results have room
    wire issue = (state == S_RUN) && !iter_done && ok;
    wire row_end = issue && last_slot && last_grp && (vw == w_last);

    // ---------------------------------------------------------------- operand windows
    // The generator makes one entry per output row (d, h) of a run, ahead of the iterator: for
    // operand A (and B, of an ADD or a fused CONV) the words [lo, hi) that the row's slots can read (every tap,
    // clamped to the grid, on the operand's own grid: full, half or double). The iterator
    // issues a row's slots once the memory unit holds its hi (ok), and hands the row's lo on
    // as the window's low mark 16 cycles after it (past the last read of the row's slots).
    // In words, with PW the operand's words per plane and RW per row:
    //   lo = base + min(dl * PW + hl * RW, dl' * PW)      (dl': the next plane's; see below)
    //   hi = base + dh * PW + (hh + 1) * RW
    // where [dl, dh] and [hl, hh] are the row's reach along d and h on the operand's grid. The
    // generator walks the rows in order and keeps the four products as running sums (a reach
    // moves by 0, 1 or 2 from one row or plane to the next): no multiplier.
    localparam [1:0] M_FULL = 2'd0, M_HALF = 2'd1, M_DBL = 2'd2;
    reg [1:0] wa_mode, wb_mode;
    reg [3:0] wa_p, wb_p;                      // the reach in taps: pad (CONV's A), 1 (trilinear), else 0
    reg [9:0] wa_W, wb_W, wa_D, wb_D;          // the operands' grids
    reg [9:0] ga_off, gb_off, ga_hl, gb_hl;    // the row offsets; the last row (+ offset) a reach touches
    reg [9:0] gt_off, gt_n;                    // the trilinear operand's (a fused CONV's B, an ADD's A) offset and view rows
    reg [AW-1:0] wa_RW, wb_RW, wa_PW, wb_PW;   // words per row and per plane of the operands' views
    reg [AW-1:0] wa_PM, wb_PM;                 // words per plane of the operands' tensors (in memory)
    reg [AW-1:0] wa_base, wa_end, wb_base, wb_end;
    reg w_two;                                 // B (ADD or fused CONV): two windows, half the buffer each
    reg win_start, win_err;
    localparam [AW:0] W_FULL = 1 << BW, W_HALF = 1 << (BW - 1);
    function [19:0] reach(input [9:0] o, input [9:0] last, input [3:0] p, input [1:0] mode);   // {lo, hi}
        reg [10:0] lo, hi;
        begin
            lo = ({1'b0, o} >= {7'd0, p}) ? {1'b0, o} - {7'd0, p} : 11'd0;
            hi = ({1'b0, o} + {7'd0, p} > {1'b0, last}) ? {1'b0, last} : {1'b0, o} + {7'd0, p};
            case (mode)
                M_HALF:  reach = {lo[10:1], hi[10:1]};
                M_DBL:   reach = {lo[8:0], 1'b0, hi[8:0], 1'b1};
                default: reach = {lo[9:0], hi[9:0]};
            endcase
        end
    endfunction
    function [AW-1:0] times(input [1:0] k, input [AW-1:0] x);   // k * x for k in 0, 1, 2
        times = k[1] ? {x[AW-2:0], 1'b0} : k[0] ? x : {AW{1'b0}};
    endfunction
    function [AW-1:0] mul3(input [2:0] k, input [AW-1:0] x);    // k * x by shifts and adds (k <= 7)
        mul3 = (k[0] ? x : {AW{1'b0}}) + (k[1] ? x << 1 : {AW{1'b0}}) + (k[2] ? x << 2 : {AW{1'b0}});
    endfunction
    function [AW-1:0] g_min(input [AW-1:0] x, input [AW-1:0] y); g_min = (x < y) ? x : y; endfunction
    reg g_on, gs_v, gs_hend, g1_v, g2_v, g_start;
    reg [7:0] gs_a, gs_b;   // a row's steps: {dl, dh, hl, hh} to the next row or plane
    reg [15:0] g0_reach;    // the first plane's and row's reach (A, B), registered from the run's constants   // g_start: win_start a cycle late (the first row's sums are ready)
    reg [9:0] g_d, g_h;
    reg [9:0] g_ha, g_hb;   // g_h + A's, B's row offset, counted beside g_h (no adder before the reaches)
    reg [3:0] g_occ;                           // rows queued or in the generator's stage
    wire g_go = g_on && (g_occ < 4'd8);
    wire g_hend = (g_h == h_last), g_dend = (g_d == d_last);
    wire [9:0] g_dn = g_dend ? g_d : g_d + 10'd1;
    // the reaches of this row and of the next row and plane (A and B reach their p taps)
    wire [19:0] ra_d = reach(g_d, d_last, wa_p, wa_mode), ra_dn = reach(g_dn, d_last, wa_p, wa_mode);
    wire [9:0] g_han = g_hend ? g_ha : g_ha + 10'd1, g_hbn = g_hend ? g_hb : g_hb + 10'd1;
    wire [19:0] ra_h = reach(g_ha, ga_hl, wa_p, wa_mode), ra_hn = reach(g_han, ga_hl, wa_p, wa_mode);
    wire [19:0] rb_d = reach(g_d, d_last, wb_p, wb_mode), rb_dn = reach(g_dn, d_last, wb_p, wb_mode);
    wire [19:0] rb_h = reach(g_hb, gb_hl, wb_p, wb_mode), rb_hn = reach(g_hbn, gb_hl, wb_p, wb_mode);
    wire [19:0] ra_0 = reach(ga_off, ga_hl, wa_p, wa_mode), rb_0 = reach(gb_off, gb_hl, wb_p, wb_mode);
    wire [19:0] ra_d0 = reach(10'd0, d_last, wa_p, wa_mode), rb_d0 = reach(10'd0, d_last, wb_p, wb_mode);
    // the steps (0, 1 or 2) of each reach end to the next row (h) and the next plane (d)
    wire [1:0] sa_dl = ra_dn[11:10] - ra_d[11:10], sa_dh = ra_dn[1:0] - ra_d[1:0];
    wire [1:0] sa_hl = ra_hn[11:10] - ra_h[11:10], sa_hh = ra_hn[1:0] - ra_h[1:0];
    wire [1:0] sb_dl = rb_dn[11:10] - rb_d[11:10], sb_dh = rb_dn[1:0] - rb_d[1:0];
    wire [1:0] sb_hl = rb_hn[11:10] - rb_h[11:10], sb_hh = rb_hn[1:0] - rb_h[1:0];
    // running sums: dl * PW, dh * PW (plane parts), hl * RW, (hh + 1) * RW (row parts)
    reg [AW-1:0] ga_pl, ga_ph, ga_rl, ga_rh, gb_pl, gb_ph, gb_rl, gb_rh;
    reg [AW-1:0] ga_ph0, ga_rh0, gb_ph0, gb_rh0;   // their values on the first row of a plane and run
    reg [AW-1:0] ga_ph0l, ga_rh0l, gb_ph0l, gb_rh0l, ga_ph0h, ga_rh0h, gb_ph0h, gb_rh0h;   // (in two halves)
    reg [AW-1:0] g1_al0, g1_al1, g1_ahi, g1_bl0, g1_bl1, g1_bhi, g2_alo, g2_ahi, g2_blo, g2_bhi;
    reg [AW-1:0] wn_alo [0:7], wn_ahi [0:7], wn_blo [0:7], wn_bhi [0:7];
    reg [3:0] wn_n;
    reg [AW-1:0] rel_a [0:15], rel_b [0:15];
    // the iterator's row next cycle is the queue's head, or the one after when it leaves its row
    // now: both checked in parallel, row_end only chooses
    wire ok0 = (wn_n != 4'd0) && (a_fill >= wn_ahi[0]) && (!w_two || b_fill >= wn_bhi[0]);
    wire ok1 = (wn_n > 4'd1) && (a_fill >= wn_ahi[1]) && (!w_two || b_fill >= wn_bhi[1]);
    wire ok_n = !win_start && !g_start && wr_room && (row_end ? ok1 : ok0);
    wire [AW:0] g_span_a = {1'b0, g2_ahi} - {1'b0, g2_alo}, g_span_b = {1'b0, g2_bhi} - {1'b0, g2_blo};
    wire [2:0] wn_at = wn_n[2:0] - {2'd0, row_end};   // where a new entry goes
    integer gk;
    always @(posedge clk) begin
        ok <= !rst && ok_n;
        // the first row's hi parts, from the run's constants (ready before the run starts): the
        // reach's first plane and row times the operand's words per plane and row, in two steps
        g0_reach <= {ra_d0[3:0], rb_d0[3:0], ra_0[3:0], rb_0[3:0]};
        ga_ph0l <= mul3(g0_reach[14:12], wa_PW);         ga_ph0h <= g0_reach[15] ? wa_PW << 3 : {AW{1'b0}};
        gb_ph0l <= mul3(g0_reach[10:8], wb_PW);          gb_ph0h <= g0_reach[11] ? wb_PW << 3 : {AW{1'b0}};
        ga_rh0l <= mul3(g0_reach[6:4], wa_RW) + wa_RW;   ga_rh0h <= g0_reach[7] ? wa_RW << 3 : {AW{1'b0}};
        gb_rh0l <= mul3(g0_reach[2:0], wb_RW) + wb_RW;   gb_rh0h <= g0_reach[3] ? wb_RW << 3 : {AW{1'b0}};
        ga_ph0 <= ga_ph0l + ga_ph0h; ga_rh0 <= ga_rh0l + ga_rh0h; gb_ph0 <= gb_ph0l + gb_ph0h; gb_rh0 <= gb_rh0l + gb_rh0h;
        // G0: the row's steps registered, the row counters moved on; G1: this row's sums, and the
        // running sums moved on by the steps; G2: the entry
        gs_v <= g_go; g1_v <= gs_v; g2_v <= g1_v;
        gs_hend <= g_hend;
        gs_a <= {sa_dl, sa_dh, sa_hl, sa_hh}; gs_b <= {sb_dl, sb_dh, sb_hl, sb_hh};
        if (g_go) begin
            if (!g_hend) begin g_h <= g_h + 10'd1; g_ha <= g_ha + 10'd1; g_hb <= g_hb + 10'd1; end
            else begin g_h <= 10'd0; g_ha <= ga_off; g_hb <= gb_off; g_d <= g_d + 10'd1; if (g_dend) g_on <= 1'b0; end
        end
        g1_al0 <= ga_pl + ga_rl; g1_al1 <= ga_pl + times(gs_a[7:6], wa_PW); g1_ahi <= ga_ph + ga_rh;
        g1_bl0 <= gb_pl + gb_rl; g1_bl1 <= gb_pl + times(gs_b[7:6], wb_PW); g1_bhi <= gb_ph + gb_rh;
        g2_alo <= wa_base + g_min(g1_al0, g1_al1); g2_ahi <= wa_base + g1_ahi;
        g2_blo <= wb_base + g_min(g1_bl0, g1_bl1); g2_bhi <= wb_base + g1_bhi;
        if (gs_v) begin
            if (!gs_hend) begin
                ga_rl <= ga_rl + times(gs_a[3:2], wa_RW); ga_rh <= ga_rh + times(gs_a[1:0], wa_RW);
                gb_rl <= gb_rl + times(gs_b[3:2], wb_RW); gb_rh <= gb_rh + times(gs_b[1:0], wb_RW);
            end else begin
                ga_pl <= ga_pl + times(gs_a[7:6], wa_PW); ga_ph <= ga_ph + times(gs_a[5:4], wa_PW);
                gb_pl <= gb_pl + times(gs_b[7:6], wb_PW); gb_ph <= gb_ph + times(gs_b[5:4], wb_PW);
                ga_rl <= {AW{1'b0}}; ga_rh <= ga_rh0; gb_rl <= {AW{1'b0}}; gb_rh <= gb_rh0;
            end
        end
        if (row_end) for (gk = 0; gk < 7; gk = gk + 1) begin
            wn_alo[gk] <= wn_alo[gk + 1]; wn_ahi[gk] <= wn_ahi[gk + 1]; wn_blo[gk] <= wn_blo[gk + 1]; wn_bhi[gk] <= wn_bhi[gk + 1];
        end
        if (g2_v) begin
            wn_alo[wn_at] <= g2_alo; wn_ahi[wn_at] <= g2_ahi;
            wn_blo[wn_at] <= g2_blo; wn_bhi[wn_at] <= g2_bhi;
        end
        if (g2_v && (g_span_a > (w_two ? W_HALF : W_FULL) || (w_two && g_span_b > W_HALF))) win_err <= 1'b1;
        wn_n <= wn_n + {3'd0, g2_v} - {3'd0, row_end};
        g_occ <= g_occ + {3'd0, g_go} - {3'd0, row_end};
        // the low marks: the current row's lo, 16 cycles late
        if (wn_n != 4'd0) begin rel_a[0] <= wn_alo[0]; rel_b[0] <= wn_blo[0]; end
        for (gk = 1; gk < 16; gk = gk + 1) begin rel_a[gk] <= rel_a[gk - 1]; rel_b[gk] <= rel_b[gk - 1]; end
        g_start <= win_start && !rst;
        if (win_start) for (gk = 0; gk < 16; gk = gk + 1) begin rel_a[gk] <= wa_base; rel_b[gk] <= wb_base; end
        if (g_start || rst || state == S_ABORT) begin   // a new run (or none): empty queue
            g_on <= g_start; g_d <= 10'd0; g_h <= 10'd0; g_ha <= ga_off; g_hb <= gb_off; g_occ <= 4'd0; wn_n <= 4'd0; win_err <= 1'b0;
            gs_v <= 1'b0; g1_v <= 1'b0; g2_v <= 1'b0;
            ga_pl <= {AW{1'b0}}; ga_rl <= {AW{1'b0}}; ga_ph <= ga_ph0; ga_rh <= ga_rh0;
            gb_pl <= {AW{1'b0}}; gb_rl <= {AW{1'b0}}; gb_ph <= gb_ph0; gb_rh <= gb_rh0;
        end
    end

    // I0, I1: the iterator's slot registered twice while its block header is read from the
    // header RAM and registered (the block RAM's output is slow; nothing else follows it)
    reg j_v, j_first, j_last, j_isb, i_isb;
    reg [2:0] j_bk, i_bk;
    reg [9:0] j_d, j_h, j_w, j_ha, j_hb, j_ht;   // j_ha, j_hb, j_ht: the row + A's, B's, the trilinear operand's row offset
    reg [WB_AW-1:0] j_e;
    reg [31:0] j_grp, j_og;
    reg [31:0] h_raw;
    reg i_v, i_first, i_last;
    reg [9:0] i_d, i_h, i_w, i_ha, i_hb, i_ht;
    reg [WB_AW-1:0] i_e;
    reg [31:0] i_grp, i_og;
    reg [31:0] h_cur;
    always @(posedge clk) begin
        j_v <= rst ? 1'b0 : issue;
        // first and last: of the slots accumulated, and of a fused add's B slots (its sum)
        j_first <= b_slot ? (eslot[WB_AW:0] == conv_last + 1'b1) : (eslot == 0);
        j_last <= (fused && !b_slot) ? (eslot[WB_AW:0] == conv_last) : last_slot;
        j_isb <= b_slot; j_bk <= bk; i_isb <= j_isb; i_bk <= j_bk;
        j_d <= vd; j_h <= vh; j_w <= vw; j_ha <= vh + ga_off; j_hb <= vh + gb_off; j_ht <= vh + gt_off; j_e <= eslot[WB_AW-1:0]; j_grp <= grp;
        j_og <= is_conv ? ocg : grp;
        h_raw <= hdr[eslot[WB_AW-1-TPL:0]];
        i_v <= rst ? 1'b0 : j_v;
        i_first <= j_first; i_last <= j_last;
        i_d <= j_d; i_h <= j_h; i_w <= j_w; i_ha <= j_ha; i_hb <= j_hb; i_ht <= j_ht; i_e <= j_e; i_grp <= j_grp; i_og <= j_og;
        h_cur <= h_raw;
    end
    wire signed [11:0] cd = $signed({2'b0, i_d}) + $signed({4'b0, f_tap_offset ? h_cur[15:8] : h_cur[7:0]})   // fault: the b tap along d
                            - $signed({8'b0, pad});
    wire signed [11:0] ch = $signed({2'b0, i_ha}) + $signed({4'b0, h_cur[15:8]}) - $signed({8'b0, pad});
    wire signed [11:0] cw = $signed({2'b0, i_w}) + $signed({4'b0, h_cur[23:16]}) - $signed({8'b0, pad});
    // (fault: one voxel past the volume's far face along d counts as inside)
    wire conv_in = (cd >= 0) && (f_pad_bounds ? cd <= $signed({2'b0, gD}) : cd < $signed({2'b0, gD})) &&
                   (ch >= 0) && (ch < $signed({1'b0, a_hext})) && (cw >= 0) && (cw < $signed({2'b0, gW}));

    // trilinear corners: per axis the coarse index and weight of corner bit `hi`
    function [11:0] tri_idx(input [9:0] o, input [9:0] n, input hi);  // {weight[1:0], index[9:0]}
        reg [9:0] k;
        begin
            k = o >> 1;
            if (!o[0]) tri_idx = hi ? {2'd3, k} : {2'd1, (k == 0) ? 10'd0 : k - 10'd1};
            else       tri_idx = hi ? {2'd1, (k == n - 1) ? k : k + 10'd1} : {2'd3, k};
        end
    endfunction
    wire [2:0] corner = is_conv ? i_bk : i_e[2:0];   // an ADD's slot is its corner; a fused B counts them
    wire [11:0] td = tri_idx(i_d, hD, corner[2]);
    wire [11:0] th = tri_idx(i_ht, gt_n, corner[1]);
    wire [11:0] tw = tri_idx(i_w, hW, corner[0]);
    // the product of three weights in {1, 3} is 3^(number of 3s): a table, not two multipliers
    wire [1:0] n3 = {1'b0, td[11]} + {1'b0, th[11]} + {1'b0, tw[11]};
    wire [4:0] tcoef = (n3 == 2'd0) ? 5'd1 : (n3 == 2'd1) ? (f_trilinear_coef ? 5'd1 : 5'd3)   // fault: 3 taken as 1
                     : (n3 == 2'd2) ? 5'd9 : 5'd27;

    // the voxel index d*H*W + h*W + w needs H*W of the operand's grid: the full grid's, the half
    // grid's (nearest / trilinear operands) and the double grid's (max-pool), registered at decode
    reg [AW-1:0] hw_a, hw_b, hw_o, hw_t;   // A's and B's view planes, the output tensor's plane, the tile's plane
    reg [AW-1:0] hm_a, hm_b;               // A's and B's planes in memory (their tensors')
    reg [10:0] a_hext;                     // a CONV's rows (output resolution) its taps may read: A's view's

    wire [9:0] bn_d = (i_d + {9'd0, f_nearest_half}) >> 1;   // a nearest B's plane (fault: rounded up along d)
    // slot: coordinates in the operand's grid, its grid (W and H*W), base, stride, group
    reg [9:0] sd, sh, sw, sgW;
    reg [AW-1:0] s_hw;
    reg [31:0] s_base, s_grp;
    reg [2:0] s_lg;
    reg s_rd, s_isb;
    reg [1:0] s_kind;
    reg [4:0] s_coef, s_shift;
    always @(*) begin
        sd = i_d; sh = i_ha; sw = i_w; s_hw = hw_a; sgW = gW;
        s_base = a_base; s_lg = a_lg; s_grp = a_off + i_grp;
        s_rd = 1'b1; s_isb = 1'b0; s_kind = K_SCALE; s_coef = 5'd1; s_shift = sa;
        if (is_conv && i_isb) begin   // the fused add's B at the output voxel (or up-sampled)
            s_base = b_base; s_lg = b_lg; s_grp = b_off + i_og; s_shift = sb; s_isb = 1'b1;
            sh = i_hb; s_hw = hw_b;
            if (b_tri) begin sd = td[9:0]; sh = th[9:0]; sw = tw[9:0]; sgW = hW; s_coef = tcoef; end
            else if (b_near) begin sd = bn_d; sh = i_hb >> 1; sw = i_w >> 1; sgW = hW; end
        end else if (is_conv) begin
            s_kind = K_CONV; s_rd = conv_in; s_grp = a_off + {24'd0, h_cur[31:24]};
            sd = cd[9:0]; sh = ch[9:0]; sw = cw[9:0];
            if (a_near) begin sd = cd[10:1]; sh = ch[10:1]; sw = cw[10:1]; sgW = hW; end
        end else if (is_pool) begin
            s_kind = K_MAX; s_shift = 5'd0;
            sd = {i_d[8:0], i_e[2]}; sh = {i_ha[8:0], i_e[1]}; sw = {i_w[8:0], i_e[0]};
            sgW = {gW[8:0], 1'b0};
        end else if (has_b && i_last) begin
            s_base = b_base; s_lg = b_lg; s_grp = b_off + i_grp; s_shift = sb; s_isb = 1'b1;
            sh = i_hb; s_hw = hw_b;
            if (b_near) begin sd = bn_d; sh = i_hb >> 1; sw = i_w >> 1; sgW = hW; end
        end else if (a_tri) begin
            sd = td[9:0]; sh = th[9:0]; sw = tw[9:0]; sgW = hW; s_coef = tcoef;
        end else if (a_near) begin
            sd = i_d >> 1; sh = i_ha >> 1; sw = i_w >> 1; sgW = hW;
        end
    end

    // ---------------------------------------------------------------- ports 1 .. TP-1
    // A CONV slot holds TP weight blocks: block e = TP * slot + t goes to port t (port 0's path is
    // the one above and below, shared with ADD and MAXPOOL). Each further port has its own header
    // bank, operand coordinates, bounds, voxel index and read request, in the same stages as port
    // 0's and sharing its grid, base and group offset; a block past the group's last (E not a
    // multiple of TP) reads nothing and contributes zero.
    reg  [32*XP-1:0] hx_raw, hx_cur;
    reg  [XP-1:0]    jx_v, ix_v, a0x_rd, a1x_rd, a2x_rd, bx_rd, a3x_rd, p1x_rd;
    reg  [10*XP-1:0] a0x_sd, a0x_sh, a0x_sw, a1x_sw;
    reg  [AW*XP-1:0] a0x_grp, a1x_grp, a2x_grp, a1x_pd, a1x_ph, a2x_vox, bx_prod, bx_bg, rdx_addr;
    reg  [XP-1:0]    rdx_en;
    reg  rd0_en;
    reg  [AW-1:0] rd0_addr;
    generate if (TP > 1) begin : g_rd
        assign rd_en = {rdx_en[TP-2:0], rd0_en} & {TP{!rst}};
        assign rd_addr = {rdx_addr[AW*(TP-1)-1:0], rd0_addr};
    end else begin : g_rd1
        assign rd_en = rd0_en & !rst;
        assign rd_addr = rd0_addr;
    end endgenerate
    genvar gt;
    generate for (gt = 1; gt < TP; gt = gt + 1) begin : g_port
        localparam integer U = gt - 1;
        localparam [WB_AW:0] GT = gt;
        reg [31:0] hdr_x [0:WBUF_DEPTH/TP-1];
        always @(posedge clk)
            if (ld_word && li >= 16'd6 && lsub == 4'd0 && (lblk & TP_MASK) == GT)
                hdr_x[lblk[WB_AW-1:TPL]] <= rd0[31:0];
        wire [31:0] hc = hx_cur[32*U +: 32];
        wire signed [11:0] xd = $signed({2'b0, i_d}) + $signed({4'b0, hc[7:0]}) - $signed({8'b0, pad});
        wire signed [11:0] xh = $signed({2'b0, i_ha}) + $signed({4'b0, hc[15:8]}) - $signed({8'b0, pad});
        wire signed [11:0] xw = $signed({2'b0, i_w}) + $signed({4'b0, hc[23:16]}) - $signed({8'b0, pad});
        wire x_in = (xd >= 0) && (xd < $signed({2'b0, gD})) && (xh >= 0) && (xh < $signed({1'b0, a_hext})) &&
                    (xw >= 0) && (xw < $signed({2'b0, gW}));
        always @(posedge clk) begin
            // I0, I1: the header of block TP * slot + gt; valid while inside the group's E blocks
            hx_raw[32*U +: 32] <= hdr_x[eslot[WB_AW-1-TPL:0]];
            jx_v[U] <= is_conv && (({1'b0, eslot[WB_AW-1:0]} << TPL) + gt < n_entries);
            hx_cur[32*U +: 32] <= hx_raw[32*U +: 32];
            ix_v[U] <= jx_v[U];
            // A0: coordinates (halved on the half grid), bounds, group
            a0x_rd[U] <= i_v && ix_v[U] && x_in;
            a0x_sd[10*U +: 10] <= a_near ? xd[10:1] : xd[9:0];
            a0x_sh[10*U +: 10] <= a_near ? xh[10:1] : xh[9:0];
            a0x_sw[10*U +: 10] <= a_near ? xw[10:1] : xw[9:0];
            a0x_grp[AW*U +: AW] <= a_off[AW-1:0] + {{(AW-8){1'b0}}, hc[31:24]};
            // A1: d * (H*W), h * W with port 0's grid of this slot
            a1x_rd[U] <= a0x_rd[U];
            a1x_pd[AW*U +: AW] <= {{XW{1'b0}}, a0x_sd[10*U +: 10]} * a0_hw;
            a1x_ph[AW*U +: AW] <= {{XW{1'b0}}, a0x_sh[10*U +: 10]} * {{XW{1'b0}}, a0_sgW};
            a1x_sw[10*U +: 10] <= a0x_sw[10*U +: 10];
            a1x_grp[AW*U +: AW] <= a0x_grp[AW*U +: AW];
            // A2: voxel; A3: x words per voxel, base + group; A4: the request leaves registered
            a2x_rd[U] <= a1x_rd[U];
            a2x_vox[AW*U +: AW] <= a1x_pd[AW*U +: AW] + a1x_ph[AW*U +: AW] + {{XW{1'b0}}, a1x_sw[10*U +: 10]};
            a2x_grp[AW*U +: AW] <= a1x_grp[AW*U +: AW];
            bx_rd[U] <= a2x_rd[U];
            bx_prod[AW*U +: AW] <= a2x_vox[AW*U +: AW] << a2_lg;
            bx_bg[AW*U +: AW] <= a2_base + a2x_grp[AW*U +: AW];
            rdx_en[U] <= !rst && b_v && bx_rd[U];
            rdx_addr[AW*U +: AW] <= bx_prod[AW*U +: AW] + bx_bg[AW*U +: AW];
            a3x_rd[U] <= bx_rd[U];
            p1x_rd[U] <= a3x_rd[U];
        end
    end endgenerate

    // ---------------------------------------------------------------- address pipeline
    // addresses: voxel index (< 2^AW) x words per voxel (< 256) + group: the two products d*(H*W)
    // and h*W in A1, straight into registers, their sum with w in A2 (a multiply followed by an
    // add in one stage was the critical path)
    localparam integer XW = AW - 10;
    reg a0_v, a0_rd, a0_first, a0_last, a0_isb, a1_isb, a2_isb, b_isb, rd0_b;
    reg [1:0] a0_kind;
    reg [4:0] a0_coef, a0_shift;
    reg [WB_AW-1:0] a0_e;
    reg [9:0] a0_sd, a0_sh, a0_sw, a0_sgW, a0_od, a0_oh, a0_ow;
    reg [AW-1:0] a0_hw;
    reg [AW-1:0] a0_base, a0_grp, a0_og;
    reg [2:0] a0_lg;
    reg a1_v, a1_rd, a1_first, a1_last;
    reg [1:0] a1_kind;
    reg [4:0] a1_coef, a1_shift;
    reg [WB_AW-1:0] a1_e;
    reg [9:0] a1_sw, a1_ow;
    reg [AW-1:0] a1_pd, a1_ph, a1_opd, a1_oph, a1_base, a1_grp, a1_og;
    reg [2:0] a1_lg;
    reg a2_v, a2_rd, a2_first, a2_last;
    reg [1:0] a2_kind;
    reg [4:0] a2_coef, a2_shift;
    reg [WB_AW-1:0] a2_e;
    reg [AW-1:0] a2_vox, a2_ovox, a2_base, a2_grp, a2_og;
    reg [2:0] a2_lg;
    reg [2:0] a_lg, b_lg, o_lg;   // log2 of the words per voxel, registered at decode
    reg b_v, b_rd, b_first, b_last;
    reg [1:0] b_kind;
    reg [4:0] b_coef, b_shift;
    reg [WB_AW-1:0] b_e;
    reg [AW-1:0] b_prod, b_bg, b_oprod, b_obg;
    reg a3_v, a3_rd, a3_first, a3_last;
    reg [1:0] a3_kind;
    reg [4:0] a3_coef, a3_shift;
    reg [WB_AW-1:0] a3_e;
    reg [AW-1:0] a3_oaddr;
    reg [AW-1:0] req_addr;
    reg req_en;

    // ---------------------------------------------------------------- datapath pipeline
    reg p1_v, p1_rd, p1_first, p1_last;
    reg [1:0] p1_kind;
    reg [4:0] p1_coef, p1_shift;
    reg [AW-1:0] p1_oaddr;
    wire [64*L*TP-1:0] wq;   // the slot's weight blocks in P1: port t, lane j = wq[64(Lt + j) +: 64]
    reg p2_v, p2_first, p2_last;
    reg [1:0] p2_kind;
    reg [AW-1:0] p2_oaddr;
    reg signed [31:0] p2_part [0:L-1];
    reg signed [31:0] acc [0:L-1];
    reg signed [31:0] fin [0:L-1];
    reg fin_v;
    reg [AW-1:0] fin_addr;

    // P0: the read words and the weight blocks arrive and are registered beside the multipliers
    // (the block RAM's output and the pins are too far from them for one cycle);
    // P1: TP x 64 products (and port 0's lane values times the trilinear weight); P2a-P2c: the
    // 8 TP products of each lane summed (or the lane value shifted into alignment)
    // each read word, one copy per output lane, each beside that lane's 8 multipliers (one register
    // feeding all 64 was the critical path: its routing across the die); separate instances, so
    // synthesis does not merge the copies back into one
    wire [63:0] x0 [0:L*TP-1];   // port t, lane j at L*t + j
    reg [64*L*TP-1:0] w0;
    reg p0_v, p0_first, p0_last;
    reg [1:0] p0_kind;
    reg [4:0] p0_coef, p0_shift;
    reg [AW-1:0] p0_oaddr;
    always @(posedge clk) begin
        w0 <= wq;
        p0_v <= rst ? 1'b0 : p1_v;
        p0_first <= p1_first; p0_last <= p1_last; p0_kind <= p1_kind;
        p0_coef <= p1_coef; p0_shift <= p1_shift; p0_oaddr <= p1_oaddr;
    end
    reg signed [15:0] prod [0:TP*L*L-1];   // ((L*t + lane) * L + input lane): accel_mul8 outputs (P1a-P1c)
    reg signed [13:0] q_lane [0:L-1];
    reg q_v, q_first, q_last, qa_v, qa_first, qa_last, qb_v, qb_first, qb_last;
    reg [1:0] q_kind, qa_kind, qb_kind;
    reg [4:0] q_shift, qa_shift, qb_shift;
    reg [AW-1:0] q_oaddr, qa_oaddr, qb_oaddr;
    genvar gp, gi, gq;
    generate for (gq = 0; gq < TP; gq = gq + 1) begin : g_xp
        for (gp = 0; gp < L; gp = gp + 1) begin : g_x0
            // a tap outside the volume (or a block past the group's last) reads nothing: zero
            wire no_rd = (gq == 0) ? !p1_rd : !p1x_rd[(gq == 0) ? 0 : gq - 1];
            accel_word_reg u_x0 (.clk(clk), .zero(no_rd), .d(rd_data[64*gq +: 64]), .q(x0[L*gq + gp]));
            for (gi = 0; gi < L; gi = gi + 1) begin : g_prod
                wire signed [15:0] pq;
                accel_mul8 u_mul (.clk(clk), .a(w0[64*(L*gq + gp) + 8*gi +: 8]), .b(x0[L*gq + gp][8*gi +: 8]), .p(pq));
                always @(*) prod[(L*gq + gp)*L + gi] = pq;
            end
        end
    end endgenerate
    generate for (gp = 0; gp < L; gp = gp + 1) begin : g_part
        // lane value times the trilinear weight 1, 3, 9 or 27 (1 for the other ADD and MAXPOOL
        // slots), |x| * 27 < 2^12, by shifts and adds in logic: a multiplier block here sat on the
        // critical path (its input routed from x0 across the die)
        wire signed [13:0] xv = $signed({{6{x0[gp][8*gp + 7]}}, x0[gp][8*gp +: 8]});
        wire signed [13:0] x3 = xv + (xv <<< 1);
        wire signed [13:0] x9 = xv + (xv <<< 3);
        wire signed [13:0] x27 = x9 + (x9 <<< 1);
        // the weights' bits tell them apart: 1 = 00001, 3 = 00011, 9 = 01001, 27 = 11011
        wire signed [13:0] xc = p0_coef[4] ? x27 : p0_coef[3] ? x9 : p0_coef[1] ? x3 : xv;
        reg signed [13:0] xa, xb;   // beside the products' P1a and P1b
        always @(posedge clk) begin xa <= xc; xb <= xa; q_lane[gp] <= xb; end
    end endgenerate
    // P2a: pairs of products summed (4 per lane and port), the lane value shifted into alignment
    // (0 for MAXPOOL); P2b: each port's 4 pair sums added; P2c: the TP port sums added
    reg signed [16:0] psum [0:4*L*TP-1];   // ((L*t + lane) * 4 + pair)
    function signed [19:0] sx20(input signed [16:0] v); sx20 = {{3{v[16]}}, v}; endfunction
    function signed [31:0] sx32(input signed [19:0] v); sx32 = {{12{v[19]}}, v}; endfunction
    reg signed [19:0] ps_b [0:L*TP-1];     // port t, lane j at L*t + j: |sum| <= 8 x 127 x 128
    reg signed [31:0] q2_lane [0:L-1];
    reg signed [31:0] q3_lane [0:L-1];
    reg q2_v, q2_first, q2_last, q3_v, q3_first, q3_last;
    reg [1:0] q2_kind, q3_kind;
    reg [AW-1:0] q2_oaddr, q3_oaddr;
    wire signed [31:0] part [0:L-1];
    generate for (gp = 0; gp < L; gp = gp + 1) begin : g_sum   // L = 8 products per lane and port
        for (gq = 0; gq < TP; gq = gq + 1) begin : g_port_sum
            for (gi = 0; gi < 4; gi = gi + 1) begin : g_pair
                always @(posedge clk) psum[(L*gq + gp)*4 + gi] <= $signed({prod[(L*gq + gp)*L + 2*gi][15], prod[(L*gq + gp)*L + 2*gi]}) +
                                                                 $signed({prod[(L*gq + gp)*L + 2*gi + 1][15], prod[(L*gq + gp)*L + 2*gi + 1]});
            end
            always @(posedge clk) ps_b[L*gq + gp] <= sx20(psum[(L*gq + gp)*4]) + sx20(psum[(L*gq + gp)*4 + 1]) +
                                                     sx20(psum[(L*gq + gp)*4 + 2]) + sx20(psum[(L*gq + gp)*4 + 3]);
        end
        always @(posedge clk) q2_lane[gp] <= $signed({{18{q_lane[gp][13]}}, q_lane[gp]}) <<< q_shift;
        always @(posedge clk) q3_lane[gp] <= q2_lane[gp];
        wire signed [31:0] s = (TP > 1) ? sx32(ps_b[gp]) + sx32(ps_b[L*(TP - 1) + gp]) : sx32(ps_b[gp]);
        assign part[gp] = (q3_kind == K_CONV) ? s : q3_lane[gp];
    end endgenerate

    // requantise in two stages (P4, P5): round half to even on a right shift, exact left shift
    // (<= 15), one clamp. Each output lane has its own shift (a CONV's come from its group
    // header, one signed byte per lane: per-channel weight scales; ADD and MAXPOOL set every
    // lane from the descriptor); the shift's mask and half are registered with it (rq_*).
    reg rq_relu;
    reg rq_right [0:L-1];
    reg [4:0] rq_s [0:L-1];
    reg [4:0] rq_ls [0:L-1];
    reg [31:0] rq_mask [0:L-1];
    reg [31:0] rq_half [0:L-1];
    reg r1_v;
    reg [AW-1:0] r1_addr;
    wire [7:0] r2_q [0:L-1];
    // the fused add (a CONV with B): the lane's int8 result y (yq), B's aligned sum (fbv, summed
    // over its slots), F1-F2 (fb1, fb2) until both are there, z = (y << sa) + fbv (fz), then the
    // second requantiser (by s_out, every lane, RELU_B as the clamp), and the write
    reg signed [7:0] yq [0:L-1];
    reg signed [31:0] fbv [0:L-1];
    reg signed [31:0] fz [0:L-1];
    reg fb1, fb2, fz_v, f4_v;
    reg [AW-1:0] fa1, fa2, fza, f4_addr;
    reg f_right;
    reg [4:0] f_s, f_ls;
    reg [31:0] f_mask, f_half;
    wire [7:0] f_q [0:L-1];
    generate for (gp = 0; gp < L; gp = gp + 1) begin : g_rq
        accel_requant u_rq (.clk(clk), .x(fin[gp]), .right(rq_right[gp]), .s(rq_s[gp]), .ls(rq_ls[gp]),
                            .mask(rq_mask[gp]), .half(rq_half[gp]), .relu(rq_relu), .q(r2_q[gp]));
        accel_requant u_rq_b (.clk(clk), .x(fz[gp]), .right(f_right), .s(f_s), .ls(f_ls),
                              .mask(f_mask), .half(f_half), .relu(relu_b), .q(f_q[gp]));
        always @(posedge clk) begin
            if (r1_v) yq[gp] <= $signed(r2_q[gp]);
            if (fb2) fz[gp] <= ($signed({{24{yq[gp][7]}}, yq[gp]}) <<< sa) + fbv[gp];
        end
    end endgenerate

    // ---------------------------------------------------------------- memory ports
    always @(*) begin
        req_en = 1'b0; req_addr = {AW{1'b0}};
        if (b_v && b_rd) begin
            req_en = 1'b1;
            req_addr = b_prod + b_bg;
        end
    end
    genvar gj;

    // ---------------------------------------------------------------- control
    integer j;
    // the lanes' shifts arrive in lane_sh (at decode: the descriptor's for every lane; at a CONV
    // group's load: its shift word) and set the requantisers one cycle later, from registers:
    // decoding them straight from the load counter and the memory word was the critical path
    reg [63:0] lane_sh;
    reg sh_pending;
    // a requantiser's set-up for the signed shift sh (> 0: right with rounding, <= 0: left):
    // {right, s, ls, mask, half}
    function [74:0] shift_cfg(input [7:0] shv);
        reg r;
        begin
            r = ($signed(shv) > 0);
            shift_cfg = {r, r ? shv[4:0] : 5'd0, r ? 5'd0 : 5'd0 - shv[4:0],
                         r ? (32'd1 << shv[4:0]) - 32'd1 : 32'd0, r ? 32'd1 << (shv[4:0] - 5'd1) : 32'd1};
        end
    endfunction
    task set_shift(input [2:0] k, input [7:0] shv);   // lane k's requantiser
        begin
            {rq_right[k], rq_s[k], rq_ls[k], rq_mask[k], rq_half[k]} <= shift_cfg(shv);
        end
    endtask
    reg [3:0] abort_err;   // the error an abort ends with
    reg [1:0] e_chk;       // a load's block count arrived one, two cycles ago
    reg e_bad, e_far;      // ... and is not 1 .. WBUF_DEPTH; its blocks reach MEM_LIMIT
    reg [15:0] e9;         // its blocks' words, 9E
    wire [1:0] a0_blocks = {1'b0, a0_rd && (a0_kind == K_CONV)} + ((TP > 1) ? {1'b0, a0x_rd[0]} : 2'd0);
    // the memory plan: the limit (at most the 2^AW words the engine addresses), the regions'
    // ends and the next descriptor's address, 48 bits wide
    localparam [47:0] MEM_MAX = 48'd1 << AW;
    reg [47:0] lim;
    reg [AW-1:0] nv_a, nv_b;       // voxels of the operands' views
    reg [AW-1:0] mv_a, mv_b, mv_o; // voxels of the operands' and the output's planes before their last, in memory
    // the regions' ends: base + voxels x words per voxel (48 bits: no field wraps them around)
    wire [AW-1:0] a_words = nv_a << a_lg, b_words = nv_b << b_lg;   // the views' words
    reg [47:0] pa_end, pb_end, po_end, pw_end;
    reg [31:0] dbase;
    wire [47:0] lim_in = ({16'd0, mem_limit} > MEM_MAX) ? MEM_MAX : {16'd0, mem_limit};
    wire [47:0] next_desc = {16'd0, dbase} + {13'd0, pc + 32'd1, 3'b000};
    // the next descriptor's end against the plan, registered (pc, dbase and lim hold for the
    // whole run before the flush that reads it): two adders and a compare in one cycle were the
    // critical path
    reg [47:0] nd_end;
    reg nd_out;
    always @(posedge clk) begin nd_end <= next_desc + 48'd8; nd_out <= (nd_end > lim); end
    always @(posedge clk) begin
        if (rst) begin
            state <= S_IDLE; done <= 1'b0; error <= E_NONE; cycles <= 64'd0; waits <= 64'd0; macs <= 64'd0;
            a0_v <= 1'b0; a1_v <= 1'b0; a2_v <= 1'b0; b_v <= 1'b0; a3_v <= 1'b0; p1_v <= 1'b0; qa_v <= 1'b0; qb_v <= 1'b0; q_v <= 1'b0; q2_v <= 1'b0; q3_v <= 1'b0; p2_v <= 1'b0;
            fin_v <= 1'b0; r1_v <= 1'b0; rd0_en <= 1'b0; wr_en_q <= 1'b0; sh_pending <= 1'b0;
            fb1 <= 1'b0; fb2 <= 1'b0; fz_v <= 1'b0; f4_v <= 1'b0;
            sq_req <= 1'b0; win_start <= 1'b0; e_chk <= 2'b00;
        end else begin
            if (state != S_IDLE && state != S_DONE) cycles <= cycles + 64'd1;
            // waiting for memory: a stream word not there yet, a row whose words are not, a flush
            if (((state == S_FETCH || state == S_LOAD) && !sq_valid) || (state == S_RUN && !iter_done && !ok) ||
                state == S_FLUSH || state == S_ABORT) waits <= waits + 64'd1;
            macs <= macs + {56'd0, a0_blocks, 6'd0};   // 64 products per block read (A0 knows which are)
            sh_pending <= 1'b0;   // (set again below when new shifts arrive)
            if (sh_pending) for (j = 0; j < L; j = j + 1) set_shift(j[2:0], lane_sh[8*j +: 8]);
            sq_req <= 1'b0; win_start <= 1'b0;
            case (state)
            S_IDLE, S_DONE: if (start) begin   // from S_DONE: a second run needs no reset
                pc <= 32'd0; fi <= 4'd0; done <= 1'b0; error <= E_NONE; cycles <= 64'd1; waits <= 64'd0; macs <= 64'd0;
                lim <= lim_in;
                dbase <= desc_base;
                state <= S_START;
            end
            S_START: begin   // the plan's limit registered last cycle: now the first descriptor against it
                if ({16'd0, dbase} + 48'd8 > lim) begin
                    state <= S_DONE; done <= 1'b1; error <= E_ADDRESS;   // the first descriptor is outside the plan
                end else begin
                    state <= S_FETCH; sq_req <= 1'b1; sq_addr <= dbase[AW-1:0]; sq_len <= 16'd8;
                end
            end
            S_FETCH: begin   // the descriptor's 8 words
                if (sq_valid) begin
                    dw[fi[2:0]] <= rd0;
                    fi <= fi + 4'd1;
                    if (fi == 4'd7) begin
                        state <= S_DECODE;
                        pd_o_set <= rd0[41:32] != 10'd0; pd_a_set <= rd0[51:42] != 10'd0; pd_b_set <= rd0[61:52] != 10'd0;
                    end
                end
                // (word 0 is in dw[0] from the second word on)
                pd_pool <= is_pool; pd_a_half <= a_half; pd_b_half <= b_half;
                pd_a_rows <= is_pool ? {gH[8:0], 1'b0} : a_half ? hH : gH; pd_b_rows <= b_half ? hH : gH;
                pd_a_W <= is_pool ? {gW[8:0], 1'b0} : a_half ? hW : gW; pd_b_W <= b_half ? hW : gW;
            end
            S_DECODE: begin
                d_last <= gD - 10'd1; h_last <= gH - 10'd1; w_last <= gW - 10'd1;
                hw_a <= {{XW{1'b0}}, a_rows_v} * {{XW{1'b0}}, wa_Wc};
                hw_b <= {{XW{1'b0}}, b_rows_v} * {{XW{1'b0}}, wb_Wc};
                hm_a <= {{XW{1'b0}}, a_rows_m} * {{XW{1'b0}}, wa_Wc};
                hm_b <= {{XW{1'b0}}, b_rows_m} * {{XW{1'b0}}, wb_Wc};
                hw_o <= {{XW{1'b0}}, o_rows} * {{XW{1'b0}}, gW};
                hw_t <= {{XW{1'b0}}, gH} * {{XW{1'b0}}, gW};
                a_hext <= a_near ? {a_rows_v, 1'b0} : {1'b0, a_rows_v};
                ga_off <= {2'd0, a_roff}; gb_off <= {2'd0, b_roff}; ga_hl <= a_hl; gb_hl <= b_hl;
                gt_off <= {2'd0, is_conv ? b_roff : a_roff}; gt_n <= is_conv ? b_rows_v : a_rows_v;
                a_lg <= log2w(a_stride[7:0]); b_lg <= log2w(b_stride[7:0]); o_lg <= log2w(o_stride[7:0]);
                rq_relu <= relu;
                lane_sh <= {L{s_out}}; sh_pending <= 1'b1;
                dec_err <= decode_error;   // registered: the checks stay off the state logic's path
                // the operand windows: A on the full, half (nearest or trilinear up-sampling) or
                // double (max-pool) grid, reaching pad taps (CONV) or one (trilinear); B of an ADD or a fused CONV
                wa_mode <= is_pool ? M_DBL : (a_near || (a_tri && !is_conv)) ? M_HALF : M_FULL;
                wa_p <= is_conv ? pad : {3'd0, a_tri};
                wb_mode <= (b_near || (is_conv && b_tri)) ? M_HALF : M_FULL;
                wb_p <= {3'd0, is_conv && b_tri};
                b_slots <= !fused ? 4'd0 : b_tri ? 4'd8 : 4'd1;   // (from the flags straight to slot_last was the critical path)
                w_two <= (op == OP_ADD || is_conv) && has_b;
                {f_right, f_s, f_ls, f_mask, f_half} <= shift_cfg(s_out);   // the fused add's requantiser
                wa_D <= is_pool ? {gD[8:0], 1'b0} : (a_near || (a_tri && !is_conv)) ? hD : gD;
                wa_W <= is_pool ? {gW[8:0], 1'b0} : (a_near || (a_tri && !is_conv)) ? hW : gW;
                wb_D <= (b_near || (is_conv && b_tri)) ? hD : gD; wb_W <= (b_near || (is_conv && b_tri)) ? hW : gW;
                wa_base <= a_base[AW-1:0]; wb_base <= b_base[AW-1:0];
                state <= S_CHECK;
            end
            S_CHECK: begin
                wa_RW <= {{(AW-10){1'b0}}, wa_W} << a_lg;
                wb_RW <= {{(AW-10){1'b0}}, wb_W} << b_lg;
                wa_PW <= hw_a << a_lg;   // the views' planes (the window streams them back to back)
                wb_PW <= hw_b << b_lg;
                wa_PM <= hm_a << a_lg;   // and their tensors' (the planes' distance in memory)
                wb_PM <= hm_b << b_lg;
                // voxels of each region (the words follow at S_PLAN): one product each
                nv_a <= {{(AW-10){1'b0}}, wa_D} * hw_a;
                nv_b <= {{(AW-10){1'b0}}, wb_D} * hw_b;
                mv_a <= {{(AW-10){1'b0}}, wa_D - 10'd1} * hm_a;   // the planes before the last, in memory
                mv_b <= {{(AW-10){1'b0}}, wb_D - 10'd1} * hm_b;
                mv_o <= {{(AW-10){1'b0}}, gD - 10'd1} * hw_o;
                if (op == OP_END || dec_err != E_NONE) begin
                    state <= S_DONE; done <= 1'b1; error <= dec_err;
                end else state <= S_PLAN;
            end
            S_PLAN: begin
                wa_end <= wa_base + a_words;
                wb_end <= w_two ? wb_base + b_words : wb_base;
                // the regions in memory: the planes before the last at their tensor's distance, then
                // the last plane of the view (of the tile, for the output)
                pa_end <= {16'd0, a_base} + (({{(48-AW){1'b0}}, mv_a} + {{(48-AW){1'b0}}, hw_a}) << a_lg);
                pb_end <= w_two ? {16'd0, b_base} + (({{(48-AW){1'b0}}, mv_b} + {{(48-AW){1'b0}}, hw_b}) << b_lg) : 48'd0;
                po_end <= {16'd0, o_base} + (({{(48-AW){1'b0}}, mv_o} + {{(48-AW){1'b0}}, hw_t}) << o_lg);
                pw_end <= is_conv ? {16'd0, wbase} + 48'd6 : 48'd0;
                state <= S_GO;
            end
            S_GO: begin
                if (pa_end > lim || pb_end > lim || po_end > lim || pw_end > lim) begin
                    state <= S_DONE; done <= 1'b1; error <= E_ADDRESS;
                end else if (is_conv) begin
                    state <= S_LOAD; ocg <= 32'd0; lptr <= wbase; li <= 16'd0; lnum <= 16'hFFFF; e_chk <= 2'b00;
                    lblk <= 0; lsub <= 4'd0;
                    sq_req <= 1'b1; sq_addr <= wbase[AW-1:0]; sq_len <= 16'd6; win_start <= 1'b1;
                end else begin
                    state <= S_RUN; vd <= 0; vh <= 0; vw <= 0; eslot <= 0; grp <= 0; iter_done <= 1'b0; drain <= 5'd0;
                    slot_last <= is_pool ? SL_7 : ((a_tri ? SL_7 : SL_0) + (has_b ? SL_1 : SL_0));
                    grp_last <= n_groups[15:0] - 16'd1;
                    win_start <= 1'b1;
                end
            end
            S_LOAD: begin   // word li of the output group's weights, when one is there
                // the block count's checks, one register stage each, then the blocks' request
                // (their words follow the group's 6-word header)
                e_chk <= {e_chk[0], 1'b0};
                e_far <= {16'd0, lptr} + 48'd6 + {32'd0, e9} > lim;
                if (e_chk[1]) begin
                    if (e_bad) begin state <= S_ABORT; abort_err <= E_BLOCKS; drain <= 5'd0; end   // not 1 .. WBUF_DEPTH
                    else if (e_far) begin state <= S_ABORT; abort_err <= E_ADDRESS; drain <= 5'd0; end   // past the plan
                    else begin sq_req <= 1'b1; sq_addr <= lptr[AW-1:0] + 6; sq_len <= e9; end
                end
                if (sq_valid) li <= li + 16'd1;
                if (!sq_valid) begin
                end else if (li == 16'd0) begin
                    n_entries <= rd0[WB_AW:0];
                    lnum <= 16'd5 + (e_cnt << 3) + e_cnt;   // the last word: 5 + 9E
                    e9 <= (e_cnt << 3) + e_cnt;
                    e_bad <= (rd0[31:0] == 32'd0 || rd0[31:0] > WBUF_DEPTH);
                    e_chk <= 2'b01;
                end else if (li <= 16'd4) begin
                    bias[2 * (li - 1)] <= $signed(f_bias_load ? rd0[63:32] : rd0[31:0]);   // fault: the odd lane's bias
                    bias[2 * (li - 1) + 1] <= $signed(rd0[63:32]);
                end else if (li == 16'd5) begin   // the group's requantiser shifts, byte j = lane j
                    lane_sh <= rd0; sh_pending <= 1'b1;
                end else begin
                    if (lsub == 4'd0 && (lblk & TP_MASK) == 0) hdr[lblk[WB_AW-1:TPL]] <= rd0[31:0];
                    if (lsub == 4'd8) begin lsub <= 4'd0; lblk <= lblk + 1'b1; end
                    else lsub <= lsub + 4'd1;
                end
                if (sq_valid && li == lnum) begin  // the group's last word
                    state <= S_RUN; lptr <= lptr + {16'd0, lnum} + 32'd1;
                    conv_last <= ((n_entries + TP_MASK) >> TPL) - 1'b1; grp_last <= 16'd0; bk <= 3'd0;
                    slot_last <= ((n_entries + TP_MASK) >> TPL) - 1'b1 + {{(WB_AW-3){1'b0}}, b_slots};
                    more_ocg <= (ocg + (f_last_group ? 32'd2 : 32'd1) < n_ocg);   // fault: the last group never runs
                    vd <= 0; vh <= 0; vw <= 0; eslot <= 0; grp <= 0; iter_done <= 1'b0; drain <= 5'd0;
                end
            end
            S_RUN: begin
                if (!iter_done) begin
                    if (ok) begin
                        if (b_slot) bk <= bk + 3'd1;
                        if (!last_slot) eslot <= eslot + 32'd1;
                        else begin
                            eslot <= 32'd0;
                            if (!last_grp) grp <= grp + 32'd1;
                            else begin
                                grp <= 32'd0;
                                if (vw != w_last) vw <= vw + 10'd1;
                                else begin
                                    vw <= 10'd0;
                                    if (vh != h_last) vh <= vh + 10'd1;
                                    else begin vh <= 10'd0; vd <= vd + 10'd1; end
                                end
                                if (last_vox) iter_done <= 1'b1;
                            end
                        end
                    end
                end else begin
                    drain <= drain + 5'd1;
                    if (drain == DRAIN - 1) state <= S_FLUSH;   // the last write is presented to memory now
                end
            end
            S_FLUSH: if (mem_idle && !wr_en_q && !r1_v && !fin_v && !fb1 && !fb2 && !fz_v && !f4_v) begin   // every result in memory
                if (is_conv && more_ocg) begin
                    state <= S_LOAD; ocg <= ocg + 32'd1; li <= 16'd0; lnum <= 16'hFFFF; e_chk <= 2'b00;
                    lblk <= 0; lsub <= 4'd0;
                    sq_req <= 1'b1; sq_addr <= lptr[AW-1:0]; sq_len <= 16'd6; win_start <= 1'b1;
                end else begin
                    pc <= pc + 32'd1; fi <= 4'd0;
                    if (nd_out) begin state <= S_DONE; done <= 1'b1; error <= E_ADDRESS; end
                    else begin state <= S_FETCH; sq_req <= 1'b1; sq_addr <= next_desc[AW-1:0]; sq_len <= 16'd8; end
                end
            end
            S_ABORT: begin   // the pipeline drained, nothing left on the bus: stop with the error
                if (drain != 5'd31) drain <= drain + 5'd1;
                else if (mem_idle && !wr_en_q) begin state <= S_DONE; done <= 1'b1; error <= abort_err; end
            end
            default: ;
            endcase
            if ((state == S_LOAD || state == S_RUN) && win_err) begin   // a row's words exceed the buffer
                state <= S_ABORT; abort_err <= E_WINDOW; drain <= 5'd0;
            end

            // I0 -> A0: the slot
            a0_v <= i_v; a0_rd <= i_v && s_rd; a0_first <= i_first; a0_last <= i_last; a0_isb <= s_isb;
            a0_kind <= s_kind; a0_coef <= s_coef; a0_shift <= s_shift; a0_e <= i_e;
            a0_sd <= sd; a0_sh <= sh; a0_sw <= sw; a0_hw <= s_hw; a0_sgW <= sgW;
            a0_od <= i_d; a0_oh <= i_h; a0_ow <= i_w;
            a0_base <= s_base[AW-1:0]; a0_lg <= s_lg; a0_grp <= s_grp[AW-1:0];
            a0_og <= i_og[AW-1:0];
            // A1: d * (H*W) and h * W (operand and output)
            a1_v <= a0_v; a1_rd <= a0_rd; a1_isb <= a0_isb; a1_first <= a0_first; a1_last <= a0_last; a1_kind <= a0_kind;
            a1_coef <= a0_coef; a1_shift <= a0_shift; a1_e <= a0_e;
            a1_pd <= {{XW{1'b0}}, a0_sd} * a0_hw;
            a1_ph <= {{XW{1'b0}}, a0_sh} * {{XW{1'b0}}, a0_sgW};
            a1_opd <= {{XW{1'b0}}, a0_od} * hw_o;
            a1_oph <= {{XW{1'b0}}, a0_oh} * {{XW{1'b0}}, gW};
            a1_sw <= a0_sw; a1_ow <= a0_ow;
            a1_base <= a0_base; a1_lg <= a0_lg; a1_grp <= a0_grp; a1_og <= a0_og;
            // A2: voxel = d*H*W + h*W + w
            a2_v <= a1_v; a2_rd <= a1_rd; a2_isb <= a1_isb; a2_first <= a1_first; a2_last <= a1_last; a2_kind <= a1_kind;
            a2_coef <= a1_coef; a2_shift <= a1_shift; a2_e <= a1_e;
            a2_vox <= a1_pd + (f_voxel_index ? {AW{1'b0}} : a1_ph) + {{XW{1'b0}}, a1_sw};   // fault: forgets h * W
            a2_ovox <= a1_opd + a1_oph + {{XW{1'b0}}, a1_ow};
            a2_base <= a1_base; a2_lg <= a1_lg; a2_grp <= a1_grp; a2_og <= a1_og;
            // A3: voxel x words per voxel; base + group
            b_v <= a2_v; b_rd <= a2_rd; b_isb <= a2_isb; b_first <= a2_first; b_last <= a2_last; b_kind <= a2_kind;
            b_coef <= a2_coef; b_shift <= a2_shift; b_e <= a2_e;
            b_prod <= a2_vox << a2_lg; b_bg <= a2_base + a2_grp;
            b_oprod <= a2_ovox << o_lg; b_obg <= o_base[AW-1:0] + a2_og + {{(AW-1){1'b0}}, f_out_group};   // fault: one group over
            // A4: the request leaves (memory ports above); the output address
            rd0_en <= req_en; rd0_addr <= req_addr; rd0_b <= b_isb;
            a3_v <= b_v; a3_rd <= b_rd; a3_first <= b_first; a3_last <= b_last; a3_kind <= b_kind;
            a3_coef <= b_coef; a3_shift <= b_shift; a3_e <= b_e;
            a3_oaddr <= b_oprod + b_obg;
            // M: the memory reads; the weight block is read from the banks (wq)
            p1_v <= a3_v; p1_rd <= a3_rd; p1_first <= a3_first; p1_last <= a3_last;
            p1_kind <= a3_kind; p1_coef <= a3_coef; p1_shift <= a3_shift; p1_oaddr <= a3_oaddr;
            // P1a .. P1c: operands registered beside each multiplier, product, product again (accel_mul8;
            // q_lane above)
            qa_v <= p0_v; qa_first <= p0_first; qa_last <= p0_last; qa_kind <= p0_kind; qa_oaddr <= p0_oaddr;
            qa_shift <= p0_shift;
            qb_v <= qa_v; qb_first <= qa_first; qb_last <= qa_last; qb_kind <= qa_kind; qb_oaddr <= qa_oaddr;
            qb_shift <= qa_shift;
            q_v <= qb_v; q_first <= qb_first; q_last <= qb_last; q_kind <= qb_kind; q_oaddr <= qb_oaddr;
            q_shift <= qb_shift;
            // P2a: pair sums registered (psum, q2_lane above)
            q2_v <= q_v; q2_first <= q_first; q2_last <= q_last; q2_kind <= q_kind; q2_oaddr <= q_oaddr;
            // P2b: each port's lane sums registered (ps_b, q3_lane above); P2c: the ports' sum registered
            q3_v <= q2_v; q3_first <= q2_first; q3_last <= q2_last; q3_kind <= q2_kind; q3_oaddr <= q2_oaddr;
            p2_v <= q3_v; p2_first <= q3_first; p2_last <= q3_last; p2_kind <= q3_kind; p2_oaddr <= q3_oaddr;
            for (j = 0; j < L; j = j + 1) p2_part[j] <= part[j];
            // P3: accumulate; the last slot of an output word hands it to the requantiser
            fin_v <= 1'b0;
            fb1 <= 1'b0;
            if (p2_v && fused && p2_kind != K_CONV) begin   // a fused add's B slot: B's aligned sum
                // (fault: B's sum never restarts: each voxel's adds the ones before)
                for (j = 0; j < L; j = j + 1) fbv[j] <= (p2_first && !f_fused_sum ? 32'sd0 : fbv[j]) + p2_part[j];
                fb1 <= p2_last; fa1 <= p2_oaddr;
            end else if (p2_v) begin
                for (j = 0; j < L; j = j + 1) begin
                    if (p2_kind == K_MAX) begin
                        // (fault: the minimum of the block)
                        acc[j] <= (p2_first || (f_maxpool_min ? p2_part[j] < acc[j] : p2_part[j] > acc[j])) ? p2_part[j] : acc[j];
                        fin[j] <= (p2_first || (f_maxpool_min ? p2_part[j] < acc[j] : p2_part[j] > acc[j])) ? p2_part[j] : acc[j];
                    end else begin
                        acc[j] <= (p2_first ? (p2_kind == K_CONV ? bias[j] : 32'sd0) : acc[j]) + p2_part[j];
                        fin[j] <= (p2_first ? (p2_kind == K_CONV ? bias[j] : 32'sd0) : acc[j]) + p2_part[j];
                    end
                end
                fin_v <= p2_last; fin_addr <= p2_oaddr;
            end
            // P4: requantise (g_rq); P5: the write leaves registered (a fused add's: F1, F2, its own
            // requantiser, two cycles later)
            r1_v <= fin_v; r1_addr <= fin_addr;
            fb2 <= fb1; fa2 <= fa1;
            fz_v <= fb2; fza <= fa2;
            f4_v <= fz_v; f4_addr <= fza;
            wr_en_q <= fused ? f4_v : r1_v;
            wr_addr <= fused ? f4_addr : r1_addr;
            for (j = 0; j < L; j = j + 1) wr_data[8*j +: 8] <= fused ? f_q[j] : r2_q[j];
        end
    end

    // weight banks, one per port and output lane (block e of a group in port e % TP's banks at
    // e / TP): written while loading, read while the memory reads the slot's words (the blocks
    // are in wq during P1)
    wire bank_we = ld_word && (li > 16'd6);
    generate for (gq = 0; gq < TP; gq = gq + 1) begin : g_bank_port
        for (gj = 0; gj < L; gj = gj + 1) begin : g_bank
            localparam [3:0] LSUB = gj + 1;
            localparam [WB_AW:0] GQ = gq;
            reg [63:0] mem_b [0:WBUF_DEPTH/TP-1];
            reg [63:0] q;
            always @(posedge clk) begin
                // (fault: each lane's bank takes the word before its own)
                if (bank_we && lsub == LSUB - {3'd0, f_weight_row} && (lblk & TP_MASK) == GQ) mem_b[lblk[WB_AW-1:TPL]] <= rd0;
                q <= mem_b[a3_e[WB_AW-1-TPL:0]];
            end
            assign wq[64*(L*gq + gj) +: 64] = q;
        end
    end endgenerate

    // the memory unit: the AXI4 master, the operand windows, the stream, the write queue
    wire abort = (state == S_ABORT), flush = (state == S_FLUSH) || abort;   // an abort drains the writes too
    accel_mem #(.AW(AW), .TP(TP), .BW(BW)) u_mem (
        .clk(clk), .rst(rst), .clear(start && (state == S_IDLE || state == S_DONE)), .sq_req(sq_req), .sq_addr(sq_addr), .sq_len(sq_len), .sq_valid(sq_valid), .sq_data(rd0),
        .win_start(win_start), .win_two(w_two), .a_base(wa_base), .a_end(wa_end), .b_base(wb_base), .b_end(wb_end),
        .a_chunk(wa_PW), .a_pitch(wa_PM), .b_chunk(wb_PW), .b_pitch(wb_PM),
        .a_lo(rel_a[15]), .b_lo(rel_b[15]), .a_fill(a_fill), .b_fill(b_fill),
        .rd_en(rd_en), .rd_addr(rd_addr), .rd_b(rd0_b), .rd_data(rd_data),
        .wr_en(wr_en), .wr_addr(wr_addr), .wr_data(wr_data), .wr_room(wr_room), .flush(flush), .abort(abort),
        .idle(mem_idle), .n_reads(n_reads), .n_writes(n_writes),
        `ACCEL_AXI_MASTER_CONNECT);
endmodule

// An int8 x int8 product with its operands registered in front of the multiplier and the product
// registered twice behind it (P1a, P1b, P1c), kept as its own instance. Synthesised for the ECP5
// (`hw.rtl_synth` defines ECP5_DSP) it is one MULT18X18D with its own input, pipeline and output
// registers in that order, the same three cycles: with 128 multipliers spread over the die, the
// routing from fabric registers to a far multiplier and back was the critical path, and the
// block's own registers have none. Elsewhere (Verilator, other tools) the same registers in
// fabric logic; the DSP configuration has no simulation model in the open tools, so the
// simulated engine is the fabric form (hw/ACCEL.md).
(* keep_hierarchy *)
module accel_mul8 (
    input  wire              clk,
    input  wire        [7:0] a,
    input  wire        [7:0] b,
    output wire signed [15:0] p
);
`ifdef ECP5_DSP
    wire [17:0] ax = {{10{a[7]}}, a};
    wire [17:0] bx = {{10{b[7]}}, b};
    wire [35:0] px;
    MULT18X18D #(
        .REG_INPUTA_CLK("CLK0"), .REG_INPUTB_CLK("CLK0"), .REG_PIPELINE_CLK("CLK0"), .REG_OUTPUT_CLK("CLK0"),
        .REG_INPUTA_CE("CE0"), .REG_INPUTB_CE("CE0"), .REG_PIPELINE_CE("CE0"), .REG_OUTPUT_CE("CE0"),
        .REG_INPUTA_RST("RST0"), .REG_INPUTB_RST("RST0"), .REG_PIPELINE_RST("RST0"), .REG_OUTPUT_RST("RST0"),
        .REG_INPUTC_CLK("NONE"), .GSR("DISABLED"), .SOURCEB_MODE("B_SHIFT"), .MULT_BYPASS("DISABLED"), .RESETMODE("SYNC")
    ) u_dsp (
        .A0(ax[0]), .A1(ax[1]), .A2(ax[2]), .A3(ax[3]), .A4(ax[4]), .A5(ax[5]), .A6(ax[6]), .A7(ax[7]), .A8(ax[8]),
        .A9(ax[9]), .A10(ax[10]), .A11(ax[11]), .A12(ax[12]), .A13(ax[13]), .A14(ax[14]), .A15(ax[15]), .A16(ax[16]), .A17(ax[17]),
        .B0(bx[0]), .B1(bx[1]), .B2(bx[2]), .B3(bx[3]), .B4(bx[4]), .B5(bx[5]), .B6(bx[6]), .B7(bx[7]), .B8(bx[8]),
        .B9(bx[9]), .B10(bx[10]), .B11(bx[11]), .B12(bx[12]), .B13(bx[13]), .B14(bx[14]), .B15(bx[15]), .B16(bx[16]), .B17(bx[17]),
        .C0(1'b0), .C1(1'b0), .C2(1'b0), .C3(1'b0), .C4(1'b0), .C5(1'b0), .C6(1'b0), .C7(1'b0), .C8(1'b0),
        .C9(1'b0), .C10(1'b0), .C11(1'b0), .C12(1'b0), .C13(1'b0), .C14(1'b0), .C15(1'b0), .C16(1'b0), .C17(1'b0),
        .SIGNEDA(1'b1), .SIGNEDB(1'b1), .SOURCEA(1'b0), .SOURCEB(1'b0),
        .CLK0(clk), .CLK1(1'b0), .CLK2(1'b0), .CLK3(1'b0), .CE0(1'b1), .CE1(1'b0), .CE2(1'b0), .CE3(1'b0),
        .RST0(1'b0), .RST1(1'b0), .RST2(1'b0), .RST3(1'b0),
        .P0(px[0]), .P1(px[1]), .P2(px[2]), .P3(px[3]), .P4(px[4]), .P5(px[5]), .P6(px[6]), .P7(px[7]), .P8(px[8]),
        .P9(px[9]), .P10(px[10]), .P11(px[11]), .P12(px[12]), .P13(px[13]), .P14(px[14]), .P15(px[15]),
        .P16(px[16]), .P17(px[17]), .P18(px[18]), .P19(px[19]), .P20(px[20]), .P21(px[21]), .P22(px[22]), .P23(px[23]), .P24(px[24]), .P25(px[25]),
        .P26(px[26]), .P27(px[27]), .P28(px[28]), .P29(px[29]), .P30(px[30]), .P31(px[31]), .P32(px[32]), .P33(px[33]), .P34(px[34]), .P35(px[35])
    );
    assign p = px[15:0];
`else
    reg signed [7:0] ar, br;
    reg signed [15:0] pr, pq;
    always @(posedge clk) begin
        ar <= a; br <= b;
        pr <= ar * br;
        pq <= pr;
    end
    assign p = pq;
`endif
endmodule

// One lane's requantiser, two stages (P4, P5): round half to even on a right shift by s, exact
// left shift by ls (<= 15), one clamp to [-128 or 0 with relu, 127]. mask and half are the
// shift's, registered with it by the caller (shift_cfg in accel).
module accel_requant (
    input  wire               clk,
    input  wire signed [31:0] x,
    input  wire               right,
    input  wire [4:0]         s,
    input  wire [4:0]         ls,
    input  wire [31:0]        mask,
    input  wire [31:0]        half,
    input  wire               relu,
    output wire [7:0]         q
);
`include "accel_faults.vh"
    reg signed [31:0] fl;
    reg signed [47:0] left;
    reg gt, eq;
    wire [31:0] rem = x & mask;
    always @(posedge clk) begin   // P4: shift, remainder against the half
        fl <= x >>> s;
        left <= $signed({{16{x[31]}}, x}) <<< ls;
        gt <= f_round_half_up ? (rem >= half) : (rem > half);   // (fault: ties round up)
        eq <= (rem == half);
    end
    // P5: round, clamp. The clamp is decided on the shifted value before rounding: adding the
    // rounding bit to 127 or to lo - 1 lands on 128 or lo, which clamp to the same 127 or lo.
    wire up = gt | (eq & fl[0]);
    wire signed [47:0] lo = relu ? 48'sd0 : -48'sd128;
    wire signed [47:0] fl48 = $signed({{16{fl[31]}}, fl});
    wire signed [47:0] v = right ? fl48 : left;
    wire [7:0] low8 = right ? fl[7:0] + {7'd0, up} : left[7:0];
    // (fault: wrap instead of saturating)
    assign q = f_no_saturation ? ((relu && v < 0) ? 8'd0 : low8) : (v >= 48'sd127) ? 8'd127 : (v < lo) ? lo[7:0] : low8;
endmodule

// A 64-bit register (zeroed when `zero`), kept as its own instance so that synthesis leaves
// copies of it apart and placement can put each beside the logic it feeds.
(* keep_hierarchy *)
module accel_word_reg (
    input  wire        clk,
    input  wire        zero,
    input  wire [63:0] d,
    output reg  [63:0] q
);
    always @(posedge clk) q <= zero ? 64'd0 : d;
endmodule
`default_nettype wire
