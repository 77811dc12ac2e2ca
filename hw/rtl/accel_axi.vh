// accel_axi.vh: the IP's bus ports, written once (accel.v, accel_mem.v, accel_ip.v, accel_top.v and
// accel_sim.v include it): the AXI4 master's declarations and the connection of same-named
// ports, the AXI4-Lite slave's likewise.
`ifndef ACCEL_AXI_VH
`define ACCEL_AXI_VH
`define ACCEL_AXI_MASTER_PORTS \
    output wire [31:0] m_araddr, \
    output wire [7:0]  m_arlen, \
    output wire        m_arvalid, \
    input  wire        m_arready, \
    input  wire [63:0] m_rdata, \
    input  wire        m_rlast, \
    input  wire        m_rvalid, \
    output wire        m_rready, \
    output wire [31:0] m_awaddr, \
    output wire [7:0]  m_awlen, \
    output wire        m_awvalid, \
    input  wire        m_awready, \
    output wire [63:0] m_wdata, \
    output wire        m_wlast, \
    output wire        m_wvalid, \
    input  wire        m_wready, \
    input  wire        m_bvalid, \
    output wire        m_bready
`define ACCEL_AXI_MASTER_CONNECT \
    .m_araddr(m_araddr), .m_arlen(m_arlen), .m_arvalid(m_arvalid), .m_arready(m_arready), \
    .m_rdata(m_rdata), .m_rlast(m_rlast), .m_rvalid(m_rvalid), .m_rready(m_rready), \
    .m_awaddr(m_awaddr), .m_awlen(m_awlen), .m_awvalid(m_awvalid), .m_awready(m_awready), \
    .m_wdata(m_wdata), .m_wlast(m_wlast), .m_wvalid(m_wvalid), .m_wready(m_wready), \
    .m_bvalid(m_bvalid), .m_bready(m_bready)
`define ACCEL_AXIL_SLAVE_CONNECT \
    .s_awaddr(s_awaddr), .s_awvalid(s_awvalid), .s_awready(s_awready), .s_wdata(s_wdata), .s_wvalid(s_wvalid), \
    .s_wready(s_wready), .s_bvalid(s_bvalid), .s_bready(s_bready), .s_araddr(s_araddr), .s_arvalid(s_arvalid), \
    .s_arready(s_arready), .s_rdata(s_rdata), .s_rvalid(s_rvalid), .s_rready(s_rready)
`define ACCEL_AXIL_SLAVE_PORTS \
    input  wire [7:0]  s_awaddr, \
    input  wire        s_awvalid, \
    output wire        s_awready, \
    input  wire [31:0] s_wdata, \
    input  wire        s_wvalid, \
    output wire        s_wready, \
    output wire        s_bvalid, \
    input  wire        s_bready, \
    input  wire [7:0]  s_araddr, \
    input  wire        s_arvalid, \
    output wire        s_arready, \
    output wire [31:0] s_rdata, \
    output wire        s_rvalid, \
    input  wire        s_rready
`endif
