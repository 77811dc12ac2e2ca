"""The picture a person checks a registration with, written as a PNG with numpy and zlib alone.

    write_png(path, qc_image(fixed, moving, warped, ddf, fixed_labels))

One row per plane through the centre of the working grid (axial: x across, y up; coronal: x
across, z up; sagittal: y across, z up), four panels per row:

    fixed | moving (before registration) | warped moving, the fixed labels' contours over it
    | Jacobian determinant of the field: blue below 1 (compression), white 1, red above 1
      (expansion, full red at 2), folding (det J <= 0) in yellow

Each panel is magnified by a whole factor (nearest neighbour) to at least QC_PIXELS across, so
every voxel is a square block. Images are shown on [0, 1] (the working grid's normalisation).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

QC_PIXELS = 160
GAP = 4
# label contour colours (RGB), cycled over the label codes in order of appearance
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195]], np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as a PNG file (8-bit RGB, no filtering, one IDAT chunk)."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"png: expected an (H, W, 3) image, got {rgb.shape}")
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, 3 * w)], 1).tobytes()  # filter 0 per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_png(path: Path, rgb: np.ndarray) -> None:
    from model.artifacts import atomic_write_bytes

    atomic_write_bytes(Path(path), png_bytes(rgb))


def planes(vol: np.ndarray) -> list[np.ndarray]:
    """The three central slices of (X, Y, Z), each as rows top to bottom, columns left to right."""
    x, y, z = (n // 2 for n in vol.shape[:3])
    return [vol[:, :, z].T[::-1], vol[:, y, :].T[::-1], vol[x, :, :].T[::-1]]


def gray(img: np.ndarray) -> np.ndarray:
    v = np.clip(np.nan_to_num(img.astype(np.float64)), 0, 1)
    return np.repeat(np.rint(v * 255).astype(np.uint8)[..., None], 3, 2)


def jacobian_colours(det: np.ndarray) -> np.ndarray:
    """det J -> RGB: 1 white, towards 0 blue, towards 2 red, <= 0 yellow."""
    d = np.nan_to_num(det.astype(np.float64), nan=1.0)
    t = np.clip(d - 1, -1, 1)
    out = np.full((*d.shape, 3), 255.0)
    low, high = t < 0, t > 0
    out[low, 0] = out[low, 1] = 255 * (1 + t[low])   # fade to blue
    out[high, 1] = out[high, 2] = 255 * (1 - t[high])  # fade to red
    out[d <= 0] = [255, 215, 0]
    return np.rint(out).astype(np.uint8)


def magnify(panel: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(panel, k, 0), k, 1)


def draw_contours(rgb: np.ndarray, labels: np.ndarray, codes: list[int]) -> np.ndarray:
    """Colour the pixels of `labels` (same H, W as rgb) that differ from a 4-neighbour, per label."""
    out = rgb.copy()
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    for k, c in enumerate(codes):
        out[edge & (labels == c)] = PALETTE[k % len(PALETTE)]
    return out


def qc_image(fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray, ddf: np.ndarray,
             fixed_labels: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the module docstring's grid of panels. Volumes (X, Y, Z) on one grid,
    ddf (3, X, Y, Z) voxels, fixed_labels (X, Y, Z) integer codes or None (no contours)."""
    from model.metrics import jacobian_determinant

    shape = fixed.shape
    for name, v in (("moving", moving), ("warped", warped), ("fixed_labels", fixed_labels)):
        if v is not None and v.shape != shape:
            raise ValueError(f"qc: {name} {v.shape} is not on the fixed grid {shape}")
    if ddf.shape != (3, *shape):
        raise ValueError(f"qc: ddf {ddf.shape} does not match the grid {shape}")
    k = max(1, -(-QC_PIXELS // max(shape)))
    codes = [] if fixed_labels is None else [int(c) for c in np.unique(fixed_labels) if c != 0]
    det = jacobian_determinant(np.asarray(ddf, np.float64))
    columns = [[magnify(gray(p), k) for p in planes(fixed)], [magnify(gray(p), k) for p in planes(moving)],
               [magnify(gray(p), k) for p in planes(warped)], [magnify(jacobian_colours(p), k) for p in planes(det)]]
    if fixed_labels is not None:
        columns[2] = [draw_contours(img, magnify(lab, k), codes) for img, lab in zip(columns[2], planes(fixed_labels))]
    rows = []
    for r in range(3):
        cells = [col[r] for col in columns]
        h = max(c.shape[0] for c in cells)
        padded = []
        for c in cells:
            cell = np.zeros((h, c.shape[1] + GAP, 3), np.uint8)
            cell[:c.shape[0], :c.shape[1]] = c
            padded.append(cell)
        rows.append(np.concatenate(padded, 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.concatenate([r, np.zeros((r.shape[0], width - r.shape[1], 3), np.uint8)], 1) for r in rows]
    return np.concatenate([np.concatenate([r, np.zeros((GAP, width, 3), np.uint8)], 0) for r in rows], 0)
