"""Measurements: Table 1 accuracy and sizes (accuracy.py), latency per backend (latency.py)."""
