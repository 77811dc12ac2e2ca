"""Later stage of the toolchain (see README: not built yet)."""
