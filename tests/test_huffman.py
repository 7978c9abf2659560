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


def _golden_streams():
    rng = np.random.default_rng(2024)
    yield "int8 5-bit clusters", rng.choice(32, 100_003, p=rng.dirichlet(np.ones(32))).astype(np.int8), {}
    yield "int16 8-bit, offset", (rng.choice(256, 70_001, p=rng.dirichlet(np.full(256, 0.3))) - 100).astype(np.int16), {}
    yield "uint16 skewed, limit 12", rng.choice(40, 50_000, p=rng.dirichlet(np.full(40, 0.05))).astype(np.uint16), {"limit": 12}
    yield "int64 wide alphabet", rng.integers(-3000, 3000, 20_000), {"block": 100}
    yield "bool", rng.random(9_999) < 0.2, {}


# SHA-256 of the serialized streams as the first (unoptimised) encoder wrote them: the
# faster encoder must write the same bytes.
GOLDEN = {
    "int8 5-bit clusters": "3e0aca153fb0d0041871e4cbbf6db67ad0d55c85dff69fde6a9cbadf011c22d3",
    "int16 8-bit, offset": "5e2ac21ba987b4d5f7a1196bb2a0a2d4fd611b819d228e49ea46b925f307d2a8",
    "uint16 skewed, limit 12": "a4d70ec761a66e3466df33e70084c66829ec93a9e0b3b4056da8938bf56fb23b",
    "int64 wide alphabet": "b44891fe0cfab021190abe5ae88a017cc2a989a02385ebee9c0a808bac56b36d",
    "bool": "0c9bb782e51413642b0f82edf9a3dee43713cbbe86a59d73aaa9918cf1275ba1",
}


def test_encoder_writes_the_golden_bytes():
    import hashlib

    for name, symbols, options in _golden_streams():
        out = Writer()
        huffman.encode(symbols, **options).write(out)
        assert hashlib.sha256(out.getvalue()).hexdigest() == GOLDEN[name], name


def _heap_code_lengths(counts):
    """Textbook Huffman with a heap of (weight, node id), ties to the smaller id."""
    import heapq

    present = [s for s, c in enumerate(counts) if c]
    heap = [(int(counts[s]), i) for i, s in enumerate(present)]
    heapq.heapify(heap)
    parent, next_id = {}, len(present)
    while len(heap) > 1:
        (wa, a), (wb, b) = heapq.heappop(heap), heapq.heappop(heap)
        parent[a] = parent[b] = next_id
        heapq.heappush(heap, (wa + wb, next_id))
        next_id += 1
    lengths = [0] * len(counts)
    for i, s in enumerate(present):
        node, depth = i, 0
        while node in parent:
            node, depth = parent[node], depth + 1
        lengths[s] = depth
    return lengths


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=60))
def test_two_queue_code_lengths_match_a_heap_with_ties(counts):
    # small counts: many ties between leaves and merged nodes
    counts = np.array(counts)
    expected = _heap_code_lengths(counts) if np.count_nonzero(counts) > 1 else [0] * len(counts)
    assert list(huffman.code_lengths(counts, limit=32)) == expected


def test_scratch_reuse_does_not_leak_between_streams():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 7, 300_000).astype(np.int16)
    b = rng.integers(-50, 50, 1000)
    code_a = huffman.encode(a)
    code_b = huffman.encode(b)
    first_b = huffman.decode(code_b)
    assert np.array_equal(huffman.decode(code_a), a)  # decoding `a` reuses `b`'s scratch
    assert np.array_equal(first_b, b)
    assert np.array_equal(huffman.decode(huffman.encode(b)), b)


@pytest.mark.parametrize("extra", [-3, -1, 0, 1, 2])
def test_streams_around_a_block_boundary_roundtrip(extra):
    # span 32 rounds a block of 256 down to a multiple of 3 (255): counts just below, at and above
    # a whole number of blocks end the last block early, exactly, or open one more
    rng = np.random.default_rng(extra + 10)
    symbols = rng.choice(32, 255 * 400 + extra, p=rng.dirichlet(np.ones(32))).astype(np.int8)
    code = huffman.encode(symbols, block=256)
    assert code.block == 255 and len(code.offsets) == -(-len(symbols) // 255) - 1
    assert np.array_equal(huffman.decode(roundtrip(code)), symbols)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([20, 33, 40, 256, 300]), st.integers(0, 999),
       st.sampled_from([np.uint8, np.int16, np.int32, np.uint16]), st.integers(0, 2**32 - 1))
def test_the_symbol_dtype_does_not_change_the_bytes(span, extra, dtype, seed):
    # symbols are narrowed to uint8 or uint16 before coding, whatever their dtype
    count = 2 * span * span + extra
    rng = np.random.default_rng(seed)
    symbols = rng.choice(span, count, p=rng.dirichlet(np.ones(span))) + int(rng.integers(0, 5))
    if symbols.max() > 255 and dtype == np.uint8:
        dtype = np.uint16
    typed, wide = Writer(), Writer()
    huffman.encode(symbols.astype(dtype)).write(typed)
    huffman.encode(symbols.astype(np.int64)).write(wide)
    assert typed.getvalue() == wide.getvalue()
    assert np.array_equal(huffman.decode(roundtrip(huffman.encode(symbols.astype(dtype)))), symbols)
