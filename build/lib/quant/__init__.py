"""Compression of the trained network: pruning with held masks, the Brevitas integer twin, QAT."""
