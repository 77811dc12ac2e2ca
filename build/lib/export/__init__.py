"""Deployable files: ONNX (fp32, int8 QCDQ, QONNX, register), weights.bin, hex and C header, manifest."""
