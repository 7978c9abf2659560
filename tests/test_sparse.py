"""Relative-index coding of sparse positions (circ.codecs.sparse)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circ.codecs import sparse
from circ.codecs.binio import FormatError


def test_fillers_bridge_long_gaps_as_in_the_paper():
    # index_bits=2: gaps up to 2 in one entry; 3 is the filler that skips 3 positions
    entries = sparse.encode_positions(np.array([1, 9]), 2)
    assert entries.tolist() == [1, 3, 3, 1]
    assert sparse.decode_positions(entries, 2, 10).tolist() == [1, 9]
    assert sparse.entry_count(np.array([1, 9]), 2) == 4


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 16), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_positions_roundtrip(size, index_bits, seed, density):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(size) < density)
    entries = sparse.encode_positions(positions, index_bits)
    assert entries.max(initial=0) < 2**index_bits
    assert len(entries) == sparse.entry_count(positions, index_bits)
    assert np.array_equal(sparse.decode_positions(entries, index_bits, size), positions)


def test_entries_past_the_end_are_refused():
    with pytest.raises(FormatError, match="position"):
        sparse.decode_positions(np.array([3, 3, 1]), 2, 5)


def test_index_bits_are_checked():
    with pytest.raises(ValueError):
        sparse.encode_positions(np.array([1]), 0)
