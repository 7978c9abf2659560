"""Canonical Huffman coding and bit packing (circ.codecs.huffman, circ.codecs.bits)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from circ.codecs import bits, huffman
from circ.codecs.binio import FormatError, Reader, Writer


def roundtrip(code: huffman.HuffmanCode, max_count=None) -> huffman.HuffmanCode:
    out = Writer()
    code.write(out)
    source = Reader(out.getvalue())
    back = huffman.HuffmanCode.read(source, max_count=code.count if max_count is None else max_count)
    source.end("the stream")
    return back


@settings(max_examples=200, deadline=None)
@given(arrays(np.int64, st.integers(0, 3000), elements=st.integers(-300, 300)),
       st.sampled_from([None, 1, 3, 64, 100]))
def test_encode_decode_is_identity(symbols, block):
    code = huffman.encode(symbols, block=block)
    decoded = huffman.decode(roundtrip(code))
    assert np.array_equal(decoded, symbols)


@settings(max_examples=100, deadline=None)
@given(arrays(np.int8, st.integers(0, 5000), elements=st.integers(0, 3)))
def test_small_alphabets_roundtrip(symbols):
    # several symbols are looked up as one joint code here, with a tail of single ones
    assert np.array_equal(huffman.decode(roundtrip(huffman.encode(symbols))), symbols)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**32 - 1), st.integers(1, 20000))
def test_skewed_streams_roundtrip_and_respect_the_length_limit(alphabet, seed, count):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(alphabet, 0.05))  # very uneven: deep trees get limited
    symbols = rng.choice(alphabet, count, p=p).astype(np.int16)
    code = huffman.encode(symbols, limit=12)
    assert code.lengths.max() <= 12
    assert np.array_equal(huffman.decode(roundtrip(code)), symbols)


def test_code_lengths_are_optimal_on_a_textbook_example():
    # frequencies 45,13,12,16,9,5 (CLRS): lengths 1,3,3,3,4,4 -> 224 bits
    counts = np.array([45, 13, 12, 16, 9, 5])
    lengths = huffman.code_lengths(counts)
    assert list(lengths) == [1, 3, 3, 3, 4, 4]
    codes = huffman.canonical_codes(lengths)
    assert list(codes) == [0b0, 0b100, 0b101, 0b110, 0b1110, 0b1111]


def test_length_limit_keeps_a_prefix_code():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman.code_lengths(np.array(fib), limit=16).astype(int)
    assert lengths.max() == 16
    assert np.sum(2.0 ** -lengths) <= 1.0
    codes = huffman.canonical_codes(lengths)
    words = {format(int(c), f"0{n}b") for c, n in zip(codes, lengths)}
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_single_symbol_and_empty_streams_cost_no_bits():
    code = huffman.encode(np.full(1000, 7, np.int8))
    assert code.nbits == 0 and code.size_bits == 0
    assert np.array_equal(huffman.decode(roundtrip(code)), np.full(1000, 7))
    empty = huffman.encode(np.zeros(0, np.int8))
    assert huffman.decode(roundtrip(empty)).size == 0


def test_coded_size_is_close_to_the_entropy():
    rng = np.random.default_rng(0)
    p = np.exp(-0.5 * ((np.arange(32) - 16) / 5.0) ** 2)
    symbols = rng.choice(32, 200_000, p=p / p.sum())
    code = huffman.encode(symbols)
    entropy = huffman.entropy_bits(symbols)
    assert entropy <= code.nbits <= 1.02 * entropy
    assert code.size_bits <= 1.02 * entropy  # tables and block offsets included


def test_bits_that_do_not_end_at_the_stored_offsets_are_refused():
    rng = np.random.default_rng(1)
    code = huffman.encode(rng.integers(0, 20, 5000), block=64)
    code.offsets = code.offsets.copy()
    code.offsets[3] += np.uint64(1)  # block 4 now starts one bit late
    with pytest.raises(FormatError, match="offsets"):
        huffman.decode(code)


def test_a_header_claiming_more_than_the_bytes_is_refused_before_allocating():
    out = Writer()
    huffman.encode(np.arange(100) % 7).write(out)
    data = bytearray(out.getvalue())
    data[:8] = (10**15).to_bytes(8, "little")  # symbol count
    with pytest.raises(FormatError, match="symbols"):
        huffman.HuffmanCode.read(Reader(bytes(data)), max_count=10**16)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(0, 2**64 - 1)), max_size=60),
       st.integers(0, 200))
def test_pack_codes_matches_a_bit_string(items, start):
    lengths = np.array([n for n, _ in items], np.uint8)
    codes = np.array([c % (1 << n) for n, c in items], np.uint64)
    nbits = start + int(lengths.astype(int).sum())
    words = np.zeros(bits.word_count(nbits, 2), np.uint64)
    assert bits.pack_codes(words, codes, lengths, start) == nbits
    text = "".join(format(int(w), "064b") for w in words)
    assert text[start:nbits] == "".join(format(int(c), f"0{n}b") for c, n in zip(codes, lengths))
    assert set(text[:start] + text[nbits:]) <= {"0"}


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 64), st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_pack_uint_roundtrip(width, count, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**63, count, dtype=np.uint64) >> np.uint64(64 - width)
    packed = bits.pack_uint(values, width)
    assert len(packed) == bits.uint_bytes(count, width)
    assert np.array_equal(bits.unpack_uint(packed, count, width), values)
