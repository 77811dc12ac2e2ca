// accel_faults.vh: fault injection for tests/test_rtl.py (hw/ACCEL.md, "Fault injection"),
// included in the body of each module with a fault site. A FAULT_SELECT build (simulation only,
// `hw.rtl_sim --fault FAULT_<NAME>`) has every site built in; f_<name> is 1 when the simulation
// starts with the plusarg +FAULT_<NAME>, so one build serves every fault. Any other build has
// every f_ a constant 0, and synthesis folds the sites away.
`ifdef FAULT_SELECT
    reg f_round_half_up, f_no_saturation, f_voxel_index, f_out_group, f_nearest_half, f_trilinear_coef, f_bias_load, f_weight_row, f_maxpool_min, f_fused_sum, f_tap_offset, f_pad_bounds, f_last_group, f_drain_short;
    initial begin
        f_round_half_up = $test$plusargs("FAULT_ROUND_HALF_UP");
        f_no_saturation = $test$plusargs("FAULT_NO_SATURATION");
        f_voxel_index = $test$plusargs("FAULT_VOXEL_INDEX");
        f_out_group = $test$plusargs("FAULT_OUT_GROUP");
        f_nearest_half = $test$plusargs("FAULT_NEAREST_HALF");
        f_trilinear_coef = $test$plusargs("FAULT_TRILINEAR_COEF");
        f_bias_load = $test$plusargs("FAULT_BIAS_LOAD");
        f_weight_row = $test$plusargs("FAULT_WEIGHT_ROW");
        f_maxpool_min = $test$plusargs("FAULT_MAXPOOL_MIN");
        f_fused_sum = $test$plusargs("FAULT_FUSED_SUM");
        f_tap_offset = $test$plusargs("FAULT_TAP_OFFSET");
        f_pad_bounds = $test$plusargs("FAULT_PAD_BOUNDS");
        f_last_group = $test$plusargs("FAULT_LAST_GROUP");
        f_drain_short = $test$plusargs("FAULT_DRAIN_SHORT");
    end
`else
    localparam [0:0] f_round_half_up = 1'b0;
    localparam [0:0] f_no_saturation = 1'b0;
    localparam [0:0] f_voxel_index = 1'b0;
    localparam [0:0] f_out_group = 1'b0;
    localparam [0:0] f_nearest_half = 1'b0;
    localparam [0:0] f_trilinear_coef = 1'b0;
    localparam [0:0] f_bias_load = 1'b0;
    localparam [0:0] f_weight_row = 1'b0;
    localparam [0:0] f_maxpool_min = 1'b0;
    localparam [0:0] f_fused_sum = 1'b0;
    localparam [0:0] f_tap_offset = 1'b0;
    localparam [0:0] f_pad_bounds = 1'b0;
    localparam [0:0] f_last_group = 1'b0;
    localparam [0:0] f_drain_short = 1'b0;
`endif
