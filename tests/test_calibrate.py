"""circ.calibrate: quantization grids, histograms, range choice, observing a graph on data."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from circ.calibrate import (Grid, Histogram, calibrate, choose_range, feed_batches, grid_for_range,
                            observe, pow2_ceil)
from circ.errors import DataError
from circ.graph import Graph

rng = np.random.default_rng(0)

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def _half_step_bound(grid: Grid) -> float:
    # Half a step, plus float32 rounding of the dequantized value.
    return float(grid.scale) / 2 * (1 + 1e-5) + 1e-6


# ----------------------------------------------------------------------------- grids


@settings(max_examples=200, deadline=None)
@given(values=hnp.arrays(np.float32, st.integers(1, 64), elements=finite),
       bits=st.integers(2, 8), symmetric=st.booleans(), pow2=st.booleans())
def test_every_value_in_range_is_within_half_a_step(values, bits, symmetric, pow2):
    grid = grid_for_range(values.min(), values.max(), bits=bits, symmetric=symmetric, pow2=pow2)
    q = grid.quantize(values)
    assert q.dtype == (np.int8 if symmetric else np.uint8)
    assert grid.qmin <= q.min() and q.max() <= grid.qmax
    assert grid.qmax - grid.qmin == (2**bits - 2 if symmetric else 2**bits - 1)
    error = np.abs(values.astype(np.float64) - grid.dequantize(q))
    assert error.max() <= _half_step_bound(grid)
    assert grid.dequantize(grid.quantize(np.zeros(3))).tolist() == [0.0, 0.0, 0.0]  # 0 is exact


@given(bits=st.integers(2, 8), low=st.floats(-100, -1e-3), high=st.floats(1e-3, 100))
def test_pow2_scales_are_powers_of_two_that_cover_the_range(bits, low, high):
    for symmetric in (True, False):
        grid = grid_for_range(low, high, bits=bits, symmetric=symmetric, pow2=True)
        mantissa, _ = np.frexp(grid.scale)
        assert mantissa == 0.5
        plain = grid_for_range(low, high, bits=bits, symmetric=symmetric)
        assert plain.scale <= grid.scale < 2 * plain.scale * (1 + 1e-6)


def test_pow2_ceil():
    assert pow2_ceil(np.array([0.3, 0.25, 1.0, 3.0])).tolist() == [0.5, 0.25, 1.0, 4.0]


def test_grid_kinds():
    symmetric = grid_for_range(-2.0, 1.0, bits=8)
    assert (symmetric.qmin, symmetric.qmax, symmetric.dtype) == (-127, 127, np.int8)
    assert float(symmetric.scale) == pytest.approx(2.0 / 127)
    unsigned = grid_for_range(0.0, 2.55, bits=8, unsigned=True)
    assert (unsigned.qmin, unsigned.qmax, int(unsigned.zero_point)) == (0, 255, 0)
    affine = grid_for_range(-1.0, 3.0, bits=4, symmetric=False)
    assert (affine.qmin, affine.qmax, affine.dtype) == (0, 15, np.uint8)
    assert int(affine.zero_point) == 4  # round(1 / (4 / 15)) = round(3.75)
    zeros = grid_for_range(0.0, 0.0)
    assert float(zeros.scale) == 1.0
    per_channel = grid_for_range(np.array([-1.0, 0.0]), np.array([1.0, 0.0]), bits=8)
    assert per_channel.scale.shape == (2,) and per_channel.scale[1] == 1.0
    with pytest.raises(ValueError):
        grid_for_range(-1, 1, bits=9)
    with pytest.raises(ValueError):
        grid_for_range(-1, 1, unsigned=True)


def test_rounding_is_half_to_even_and_saturates():
    grid = Grid(np.float32(1.0), np.int8(0), -127, 127)
    assert grid.quantize(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0])).tolist() == \
        [0, 2, 2, 0, -2, 127, -127]


# ----------------------------------------------------------------------------- histograms


def test_histogram_quantiles_match_numpy():
    values = rng.standard_normal(50_000)
    hist = Histogram.of(values)
    assert hist.signed and len(hist.counts) == 4096 and hist.counts.sum() == values.size
    for q in (0.01, 0.5, 0.9, 0.999):
        assert abs(hist.quantile(q) - np.quantile(values, q)) <= hist.width
    relu = np.maximum(values, 0)
    hist = Histogram.of(relu)
    assert not hist.signed and hist.start == 0 and len(hist.counts) == 2048


def test_magnitudes_fold_the_signed_histogram():
    values = np.array([-0.9, -0.3, 0.3, 0.6, 1.0])
    hist = Histogram.of(values, bins=4)  # bins of width 0.25 over [-1, 1]
    assert hist.counts.tolist() == [1, 0, 1, 0, 0, 1, 1, 1]
    assert hist.magnitudes().tolist() == [0, 2, 1, 2]


def test_minmax_and_percentile_clip_outliers():
    values = np.concatenate([rng.standard_normal(100_000), [1000.0, -800.0]])
    hist = Histogram.of(values)
    assert choose_range(hist, "minmax") == (-800.0, 1000.0)
    low, high = choose_range(hist, "percentile", percentile=99.9)
    assert -4.5 < low < -2.5 and 2.5 < high < 4.5
    assert choose_range(hist, "percentile", percentile=100.0)[1] == pytest.approx(1000.0)


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_mse_and_entropy_clip_a_heavy_tail(method):
    values = rng.standard_t(2, 200_000)
    low, high = choose_range(Histogram.of(values), method)
    assert high < 0.7 * values.max() and low > 0.7 * values.min()
    assert high > np.quantile(values, 0.99)  # but keeps the bulk of the distribution


def _sample_mse(values, low, high, bits):
    grid = grid_for_range(low, high, bits=bits, symmetric=True)
    return np.mean((values - grid.dequantize(grid.quantize(values))) ** 2)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_mse_range_is_near_the_best_clip_found_by_brute_force(bits):
    # Laplace(1): the optimal 4-bit clip is about 5 (Banner et al., ACIQ), well below the max.
    values = rng.laplace(size=100_000)
    low, high = choose_range(Histogram.of(values), "mse", bits=bits)
    top = max(values.max(), -values.min())
    best = min(_sample_mse(values, -t, t, bits) for t in np.linspace(0.05, 1, 400) * top)
    assert _sample_mse(values, low, high, bits) <= 1.03 * best
    if bits <= 4:
        assert high < 0.7 * top


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_mse_and_entropy_relu_data(method):
    values = np.maximum(rng.standard_t(3, 100_000), 0)
    low, high = choose_range(Histogram.of(values), method)
    assert low == 0 and np.quantile(values, 0.95) < high < values.max()


def test_mse_keeps_the_range_of_uniform_data():
    values = rng.uniform(-1, 1, 100_000)
    low, high = choose_range(Histogram.of(values), "mse")
    assert high > 0.97 and low < -0.97


def test_unknown_method_and_bad_percentile():
    hist = Histogram.of(np.arange(5.0))
    with pytest.raises(ValueError, match="unknown calibration method"):
        choose_range(hist, "magic")
    with pytest.raises(ValueError, match="percentile"):
        choose_range(hist, "percentile", percentile=0)


# ----------------------------------------------------------------------------- observing a graph


def _relu_graph(batch="N"):
    g = Graph(opsets={"": 17})
    x = g.add_input("x", np.float32, (batch, 4))
    w = g.add_const("w", rng.standard_normal((4, 3)).astype(np.float32))
    mm = g.add_node("MatMul", [x, w], name="mm")
    relu = g.add_node("Relu", [mm.output], name="relu")
    g.outputs.append(relu.output)
    return g, x, mm.output, relu.output


def test_observe_records_exact_min_max_and_counts_independent_of_batching():
    g, x, pre, post = _relu_graph()
    data = {"x": rng.standard_normal((50, 4)).astype(np.float32)}
    pre_all = data["x"] @ g.consts["w"].numpy()
    whole = observe(g, [x, pre, post], data, batch=50)
    pieces = observe(g, [x, pre, post], data, batch=7)
    assert (whole[id(pre)].low, whole[id(pre)].high) == pytest.approx((pre_all.min(), pre_all.max()))
    assert whole[id(post)].low == 0.0 and not whole[id(post)].signed
    assert whole[id(x)].low == pytest.approx(data["x"].min())
    for value in (x, pre, post):
        np.testing.assert_array_equal(whole[id(value)].counts, pieces[id(value)].counts)
        assert whole[id(value)].counts.sum() == data["x"].shape[0] * value.shape[1]
    ranges = calibrate(g, [pre], data, method="minmax")
    assert ranges[id(pre)] == pytest.approx((pre_all.min(), pre_all.max()))


def test_feed_batches_follow_a_fixed_batch_and_accept_one_unnamed_array():
    g, *_ = _relu_graph(batch=2)
    data = {"anything": np.zeros((5, 4), np.float32)}
    batches = list(feed_batches(g, data))
    assert [b["x"].shape for b in batches] == [(2, 4), (2, 4)]  # the odd sample is left out
    g, *_ = _relu_graph()
    assert [b["x"].shape[0] for b in feed_batches(g, {"x": np.zeros((70, 4))})] == [32, 32, 6]


def test_feed_batches_errors():
    g, *_ = _relu_graph()
    two = Graph(opsets={"": 17})
    two.add_input("a", np.float32, ("N", 1))
    two.add_input("b", np.float32, ("N", 1))
    with pytest.raises(DataError, match="missing input 'b'"):
        list(feed_batches(two, {"a": np.zeros((2, 1))}))
    with pytest.raises(DataError, match="unknown input 'c'"):
        list(feed_batches(two, {"a": np.zeros((2, 1)), "b": np.zeros((2, 1)), "c": np.zeros(1)}))
    with pytest.raises(DataError, match="same number of samples"):
        list(feed_batches(two, {"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}))
    fixed, *_ = _relu_graph(batch=8)
    with pytest.raises(DataError, match="batches of"):
        list(feed_batches(fixed, {"x": np.zeros((3, 4))}))
