"""Reading .npy files that come from outside (a device's dumps, a user's images): the header
is checked against the file's size before any data is read.

    from hw.npy import read_npy
    q = read_npy(path, dtypes=("int8",), shape=[1, 3, 32, 40, 32])
    img = read_npy(path, kinds="iuf", ndim=3)        # integer or float, finite

numpy only. Refused with an NpyError (a ValueError naming the file): a missing or unreadable
file, a bad magic or header, object or complex data, a header whose shape and dtype do not
account for exactly the bytes that follow it (a truncated file, or one claiming 10^15
elements), an unexpected dtype, shape or rank, NaN or inf in float data. `np.load` itself
would raise EOFError, MemoryError or unpickle objects for some of these.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


class NpyError(ValueError):
    pass


def read_npy(path: str | Path, dtypes: tuple[str, ...] | None = None, shape: list[int] | None = None,
             ndim: int | None = None, kinds: str = "biuf") -> np.ndarray:
    """The array in `path`, checked: dtype kind in `kinds` (b bool, i/u integer, f float), dtype
    name in `dtypes` if given, exactly `shape` or `ndim` axes if given; float data finite."""
    path = Path(path)
    if not path.is_file():
        raise NpyError(f"{path}: missing (expected a .npy file)")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shp, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    shp, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"format version {version}")
            except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors...
                raise NpyError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
            if dtype.hasobject or dtype.fields is not None or dtype.kind not in kinds:
                raise NpyError(f"{path}: dtype {dtype} is not allowed here (kinds {kinds!r})")
            if dtypes is not None and dtype.name not in dtypes:
                raise NpyError(f"{path}: dtype {dtype.name}, expected {' or '.join(dtypes)}")
            if any(not isinstance(n, int) or n < 0 for n in shp):
                raise NpyError(f"{path}: invalid shape {shp} in the header")
            if shape is not None and list(shp) != list(shape):
                raise NpyError(f"{path}: shape {list(shp)}, expected {list(shape)}")
            if ndim is not None and len(shp) != ndim:
                raise NpyError(f"{path}: {len(shp)} axes {list(shp)}, expected {ndim}")
            n = math.prod(shp)
            data_bytes = size - f.tell()
            if n * dtype.itemsize != data_bytes:
                raise NpyError(f"{path}: the header says {list(shp)} {dtype} ({n * dtype.itemsize} bytes), "
                               f"the file holds {data_bytes} bytes of data: truncated or corrupted")
            a = np.frombuffer(f.read(data_bytes), dtype=dtype, count=n)
    except OSError as e:
        raise NpyError(f"{path}: cannot read ({e.strerror or e})") from None
    a = a.reshape(shp, order="F" if fortran else "C")
    if dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise NpyError(f"{path}: {int(np.count_nonzero(~np.isfinite(a)))} NaN or inf value(s)")
    return a.copy(order="C")  # writable, C order (ascontiguousarray would turn a 0-d array 1-d)
