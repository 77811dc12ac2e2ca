// accel_ip.v: the accelerator as IP: the engine (accel.v, an AXI4 master on the memory) behind
// an AXI4-Lite register block, with an interrupt (hw/ACCEL.md, "Registers").
//
// Registers (32 bits, byte offsets; 64-bit counters as LO then HI: reading LO latches HI):
//   0x00 CTRL       W: bit 0 START (a run from DESC_BASE); R/W: bit 1 IRQ_ENABLE
//   0x04 STATUS     R: bit 0 BUSY, bit 1 DONE (sticky until the next START), bits 7:4 ERROR;
//                   W: 1 in bit 1 acknowledges the interrupt (DONE stays readable)
//   0x08 DESC_BASE  R/W: word address of the first descriptor
//   0x0C MEM_LIMIT  R/W: words of the memory plan: a run that would read or write at or above
//                   it stops with error 8 (E_ADDRESS)
//   0x10 CYCLES, 0x18 WAITS, 0x20 READS, 0x28 WRITES, 0x30 MACS: the last (or current) run's
//                   cycles, cycles waiting for memory, words read and written, MAC array products
//   0x38 ID         R: 0x4C4E4131 ("LNA1"); 0x3C CONFIG R: TP in bits 3:0, window bits in 11:4,
//                   word address bits in 19:12
`default_nettype none
`include "accel_params.vh"
`include "accel_axi.vh"

module accel_ip #(
    parameter integer AW = `ACCEL_ADDR_BITS,
    parameter integer TP = `ACCEL_TP,
    parameter integer BW = `ACCEL_WINDOW_BITS,
    parameter integer WBUF_DEPTH = `ACCEL_WBUF_DEPTH
) (
    input  wire        clk,
    input  wire        rst,
    output wire        irq,
    // AXI4-Lite slave: the registers
    `ACCEL_AXIL_SLAVE_PORTS,
    // AXI4 master: the memory
    `ACCEL_AXI_MASTER_PORTS
);
    reg bvalid_q, rvalid_q;   // the AXI4-Lite responses, registered
    reg [31:0] rdata_q;
    assign s_bvalid = bvalid_q;
    assign s_rvalid = rvalid_q;
    assign s_rdata = rdata_q;
    wire done;
    wire [3:0] error;
    wire [63:0] cycles, waits, n_reads, n_writes, macs;
    reg start, irq_en, irq_q, ran;
    reg [31:0] desc_base, mem_limit, hi_latch;

    // the engine's AXI4 master (e_*) reaches the port through register slices: AR, AW and W
    // through a skid buffer each (accel_skid.v), R and B through one register each (the engine
    // takes every beat: its rready and bready are 1, so nothing is ever held back there). Every
    // signal on the port is then a flip-flop's output or goes into flip-flops through one level of
    // logic, and the bus's timing stays outside the engine's paths.
    wire [31:0] e_araddr, e_awaddr;
    wire [7:0] e_arlen, e_awlen;
    wire e_arvalid, e_arready, e_rlast, e_rvalid, e_rready, e_awvalid, e_awready, e_wlast, e_wvalid, e_wready;
    wire e_bvalid, e_bready;
    wire [63:0] e_rdata, e_wdata;
    accel #(.AW(AW), .TP(TP), .BW(BW), .WBUF_DEPTH(WBUF_DEPTH)) u_accel (
        .clk(clk), .rst(rst), .start(start), .desc_base(desc_base), .mem_limit(mem_limit),
        .done(done), .error(error), .cycles(cycles), .waits(waits), .n_reads(n_reads), .n_writes(n_writes), .macs(macs),
        .m_araddr(e_araddr), .m_arlen(e_arlen), .m_arvalid(e_arvalid), .m_arready(e_arready),
        .m_rdata(e_rdata), .m_rlast(e_rlast), .m_rvalid(e_rvalid), .m_rready(e_rready),
        .m_awaddr(e_awaddr), .m_awlen(e_awlen), .m_awvalid(e_awvalid), .m_awready(e_awready),
        .m_wdata(e_wdata), .m_wlast(e_wlast), .m_wvalid(e_wvalid), .m_wready(e_wready),
        .m_bvalid(e_bvalid), .m_bready(e_bready));
    accel_skid #(.W(40)) u_ar (.clk(clk), .rst(rst), .in_data({e_arlen, e_araddr}), .in_valid(e_arvalid),
        .in_ready(e_arready), .out_data({m_arlen, m_araddr}), .out_valid(m_arvalid), .out_ready(m_arready));
    accel_skid #(.W(40)) u_aw (.clk(clk), .rst(rst), .in_data({e_awlen, e_awaddr}), .in_valid(e_awvalid),
        .in_ready(e_awready), .out_data({m_awlen, m_awaddr}), .out_valid(m_awvalid), .out_ready(m_awready));
    accel_skid #(.W(65)) u_w (.clk(clk), .rst(rst), .in_data({e_wlast, e_wdata}), .in_valid(e_wvalid),
        .in_ready(e_wready), .out_data({m_wlast, m_wdata}), .out_valid(m_wvalid), .out_ready(m_wready));
    reg r_v, r_last, b_v;
    reg [63:0] r_data;
    always @(posedge clk) begin
        r_v <= m_rvalid && !rst; r_data <= m_rdata; r_last <= m_rlast;
        b_v <= m_bvalid && !rst;
    end
    assign m_rready = e_rready;
    assign m_bready = e_bready;
    assign e_rvalid = r_v;
    assign e_rdata = r_data;
    assign e_rlast = r_last;
    assign e_bvalid = b_v;

    // a write is taken when its address and data are both there and no response is pending
    wire w_take = s_awvalid && s_wvalid && !bvalid_q;
    assign s_awready = w_take;
    assign s_wready = w_take;
    wire r_take = s_arvalid && !rvalid_q;
    assign s_arready = r_take;
    wire busy = ran && !done;
    reg pending;   // a run started whose end has not raised the interrupt yet
    always @(posedge clk) begin
        if (rst) begin
            start <= 1'b0; irq_en <= 1'b0; irq_q <= 1'b0; ran <= 1'b0; bvalid_q <= 1'b0; rvalid_q <= 1'b0;
            desc_base <= 32'd0; mem_limit <= 32'd0; pending <= 1'b0;
        end else begin
            start <= 1'b0;
            if (pending && done && !start) begin irq_q <= 1'b1; pending <= 1'b0; end   // the run ended
            if (bvalid_q && s_bready) bvalid_q <= 1'b0;
            if (w_take) begin
                bvalid_q <= 1'b1;
                case (s_awaddr[7:2])
                    6'h00: begin
                        irq_en <= s_wdata[1];
                        if (s_wdata[0] && !busy && !start) begin start <= 1'b1; ran <= 1'b1; pending <= 1'b1; irq_q <= 1'b0; end
                    end
                    6'h01: if (s_wdata[1]) irq_q <= 1'b0;
                    6'h02: desc_base <= s_wdata;
                    6'h03: mem_limit <= s_wdata;
                    default: ;
                endcase
            end
            if (rvalid_q && s_rready) rvalid_q <= 1'b0;
            if (r_take) begin
                rvalid_q <= 1'b1;
                case (s_araddr[7:2])
                    6'h00: rdata_q <= {30'd0, irq_en, 1'b0};
                    6'h01: rdata_q <= {24'd0, error, 2'd0, done && ran && !start, busy || start};
                    6'h02: rdata_q <= desc_base;
                    6'h03: rdata_q <= mem_limit;
                    6'h04: begin rdata_q <= cycles[31:0];   hi_latch <= cycles[63:32];   end
                    6'h06: begin rdata_q <= waits[31:0];    hi_latch <= waits[63:32];    end
                    6'h08: begin rdata_q <= n_reads[31:0];  hi_latch <= n_reads[63:32];  end
                    6'h0A: begin rdata_q <= n_writes[31:0]; hi_latch <= n_writes[63:32]; end
                    6'h0C: begin rdata_q <= macs[31:0];     hi_latch <= macs[63:32];     end
                    6'h05, 6'h07, 6'h09, 6'h0B, 6'h0D: rdata_q <= hi_latch;
                    6'h0E: rdata_q <= 32'h4C4E4131;
                    6'h0F: rdata_q <= {12'd0, AW[7:0], BW[7:0], TP[3:0]};
                    default: rdata_q <= 32'd0;
                endcase
            end
        end
    end
    assign irq = irq_q && irq_en;
endmodule
`default_nettype wire
