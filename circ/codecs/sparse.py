"""Relative-index coding of sparse positions (Deep Compression, Section 4; EIE's storage).

The positions of the kept weights of a flattened (C-order) tensor are stored as gaps: each
entry is the number of zeros skipped before the next kept weight, in ``index_bits`` bits.
A gap too large for that range is bridged by *filler* entries, as in the paper: the largest
value ``R = 2**index_bits - 1`` is reserved for a filler that skips ``R`` positions and holds
no weight; a real entry is a value ``0 .. R - 1``. (The paper's filler is a stored zero
weight; here it costs its index only, so the weight stream holds exactly the kept weights.)
Zeros after the last kept weight need no entries: the tensor's size is known.

Example with ``index_bits=2`` (R = 3): kept positions ``[1, 9]`` give gaps ``[1, 7]`` and
entries ``[1, 3, 3, 1]`` (skip 1, keep; skip 3; skip 3; skip 1, keep).
"""

from __future__ import annotations

import numpy as np

from circ.codecs.binio import FormatError

MAX_INDEX_BITS = 16


def check_index_bits(index_bits: int) -> None:
    if not 1 <= index_bits <= MAX_INDEX_BITS:
        raise ValueError(f"index_bits must be 1..{MAX_INDEX_BITS}, got {index_bits}")


def encode_positions(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Entries (``uint16``) for strictly increasing flat ``positions``."""
    check_index_bits(index_bits)
    positions = np.asarray(positions, dtype=np.int64)
    filler = (1 << index_bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // filler
    # Entry k of kept weight i sits after the fillers of weights 0..i and the entries before.
    real_at = np.cumsum(fillers + 1) - 1
    entries = np.full(int(real_at[-1]) + 1 if len(real_at) else 0, filler, np.uint16)
    entries[real_at] = gaps % filler
    return entries


def decode_positions(entries: np.ndarray, index_bits: int, size: int) -> np.ndarray:
    """Flat positions (``int64``) from entries; :class:`FormatError` if they pass ``size``."""
    check_index_bits(index_bits)
    entries = np.asarray(entries, dtype=np.int64)
    filler = (1 << index_bits) - 1
    if len(entries) and (entries.min() < 0 or entries.max() > filler):
        raise FormatError(f"relative index entries outside 0..{filler}")
    real = entries != filler
    advance = np.where(real, entries + 1, filler)
    positions = np.cumsum(advance)[real] - 1
    if len(positions) and positions[-1] >= size:
        raise FormatError(f"relative indices reach position {positions[-1]} of a tensor of {size}")
    return positions


def entry_count(positions: np.ndarray, index_bits: int) -> int:
    """Entries :func:`encode_positions` would write (kept weights plus fillers)."""
    filler = (1 << index_bits) - 1
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    return int(len(gaps) + np.sum(gaps // filler))
