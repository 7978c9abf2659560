"""The coded tensor: a weight held as entropy-coded bitstreams (Deep Compression's last stage).

A :class:`Coded` tensor stands for a :class:`~circ.tensors.Clustered`, a
:class:`~circ.tensors.Quantized` or a pruned :class:`~circ.tensors.Dense` tensor:

- ``positions``: where the stored elements are, as relative-index entries
  (:mod:`circ.codecs.sparse`) Huffman-coded; ``None`` when every element is stored.
- ``symbols``: the stored elements' cluster indices or quantized integers, Huffman-coded
  (:mod:`circ.codecs.huffman`); for a pruned Dense tensor the kept ``values`` are kept raw
  instead (entropy coding float bits gains little).
- the parameters of the representation: the codebook, or scale / zero point / axis / bits.

``to_numpy()`` decodes once and caches the (read-only) array, so the interpreter runs a coded
graph at full speed; the decoded array is bit-identical to the original tensor's
``to_numpy()``. :meth:`Coded.decode` gives back the original representation itself.
"""

from __future__ import annotations

from typing import Optional

import attrs
import numpy as np

from circ import limits
from circ.codecs import huffman, sparse
from circ.codecs.binio import FormatError, Reader, Writer, count_elements
from circ.codecs.huffman import HuffmanCode
from circ.tensors import Clustered, Dense, Quantized, Tensor

KINDS = ("clustered", "quantized", "dense")


@attrs.define(eq=False)
class QuantParams:
    """What a :class:`~circ.tensors.Quantized` tensor has besides its integers."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: Optional[int]
    num_bits: int
    float_dtype: np.dtype


@attrs.define(eq=False)
class Coded(Tensor):
    """Entropy-coded weights; see the module docstring. Build with :meth:`encode`."""

    kind: str  # one of KINDS
    dims: tuple
    index_dtype: np.dtype  # dtype of the original indices / integers / values
    index_bits: int = 0  # bits per relative-index entry; 0 when positions is None
    kept_count: int = 0  # stored elements (all of them when positions is None)
    positions: Optional[HuffmanCode] = None
    symbols: Optional[HuffmanCode] = None
    values: Optional[np.ndarray] = None  # dense: the kept values, in position order
    codebook: Optional[np.ndarray] = None
    quant: Optional[QuantParams] = None
    _decoded: Optional[np.ndarray] = attrs.field(default=None, init=False, repr=False)
    _nnz: Optional[int] = attrs.field(default=None, init=False, repr=False)

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def encode(cls, tensor: Tensor, index_bits: int = 0, limit: int = huffman.MAX_CODE_LENGTH) -> "Coded":
        """Code ``tensor`` (Clustered, Quantized, or Dense with a mask). With ``index_bits``
        the kept positions are stored as a relative index of that width; with 0 every element
        is stored (a Clustered tensor's pruned elements then as the symbol -1). A Quantized or
        Dense tensor with a mask needs ``index_bits``."""
        kept = tensor.kept
        if index_bits:
            sparse.check_index_bits(index_bits)
        if kept is not None and not index_bits and not isinstance(tensor, Clustered):
            raise ValueError("a pruned Quantized or Dense tensor needs index_bits for its positions")
        where = np.flatnonzero(kept.reshape(-1)) if (index_bits and kept is not None) else None
        if where is None:
            index_bits = 0
        coded = dict(dims=tuple(tensor.shape), index_bits=index_bits)
        if where is not None:
            coded["positions"] = huffman.encode(sparse.encode_positions(where, index_bits), limit)
        if isinstance(tensor, Clustered):
            stored = _take(tensor.indices, where)
            return cls("clustered", index_dtype=tensor.indices.dtype, kept_count=stored.size,
                       symbols=huffman.encode(stored, limit), codebook=tensor.codebook, **coded)
        if isinstance(tensor, Quantized):
            stored = _take(tensor.q, where)
            params = QuantParams(tensor.scale, tensor.zero_point, tensor.axis, tensor.num_bits,
                                 tensor.float_dtype)
            return cls("quantized", index_dtype=tensor.q.dtype, kept_count=stored.size,
                       symbols=huffman.encode(stored, limit), quant=params, **coded)
        if isinstance(tensor, Dense) and where is not None:
            stored = _take(tensor.array, where)
            return cls("dense", index_dtype=tensor.array.dtype, kept_count=stored.size,
                       values=stored, **coded)
        raise TypeError(f"cannot code a {type(tensor).__name__} tensor without a pruning mask")

    # ---- the Tensor interface -----------------------------------------------------------------
    @property
    def shape(self):
        return self.dims

    @property
    def dtype(self):
        if self.kind == "clustered":
            return self.codebook.dtype
        if self.kind == "quantized":
            return self.quant.float_dtype
        return self.index_dtype

    def to_numpy(self) -> np.ndarray:
        if self._decoded is None:
            array = np.array(self.decode().to_numpy())  # a private copy, frozen below
            array.flags.writeable = False
            self._decoded = array
        return self._decoded

    @property
    def kept(self) -> Optional[np.ndarray]:
        if self.positions is None:
            return self.decode().kept if self.kind == "clustered" else None
        mask = np.zeros(self.size, bool)
        mask[self.decode_positions()] = True
        return mask.reshape(self.dims)

    @property
    def nnz(self) -> int:
        if self._nnz is None:
            self._nnz = int(np.count_nonzero(self.to_numpy()))
        return self._nnz

    @property
    def storage_bytes(self) -> int:
        """Bytes of the coded streams, tables and parameters (without container framing)."""
        total_bits = sum(c.size_bits for c in (self.positions, self.symbols) if c is not None)
        extra = 0
        if self.values is not None:
            extra += self.values.nbytes
        if self.codebook is not None:
            extra += self.codebook.nbytes
        if self.quant is not None:
            extra += self.quant.scale.nbytes + self.quant.zero_point.nbytes
        return (total_bits + 7) // 8 + extra

    @property
    def bits(self) -> float:
        return 8.0 * self.storage_bytes / self.size if self.size else 0.0

    @property
    def weight_bits(self) -> int:
        """Bits of the stored elements (coded symbols with their table, or raw values)."""
        if self.symbols is not None:
            return self.symbols.size_bits
        return 8 * self.values.nbytes

    @property
    def position_bits(self) -> int:
        """Bits of the coded relative index (with its table); 0 when not sparse."""
        return self.positions.size_bits if self.positions is not None else 0

    def copy(self) -> "Coded":
        # Every part is immutable (bytes, frozen arrays): a copy may share them.
        twin = attrs.evolve(self)
        twin._decoded, twin._nnz = self._decoded, self._nnz
        return twin

    # ---- decoding -----------------------------------------------------------------------------
    def decode_positions(self) -> np.ndarray:
        """Flat positions of the stored elements."""
        if self.positions is None:
            return np.arange(self.size)
        positions = sparse.decode_positions(huffman.decode(self.positions), self.index_bits, self.size)
        if len(positions) != self.kept_count:
            raise FormatError(f"the relative index gives {len(positions)} positions, "
                              f"not {self.kept_count}")
        return positions

    def decode(self) -> Tensor:
        """The representation this tensor was coded from (pruned elements of a Quantized
        tensor get the zero point; they are masked anyway)."""
        where = self.decode_positions() if self.positions is not None else None
        if self.kind == "dense":
            array = np.zeros(self.size, self.index_dtype)
            array[where] = self.values
            mask = np.zeros(self.size, bool)
            mask[where] = True
            return Dense(array.reshape(self.dims), mask.reshape(self.dims))
        stored = huffman.decode(self.symbols).astype(self.index_dtype)
        if len(stored) != self.kept_count:
            raise FormatError(f"the symbol stream holds {len(stored)} symbols, not {self.kept_count}")
        if self.kind == "clustered":
            return Clustered(self.codebook, _place(stored, where, self.dims, -1))
        q = self.quant
        fill = _zero_point_fill(q, self.dims, self.index_dtype) if where is not None else 0
        mask = None
        if where is not None:
            mask = np.zeros(self.size, bool)
            mask[where] = True
            mask = mask.reshape(self.dims)
        return Quantized(_place(stored, where, self.dims, fill), q.scale, q.zero_point, q.axis,
                         q.num_bits, q.float_dtype, mask)

    # ---- serialization ------------------------------------------------------------------------
    def write(self, out: Writer) -> None:
        """The byte layout documented in docs/circ-format.md (tensor kind 3)."""
        out.u8(KINDS.index(self.kind))
        out.dtype(self.index_dtype)
        out.shape(self.dims)
        out.u8(self.index_bits)
        out.u64(self.kept_count)
        if self.index_bits:
            self.positions.write(out)
        if self.kind == "clustered":
            out.array(self.codebook)
        elif self.kind == "quantized":
            q = self.quant
            out.array(q.scale)
            out.array(q.zero_point)
            out.u8(0 if q.axis is None else 1)
            out.i64(0 if q.axis is None else q.axis)
            out.u8(q.num_bits)
            out.dtype(q.float_dtype)
        if self.kind == "dense":
            out.raw(np.ascontiguousarray(self.values).astype(self.index_dtype.newbyteorder("<")).tobytes())
        else:
            self.symbols.write(out)

    @classmethod
    def read(cls, source: Reader, max_elements: int) -> "Coded":
        """Read and validate a coded tensor (streams are checked again when decoded);
        ``max_elements`` bounds the decoded size."""
        kind_code = source.u8("coded tensor kind")
        if kind_code >= len(KINDS):
            raise FormatError(f"unknown coded tensor kind {kind_code}")
        kind = KINDS[kind_code]
        index_dtype = source.dtype("element type")
        dims = source.shape("shape")
        size = count_elements(dims)
        if size > max_elements:
            raise FormatError(f"shape {dims} has {size} elements, more than the limit "
                              f"{max_elements} {limits.hint()}")
        if kind != "dense" and index_dtype.kind not in "iu":
            raise FormatError(f"{kind} tensor with non-integer element type {index_dtype}")
        index_bits = source.u8("index bits")
        kept_count = source.u64("stored element count")
        if kept_count > size:
            raise FormatError(f"{kept_count} stored elements in a tensor of {size}")
        if not index_bits and kept_count != size:
            raise FormatError(f"{kept_count} stored elements without positions in a tensor of {size}")
        fields = dict(dims=dims, index_dtype=index_dtype, index_bits=index_bits, kept_count=kept_count)
        if index_bits:
            if index_bits > sparse.MAX_INDEX_BITS:
                raise FormatError(f"index bits {index_bits} above {sparse.MAX_INDEX_BITS}")
            fields["positions"] = HuffmanCode.read(source, "relative index", max_count=size)
            if fields["positions"].count < kept_count:
                raise FormatError("the relative index has fewer entries than stored elements")
        if kind == "clustered":
            fields["codebook"] = source.array("codebook")
            if fields["codebook"].ndim != 1 or fields["codebook"].dtype.kind != "f":
                raise FormatError("the codebook must be a 1-D float array")
        elif kind == "quantized":
            scale, zero_point = source.array("scale"), source.array("zero point")
            has_axis, axis = source.u8("axis flag"), source.i64("axis")
            num_bits, float_dtype = source.u8("bits"), source.dtype("float type")
            if float_dtype.kind != "f":
                raise FormatError(f"quantized tensor with non-float type {float_dtype}")
            if has_axis and not (0 <= axis < len(dims) and scale.size in (1, dims[axis])):
                raise FormatError(f"axis {axis} and {scale.size} scales do not fit shape {dims}")
            if not has_axis and scale.size != 1:
                raise FormatError(f"{scale.size} scales for a per-tensor quantized tensor")
            if zero_point.size != scale.size:
                raise FormatError("scale and zero point differ in size")
            fields["quant"] = QuantParams(scale, zero_point, axis if has_axis else None, num_bits,
                                          float_dtype)
        if kind == "dense":
            nbytes = kept_count * index_dtype.itemsize
            data = source.raw(nbytes, "stored values")
            fields["values"] = np.frombuffer(data, index_dtype.newbyteorder("<")).astype(index_dtype)
        else:
            symbols = HuffmanCode.read(source, "symbols", max_count=size)
            if symbols.count != kept_count:
                raise FormatError(f"{symbols.count} symbols for {kept_count} stored elements")
            _check_symbol_range(symbols, kind, index_dtype, fields.get("codebook"))
            fields["symbols"] = symbols
        return cls(kind, **fields)


def _check_symbol_range(symbols: HuffmanCode, kind: str, dtype: np.dtype, codebook) -> None:
    if symbols.count == 0:
        return
    lo, hi = symbols.lo, symbols.lo + len(symbols.lengths) - 1
    info = np.iinfo(dtype)
    if lo < info.min or hi > info.max:
        raise FormatError(f"symbols {lo}..{hi} do not fit {dtype}")
    if kind == "clustered" and (lo < -1 or hi >= len(codebook)):
        raise FormatError(f"cluster indices {lo}..{hi} outside the codebook of {len(codebook)}")


def _take(array: np.ndarray, where: Optional[np.ndarray]) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    return flat if where is None else flat[where]


def _place(stored: np.ndarray, where: Optional[np.ndarray], dims: tuple, fill) -> np.ndarray:
    if where is None:
        return stored.reshape(dims)
    full = np.full(count_elements(dims), fill, stored.dtype) if np.ndim(fill) == 0 else np.array(fill).reshape(-1)
    full[where] = stored
    return full.reshape(dims)


def _zero_point_fill(q: QuantParams, dims: tuple, dtype: np.dtype):
    """The zero point broadcast to the tensor's shape (pruned integers decode to 0)."""
    zero_point = np.asarray(q.zero_point)
    if q.axis is not None and zero_point.ndim:
        shape = [1] * len(dims)
        shape[q.axis] = -1
        zero_point = zero_point.reshape(shape)
    return np.broadcast_to(zero_point, dims).astype(dtype)
