"""The EIE binary program format: a versioned header, the instructions, a CRC-32 trailer.

Layout, little-endian::

    magic  b"CIRCEIE\\0"   8 bytes
    version u16 (=2), reserved u16 (=0), payload length u64
    payload: instruction count u32, then per instruction a kind byte and its fields
    crc32 u32 of everything before it

Kinds: 1 Load (name, dst, dims), 2 SpMV, 3 Store (src, name, dims), 4 Im2Col (src, dst,
window), 5 Unpatch (src, dst, positions u32), 6 Pool (src, dst, kind u8 0=max 1=avg,
count_include_pad u8, window). Dims are a u8 rank and u32 each; a window is 13 u32 (channels,
height, width, kernel 2, stride 2, pads 4, dilation 2). Version 1 (MLPs only, before the
convolution steps) is not read. Strings are u16 length + UTF-8. An SpMV stores its sizes, bit widths and pointer width, the
codebook and bias as float32, the column pointers as u16 or u32 (as the hardware would,
:attr:`SpMV.pointer_bits`), and its entries bit-packed: ``v`` bits per codebook index then
``z`` bits per relative index, so the file size of a layer is its modelled storage plus a few
header bytes. Reading checks the magic, version, length and checksum before anything else;
every problem is a BackendError naming the file.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from backends import framing
from backends.eie.isa import Im2Col, Load, Pool, Program, SpMV, Store, Unpatch, Window

MAGIC = b"CIRCEIE\0"
VERSION = 2
_KIND = {Load: 1, SpMV: 2, Store: 3, Im2Col: 4, Unpatch: 5, Pool: 6}
_POOL_KINDS = ("max", "avg")
_WINDOW = struct.Struct("<13I")
MAX_RANK = 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """``values`` (non-negative, < 2**bits) packed ``bits`` each, least significant first."""
    values = np.asarray(values, dtype=np.uint32)
    planes = (values[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, count: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits,
                           bitorder="little").reshape(count, bits)
    return planes.astype(np.int64) @ (np.int64(1) << np.arange(bits, dtype=np.int64))



def _dims(dims: tuple) -> bytes:
    return struct.pack(f"<B{len(dims)}I", len(dims), *dims)


def _window(window: Window) -> bytes:
    return _WINDOW.pack(window.channels, window.height, window.width, *window.kernel,
                        *window.stride, *window.pads, *window.dilation)


def encode(program: Program) -> bytes:
    """The binary form of ``program``."""
    parts = [struct.pack("<I", len(program.instructions))]
    for ins in program.instructions:
        parts.append(bytes([_KIND[type(ins)]]))
        if isinstance(ins, Load):
            parts += [framing.string(ins.name), framing.string(ins.dst), _dims(ins.shape)]
        elif isinstance(ins, Store):
            parts += [framing.string(ins.src), framing.string(ins.name), _dims(ins.shape)]
        elif isinstance(ins, Im2Col):
            parts += [framing.string(ins.src), framing.string(ins.dst), _window(ins.window)]
        elif isinstance(ins, Unpatch):
            parts += [framing.string(ins.src), framing.string(ins.dst),
                      struct.pack("<I", ins.positions)]
        elif isinstance(ins, Pool):
            parts += [framing.string(ins.src), framing.string(ins.dst),
                      struct.pack("<BB", _POOL_KINDS.index(ins.kind), int(ins.count_include_pad)),
                      _window(ins.window)]
        else:
            pointer_type = np.uint16 if ins.pointer_bits == 16 else np.uint32
            parts += [framing.string(ins.layer), framing.string(ins.src), framing.string(ins.dst),
                      struct.pack("<IIIBBBBQ", ins.rows, ins.cols, ins.pes, ins.v_bits, ins.z_bits,
                                  int(ins.relu), ins.pointer_bits, ins.entries),
                      ins.codebook.astype("<f4").tobytes(), ins.bias.astype("<f4").tobytes(),
                      ins.col_ptr.astype(np.dtype(pointer_type).newbyteorder("<")).tobytes(),
                      pack_bits(ins.code, ins.v_bits), pack_bits(ins.rel, ins.z_bits)]
    return framing.seal(MAGIC, VERSION, b"".join(parts))


class _Reader(framing.Reader):
    def dims(self) -> tuple:
        (rank,) = self.unpack("<B")
        if rank > MAX_RANK:
            raise self.corrupt(f"rank {rank}")
        return self.unpack(f"<{rank}I")

    def window(self, what: str) -> Window:
        values = self.unpack(_WINDOW.format)
        window = Window(*values[:3], values[3:5], values[5:7], values[7:11], values[11:13])
        problem = window.problem()
        if problem is not None:
            raise self.corrupt(f"{what}: {problem}")
        return window


def decode(data: bytes, source: str = "<bytes>") -> Program:
    """Parse the binary form; BackendError naming ``source`` if it is not a valid program."""
    start, end = framing.unseal(data, MAGIC, VERSION, "EIE", source)
    reader = _Reader(data, start, end, source, "EIE")
    (count,) = reader.unpack("<I")
    program = Program()
    for _ in range(count):
        kind = reader.take(1)[0]
        if kind == 1:
            name, dst = reader.string(), reader.string()
            program.instructions.append(Load(name, dst, reader.dims()))
        elif kind == 3:
            src, name = reader.string(), reader.string()
            program.instructions.append(Store(src, name, reader.dims()))
        elif kind == 4:
            src, dst = reader.string(), reader.string()
            program.instructions.append(Im2Col(src, dst, reader.window("Im2Col")))
        elif kind == 5:
            src, dst = reader.string(), reader.string()
            program.instructions.append(Unpatch(src, dst, reader.unpack("<I")[0]))
        elif kind == 6:
            src, dst = reader.string(), reader.string()
            pool_kind, include_pad = reader.unpack("<BB")
            if pool_kind >= len(_POOL_KINDS) or include_pad > 1:
                raise reader.corrupt(f"Pool kind {pool_kind}")
            program.instructions.append(Pool(src, dst, _POOL_KINDS[pool_kind],
                                             reader.window("Pool"), bool(include_pad)))
        elif kind == 2:
            program.instructions.append(_read_spmv(reader))
        else:
            raise reader.corrupt(f"unknown instruction kind {kind}")
    reader.finish()
    return program


def _read_spmv(reader: _Reader) -> SpMV:
    layer, src, dst = reader.string(), reader.string(), reader.string()
    rows, cols, pes, v_bits, z_bits, relu, pointer_bits, entries = reader.unpack("<IIIBBBBQ")
    if pes < 1 or not 1 <= v_bits <= 16 or not 2 <= z_bits <= 8 or pointer_bits not in (16, 32):
        raise reader.corrupt(f"SpMV {layer!r} header")
    codebook = reader.array("<f4", 1 << v_bits)
    bias = reader.array("<f4", rows)
    col_ptr = reader.array("<u2" if pointer_bits == 16 else "<u4", pes * (cols + 1))
    col_ptr = col_ptr.astype(np.int64).reshape(pes, cols + 1)
    code = unpack_bits(reader.take((entries * v_bits + 7) // 8), entries, v_bits)
    rel = unpack_bits(reader.take((entries * z_bits + 7) // 8), entries, z_bits)
    pe_ptr = np.concatenate(([0], np.cumsum(col_ptr[:, -1])))
    if pe_ptr[-1] != entries:
        raise reader.corrupt(f"SpMV {layer!r} pointers")
    return SpMV(layer, src, dst, rows, cols, pes, v_bits, z_bits, bool(relu), codebook, bias,
                pe_ptr, col_ptr, code, rel)


def write_program(program: Program, path, protect=()) -> None:
    """Write ``program`` to ``path`` atomically (never over a ``protect`` path)."""
    from circ.fileio import atomic_write

    atomic_write(os.fspath(path), encode(program), protect=protect)


def read_program(path) -> Program:
    """Read a program written by :func:`write_program`; errors name ``path``."""
    return decode(framing.read_file(path, "EIE"), os.fspath(path))
