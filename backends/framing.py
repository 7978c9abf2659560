"""The envelope both backends' program files share, and the bounded reader of their payloads.

A program file is, little-endian::

    magic       8 bytes (b"CIRCEIE\\0", b"CIRCDPU\\0")
    version     u16, reserved u16 (=0), payload length u64
    payload     what the backend's encode module writes
    crc32       u32 of everything before it

:func:`unseal` checks the magic, version, length and checksum before a byte of the payload is
parsed, and :class:`Reader` never reads past the payload; every problem is a one-line
:class:`~circ.errors.BackendError` naming the file. Strings are a u16 length and UTF-8.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from circ.errors import BackendError

_HEADER = struct.Struct("<8sHHQ")


def seal(magic: bytes, version: int, payload: bytes) -> bytes:
    """The whole file: header, ``payload``, checksum."""
    body = _HEADER.pack(magic, version, 0, len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def unseal(data: bytes, magic: bytes, version: int, kind: str, source: str) -> tuple[int, int]:
    """Where the payload of a checked file lies: ``(start, end)``. ``kind`` ("EIE", "DPU")
    names the format in errors."""
    if len(data) < _HEADER.size + 4:
        raise BackendError(f"{source}: not {_article(kind)} {kind} program (truncated: {len(data)} bytes)")
    found, found_version, _, length = _HEADER.unpack_from(data)
    if found != magic:
        raise BackendError(f"{source}: not {_article(kind)} {kind} program (bad magic)")
    if found_version != version:
        raise BackendError(f"{source}: {kind} program format version {found_version}, this circ "
                           f"reads version {version}")
    end = _HEADER.size + length
    if len(data) != end + 4:
        raise BackendError(f"{source}: {kind} program truncated or padded ({len(data)} bytes, "
                           f"header says {end + 4})")
    (stored,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) != stored:
        raise BackendError(f"{source}: {kind} program checksum mismatch (file is corrupt)")
    return _HEADER.size, end


def _article(kind: str) -> str:
    return "an" if kind[:1] in "AEIOU" else "a"


def string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<H", len(raw)) + raw


def read_file(path, kind: str) -> bytes:
    """The bytes of ``path``; a BackendError naming it when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise BackendError(f"{os.fspath(path)}: cannot read {kind} program ({error.strerror})") from None


class Reader:
    """Reads fields from ``data[position:end]``; anything past ``end`` is corruption."""

    def __init__(self, data: bytes, position: int, end: int, source: str, kind: str):
        self.data, self.position, self.end, self.source, self.kind = data, position, end, source, kind

    def corrupt(self, what: str) -> BackendError:
        return BackendError(f"{self.source}: corrupt {self.kind} program ({what})")

    def take(self, count: int) -> bytes:
        if count < 0 or self.position + count > self.end:
            raise self.corrupt(f"field past the end at byte {self.position}")
        chunk = self.data[self.position:self.position + count]
        self.position += count
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        (length,) = self.unpack("<H")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt("bad name") from None

    def array(self, dtype: str, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype)

    def finish(self) -> None:
        if self.position != self.end:
            raise self.corrupt("trailing bytes in payload")
