"""The DPU binary program format: a versioned header, the tables and instructions, a CRC-32.

Layout, little-endian::

    magic  b"CIRCDPU\\0"   8 bytes
    version u16 (=1), reserved u16 (=0), payload length u64
    payload:
      u32 tensor count, then per tensor: name, u8 rank, u32 dims, i32 exp, u8 signed
      u32 input count, then per input: graph name, tensor name
      u32 layer count, then per layer: name, u8 kind, u8 input count, input names, output
          name, u16 kernel[2], stride[2], pads[4], u32 groups, u8 relu; conv/fc add u8 rank,
          u32 dims, the int8 weights, i32 w_exp and i32 bias per output channel
      u32 instruction count, then per instruction: u8 kind (1 load, 2 loadw, 3 conv, 4 fc,
          5 pool, 6 elew, 7 store) and its fields in order (names as strings, numbers u32)
      u32 output count, then per output: graph name, tensor name
    crc32 u32 of everything before it

Strings are u16 length + UTF-8. Reading checks the magic, version, length and checksum before
anything else, then parses, then checks every table and instruction against the invariants
the simulator relies on (backends/dpu/validate.py); every problem is a one-line BackendError
naming the file.
"""

from __future__ import annotations

import os
import struct

import attrs
import numpy as np

from backends import framing
from backends.dpu.isa import LAYER_KINDS, Conv, Elew, Fc, Layer, Load, LoadW, Pool, Program, \
    Store, TensorDesc
from backends.dpu.validate import DEFAULT_MAX_ELEMENTS, validate
from circ.fileio import atomic_write

MAGIC = b"CIRCDPU\0"
VERSION = 1
_KINDS = {Load: 1, LoadW: 2, Conv: 3, Fc: 4, Pool: 5, Elew: 6, Store: 7}
_CLASSES = {code: cls for cls, code in _KINDS.items()}



def encode(program: Program) -> bytes:
    """The binary form of ``program``."""
    parts = [struct.pack("<I", len(program.tensors))]
    for t in program.tensors.values():
        parts += [framing.string(t.name), struct.pack(f"<B{len(t.shape)}I", len(t.shape), *t.shape),
                  struct.pack("<iB", t.exp, int(t.signed))]
    parts.append(struct.pack("<I", len(program.inputs)))
    for name, tensor in program.inputs:
        parts += [framing.string(name), framing.string(tensor)]
    parts.append(struct.pack("<I", len(program.layers)))
    for layer in program.layers.values():
        parts += [framing.string(layer.name), struct.pack("<BB", LAYER_KINDS.index(layer.kind),
                                                   len(layer.inputs))]
        parts += [framing.string(name) for name in layer.inputs] + [framing.string(layer.output)]
        parts.append(struct.pack("<8HIB", *layer.kernel, *layer.stride, *layer.pads,
                                 layer.groups, int(layer.relu)))
        if layer.kind in ("conv", "fc"):
            shape = layer.weights.shape
            parts += [struct.pack(f"<B{len(shape)}I", len(shape), *shape),
                      layer.weights.astype(np.int8).tobytes(),
                      layer.w_exp.astype("<i4").tobytes(), layer.bias.astype("<i4").tobytes()]
    parts.append(struct.pack("<I", len(program.instructions)))
    for ins in program.instructions:
        parts.append(bytes([_KINDS[type(ins)]]))
        for value in attrs.astuple(ins):
            parts.append(framing.string(value) if isinstance(value, str) else struct.pack("<I", value))
    parts.append(struct.pack("<I", len(program.outputs)))
    for name, tensor in program.outputs:
        parts += [framing.string(name), framing.string(tensor)]
    return framing.seal(MAGIC, VERSION, b"".join(parts))


class _Reader(framing.Reader):
    def shape(self, ranks, limit: int) -> tuple:
        """Dimensions of one of ``ranks``, each >= 1, at most ``limit`` values in all."""
        (rank,) = self.unpack("<B")
        if rank not in ranks:
            raise self.corrupt(f"rank {rank}")
        dims = self.unpack(f"<{rank}I")
        if min(dims) < 1 or int(np.prod(dims, dtype=np.float64)) > limit:
            raise self.corrupt(f"shape {dims}")
        return dims



def decode(data: bytes, source: str = "<bytes>", *,
           max_elements: int = DEFAULT_MAX_ELEMENTS) -> Program:
    """Parse the binary form and :func:`~backends.dpu.validate.validate` it; a one-line
    BackendError naming ``source`` if it is not a valid program. ``max_elements`` bounds the
    activation values per sample (see validate)."""
    start, end = framing.unseal(data, MAGIC, VERSION, "DPU", source)
    reader = _Reader(data, start, end, source, "DPU")
    program = Program()
    for _ in range(reader.unpack("<I")[0]):
        name = reader.string()
        # activations are not stored: bounded by the limit, not by the file's length
        shape = reader.shape((1, 3), max_elements)
        exp, signed = reader.unpack("<iB")
        if name in program.tensors:
            raise reader.corrupt(f"two tensors named {name!r}")
        program.add_tensor(TensorDesc(name, shape, exp, bool(signed)))
    for _ in range(reader.unpack("<I")[0]):
        program.inputs.append((reader.string(), reader.string()))
    for _ in range(reader.unpack("<I")[0]):
        layer = _read_layer(reader)
        if layer.name in program.layers:
            raise reader.corrupt(f"two layers named {layer.name!r}")
        program.add_layer(layer)
    for _ in range(reader.unpack("<I")[0]):
        cls = _CLASSES.get(reader.take(1)[0])
        if cls is None:
            raise reader.corrupt("unknown instruction kind")
        values = [reader.string() if field.type == "str" else reader.unpack("<I")[0]
                  for field in attrs.fields(cls)]
        program.instructions.append(cls(*values))
    for _ in range(reader.unpack("<I")[0]):
        program.outputs.append((reader.string(), reader.string()))
    reader.finish()
    validate(program, source, max_elements=max_elements)
    return program


def _read_layer(reader: _Reader) -> Layer:
    name = reader.string()
    kind_index, count = reader.unpack("<BB")
    if kind_index >= len(LAYER_KINDS):
        raise reader.corrupt(f"layer {name!r} kind")
    inputs = [reader.string() for _ in range(count)]
    output = reader.string()
    numbers = reader.unpack("<8HIB")
    layer = Layer(name, LAYER_KINDS[kind_index], inputs, output, kernel=numbers[0:2],
                  stride=numbers[2:4], pads=numbers[4:8], groups=numbers[8], relu=bool(numbers[9]))
    if layer.kind in ("conv", "fc"):
        # weights are stored: a shape larger than the payload is damage
        shape = reader.shape((4,) if layer.kind == "conv" else (2,), reader.end)
        layer.weights = reader.array("i1", int(np.prod(shape))).reshape(shape)
        layer.w_exp = reader.array("<i4", shape[0])
        layer.bias = reader.array("<i4", shape[0])
    return layer


def write_program(program: Program, path) -> None:
    """Write ``program`` to ``path`` atomically."""
    atomic_write(path, encode(program))


def read_program(path, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Program:
    """Read a program written by :func:`write_program`; errors name ``path``."""
    return decode(framing.read_file(path, "DPU"), os.fspath(path), max_elements=max_elements)
