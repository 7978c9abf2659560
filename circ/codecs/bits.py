"""Bit packing: variable-length codes into a bitstream and back, vectorised with NumPy.

A bitstream is written most-significant bit first: the first code's first bit is bit 7 of
byte 0. In memory the stream is an array of big-endian ``uint64`` words, so a code of up to
64 bits touches at most two words and every operation below is a handful of array ops over
the codes, never a Python loop over them.

- :func:`pack_codes` ORs codes of given lengths into a word array from a bit offset.
- :func:`peek` reads ``width`` bits at many bit positions at once (what a decoder needs).
- :func:`pack_uint` / :func:`unpack_uint` store non-negative integers at a fixed width (code
  length tables, block offsets, fixed-width indices).
"""

from __future__ import annotations

import numpy as np

_U64 = np.uint64


def word_count(nbits: int, spare: int = 0) -> int:
    """Words holding ``nbits`` bits, plus ``spare`` zero words a reader may peek into."""
    return (nbits + 63) // 64 + spare


def pack_codes(words: np.ndarray, codes: np.ndarray, lengths: np.ndarray, start: int = 0) -> int:
    """OR ``codes`` (each ``lengths[i]`` bits, 1..64) into ``words`` from bit ``start``, in
    order; returns the bit position after the last code. ``words`` must be zero there."""
    if len(lengths) == 0:
        return start
    lengths = np.asarray(lengths).astype(_U64)
    starts = np.cumsum(lengths, dtype=_U64)
    end = start + int(starts[-1])
    starts -= lengths
    aligned = np.asarray(codes).astype(_U64) << (_U64(64) - lengths)
    spare = np.zeros(len(words) + 1, _U64)
    spare[: len(words)] = words
    place_aligned(spare, aligned, starts, start)
    words[:] = spare[: len(words)]
    return end


def place_aligned(words: np.ndarray, aligned: np.ndarray, starts: np.ndarray, start: int = 0) -> None:
    """OR codes into ``words``: ``aligned[i]`` (``uint64``) holds a code of up to 64 bits in
    its top bits, to be written from bit ``start + starts[i]``. The starts (an unsigned array)
    increase, the codes do not overlap, and the word after the last code's first word must
    exist (the code may spill into it). ``aligned`` and ``starts`` are overwritten: callers
    pass temporaries."""
    base = start >> 6
    if start & 63:
        starts += starts.dtype.type(start & 63)
    word = starts >> starts.dtype.type(6)
    # Codes never overlap, so adding the codes that start in one word assembles it: the
    # difference of running sums (modulo 2**64, exact) at the last code of each word. A code
    # spills into the next word only if it is the last one starting in its word.
    step = np.empty(len(word), np.bool_)
    np.not_equal(word[1:], word[:-1], out=step[:-1])
    step[-1] = True
    last = np.flatnonzero(step)
    # Every word from the first code's to the last code's has a code starting in it (a code
    # that starts before a word ends inside it), so the words touched are consecutive.
    at = base + int(word[0])
    offset = np.bitwise_and(starts, starts.dtype.type(63), out=starts)
    # aligned << (64 - offset), without the undefined shift by 64 when offset is 0
    spill = (aligned[last] << _U64(1)) << (_U64(63) - offset[last])
    total = np.cumsum(np.right_shift(aligned, offset, out=aligned), out=aligned)
    sums = total[last]
    sums[1:] -= total[last[:-1]]
    words[at:at + len(last)] |= sums
    words[at + 1:at + 1 + len(last)] |= spill


def words_to_bytes(words: np.ndarray, nbits: int) -> bytes:
    """The first ``ceil(nbits / 8)`` bytes of the stream (``words`` is byte-swapped in place
    on little-endian machines)."""
    big = words.byteswap(inplace=True).view(">u8") if words.dtype.byteorder != ">" and np.little_endian else words
    return big.view(np.uint8)[: (nbits + 7) // 8].tobytes()


def bytes_to_words(data: bytes, spare: int = 2) -> np.ndarray:
    """A word array of ``data`` (zero padded) with ``spare`` extra zero words for peeking."""
    count = (len(data) + 7) // 8
    padded = bytearray(data)
    padded.extend(bytes(count * 8 - len(data) + spare * 8))
    return np.frombuffer(bytes(padded), dtype=">u8").astype(_U64)


def peek(words: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` (1..64) bits at each bit position, as ``uint64``. Positions must leave
    one word after theirs in ``words`` (see :func:`bytes_to_words`'s spare words)."""
    positions = np.asarray(positions).astype(_U64)
    word = (positions >> _U64(6)).astype(np.intp)
    offset = positions & _U64(63)
    # (x >> 1) >> (63 - offset) is x >> (64 - offset) without the undefined shift by 64.
    window = (words[word] << offset) | ((words[word + 1] >> _U64(1)) >> (_U64(63) - offset))
    return window >> _U64(64 - width)


def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Non-negative integers (each < 2**width) at ``width`` bits each, MSB first."""
    values = np.asarray(values).reshape(-1)
    if width == 0 or len(values) == 0:
        return b""
    nbits = len(values) * width
    words = np.zeros(word_count(nbits), _U64)
    pack_codes(words, values, np.full(len(values), width, np.uint8))
    return words_to_bytes(words, nbits)


def unpack_uint(data: bytes, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uint` (``uint64``); ``data`` must hold ``count * width`` bits."""
    if width == 0 or count == 0:
        return np.zeros(count, _U64)
    words = bytes_to_words(data)
    return peek(words, np.arange(count, dtype=_U64) * _U64(width), width)


def uint_bytes(count: int, width: int) -> int:
    """Bytes :func:`pack_uint` writes for ``count`` values of ``width`` bits."""
    return (count * width + 7) // 8
