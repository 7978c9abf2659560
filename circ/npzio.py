"""Reading ``.npz`` archives (and single ``.npy`` arrays) that may be damaged or hostile.

``np.load`` trusts the file: a member whose header claims a shape far larger than the bytes
behind it makes NumPy allocate the whole array before reading (a 250-byte file can ask for
64 GiB), and a damaged archive raises whatever ``zipfile`` or ``zlib`` happens to raise
(``NotImplementedError`` for an unknown compression method, ``zlib.error`` for a broken
deflate stream). :func:`read_arrays` checks each header against the member's size, and the
total against a limit, before anything is allocated, and turns every problem into one
:class:`~circ.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from typing import Optional

import numpy as np

from circ import limits
from circ.errors import DataError

DEFAULT_MAX_BYTES = limits.DEFAULT_MAX_TENSOR_BYTES  # of arrays in one file, at the default limit
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError,
                zlib.error, struct.error, SyntaxError)


def read_arrays(path, *, max_bytes: Optional[int] = None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path``, name -> array (a ``.npy`` file gives one
    array named ``""``). Raises :class:`DataError` for anything unreadable or too large: the
    arrays together may hold ``max_bytes`` (default: :func:`circ.limits.max_tensor_bytes`)."""
    path = os.fspath(path)
    if max_bytes is None:
        max_bytes = limits.max_tensor_bytes()
    try:
        with open(path, "rb") as handle:
            if handle.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
                handle.seek(0)
                return {"": _read_npy(handle, os.path.getsize(path), max_bytes)}
            handle.seek(0)
            arrays = {}
            with zipfile.ZipFile(handle) as archive:
                for info in archive.infolist():
                    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    if name in arrays:
                        raise DataError(f"holds two arrays named {name!r}")
                    with archive.open(info) as member:
                        arrays[name] = _read_npy(member, info.file_size, max_bytes)
                    max_bytes -= arrays[name].nbytes
            return arrays
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    except _READ_ERRORS as err:
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None


def _read_npy(stream, size: int, max_bytes: int) -> np.ndarray:
    """One ``.npy`` array from ``stream``, which holds ``size`` bytes in all."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise DataError(f"array format version {version[0]}.{version[1]} is not supported")
    if dtype.hasobject:
        raise DataError("holds Python objects, which are never loaded (pickles can run code)")
    count = math.prod(int(d) for d in shape)
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes:
        raise DataError(f"an array of shape {tuple(shape)} ({nbytes} bytes) exceeds the limit "
                        f"of {max_bytes} bytes {limits.hint()}")
    if nbytes > size:  # checked before the read: the header may claim far more than is there
        raise DataError(f"an array of shape {tuple(shape)} needs {nbytes} bytes but the file "
                        f"holds {size}")
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise DataError(f"an array of shape {tuple(shape)} is truncated ({len(data)} of {nbytes} bytes)")
    array = np.frombuffer(bytearray(data), dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")
