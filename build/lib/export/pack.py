"""Packing of integer weight tensors into bytes, and back: the payload encodings of weights.bin.

Values are taken in C order of the tensor (for a convolution weight (C_out, C_in, kD, kH, kW)).

    int8, dense     one byte per value, two's complement, range [-127, 127]
    int4, dense     two values per byte: element 2i in the LOW nibble, 2i+1 in the HIGH nibble,
                    two's complement nibbles, range [-7, 7]; an odd count pads the last high
                    nibble with 0.  Example: [1, -2, 3] -> bytes 0xE1 0x03
    bitmask         ceil(n / 8) bytes of a keep-mask, element i at bit (i % 8) of byte i // 8
                    (LSB first), then the non-zero values only, packed as the dense encoding
                    of their bit width.  Example (int8): [0, 5, 0, -1] -> 0x0A, 0x05 0xFF

`encode_weights` picks whichever of dense and bitmask is smaller (dense on a tie), and
`decode_weights` inverts it exactly; both check the range first.
"""
from __future__ import annotations

import numpy as np

DENSE, BITMASK = 0, 1


def check_range(q: np.ndarray, bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"bit width must be 4 or 8, got {bits}")
    if not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"weights must be integers, got {q.dtype}")
    lim = 2 ** (bits - 1) - 1  # narrow range: -lim .. lim
    if q.size and (q.min() < -lim or q.max() > lim):
        raise ValueError(f"int{bits} weights out of [-{lim}, {lim}]: min {q.min()}, max {q.max()}")


def pack_values(v: np.ndarray, bits: int) -> bytes:
    """1-D integers -> dense bytes of width `bits` (see the module docstring)."""
    v = np.asarray(v, dtype=np.int64).ravel()
    if bits == 8:
        return v.astype(np.int8).tobytes()
    nib = (v & 0xF).astype(np.uint8)
    if len(nib) % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_values(buf: bytes, n: int, bits: int) -> np.ndarray:
    """Dense bytes -> `n` int8 values (inverse of pack_values)."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    if bits == 8:
        if len(raw) != n:
            raise ValueError(f"{len(raw)} bytes for {n} int8 values")
        return raw.view(np.int8).copy()
    if len(raw) != (n + 1) // 2:
        raise ValueError(f"{len(raw)} bytes for {n} int4 values")
    nib = np.empty(2 * len(raw), dtype=np.uint8)
    nib[0::2], nib[1::2] = raw & 0xF, raw >> 4
    nib = nib[:n].astype(np.int8)
    return np.where(nib > 7, nib - 16, nib).astype(np.int8)


def dense_bytes(n: int, bits: int) -> int:
    return n if bits == 8 else (n + 1) // 2


def encode_weights(q: np.ndarray, bits: int) -> tuple[int, bytes]:
    """Integer tensor -> (encoding, payload), the smaller of dense and bitmask."""
    check_range(q, bits)
    flat = q.ravel()
    keep = flat != 0
    nz = int(keep.sum())
    if (len(flat) + 7) // 8 + dense_bytes(nz, bits) < dense_bytes(len(flat), bits):
        mask = np.packbits(keep, bitorder="little").tobytes()
        return BITMASK, mask + pack_values(flat[keep], bits)
    return DENSE, pack_values(flat, bits)


def decode_weights(encoding: int, payload: bytes, shape: tuple[int, ...], bits: int) -> np.ndarray:
    """(encoding, payload) -> int8 tensor of `shape` (inverse of encode_weights)."""
    n = int(np.prod(shape))
    if encoding == DENSE:
        return unpack_values(payload, n, bits).reshape(shape)
    if encoding != BITMASK:
        raise ValueError(f"unknown weight encoding {encoding}")
    nmask = (n + 7) // 8
    if len(payload) < nmask:
        raise ValueError(f"bitmask payload of {len(payload)} bytes is shorter than its {nmask}-byte mask")
    keep = np.unpackbits(np.frombuffer(payload[:nmask], dtype=np.uint8), bitorder="little")[:n].astype(bool)
    out = np.zeros(n, dtype=np.int8)
    out[keep] = unpack_values(payload[nmask:], int(keep.sum()), bits)
    return out.reshape(shape)
