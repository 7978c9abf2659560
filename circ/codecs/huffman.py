"""Canonical Huffman coding of integer symbol streams.

:func:`encode` turns an array of integers into a :class:`HuffmanCode`; :func:`decode` gives the
array back exactly. Encoding is a histogram, one Huffman tree over the alphabet (a loop over
distinct symbols, never over the stream), and one pass writing every symbol's code. The two
loops over the stream, writing and reading its bits, are compiled (:mod:`circ.codecs._jit`).

Decoding a prefix code is sequential by nature: where symbol ``i + 1`` starts depends on the
length of symbol ``i``. The stream is therefore cut into blocks of ``block`` symbols whose
starting bit offsets are stored (a few bits per block, well under 1% of a stream): a decoder
may start at any block, and checks that each block ends where the next one starts.

The code is canonical (Deflate-style): it is defined by the code length of each symbol alone,
codes of one length are consecutive integers in symbol order, and shorter codes come first.
So the table stored with a stream is just the lengths, and a decoder finds the symbol for the
next ``max_len`` bits in one table of ``2**max_len`` entries.

Code lengths are limited to 16 bits (as in JPEG; the decoder then needs a table of at most
2**16 entries); when the optimal tree is deeper, it is flattened as JPEG does (Annex K.3).
A stream with one distinct symbol costs 0 bits per symbol; an empty stream costs nothing.
"""

from __future__ import annotations

import math
from typing import Optional

import attrs
import numpy as np

from circ.codecs import _jit, bits
from circ.codecs.binio import FormatError, Reader, Writer

MAX_CODE_LENGTH = 16  # as JPEG: the decoder's table has at most 2**16 entries
LENGTH_BITS = 5  # width of one entry of a stored code-length table (lengths 0..31)
MAX_ALPHABET = 1 << 16  # span of symbol values one stream may use


@attrs.define(eq=False)
class HuffmanCode:
    """An encoded stream: ``count`` symbols ``lo + s`` where ``s`` has code length ``lengths[s]``.

    ``lengths`` has one entry per value in ``lo .. lo + len(lengths) - 1`` (0 = absent). When
    the alphabet is a single value, its code is empty and ``data`` holds no bits. ``offsets``
    are the bit offsets where blocks ``1, 2, ...`` of ``block`` symbols start.
    """

    count: int
    lo: int
    lengths: np.ndarray
    block: int
    offsets: np.ndarray
    nbits: int
    data: bytes

    @property
    def table_bits(self) -> int:
        """Bits of the stored code-length table and block offsets."""
        if len(self.lengths) <= 1:
            return 0
        return len(self.lengths) * LENGTH_BITS + 64 + 8 + len(self.offsets) * _delta_width(self)

    @property
    def size_bits(self) -> int:
        """Everything the stream costs: bitstream, table, block offsets (not framing)."""
        return self.nbits + self.table_bits

    # ---- serialization ---------------------------------------------------------------------
    # Block offsets are stored as the bit lengths of blocks 0 .. n-2 minus the shortest one,
    # at the width the longest needs: a few bits per block instead of a full offset.
    def write(self, out: Writer) -> None:
        out.u64(self.count)
        if self.count == 0:
            return
        out.i64(self.lo)
        out.u32(len(self.lengths))
        if len(self.lengths) == 1:
            return
        out.raw(bits.pack_uint(self.lengths, LENGTH_BITS))
        out.u32(self.block)
        out.u64(self.nbits)
        sizes = _block_bits(self)
        base = int(sizes.min()) if len(sizes) else 0
        out.u64(base)
        out.u8(_delta_width(self))
        out.raw(bits.pack_uint(sizes - np.uint64(base), _delta_width(self)))
        out.raw(self.data)

    @classmethod
    def read(cls, source: Reader, what: str = "Huffman stream",
             max_count: Optional[int] = None) -> "HuffmanCode":
        """Read and validate a stream; ``max_count`` bounds the symbol count (e.g. the size of
        the tensor it belongs to) where the bit count cannot."""
        count = source.u64(f"symbol count of {what}")
        if max_count is not None and count > max_count:
            raise FormatError(f"{what} claims {count} symbols, more than the {max_count} it may hold")
        empty = np.zeros(0, np.uint8)
        if count == 0:
            return cls(0, 0, empty, 1, np.zeros(0, np.uint64), 0, b"")
        lo = source.i64(f"first symbol of {what}")
        span = source.u32(f"alphabet size of {what}")
        if not 1 <= span <= MAX_ALPHABET:
            raise FormatError(f"{what} has an alphabet of {span} values (1..{MAX_ALPHABET} allowed)")
        if lo < -(1 << 62) or lo > 1 << 62:
            raise FormatError(f"{what} has first symbol {lo}, out of range")
        if span == 1:
            if max_count is None:
                raise FormatError(f"{what} has a single symbol but no bound on its count")
            return cls(count, lo, np.zeros(1, np.uint8), 1, np.zeros(0, np.uint64), 0, b"")
        table = source.raw(bits.uint_bytes(span, LENGTH_BITS), f"code lengths of {what}")
        lengths = bits.unpack_uint(table, span, LENGTH_BITS).astype(np.uint8)
        _check_lengths(lengths, what)
        block = source.u32(f"block size of {what}")
        nbits = source.u64(f"bit count of {what}")
        base = source.u64(f"block length base of {what}")
        width = source.u8(f"block length width of {what}")
        # The decoder loops `block` times and pads by `block` words: a block longer than both
        # the stream and anything the encoder writes (block_size: at most 1024) is damage.
        if block < 1 or block > max(count, 1024) or width > 64:
            raise FormatError(f"{what} has block size {block} and offset width {width}")
        # Every symbol takes at least one bit and at most the longest code: the bit count
        # bounds the symbol count, and the stored bytes must hold the bits (both checked
        # before anything is allocated).
        if count > nbits or count * int(lengths.max()) < nbits:
            raise FormatError(f"{what}: {count} symbols cannot take {nbits} bits")
        blocks = -(-count // block)
        needed = bits.uint_bytes(blocks - 1, width) + (nbits + 7) // 8
        if needed > source.left:
            raise FormatError(f"{what} needs {needed} more bytes but only {source.left} remain")
        sizes = bits.unpack_uint(source.raw(bits.uint_bytes(blocks - 1, width)), blocks - 1, width)
        if base > nbits or np.any(sizes > np.uint64(nbits)):
            raise FormatError(f"{what} has block lengths beyond its end")
        offsets = np.cumsum(sizes + np.uint64(base), dtype=np.uint64)
        if len(offsets) and int(offsets[-1]) > nbits:
            raise FormatError(f"{what} has block offsets beyond its end")
        data = source.raw((nbits + 7) // 8, f"bits of {what}")
        return cls(count, lo, lengths, block, offsets, nbits, data)


def _block_bits(code: HuffmanCode) -> np.ndarray:
    """Bit lengths of every block but the last."""
    return np.diff(code.offsets, prepend=np.uint64(0)).astype(np.uint64)


def _delta_width(code: HuffmanCode) -> int:
    sizes = _block_bits(code)
    return int(sizes.max() - sizes.min()).bit_length() if len(sizes) else 0


def _check_lengths(lengths: np.ndarray, what: str) -> None:
    present = lengths[lengths > 0].astype(np.int64)
    if lengths[0] == 0 or lengths[-1] == 0:
        raise FormatError(f"{what}: the first and last symbol of the table must be present")
    if present.max() > MAX_CODE_LENGTH:
        raise FormatError(f"{what}: code length {present.max()} exceeds {MAX_CODE_LENGTH}")
    if np.sum(np.ldexp(1.0, -present)) > 1.0:  # exact: at most 2**16 terms of 2**-k, k <= 16
        raise FormatError(f"{what}: the code lengths do not form a prefix code")


# ---------------------------------------------------------------------------- code lengths


def code_lengths(counts: np.ndarray, limit: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code length of each symbol (0 where ``counts`` is 0), at most ``limit`` bits.

    Deterministic: ties are broken by symbol value. One present symbol gets length 0.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), np.uint8)
    present = np.flatnonzero(counts)
    if len(present) <= 1:
        return lengths
    if len(present) > 1 << limit:
        raise ValueError(f"{len(present)} symbols do not fit codes of at most {limit} bits")
    # Huffman's algorithm with two queues (van Leeuwen): leaves sorted by (count, symbol),
    # and internal nodes, whose weights never decrease in creation order. Taking the smaller
    # front, a leaf on ties, merges exactly what a heap of (weight, node id) would, with leaf
    # ids 0..m-1 in symbol order and internal ids m, m+1, ... in creation order.
    m = len(present)
    weights = counts[present]
    order = np.argsort(weights, kind="stable")
    leaf_ids = order.tolist()
    leaf_weights = weights[order].tolist()
    leaf_weights.append(1 << 62)  # sentinels: never the smaller front
    inner_weights = [1 << 62] * m  # filled in as internal nodes are created
    parent = [0] * (2 * m - 1)
    leaf = inner = 0
    for created, next_id in enumerate(range(m, 2 * m - 1)):
        if inner_weights[inner] < leaf_weights[leaf]:
            first = inner_weights[inner]
            parent[m + inner] = next_id
            inner += 1
        else:
            first = leaf_weights[leaf]
            parent[leaf_ids[leaf]] = next_id
            leaf += 1
        if inner_weights[inner] < leaf_weights[leaf]:
            inner_weights[created] = first + inner_weights[inner]
            parent[m + inner] = next_id
            inner += 1
        else:
            inner_weights[created] = first + leaf_weights[leaf]
            parent[leaf_ids[leaf]] = next_id
            leaf += 1
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):  # parents are created after their children
        depth[node] = depth[parent[node]] + 1
    lengths[present] = depth[: len(present)]
    if lengths.max() > limit:
        lengths[present] = _limit_lengths(lengths[present], counts[present], limit)
    return lengths


def _limit_lengths(lengths: np.ndarray, counts: np.ndarray, limit: int) -> np.ndarray:
    """Lengths of at most ``limit`` bits for the present symbols (JPEG, ITU T.81 Annex K.3).

    Works on how many codes each length has: two codes at the deepest level (siblings) move
    up, their parent becomes a leaf, and the shallowest longer-than-needed leaf above makes
    room by splitting in two; the Kraft sum stays exactly 1. The new lengths then go, shortest
    first, to the symbols from most to least frequent.
    """
    per_length = np.bincount(lengths, minlength=limit + 1).tolist()
    for deepest in range(len(per_length) - 1, limit, -1):
        while per_length[deepest] > 0:
            above = deepest - 2
            while per_length[above] == 0:
                above -= 1
            per_length[deepest] -= 2
            per_length[deepest - 1] += 1
            per_length[above + 1] += 2
            per_length[above] -= 1
    new_lengths = np.repeat(np.arange(limit + 1), per_length[: limit + 1])
    order = np.lexsort((np.arange(len(counts)), -counts))  # most frequent first
    out = np.empty(len(counts), np.int64)
    out[order] = new_lengths
    return out


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (``uint64``) of each symbol from its length (0 = absent)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), np.uint64)
    present = np.flatnonzero(lengths)
    if len(present) == 0:
        return codes
    order = present[np.lexsort((present, lengths[present]))]  # by length, then symbol
    sorted_lengths = lengths[order]
    # code[i+1] = (code[i] + 1) << (len[i+1] - len[i]): accumulate in left-aligned form.
    top = int(sorted_lengths.max())
    step = np.left_shift(np.int64(1), top - sorted_lengths)
    aligned = np.concatenate([[0], np.cumsum(step[:-1])])
    codes[order] = (aligned >> (top - sorted_lengths)).astype(np.uint64)
    return codes


def entropy_bits(symbols: np.ndarray) -> float:
    """Shannon entropy of the stream's empirical distribution, in bits for the whole stream."""
    _, counts = np.unique(np.asarray(symbols).reshape(-1), return_counts=True)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts / total
    return float(-(counts * np.log2(p)).sum())


# ---------------------------------------------------------------------------- encode / decode


def block_size(count: int) -> int:
    """Symbols per block: the power of two at or below ``0.8 * sqrt(count)``, in 64..1024.

    (Chosen for an earlier decoder that ran the blocks as lanes of a vector; part of the
    format now.) The stored block lengths cost a few bits per block (about 0.8% of a stream
    of 5-bit symbols at 256 per block).
    """
    target = max(1, int(0.8 * math.isqrt(count)))
    return int(min(1024, max(64, 1 << (target.bit_length() - 1))))


def group_size(span: int, max_length: int, count: int) -> int:
    """The block size is rounded down to a multiple of this (part of the format: an earlier
    encoder looked up this many symbols at a time in a joint table of at most 2**16 entries,
    a small fraction of the stream, whose joint codes fit 64 bits)."""
    limit = max(span, min(1 << 16, count // 2))
    group = 1
    while span ** (group + 1) <= limit and (group + 1) * max_length <= 64:
        group += 1
    return group


def _unsigned(symbols: np.ndarray, lo: int, span: int) -> np.ndarray:
    """``symbols - lo`` as an unsigned array: ``uint8`` when ``span`` <= 256, else ``uint16``
    (``span`` <= 2**16)."""
    if symbols.dtype == np.bool_:
        return symbols.view(np.uint8)
    size = max(symbols.dtype.itemsize, 1)
    unsigned = np.dtype(f"u{size}")
    # Modular arithmetic in the same width gives symbols - lo exactly: it is in 0 .. span-1.
    shifted = symbols.view(unsigned)
    if lo:
        shifted = shifted - unsigned.type(lo % (1 << (8 * size)))
    narrow = np.uint8 if span <= 256 else np.uint16
    if shifted.dtype.itemsize > np.dtype(narrow).itemsize:
        shifted = shifted.astype(narrow)  # (the kernels are compiled for these two only)
    return shifted


def encode(symbols: np.ndarray, limit: int = MAX_CODE_LENGTH, block: Optional[int] = None) -> HuffmanCode:
    """Huffman-code an integer array (any shape; read in C order)."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.dtype.kind not in "iub":
        raise TypeError(f"Huffman coding needs integer symbols, not {symbols.dtype}")
    count = len(symbols)
    if count == 0:
        return HuffmanCode(0, 0, np.zeros(0, np.uint8), 1, np.zeros(0, np.uint64), 0, b"")
    lo, hi = int(symbols.min()), int(symbols.max())
    span = hi - lo + 1
    if span > MAX_ALPHABET:
        raise ValueError(f"symbols span {span} values; at most {MAX_ALPHABET} are supported")
    shifted = _unsigned(symbols, lo, span)
    if span == 1:
        return HuffmanCode(count, lo, np.zeros(1, np.uint8), 1, np.zeros(0, np.uint64), 0, b"")
    counts = _jit.count_symbols(shifted, span)
    lengths = code_lengths(counts, limit)
    nbits = int(np.dot(counts, lengths.astype(np.int64)))
    # (rounded as an earlier encoder needed: streams stay byte-identical)
    group = group_size(span, int(lengths.max()), count)
    block = block or block_size(count)
    if block % group:
        block = max(group, block // group * group)
    words = np.empty(bits.word_count(nbits), np.uint64)
    offsets = np.empty(-(-count // block) - 1, np.uint64)
    _jit.write_codes(shifted, canonical_codes(lengths), lengths.astype(np.uint64), block, words, offsets)
    return HuffmanCode(count, lo, lengths, block, offsets, nbits, bits.words_to_bytes(words, nbits))


def decode(code: HuffmanCode) -> np.ndarray:
    """The symbols of ``code`` (the smallest signed integer dtype that holds them).

    Raises :class:`FormatError` when the bits do not decode to exactly ``count`` symbols that
    end where the stored block offsets say.
    """
    dtype = _symbol_dtype(code.lo, code.lo + len(code.lengths) - 1)
    if code.count == 0:
        return np.zeros(0, dtype)
    if len(code.lengths) == 1:
        return np.full(code.count, code.lo, dtype)
    lengths = code.lengths.astype(np.int64)
    top = int(lengths.max())
    # For the next `top` bits: the symbol they start with and its code length. An incomplete
    # code (only in a corrupt file) leaves entries of length 0 at the end.
    present = np.flatnonzero(lengths)
    order = present[np.lexsort((present, lengths[present]))]
    repeats = np.left_shift(1, top - lengths[order])
    filled = min(int(repeats.sum()), 1 << top)
    symbol_table = np.zeros(1 << top, dtype)
    length_table = np.zeros(1 << top, np.uint8)
    symbol_table[:filled] = np.repeat((order + code.lo).astype(dtype), repeats)[:filled]
    length_table[:filled] = np.repeat(lengths[order], repeats)[:filled]

    # One zero word after the stream's last: a window read at its last bits takes two words.
    words = np.zeros(bits.word_count(code.nbits, spare=1), np.uint64)
    words.view(np.uint8)[:len(code.data)] = np.frombuffer(code.data, np.uint8)
    if np.little_endian:
        words.byteswap(inplace=True)  # the stream is big-endian words
    out = np.empty(code.count, dtype)
    failed = _jit.read_codes(words, code.count, code.block, code.offsets.astype(np.int64), code.nbits, top,
                             symbol_table, length_table, out)
    if failed >= 0:
        raise FormatError("the bitstream does not decode to the stored symbol count and offsets")
    return out


def _symbol_dtype(lo: int, hi: int) -> np.dtype:
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise FormatError(f"symbols {lo}..{hi} do not fit 64 bits")
