"""Data, LocalNet, warp, losses, metrics, training, evaluation and registration (the float stage)."""
