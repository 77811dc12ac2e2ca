// accel_mem.v: the engine's memory unit (hw/ACCEL.md, "Memory"). Everything the engine reads or
// writes crosses one AXI4 master port as bursts of consecutive 64-bit words:
//
// - the descriptor and weight stream: words asked for by the controller, delivered in order on
//   sq_valid / sq_data (the controller takes one every cycle it is offered one);
// - the operand windows: operand A (and B with HAS_B) streamed in address order into an on-chip
//   circular buffer of 2^BW words (half each when there are two operands; one copy per read
//   port), never more than `cap` words ahead of the lowest word still to be read (a_lo, b_lo);
//   a spatial tile's operand is a view, streamed plane after plane (`chunk` words of each plane,
//   planes `pitch` words apart in memory) and held in the buffer back to back;
//   the run's reads (TP per cycle, the word the next cycle, as from an ideal memory) come from
//   there, so each operand word crosses the bus once per pass however many taps read it;
// - the write queue: the results, coalesced into bursts of consecutive addresses (at most 16
//   words, never across a 16-word boundary).
//
// Bursts never cross a 16-word (128-byte) boundary, so never a 4 KiB one. Up to 8 read bursts
// are in flight; the read data channel is always ready (every beat has a place reserved).
`default_nettype none
`include "accel_params.vh"

module accel_mem #(
    parameter integer AW = `ACCEL_ADDR_BITS,   // word address bits
    parameter integer TP = `ACCEL_TP,    // run read ports
    parameter integer BW = `ACCEL_WINDOW_BITS,   // log2 of the window buffer's words
    parameter integer QW = 6     // log2 of the write queue's depth
) (
    input  wire              clk,
    input  wire              rst,
    input  wire              clear,       // a run starts: the beat counters restart
    // descriptor and weight stream: [sq_addr, sq_addr + sq_len) appended to the stream
    input  wire              sq_req,
    input  wire [AW-1:0]     sq_addr,
    input  wire [15:0]       sq_len,
    output reg               sq_valid,
    output reg  [63:0]       sq_data,
    // operand windows
    input  wire              win_start,   // new run: stream [a_base, a_end) and [b_base, b_end)
    input  wire              win_two,     // two operands: half the buffer each
    input  wire [AW-1:0]     a_base,
    input  wire [AW-1:0]     a_end,
    input  wire [AW-1:0]     b_base,
    input  wire [AW-1:0]     b_end,
    // a tile's view (hw/ACCEL.md, "Spatial tiling"): the window takes `chunk` words of each
    // plane, planes `pitch` words apart in memory (pitch == chunk: one contiguous region)
    input  wire [AW-1:0]     a_chunk,
    input  wire [AW-1:0]     a_pitch,
    input  wire [AW-1:0]     b_chunk,
    input  wire [AW-1:0]     b_pitch,
    input  wire [AW-1:0]     a_lo,        // no word below these is read again
    input  wire [AW-1:0]     b_lo,
    output reg  [AW-1:0]     a_fill,      // every word in [base, fill) is in the buffer
    output reg  [AW-1:0]     b_fill,
    // the run's reads (registered requests; the word the next cycle)
    input  wire [TP-1:0]     rd_en,
    input  wire [TP*AW-1:0]  rd_addr,
    input  wire              rd_b,        // port 0 reads operand B
    output wire [64*TP-1:0]  rd_data,
    // the results
    input  wire              wr_en,
    input  wire [AW-1:0]     wr_addr,
    input  wire [63:0]       wr_data,
    output reg               wr_room,     // room for every write the pipeline can still produce (data and burst queues)
    input  wire              flush,       // close the open write burst
    input  wire              abort,       // cancel every stream (what is in flight still arrives)
    output wire              idle,        // nothing requested, in flight or queued
    output reg  [63:0]       n_reads,     // read beats since the run started
    output reg  [63:0]       n_writes,    // write beats since the run started
    // AXI4 master (one ID, INCR bursts of 8-byte beats; the wrapper ties the constant fields)
    output reg  [31:0]       m_araddr,
    output reg  [7:0]        m_arlen,
    output reg               m_arvalid,
    input  wire              m_arready,
    input  wire [63:0]       m_rdata,
    input  wire              m_rlast,
    input  wire              m_rvalid,
    output wire              m_rready,
    output reg  [31:0]       m_awaddr,
    output reg  [7:0]        m_awlen,
    output reg               m_awvalid,
    input  wire              m_awready,
    output wire [63:0]       m_wdata,
    output wire              m_wlast,
    output wire              m_wvalid,
    input  wire              m_wready,
    input  wire              m_bvalid,
    output wire              m_bready
);
    localparam [AW:0] FULL = 1 << BW, HALF = 1 << (BW - 1);
    localparam [1:0] C_SEQ = 2'd0, C_A = 2'd1, C_B = 2'd2;

    // ------------------------------------------------------------ read streams
    reg [AW-1:0] sq_ptr, sq_end, a_ptr, a_stop, b_ptr, b_stop;
    reg two, rr;   // two operands; round robin between A and B
    wire [AW:0] cap = two ? HALF : FULL;
    // words a stream may request now: up to its end, a window also up to lo + cap
    function [AW:0] room(input [AW:0] lim, input [AW-1:0] ptr);   // words from ptr up to lim
        room = (lim > {1'b0, ptr}) ? lim - {1'b0, ptr} : {(AW+1){1'b0}};
    endfunction
    // the window streams' limits, registered: the lower of the end and lo + cap
    reg [AW:0] e_a, e_b;
    wire [AW:0] r_sq = room({1'b0, sq_end}, sq_ptr), r_a = room(e_a, a_ptr), r_b = room(e_b, b_ptr);
    // the window streams' memory addresses: a_ptr, b_ptr count the view's words (the buffer's
    // order), a_mp, b_mp where they are in memory; a tiled stream's burst ends with its plane's
    // chunk (a_left words left, ending at view word a_cend), then jumps to the next plane's; the
    // chunk's end limits the stream through its registered stop (a_stopc), a cycle or two late,
    // so never too far
    reg [AW-1:0] a_mp, b_mp, a_left, b_left, a_skip, b_skip, a_len, b_len, a_cend, b_cend, a_stopc, b_stopc;
    reg a_jump, b_jump;
    // a burst: to the next 16-word boundary at most
    function [4:0] blen(input [3:0] ptr, input [AW:0] r);   // ptr: the low 4 address bits
        reg [4:0] b;
        begin
            b = 5'd16 - {1'b0, ptr};
            blen = (r < {{(AW-4){1'b0}}, b}) ? r[4:0] : b;
        end
    endfunction

    // in-flight bursts, in order: client and length
    reg [1:0] tg_c [0:7];
    reg [2:0] tg_wp, tg_rp;
    reg [3:0] tg_n;
    // each stream's next burst length, registered from its pointers (the arithmetic stays off the
    // issue logic): a stream that has just issued, or whose pointers were just set, waits a cycle
    // for its length to catch up; a length computed from an older low mark or end is never too long
    reg [4:0] l_sq, l_a, l_b;
    reg fresh, fresh2;   // no stream start, request or abort in the last cycle / two: the lengths are current
    reg [2:0] went;   // the stream that issued last cycle (sq, A, B)
    wire ok_sq = fresh2 && !went[0] && (l_sq != 5'd0);
    wire ok_a = fresh2 && !went[1] && (l_a != 5'd0);
    wire ok_b = fresh2 && !went[2] && (l_b != 5'd0);
    wire ar_free = !m_arvalid || m_arready;
    wire pick_sq = ok_sq;
    wire pick_a = !pick_sq && ok_a && (!rr || !ok_b);
    wire pick_b = !pick_sq && !pick_a && ok_b;
    wire issue = ar_free && (tg_n < 4'd8) && !abort && (pick_sq || pick_a || pick_b);
    wire [AW-1:0] iptr = pick_sq ? sq_ptr : pick_a ? a_mp : b_mp;
    wire [4:0] ilen = pick_sq ? l_sq : pick_a ? l_a : l_b;
    wire r_beat = m_rvalid;   // always ready
    wire r_done = r_beat && m_rlast;
    assign m_rready = 1'b1;
    wire [1:0] r_c = tg_c[tg_rp];

    // window buffers: one copy per read port, each written with every window beat, a cycle after
    // it arrives (registered: the buffers are spread over many block RAMs); a_arr, b_arr: where
    // the next beat goes, a_fill, b_fill: what has been written
    reg [AW-1:0] a_arr, b_arr;
    wire [BW-1:0] w_idx = two ? {r_c == C_B, (r_c == C_B ? b_arr[BW-2:0] : a_arr[BW-2:0])} : a_arr[BW-1:0];
    wire w_we = r_beat && (r_c != C_SEQ);
    reg w_we_r, w_b_r;
    reg [BW-1:0] w_idx_r;
    reg [63:0] w_data_r;
    genvar t;
    generate for (t = 0; t < TP; t = t + 1) begin : g_win
        reg [63:0] buffer [0:(1 << BW)-1];
        reg [63:0] q;
        wire [AW-1:0] ra = rd_addr[AW*t +: AW];
        wire [BW-1:0] r_idx = two ? {(t == 0) && rd_b, ra[BW-2:0]} : ra[BW-1:0];
        always @(posedge clk) begin
            if (w_we_r) buffer[w_idx_r] <= w_data_r;
            if (rd_en[t]) q <= buffer[r_idx];
        end
        assign rd_data[64*t +: 64] = q;
    end endgenerate

    always @(posedge clk) begin
        if (rst) begin
            sq_ptr <= {AW{1'b0}}; sq_end <= {AW{1'b0}}; a_ptr <= {AW{1'b0}}; a_stop <= {AW{1'b0}};
            b_ptr <= {AW{1'b0}}; b_stop <= {AW{1'b0}}; a_fill <= {AW{1'b0}}; b_fill <= {AW{1'b0}};
            a_arr <= {AW{1'b0}}; b_arr <= {AW{1'b0}}; w_we_r <= 1'b0;
            a_mp <= {AW{1'b0}}; b_mp <= {AW{1'b0}}; a_jump <= 1'b0; b_jump <= 1'b0;
            a_stopc <= {AW{1'b0}}; b_stopc <= {AW{1'b0}}; a_cend <= {AW{1'b0}}; b_cend <= {AW{1'b0}};
            two <= 1'b0; rr <= 1'b0; tg_wp <= 3'd0; tg_rp <= 3'd0; tg_n <= 4'd0; m_arvalid <= 1'b0;
            fresh <= 1'b0; fresh2 <= 1'b0; went <= 3'd0; e_a <= {(AW+1){1'b0}}; e_b <= {(AW+1){1'b0}}; l_sq <= 5'd0; l_a <= 5'd0; l_b <= 5'd0;
            sq_valid <= 1'b0; n_reads <= 64'd0;
        end else begin
            sq_valid <= r_beat && (r_c == C_SEQ);
            l_sq <= blen(sq_ptr[3:0], r_sq); l_a <= blen(a_mp[3:0], r_a); l_b <= blen(b_mp[3:0], r_b);
            fresh <= !(sq_req || win_start || abort);
            fresh2 <= fresh && !(sq_req || win_start || abort);
            a_stopc <= (a_jump && a_cend < a_stop) ? a_cend : a_stop;
            b_stopc <= (b_jump && b_cend < b_stop) ? b_cend : b_stop;
            e_a <= ({1'b0, a_lo} + cap < {1'b0, a_stopc}) ? {1'b0, a_lo} + cap : {1'b0, a_stopc};
            e_b <= ({1'b0, b_lo} + cap < {1'b0, b_stopc}) ? {1'b0, b_lo} + cap : {1'b0, b_stopc};
            went <= {issue && pick_b, issue && pick_a, issue && pick_sq};
            sq_data <= m_rdata;
            if (r_beat) n_reads <= n_reads + 64'd1;
            if (clear) n_reads <= 64'd0;
            w_we_r <= w_we; w_b_r <= (r_c == C_B); w_idx_r <= w_idx; w_data_r <= m_rdata;
            if (w_we && r_c == C_A) a_arr <= a_arr + 1'b1;
            if (w_we && r_c == C_B) b_arr <= b_arr + 1'b1;
            if (w_we_r && !w_b_r) a_fill <= a_fill + 1'b1;
            if (w_we_r && w_b_r) b_fill <= b_fill + 1'b1;
            if (m_arready) m_arvalid <= 1'b0;
            if (issue) begin
                m_arvalid <= 1'b1;
                m_araddr <= {{(29-AW){1'b0}}, iptr, 3'b000};
                m_arlen <= {3'd0, ilen - 5'd1};
                tg_c[tg_wp] <= pick_sq ? C_SEQ : pick_a ? C_A : C_B;
                tg_wp <= tg_wp + 3'd1;
                if (pick_sq) sq_ptr <= sq_ptr + {{(AW-5){1'b0}}, ilen};
                if (pick_a) begin
                    a_ptr <= a_ptr + {{(AW-5){1'b0}}, ilen}; rr <= 1'b1;
                    if (a_jump && {{(AW-5){1'b0}}, ilen} == a_left) begin
                        a_mp <= a_mp + {{(AW-5){1'b0}}, ilen} + a_skip; a_left <= a_len; a_cend <= a_cend + a_len;
                    end
                    else begin a_mp <= a_mp + {{(AW-5){1'b0}}, ilen}; a_left <= a_left - {{(AW-5){1'b0}}, ilen}; end
                end
                if (pick_b) begin
                    b_ptr <= b_ptr + {{(AW-5){1'b0}}, ilen}; rr <= 1'b0;
                    if (b_jump && {{(AW-5){1'b0}}, ilen} == b_left) begin
                        b_mp <= b_mp + {{(AW-5){1'b0}}, ilen} + b_skip; b_left <= b_len; b_cend <= b_cend + b_len;
                    end
                    else begin b_mp <= b_mp + {{(AW-5){1'b0}}, ilen}; b_left <= b_left - {{(AW-5){1'b0}}, ilen}; end
                end
            end
            if (r_done) tg_rp <= tg_rp + 3'd1;
            tg_n <= tg_n + {3'd0, issue} - {3'd0, r_done};
            if (sq_req)   // appended to the stream (a new one when the last is all requested)
                begin
                    if (sq_ptr == sq_end) sq_ptr <= sq_addr;
                    sq_end <= ((sq_ptr == sq_end) ? sq_addr : sq_end) + {{(AW-16){1'b0}}, sq_len};
                end
            if (win_start) begin
                two <= win_two;
                a_ptr <= a_base; a_stop <= a_end; a_fill <= a_base; a_arr <= a_base;
                b_ptr <= b_base; b_stop <= b_end; b_fill <= b_base; b_arr <= b_base;
                a_mp <= a_base; a_left <= a_chunk; a_len <= a_chunk; a_skip <= a_pitch - a_chunk; a_jump <= (a_pitch != a_chunk);
                b_mp <= b_base; b_left <= b_chunk; b_len <= b_chunk; b_skip <= b_pitch - b_chunk; b_jump <= (b_pitch != b_chunk);
                a_cend <= a_base + a_chunk; b_cend <= b_base + b_chunk;
                a_stopc <= (a_pitch != a_chunk && a_base + a_chunk < a_end) ? a_base + a_chunk : a_end;
                b_stopc <= (b_pitch != b_chunk && b_base + b_chunk < b_end) ? b_base + b_chunk : b_end;
            end
            if (abort) begin a_stop <= a_ptr; b_stop <= b_ptr; sq_end <= sq_ptr; end
        end
    end

    // ------------------------------------------------------------ write queue
    localparam integer QD = 1 << QW;
    localparam integer ROOM_I = QD - 32;
    localparam [QW:0] ROOM = ROOM_I[QW:0];   // the pipeline behind the iterator holds at most 24 results (+ 2 registered)
    // the results enter registered (the coalescing logic then starts from registers)
    reg wi_en;
    reg [AW-1:0] wi_addr;
    reg [63:0] wi_data;
    reg [63:0] wq_d [0:QD-1];
    reg        wq_last [0:QD-1];
    reg [QW-1:0] wq_wp, wq_rp;
    reg [QW:0]   wq_n;
    reg ob_v;                   // the open burst: its first address, length and next address
    reg [AW-1:0] ob_a, ob_next;
    reg [4:0] ob_l;
    reg [AW-1:0] wb_a [0:QD-1]; // closed bursts waiting for the address channel
    reg [4:0]    wb_l [0:QD-1];
    reg [QW-1:0] wb_wp, wb_rp;
    reg [QW:0]   wb_n;
    reg [QW:0]   b_out;         // bursts whose response is outstanding
    // a burst never crosses a 16-word boundary, so it is full when its next address starts a block
    wire ob_full = (ob_next[3:0] == 4'd0);
    // wi_addr == ob_next, compared a cycle early from registers (ob_next after a write is its
    // address + 1, else unchanged): the equality no longer precedes close and wb_n in one cycle
    reg wi_seq;
    wire extend = ob_v && !ob_full && wi_seq;
    wire close = ob_v && (wi_en ? !extend : (ob_full || flush));
    wire w_beat = m_wvalid && m_wready;
    wire aw_take = (wb_n != 0) && (!m_awvalid || m_awready);
    // the head's beat may leave once its burst is closed (it is not among the open burst's)
    assign m_wvalid = (wq_n != 0) && !(ob_v && wq_n <= {{(QW-4){1'b0}}, ob_l});
    assign m_wdata = wq_d[wq_rp];
    assign m_wlast = wq_last[wq_rp];
    assign m_bready = 1'b1;
    always @(posedge clk) begin
        wi_en <= wr_en && !rst; wi_addr <= wr_addr; wi_data <= wr_data;
        wi_seq <= wr_addr == (wi_en ? wi_addr + 1'b1 : ob_next);
        if (wi_en) begin wq_d[wq_wp] <= wi_data; wq_last[wq_wp] <= 1'b0; end
        if (close) wq_last[wq_wp - 1'b1] <= 1'b1;
        if (close) begin wb_a[wb_wp] <= ob_a; wb_l[wb_wp] <= ob_l; end
        if (aw_take) begin
            m_awaddr <= {{(29-AW){1'b0}}, wb_a[wb_rp], 3'b000};
            m_awlen <= {3'd0, wb_l[wb_rp] - 5'd1};
        end
        if (rst) begin
            wq_wp <= {QW{1'b0}}; wq_rp <= {QW{1'b0}}; wq_n <= {(QW+1){1'b0}}; ob_v <= 1'b0;
            wb_wp <= {QW{1'b0}}; wb_rp <= {QW{1'b0}}; wb_n <= {(QW+1){1'b0}}; b_out <= {(QW+1){1'b0}};
            m_awvalid <= 1'b0; wr_room <= 1'b0; n_writes <= 64'd0;
        end else begin
            if (wi_en) wq_wp <= wq_wp + 1'b1;
            if (w_beat) begin wq_rp <= wq_rp + 1'b1; n_writes <= n_writes + 64'd1; end
            if (clear) n_writes <= 64'd0;
            wq_n <= wq_n + {{QW{1'b0}}, wi_en} - {{QW{1'b0}}, w_beat};
            if (wi_en) begin
                if (extend) begin ob_l <= ob_l + 5'd1; ob_next <= ob_next + 1'b1; end
                else begin ob_v <= 1'b1; ob_a <= wi_addr; ob_l <= 5'd1; ob_next <= wi_addr + 1'b1; end
            end else if (close) ob_v <= 1'b0;
            if (close) wb_wp <= wb_wp + 1'b1;
            if (aw_take) wb_rp <= wb_rp + 1'b1;
            wb_n <= wb_n + {{QW{1'b0}}, close} - {{QW{1'b0}}, aw_take};
            if (m_awready) m_awvalid <= 1'b0;
            if (aw_take) m_awvalid <= 1'b1;
            b_out <= b_out + {{QW{1'b0}}, aw_take} - {{QW{1'b0}}, m_bvalid};
            wr_room <= (wq_n <= ROOM - 2) && (wb_n <= ROOM - 2);
        end
    end

    assign idle = (sq_ptr == sq_end) && (a_ptr == a_stop) && (b_ptr == b_stop) && (tg_n == 4'd0) && !m_arvalid && !w_we_r &&
                  !wi_en && (wq_n == 0) && !ob_v && (wb_n == 0) && !m_awvalid && (b_out == 0);
endmodule
`default_nettype wire
