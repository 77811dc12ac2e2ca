"""The integer reference (the definition the hardware must meet), golden vectors, verification, crosscheck."""
