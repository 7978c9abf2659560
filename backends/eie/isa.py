"""The EIE instruction set: a program is a list of instructions over named activation buffers.

- :class:`Load` copies a graph input into a buffer.
- :class:`SpMV` is one fully connected layer, ``dst = relu?(W @ src + bias)``, with ``W`` held
  as in the paper (sec. III-B): rows interleaved over ``pes`` processing elements (row ``i``
  lives in PE ``i % pes`` as local row ``i // pes``); each PE stores its rows in compressed
  sparse column form as a stream of entries, each a ``v``-bit codebook index (``code``) and a
  ``z``-bit relative row index (``rel``), plus ``cols + 1`` pointers per PE into that stream.
- :class:`Store` names a buffer as a graph output.

Relative indices (exact): within one PE and one column, an entry with ``rel = r < 2**z - 1``
skips ``r`` zero local rows and holds a weight at the next one; ``rel = 2**z - 1`` is a filler
entry that skips ``2**z - 1`` zero rows and holds no weight. The paper stores a filler as an
explicit zero weight; we mark it by the escape value instead so that all ``2**v`` codes stay
available for shared weights (cluster(bits=4) fills all 16).
"""

from __future__ import annotations

import attrs
import numpy as np


def _array(dtype):
    return attrs.field(converter=lambda a: np.ascontiguousarray(a, dtype=dtype), eq=False)


@attrs.define(eq=False)
class Load:
    """``dst`` <- graph input ``name`` (batch, ``size``)."""

    name: str
    dst: str
    size: int


@attrs.define(eq=False)
class SpMV:
    """``dst = relu?(W @ src + bias)`` for one layer; see the module docstring for ``W``."""

    layer: str
    src: str
    dst: str
    rows: int
    cols: int
    pes: int
    v_bits: int
    z_bits: int
    relu: bool
    codebook: np.ndarray = _array(np.float32)  # (2**v_bits,) shared weights, unused codes 0
    bias: np.ndarray = _array(np.float32)  # (rows,)
    pe_ptr: np.ndarray = _array(np.int64)  # (pes + 1,) start of each PE's entries
    col_ptr: np.ndarray = _array(np.int64)  # (pes, cols + 1) offsets within a PE's entries
    code: np.ndarray = _array(np.uint16)  # (entries,) v-bit codebook indices
    rel: np.ndarray = _array(np.uint8)  # (entries,) z-bit relative row indices

    @property
    def filler(self) -> int:
        """The relative-index escape value marking a filler entry."""
        return (1 << self.z_bits) - 1

    @property
    def entries(self) -> int:
        return int(self.code.size)

    @property
    def nnz(self) -> int:
        """Stored weights (entries that are not fillers)."""
        return int(np.count_nonzero(self.rel != self.filler))

    @property
    def pointer_bits(self) -> int:
        """Width of a column pointer: 16 bits as in the paper, 32 when a PE's stream is longer."""
        longest = int(np.max(np.diff(self.pe_ptr))) if self.pes else 0
        return 16 if longest < (1 << 16) else 32

    @property
    def storage_bytes(self) -> int:
        """Bytes of the sparse matrix: packed entries plus column pointers (codebook and bias
        excluded; they are a few bytes per layer)."""
        entry_bits = self.entries * (self.v_bits + self.z_bits)
        pointer_bits = self.pes * (self.cols + 1) * self.pointer_bits
        return (entry_bits + 7) // 8 + (pointer_bits + 7) // 8


@attrs.define(eq=False)
class Store:
    """Graph output ``name`` <- buffer ``src``."""

    src: str
    name: str


Instruction = Load | SpMV | Store


@attrs.define(eq=False)
class Program:
    """An EIE program: instructions run in order."""

    instructions: list = attrs.field(factory=list)

    @property
    def layers(self) -> list[SpMV]:
        return [ins for ins in self.instructions if isinstance(ins, SpMV)]

    @property
    def inputs(self) -> list[Load]:
        return [ins for ins in self.instructions if isinstance(ins, Load)]

    @property
    def outputs(self) -> list[Store]:
        return [ins for ins in self.instructions if isinstance(ins, Store)]
