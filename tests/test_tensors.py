"""Every constant representation decodes to its float array and keeps pruned zeros."""

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from circ.tensors import Clustered, Dense, Quantized

floats = st.floats(-4, 4, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=floats), st.data())
def test_dense_mask_zeroes_pruned_positions(array, data):
    mask = data.draw(arrays(bool, array.shape))
    t = Dense(array, mask)
    out = t.to_numpy()
    assert np.all(out[~mask] == 0) and np.array_equal(out[mask], array[mask])
    assert t.kept is mask or np.array_equal(t.kept, mask)
    c = t.copy()
    c.array[...] = 7
    assert np.array_equal(t.to_numpy(), out)


def test_clustered_decodes_through_codebook_with_minus_one_as_zero():
    t = Clustered(np.array([-0.5, 0.25, 1.0], np.float32), np.array([[0, 2], [-1, 1]], np.int8))
    np.testing.assert_array_equal(t.to_numpy(), [[-0.5, 1.0], [0.0, 0.25]])
    assert t.index_bits == 2 and t.bits == 2
    np.testing.assert_array_equal(t.kept, [[True, True], [False, True]])
    assert t.storage_bytes == 3 * 4 + 1


def test_quantized_per_tensor_and_per_axis():
    q = np.array([[-2, 0, 3], [1, 1, -1]], np.int8)
    t = Quantized(q, np.float32(0.5), np.int8(0))
    np.testing.assert_array_equal(t.to_numpy(), q * 0.5)
    per_row = Quantized(q, np.array([1.0, 0.25], np.float32), np.array([1, 0], np.int8), axis=0)
    np.testing.assert_array_equal(per_row.to_numpy(), [[-3, -1, 2], [0.25, 0.25, -0.25]])
    assert per_row.to_numpy().dtype == np.float32


def test_quantized_mask_forces_exact_zero_even_off_the_zero_point():
    t = Quantized(np.array([5, 5], np.uint8), np.float32(0.1), np.uint8(3),
                  mask=np.array([True, False]))
    np.testing.assert_allclose(t.to_numpy(), [0.2, 0.0])
    assert t.to_numpy()[1] == 0.0
    assert t.storage_bytes == 2 + 4 + 1
