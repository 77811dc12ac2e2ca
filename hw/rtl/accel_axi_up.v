// accel_axi_up.v: the engine's 64-bit AXI4 master (accel_mem.v) onto a 128-bit AXI4 slave (a
// LiteDRAM port of an x16 DDR3 at 1:2: hw/soc.py).
//
// An engine burst (1..16 words, never across a 16-word boundary) becomes one 128-bit burst over
// the 16-byte beats it touches: address aligned down, (addr[3] + words + 1) / 2 beats. A write's
// halves are packed in order with byte strobes (a burst that starts on an odd word leaves the
// first beat's low half unwritten, one that ends on an even word the last beat's high half); a
// read's beats are split into their halves, the halves outside the burst dropped. So two words a
// beat cross the slave port wherever a burst is longer than one word, and each engine word is
// one half of one beat: the engine's data is moved, never changed.
//
// The slave may see W before AW is accepted by it, but this module takes an engine W beat only
// once it holds that burst's AW (it needs the start half); the engine sends AW without waiting
// for W, as AXI4 allows either order.
`default_nettype none

module accel_axi_up #(
    parameter integer QW = 4    // log2 of the bursts each way this module tracks
) (
    input  wire         clk,
    input  wire         rst,
    // from the engine (64-bit beats, byte addresses)
    input  wire [31:0]  e_araddr,
    input  wire [7:0]   e_arlen,
    input  wire         e_arvalid,
    output wire         e_arready,
    output wire [63:0]  e_rdata,
    output wire         e_rlast,
    output wire         e_rvalid,
    input  wire         e_rready,
    input  wire [31:0]  e_awaddr,
    input  wire [7:0]   e_awlen,
    input  wire         e_awvalid,
    output wire         e_awready,
    input  wire [63:0]  e_wdata,
    input  wire         e_wlast,
    input  wire         e_wvalid,
    output wire         e_wready,
    output wire         e_bvalid,
    input  wire         e_bready,
    // to the memory (128-bit beats)
    output wire [31:0]  u_araddr,
    output wire [7:0]   u_arlen,
    output wire         u_arvalid,
    input  wire         u_arready,
    input  wire [127:0] u_rdata,
    input  wire         u_rlast,
    input  wire         u_rvalid,
    output wire         u_rready,
    output wire [31:0]  u_awaddr,
    output wire [7:0]   u_awlen,
    output wire         u_awvalid,
    input  wire         u_awready,
    output wire [127:0] u_wdata,
    output wire [15:0]  u_wstrb,
    output wire         u_wlast,
    output wire         u_wvalid,
    input  wire         u_wready,
    input  wire         u_bvalid,
    output wire         u_bready
);
    localparam integer QD = 1 << QW;

    // ------------------------------------------------------------ reads
    // per accepted burst: the half its first word is in, and its words
    reg         rq_h [0:QD-1];
    reg [8:0]   rq_n [0:QD-1];
    reg [QW-1:0] rq_wp, rq_rp;
    reg [QW:0]   rq_c;
    wire rq_full = rq_c[QW];
    wire [8:0] ar_words = {1'b0, e_arlen} + 9'd1;
    wire [8:0] ar_beats = ({8'd0, e_araddr[3]} + ar_words + 9'd1) >> 1;
    assign u_araddr = {e_araddr[31:4], 4'b0000};
    assign u_arlen = ar_beats[7:0] - 8'd1;
    assign u_arvalid = e_arvalid && !rq_full;
    assign e_arready = u_arready && !rq_full;
    wire ar_take = e_arvalid && e_arready;

    // the burst being returned: started (half and words left in registers) or about to start
    reg        r_on, r_h;
    reg [8:0]  r_n;
    wire       h_now = r_on ? r_h : rq_h[rq_rp];
    wire [8:0] n_now = r_on ? r_n : rq_n[rq_rp];
    wire       r_have = r_on || rq_c != 0;
    assign e_rvalid = u_rvalid && r_have;
    assign e_rdata = h_now ? u_rdata[127:64] : u_rdata[63:0];
    assign e_rlast = n_now == 9'd1;
    // the beat is used up after its high half or the burst's last word
    assign u_rready = r_have && e_rready && (h_now || n_now == 9'd1);
    wire r_beat = e_rvalid && e_rready;

    always @(posedge clk) begin
        if (ar_take) begin rq_h[rq_wp] <= e_araddr[3]; rq_n[rq_wp] <= ar_words; end
        if (rst) begin
            rq_wp <= {QW{1'b0}}; rq_rp <= {QW{1'b0}}; rq_c <= {(QW+1){1'b0}}; r_on <= 1'b0;
        end else begin
            if (ar_take) rq_wp <= rq_wp + 1'b1;
            if (r_beat) begin
                if (n_now == 9'd1) r_on <= 1'b0;
                else begin r_on <= 1'b1; r_h <= !h_now; r_n <= n_now - 9'd1; end
            end
            // a burst's entry leaves the queue when its first word is returned
            if (r_beat && !r_on) rq_rp <= rq_rp + 1'b1;
            rq_c <= rq_c + {{QW{1'b0}}, ar_take} - {{QW{1'b0}}, r_beat && !r_on};
        end
    end

    // ------------------------------------------------------------ writes
    reg         wq_h [0:QD-1];
    reg [8:0]   wq_n [0:QD-1];
    reg [QW-1:0] wq_wp, wq_rp;
    reg [QW:0]   wq_c;
    wire wq_full = wq_c[QW];
    wire [8:0] aw_words = {1'b0, e_awlen} + 9'd1;
    wire [8:0] aw_beats = ({8'd0, e_awaddr[3]} + aw_words + 9'd1) >> 1;
    assign u_awaddr = {e_awaddr[31:4], 4'b0000};
    assign u_awlen = aw_beats[7:0] - 8'd1;
    assign u_awvalid = e_awvalid && !wq_full;
    assign e_awready = u_awready && !wq_full;
    wire aw_take = e_awvalid && e_awready;

    reg        w_on, w_h, lo_v;
    reg [8:0]  w_n;
    reg [63:0] lo_d;
    wire       wh_now = w_on ? w_h : wq_h[wq_rp];
    wire [8:0] wn_now = w_on ? w_n : wq_n[wq_rp];
    wire       w_have = w_on || wq_c != 0;
    // a low half waits for its high half unless it is the burst's last word
    wire       w_emit = wh_now || wn_now == 9'd1;
    assign u_wvalid = e_wvalid && w_have && w_emit;
    assign u_wdata = wh_now ? {e_wdata, lo_d} : {64'd0, e_wdata};
    assign u_wstrb = wh_now ? {8'hFF, lo_v ? 8'hFF : 8'h00} : 16'h00FF;
    assign u_wlast = wn_now == 9'd1;
    assign e_wready = w_have && (w_emit ? u_wready : 1'b1);
    wire w_beat = e_wvalid && e_wready;
    assign e_bvalid = u_bvalid;
    assign u_bready = e_bready;

    always @(posedge clk) begin
        if (aw_take) begin wq_h[wq_wp] <= e_awaddr[3]; wq_n[wq_wp] <= aw_words; end
        if (w_beat && !w_emit) lo_d <= e_wdata;
        if (rst) begin
            wq_wp <= {QW{1'b0}}; wq_rp <= {QW{1'b0}}; wq_c <= {(QW+1){1'b0}}; w_on <= 1'b0; lo_v <= 1'b0;
        end else begin
            if (aw_take) wq_wp <= wq_wp + 1'b1;
            if (w_beat) begin
                lo_v <= !w_emit;
                if (wn_now == 9'd1) w_on <= 1'b0;
                else begin w_on <= 1'b1; w_h <= !wh_now; w_n <= wn_now - 9'd1; end
            end
            if (w_beat && !w_on) wq_rp <= wq_rp + 1'b1;
            wq_c <= wq_c + {{QW{1'b0}}, aw_take} - {{QW{1'b0}}, w_beat && !w_on};
        end
    end
    // the byte offset inside a word is 0 (whole beats), wlast and rlast follow from the counts
    wire unused = &{1'b0, e_araddr[2:0], e_awaddr[2:0], e_wlast, u_rlast, ar_beats[8], aw_beats[8]};
endmodule
`default_nettype wire
