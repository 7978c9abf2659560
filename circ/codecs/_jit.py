"""Compiled inner loops of the Huffman coder: writing codes into a bitstream and reading them back.

Why numba: where a prefix code goes (encoding) or where the next one starts (decoding) depends
on the lengths of all the codes before it, a sequential loop over the stream that NumPy cannot
vectorise. The NumPy coder before these kernels ran it as many passes over the whole stream
(cumulative sums of lengths, gathers of 64-bit windows, one decoding lane per block), was
bound by that memory traffic and reached 25-40x the pure-Python ``dahuffman``. Compiled, each
loop reads every symbol once and keeps its bits in a register.

Bit arithmetic is kept in ``uint64`` throughout: numba types a mix of signed and unsigned
64-bit integers as float64. The kernels are compiled on first use and cached in
``__pycache__`` (``cache=True``); ``nogil`` lets threads code streams in parallel.
"""

from __future__ import annotations

import numba
import numpy as np

_U64 = np.uint64


@numba.njit(cache=True, nogil=True)
def write_codes(symbols, codes, lengths, block, words, offsets):  # pragma: no cover - compiled
    """Write the code of every symbol, most significant bit first, into ``words``.

    ``codes`` and ``lengths`` (both ``uint64``, lengths 1..63 for every symbol that occurs)
    are indexed by symbol; ``words`` must have exactly ``ceil(total bits / 64)`` entries and is
    filled with native ``uint64`` values whose top bit comes first in the stream. The bit
    offset where symbol ``k * block`` starts goes to ``offsets[k - 1]`` (``k >= 1``).
    """
    acc = _U64(0)  # pending bits in the low end; bits above the pending ones are shifted out
    free = _U64(64)  # bits still free in acc
    word = 0
    position = _U64(0)
    next_block = block
    k = 0
    for i in range(len(symbols)):
        if i == next_block:
            offsets[k] = position
            k += 1
            next_block += block
        symbol = symbols[i]
        code = codes[symbol]
        size = lengths[symbol]
        position += size
        if size < free:
            acc = (acc << size) | code
            free -= size
        else:  # the code fills the word (1 <= free <= size) and its rest starts the next
            rest = size - free
            words[word] = (acc << free) | (code >> rest)
            word += 1
            acc = code
            free = _U64(64) - rest
    if free < _U64(64):
        words[word] = acc << free


@numba.njit(cache=True, nogil=True)
def read_codes(words, count, block, offsets, nbits, top, symbol_table, length_table, out):  # pragma: no cover
    """Decode ``count`` symbols into ``out``; returns -1, or the block after which the bit
    position is not the stored one (``len(offsets) + 1``: the end is not ``nbits``).

    ``words`` are native ``uint64`` values of the stream (first bit on top) with one zero word
    after the last that holds stream bits. The next ``top`` bits index ``symbol_table`` (the
    symbol they start with) and ``length_table`` (its code length). One 64-bit window at the
    current position serves as many codes as surely fit in it.
    """
    drop = _U64(64 - top)
    limit = _U64(64 - top)  # a window serves codes while at most this many bits are used
    last_word = len(words) - 1
    position = 0
    blocks = (count + block - 1) // block
    for b in range(blocks):
        if b > 0 and position != offsets[b - 1]:
            return b
        i = b * block
        end = min(i + block, count)
        while i < end:
            word = position >> 6
            if word >= last_word:  # past the stream's end: a corrupt stream
                return b + 1
            shift = _U64(position & 63)
            # (x >> 1) >> (63 - shift) is x >> (64 - shift) without the undefined shift by 64
            window = (words[word] << shift) | ((words[word + 1] >> _U64(1)) >> (_U64(63) - shift))
            used = _U64(0)
            while i < end and used <= limit:
                index = (window << used) >> drop
                out[i] = symbol_table[index]
                used += _U64(length_table[index])
                i += 1
            position += np.int64(used)
    if position != nbits:
        return blocks
    return -1


@numba.njit(cache=True, nogil=True)
def count_symbols(symbols, span):  # pragma: no cover - compiled
    """How often each value ``0 .. span - 1`` occurs in ``symbols`` (``int64``)."""
    # Four tables: runs of one symbol would otherwise wait on the store before each increment.
    partial = np.zeros((4, span), np.int64)
    whole = len(symbols) // 4 * 4
    for i in range(0, whole, 4):
        partial[0, symbols[i]] += 1
        partial[1, symbols[i + 1]] += 1
        partial[2, symbols[i + 2]] += 1
        partial[3, symbols[i + 3]] += 1
    for i in range(whole, len(symbols)):
        partial[0, symbols[i]] += 1
    return partial.sum(axis=0)
