"""Little-endian byte writer and a bounds-checked reader for circ's binary formats.

:class:`Reader` checks every length and count against the bytes it has left *before* it
allocates or slices anything, so a corrupt or hostile header can never make it allocate more
than the input holds; any inconsistency raises :class:`FormatError`, which the container turns
into a :class:`~circ.errors.ModelError` naming the file and section.
"""

from __future__ import annotations

import struct

import numpy as np

# Element types an array field may hold (no object, string or void dtypes from a file).
ARRAY_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                "float16", "float32", "float64")
_DTYPE_CODE = {name: code for code, name in enumerate(ARRAY_DTYPES)}
MAX_RANK = 32


class FormatError(ValueError):
    """Bytes that do not follow the format; the message says what is wrong."""


def dtype_code(dtype) -> int:
    try:
        return _DTYPE_CODE[np.dtype(dtype).name]
    except KeyError:
        raise FormatError(f"element type {np.dtype(dtype)} cannot be stored") from None


class Writer:
    """Accumulates fields; :meth:`getvalue` returns the bytes."""

    def __init__(self):
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> None:
        self._parts.append(bytes(data))

    def u8(self, value: int) -> None:
        self._parts.append(struct.pack("<B", value))

    def u32(self, value: int) -> None:
        self._parts.append(struct.pack("<I", value))

    def u64(self, value: int) -> None:
        self._parts.append(struct.pack("<Q", value))

    def i64(self, value: int) -> None:
        self._parts.append(struct.pack("<q", value))

    def blob(self, data: bytes) -> None:
        """A length (u64) and the bytes."""
        self.u64(len(data))
        self.raw(data)

    def text(self, value: str) -> None:
        self.blob(value.encode("utf-8"))

    def dtype(self, dtype) -> None:
        self.u8(dtype_code(dtype))

    def shape(self, shape) -> None:
        self.u8(len(shape))
        for dim in shape:
            self.u64(int(dim))

    def array(self, array: np.ndarray) -> None:
        """dtype, shape, then the elements little-endian in C order."""
        array = np.asarray(array)
        self.dtype(array.dtype)
        self.shape(array.shape)
        self.raw(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads fields from ``data``; every read is checked against what is left."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self._data) - self.pos

    def raw(self, count: int, what: str = "data") -> bytes:
        if count < 0 or count > self.left:
            raise FormatError(f"{what} needs {count} bytes but only {self.left} remain")
        out = bytes(self._data[self.pos:self.pos + count])
        self.pos += count
        return out

    def _unpack(self, fmt: str, size: int, what: str) -> int:
        return struct.unpack(fmt, self.raw(size, what))[0]

    def u8(self, what: str = "byte") -> int:
        return self._unpack("<B", 1, what)

    def u32(self, what: str = "u32") -> int:
        return self._unpack("<I", 4, what)

    def u64(self, what: str = "u64") -> int:
        return self._unpack("<Q", 8, what)

    def i64(self, what: str = "i64") -> int:
        return self._unpack("<q", 8, what)

    def blob(self, what: str = "blob") -> bytes:
        return self.raw(self.u64(f"length of {what}"), what)

    def text(self, what: str = "text") -> str:
        try:
            return self.blob(what).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{what} is not UTF-8") from None

    def dtype(self, what: str = "element type") -> np.dtype:
        code = self.u8(what)
        if code >= len(ARRAY_DTYPES):
            raise FormatError(f"{what}: unknown element type code {code}")
        return np.dtype(ARRAY_DTYPES[code])

    def shape(self, what: str = "shape") -> tuple[int, ...]:
        rank = self.u8(f"rank of {what}")
        if rank > MAX_RANK:
            raise FormatError(f"{what} has rank {rank}, more than {MAX_RANK}")
        shape = tuple(self.u64(what) for _ in range(rank))
        # A zero-size shape passes every byte-count check, but NumPy refuses dimensions past intp.
        if count_elements(d for d in shape if d) >= 1 << 62:
            raise FormatError(f"{what} {shape} is too large")
        return shape

    def array(self, what: str = "array") -> np.ndarray:
        dtype = self.dtype(f"element type of {what}")
        shape = self.shape(f"shape of {what}")
        count = count_elements(shape)
        nbytes = count * dtype.itemsize
        if nbytes > self.left:  # checked before the (possibly huge) slice is taken
            raise FormatError(f"{what} of shape {shape} needs {nbytes} bytes but only "
                              f"{self.left} remain")
        data = self.raw(nbytes, what)
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)

    def end(self, what: str) -> None:
        """Fail unless every byte was read."""
        if self.left:
            raise FormatError(f"{self.left} unexpected bytes after {what}")


def count_elements(shape) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
