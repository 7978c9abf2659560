"""The ``.circ`` container: a compressed model in one file, read back bit-exactly.

:func:`save_circ` writes a graph, :func:`load_circ` reads it; the byte layout is in
``docs/circ-format.md``. In short: a header (magic, format version, section count, CRC32),
then sections — the graph structure (an ONNX ``ModelProto`` without initializers), then one
section per constant holding its representation (raw arrays, masks, codebooks, quantization
parameters, Huffman tables and bitstreams) — each framed with its kind, name, length and
CRC32, then an end section with the file length and a CRC32 of everything before it.

Reading validates every length and count against the bytes that are left before anything is
allocated, checks every checksum, and then decodes every coded tensor once (which checks its
bitstreams and warms the tensor's cache). Any truncation, flipped bit or inconsistency raises
:class:`~circ.errors.ModelError` naming the file and the section.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Optional

import attrs
import numpy as np
import onnx

from circ.codecs import bits
from circ.codecs.binio import FormatError, Reader, Writer, count_elements
from circ.codecs.coded import Coded
from circ import limits
from circ.errors import ModelError
from circ.fileio import atomic_write
from circ.graph import Graph
from circ.tensors import Clustered, Dense, Quantized, Tensor

MAGIC = b"\x89CIRC\r\n\x1a"  # PNG-style: non-ASCII first byte, CR-LF and ^Z catch text-mode damage
VERSION = (1, 0)  # (major, minor): a reader refuses another major version
HEADER = struct.Struct("<8sHHI")  # magic, major, minor, section count; then CRC32 of these
SECTION_HEAD = struct.Struct("<4sH")  # kind, name length; then name, u64 payload length
END = struct.Struct("<4sQ")  # b"CEND", file length; then CRC32 of every byte before it
CRC = struct.Struct("<I")
DEFAULT_MAX_ELEMENTS = 1 << 30  # a decoded tensor's elements at the default limit (4 GiB of float32)

GRAPH_KIND = b"GRPH"
TENSOR_KIND = b"TNSR"
END_KIND = b"CEND"
# Representation codes of a TNSR payload.
DENSE, CLUSTERED, QUANTIZED, CODED = range(4)


def is_circ_path(path) -> bool:
    return os.fspath(path).lower().endswith(".circ")


@attrs.define
class SectionInfo:
    """One section as written: kind, name and its size in the file (framing included)."""

    kind: str
    name: str
    bytes: int


@attrs.define
class CircInfo:
    """What :func:`save_circ` wrote: the file size and every section."""

    path: str
    file_bytes: int
    sections: list = attrs.field(factory=list)

    def tensor_bytes(self) -> dict:
        return {s.name: s.bytes for s in self.sections if s.kind == "TNSR"}


# ---------------------------------------------------------------------------- writing


def save_circ(graph: Graph, path, *, protect=()) -> CircInfo:
    """Write ``graph`` to ``path`` (atomically) and say what went where."""
    path = os.fspath(path)
    sections = [(GRAPH_KIND, "", _graph_bytes(graph))]
    for name, value in graph.consts.items():
        sections.append((TENSOR_KIND, name, tensor_bytes(value.const)))
    parts = [HEADER.pack(MAGIC, VERSION[0], VERSION[1], len(sections))]
    parts.append(CRC.pack(zlib.crc32(parts[0])))
    infos = []
    for kind, name, payload in sections:
        encoded = name.encode("utf-8")
        frame = SECTION_HEAD.pack(kind, len(encoded)) + encoded + struct.pack("<Q", len(payload))
        crc = zlib.crc32(payload, zlib.crc32(frame))
        parts += [frame, payload, CRC.pack(crc)]
        infos.append(SectionInfo(kind.decode(), name, len(frame) + len(payload) + CRC.size))
    size = sum(len(p) for p in parts) + END.size + CRC.size
    end = END.pack(END_KIND, size)
    crc = 0
    for part in parts + [end]:
        crc = zlib.crc32(part, crc)
    parts += [end, CRC.pack(crc)]
    atomic_write(path, lambda handle: [handle.write(p) for p in parts], protect=protect)
    return CircInfo(path, size, infos)


def _graph_bytes(graph: Graph) -> bytes:
    """The ONNX ModelProto of the graph without initializers (they are TNSR sections)."""
    from circ.onnx_export import to_model_proto

    # A view sharing the graph's nodes and values but with no constants: nothing is copied
    # and no tensor is decoded. Node inputs still name the constants.
    view = Graph(name=graph.name, nodes=graph.nodes, inputs=graph.inputs, outputs=graph.outputs,
                 consts={}, opsets=graph.opsets, meta=graph.meta)
    return to_model_proto(view).SerializeToString()


def tensor_bytes(tensor: Tensor) -> bytes:
    """A TNSR payload: the representation code, then its fields (docs/circ-format.md)."""
    out = Writer()
    if isinstance(tensor, Coded):
        out.u8(CODED)
        tensor.write(out)
    elif isinstance(tensor, Clustered):
        out.u8(CLUSTERED)
        out.array(tensor.codebook)
        _write_ints(out, tensor.indices)
    elif isinstance(tensor, Quantized):
        out.u8(QUANTIZED)
        _write_ints(out, tensor.q)
        out.array(tensor.scale)
        out.array(tensor.zero_point)
        out.u8(0 if tensor.axis is None else 1)
        out.i64(0 if tensor.axis is None else tensor.axis)
        out.u8(tensor.num_bits)
        out.dtype(tensor.float_dtype)
        _write_mask(out, tensor.mask)
    else:
        out.u8(DENSE)
        array = tensor.array if isinstance(tensor, Dense) else tensor.to_numpy()
        out.array(array)
        _write_mask(out, tensor.mask if isinstance(tensor, Dense) else None)
    return out.getvalue()


def _write_ints(out: Writer, values: np.ndarray) -> None:
    """An integer array at a fixed width: dtype, shape, the minimum, width, packed offsets."""
    out.dtype(values.dtype)
    out.shape(values.shape)
    lo = int(values.min()) if values.size else 0
    hi = int(values.max()) if values.size else 0
    width = max(1, (hi - lo).bit_length())
    out.i64(lo)
    out.u8(width)
    out.raw(bits.pack_uint((values.reshape(-1).astype(np.int64) - lo).astype(np.uint64), width))


def _write_mask(out: Writer, mask: Optional[np.ndarray]) -> None:
    out.u8(0 if mask is None else 1)
    if mask is not None:
        out.raw(np.packbits(mask.reshape(-1)).tobytes())


# ---------------------------------------------------------------------------- reading


def load_circ(path, *, max_elements: Optional[int] = None, infer_shapes: bool = True) -> Graph:
    """Read a ``.circ`` file into a Graph (see the module docstring for the checks). A decoded
    tensor may have at most ``max_elements`` elements (default: :mod:`circ.limits`' byte limit
    counted in float32)."""
    if max_elements is None:
        max_elements = limits.max_tensor_bytes() // 4
    from circ.onnx_import import from_model_proto

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, not a .circ file")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ModelError(f"{path}: cannot read ({err.strerror or err})") from None
    sections = _split(data, path)
    kind, name, payload = sections[0]
    if kind != GRAPH_KIND:
        raise ModelError(f"{path}: section 1 ({kind!r}): the first section must be GRPH")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(payload)
    except Exception as err:  # noqa: BLE001  protobuf raises DecodeError and others
        raise ModelError(f"{path}: section 1 (GRPH): not an ONNX model ({err})") from None
    constants, coded = {}, []
    for index, (kind, name, payload) in enumerate(sections[1:], start=2):
        where = f"section {index} (TNSR {name!r})"
        if kind != TENSOR_KIND:
            raise ModelError(f"{path}: {where}: unknown section kind {kind!r}")
        if name in constants:
            raise ModelError(f"{path}: {where}: a second tensor named {name!r}")
        try:
            constants[name] = read_tensor(payload, max_elements)
        except FormatError as err:
            raise ModelError(f"{path}: {where}: {err}") from None
        if isinstance(constants[name], Coded):
            coded.append((where, constants[name]))
    for where, tensor in coded:  # decode once: checks the bitstreams, caches the arrays
        try:
            tensor.to_numpy()
        except FormatError as err:
            raise ModelError(f"{path}: {where}: {err}") from None
    return from_model_proto(model, None, source=path, constants=constants, infer_shapes=infer_shapes)


def _split(data: bytes, path: str) -> list:
    """Check the framing and checksums; the sections as (kind, name, payload)."""
    need = HEADER.size + CRC.size
    if len(data) < need:
        raise ModelError(f"{path}: header: the file has {len(data)} bytes, a header needs {need}")
    magic, major, minor, count = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise ModelError(f"{path}: header: not a .circ file (bad magic bytes)")
    if CRC.unpack_from(data, HEADER.size)[0] != zlib.crc32(data[:HEADER.size]):
        raise ModelError(f"{path}: header: checksum mismatch (the file is damaged)")
    if major != VERSION[0]:
        raise ModelError(f"{path}: header: format version {major}.{minor} is not supported "
                         f"(this reader handles {VERSION[0]}.x)")
    pos = need
    sections = []
    for index in range(1, count + 1):
        where = f"section {index}"
        left = len(data) - pos
        if left < SECTION_HEAD.size:
            raise ModelError(f"{path}: {where}: truncated (the file ends {left} bytes into it)")
        kind, name_length = SECTION_HEAD.unpack_from(data, pos)
        head_end = pos + SECTION_HEAD.size + name_length + 8
        if head_end > len(data):
            raise ModelError(f"{path}: {where}: truncated in its header")
        name = data[pos + SECTION_HEAD.size: head_end - 8].decode("utf-8", "replace")
        where = f"section {index} ({kind.decode('latin-1')} {name!r})"
        (length,) = struct.unpack_from("<Q", data, head_end - 8)
        if length + CRC.size > len(data) - head_end:
            raise ModelError(f"{path}: {where}: declares {length} bytes but only "
                             f"{len(data) - head_end - CRC.size} remain (truncated or damaged)")
        payload = data[head_end: head_end + length]
        (crc,) = CRC.unpack_from(data, head_end + length)
        if crc != zlib.crc32(payload, zlib.crc32(data[pos:head_end])):
            raise ModelError(f"{path}: {where}: checksum mismatch (the file is damaged)")
        sections.append((kind, name, payload))
        pos = head_end + length + CRC.size
    if len(data) - pos < END.size + CRC.size:
        raise ModelError(f"{path}: end section: truncated ({len(data) - pos} of "
                         f"{END.size + CRC.size} bytes)")
    marker, size = END.unpack_from(data, pos)
    if marker != END_KIND:
        raise ModelError(f"{path}: end section: missing end marker (damaged)")
    if size != len(data) or pos + END.size + CRC.size != len(data):
        raise ModelError(f"{path}: end section: the file has {len(data)} bytes but should have {size}")
    if CRC.unpack_from(data, pos + END.size)[0] != zlib.crc32(data[:pos + END.size]):
        raise ModelError(f"{path}: end section: file checksum mismatch (the file is damaged)")
    if not sections:
        raise ModelError(f"{path}: header: the file has no sections")
    return sections


def read_tensor(payload: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Tensor:
    """Inverse of :func:`tensor_bytes`; :class:`FormatError` for anything inconsistent."""
    source = Reader(payload)
    code = source.u8("representation")
    if code == CODED:
        tensor = Coded.read(source, max_elements)
    elif code == CLUSTERED:
        codebook = source.array("codebook")
        if codebook.ndim != 1 or codebook.dtype.kind != "f":
            raise FormatError("the codebook must be a 1-D float array")
        indices = _read_ints(source, "indices", max_elements)
        if indices.size and (indices.min() < -1 or indices.max() >= len(codebook)):
            raise FormatError(f"cluster indices outside -1..{len(codebook) - 1}")
        tensor = Clustered(codebook, indices)
    elif code == QUANTIZED:
        q = _read_ints(source, "integers", max_elements)
        scale, zero_point = source.array("scale"), source.array("zero point")
        has_axis, axis = source.u8("axis flag"), source.i64("axis")
        num_bits, float_dtype = source.u8("bits"), source.dtype("float type")
        if float_dtype.kind != "f":
            raise FormatError(f"quantized tensor with non-float type {float_dtype}")
        if has_axis and not (0 <= axis < q.ndim and scale.size in (1, q.shape[axis])):
            raise FormatError(f"axis {axis} and {scale.size} scales do not fit shape {q.shape}")
        if (not has_axis and scale.size != 1) or zero_point.size != scale.size:
            raise FormatError(f"{scale.size} scales and {zero_point.size} zero points do not fit")
        mask = _read_mask(source, q.shape)
        tensor = Quantized(q, scale, zero_point, axis if has_axis else None, num_bits, float_dtype, mask)
    elif code == DENSE:
        array = source.array("array")
        tensor = Dense(array, _read_mask(source, array.shape))
    else:
        raise FormatError(f"unknown tensor representation {code}")
    source.end("the tensor")
    return tensor


def _read_ints(source: Reader, what: str, max_elements: int) -> np.ndarray:
    dtype = source.dtype(f"element type of {what}")
    shape = source.shape(f"shape of {what}")
    lo, width = source.i64(f"minimum of {what}"), source.u8(f"width of {what}")
    if dtype.kind not in "iu" or not 1 <= width <= 64:
        raise FormatError(f"{what}: type {dtype} at {width} bits")
    count = count_elements(shape)
    if count > max_elements:
        raise FormatError(f"{what} of shape {shape} exceed the limit of {max_elements} elements "
                          f"{limits.hint()}")
    packed = source.raw(bits.uint_bytes(count, width), what)  # checked before unpacking
    values = bits.unpack_uint(packed, count, width).astype(np.int64) + lo
    info = np.iinfo(dtype)
    if count and (values.min() < info.min or values.max() > info.max):
        raise FormatError(f"{what} do not fit {dtype}")
    return values.astype(dtype).reshape(shape)


def _read_mask(source: Reader, shape: tuple) -> Optional[np.ndarray]:
    if not source.u8("mask flag"):
        return None
    count = count_elements(shape)
    packed = np.frombuffer(source.raw((count + 7) // 8, "mask"), np.uint8)
    return np.unpackbits(packed, count=count).astype(bool).reshape(shape)


# ---------------------------------------------------------------------------- size report


def compression_report(graph: Graph, info: CircInfo) -> dict:
    """Deep Compression's per-layer table for a written container.

    One row per layer weight (:func:`circ.weights.weight_refs`): weights, kept %, bits per kept
    weight of the weight values and of the position index (each stream with its table),
    bytes of its section in the file, and the ratio to float32 (4 bytes per weight). The
    total compares the file size with the original float32 model: every parameter (weights,
    biases, other float constants, as counted by :mod:`circ.analysis.stats`) at 4 bytes.
    """
    from circ.analysis.stats import is_parameter
    from circ.weights import weight_refs

    section_bytes = info.tensor_bytes()
    rows = []
    for ref in weight_refs(graph):
        tensor = ref.value.const
        kept_mask = tensor.kept
        kept = tensor.size if kept_mask is None else int(kept_mask.sum())
        weight_bits, index_bits = _stored_bits(tensor, kept)
        size = section_bytes[ref.value.name]
        rows.append({"layer": ref.name, "weights": tensor.size, "kept": kept,
                     "weight_bits": weight_bits, "index_bits": index_bits, "bytes": size,
                     "ratio": 4.0 * tensor.size / size if size else None})
    params = sum(v.const.size for v in graph.consts.values() if is_parameter(v))
    baseline = 4 * params
    return {"file_bytes": info.file_bytes, "params": params, "baseline_bytes": baseline,
            "ratio": baseline / info.file_bytes if info.file_bytes else None,
            "other_bytes": info.file_bytes - sum(r["bytes"] for r in rows), "layers": rows}


def _stored_bits(tensor: Tensor, kept: int) -> tuple[float, float]:
    """Bits per kept weight of the stored values and of the stored positions."""
    kept = max(kept, 1)
    if isinstance(tensor, Coded):
        return tensor.weight_bits / kept, tensor.position_bits / kept
    mask_bits = tensor.size / kept if tensor.kept is not None else 0.0
    if isinstance(tensor, (Clustered, Quantized)):
        values = tensor.indices if isinstance(tensor, Clustered) else tensor.q
        span = int(values.max()) - int(values.min()) if values.size else 0
        width = max(1, span.bit_length())
        # pruned indices are stored too (as -1), so their bits count against the kept ones
        return width * tensor.size / kept, mask_bits if isinstance(tensor, Quantized) else 0.0
    return 8.0 * tensor.dtype.itemsize * tensor.size / kept, mask_bits
