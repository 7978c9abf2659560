import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from circ.kmeans1d import (INITS, SortedData, _draw_in_runs, assign, inertia, kmeans1d,
                           kmeans_plus_plus, kmeans_plus_plus_batch, lloyd, lloyd_batch,
                           optimal_centroids)


def brute_inertia(x, centroids, weights=None):
    x = np.asarray(x, np.float64).reshape(-1)
    distance = (x[:, None] - np.asarray(centroids, np.float64)[None, :]) ** 2
    best = distance.min(axis=1)
    return float(best.sum() if weights is None else np.dot(weights, best))


def brute_lloyd(x, centroids, iterations):
    """Textbook Lloyd with an n x k distance matrix (no empty clusters expected)."""
    x = np.asarray(x, np.float64)
    centroids = np.asarray(centroids, np.float64)
    for _ in range(iterations):
        labels = np.argmin(np.abs(x[:, None] - centroids[None, :]), axis=1)
        centroids = np.array([x[labels == j].mean() for j in range(len(centroids))])
    return centroids


data_arrays = st.lists(st.integers(-50, 50), min_size=1, max_size=60).map(
    lambda ints: np.array(ints, np.float64) / 7.0)  # repeated values on purpose


@settings(max_examples=150, deadline=None)
@given(data_arrays, st.integers(1, 12), st.sampled_from(INITS), st.integers(0, 3))
def test_never_worse_than_init_sorted_deterministic(x, k, init, seed):
    result = kmeans1d(x, k, init=init, seed=seed)
    again = kmeans1d(x, k, init=init, seed=seed)
    np.testing.assert_array_equal(result.centroids, again.centroids)
    assert np.all(np.diff(result.centroids) > 0)  # sorted and distinct
    assert 1 <= len(result.centroids) <= k
    assert result.inertia <= result.init_inertia
    assert result.inertia == pytest.approx(brute_inertia(x, result.centroids), rel=1e-9, abs=1e-12)
    labels = assign(x, result.centroids)
    assert labels.min() >= 0 and labels.max() < len(result.centroids)
    # labels are nearest centroids
    distance = np.abs(x - result.centroids[labels])
    assert np.all(distance <= np.abs(x[:, None] - result.centroids[None, :]).min(axis=1) + 1e-12)


@settings(max_examples=100, deadline=None)
@given(data_arrays, st.lists(st.floats(-8, 8), min_size=1, max_size=10), st.integers(0, 20))
def test_lloyd_from_any_start_never_increases_the_objective(x, start, iterations):
    data = SortedData.from_data(x)
    start = np.sort(np.array(start))
    result = lloyd(data, start, max_iter=iterations)
    before = brute_inertia(x, start)
    assert brute_inertia(x, result.centroids) <= before * (1 + 1e-12) + 1e-12


@settings(max_examples=100, deadline=None)
@given(data_arrays, st.integers(2, 12), st.integers(1, 4), st.integers(0, 2**32 - 1),
       st.sampled_from([(300, 0.0), (2, 0.0), (300, 1e-3)]))
def test_lloyd_batch_is_lloyd_row_by_row(x, k, count, seed, budget):
    data = SortedData.from_data(x)
    rng = np.random.default_rng(seed)
    # random distinct starts: some clusters start empty (re-seeded by the scalar path)
    starts = np.sort(rng.uniform(-8, 8, (count, k)), axis=1)
    max_iter, tol = budget
    for start, got in zip(starts, lloyd_batch(data, starts, max_iter=max_iter, tol=tol)):
        want = lloyd(data, start, max_iter=max_iter, tol=tol)
        np.testing.assert_array_equal(got.centroids, want.centroids)
        assert (got.inertia, got.init_inertia, got.n_iter, got.converged, got.reseeded) == \
            (want.inertia, want.init_inertia, want.n_iter, want.converged, want.reseeded)


def brute_optimum(data, k):
    """Least cost of ``k`` contiguous runs of the sorted data, by the O(k m^2) recursion."""
    m = data.size
    best = np.full((k + 1, m + 1), np.inf)
    best[0, 0] = 0.0
    for layer in range(1, k + 1):
        for j in range(layer, m + 1):
            splits = np.arange(layer - 1, j)  # the last run is values[i:j]
            costs = data.run_cost(splits, j, data.run_mean(splits, j))
            best[layer, j] = np.min(best[layer - 1, splits] + costs)
    return best[k, m]


@settings(max_examples=100, deadline=None)
@given(data_arrays, st.integers(2, 8), st.booleans())
def test_optimal_centroids_reach_the_least_cost_partition(x, k, weighted):
    weights = (np.arange(len(x)) % 3 + 1).astype(float) if weighted else None
    data = SortedData.from_data(x, weights)
    if not 1 < k < data.size:
        return
    centroids = optimal_centroids(data, k)
    assert len(centroids) == k and np.all(np.diff(centroids) > 0)
    assert data.sse(centroids) <= brute_optimum(data, k) * (1 + 1e-9) + 1e-12


def test_small_problems_get_the_optimum_not_a_local_one():
    # seed 101, n 500, k 4: kmeans++ restarts and scikit-learn end in local optima
    # 0.1% above the least cost; the exact polish finds it
    x = np.random.default_rng(101).standard_normal(500).astype(np.float32)
    data = SortedData.from_data(x)
    heuristic = kmeans1d(x, 4, init="kmeans++", seed=1, exact=False)
    polished = kmeans1d(x, 4, init="kmeans++", seed=1)
    optimum = brute_optimum(data, 4)
    assert heuristic.inertia > optimum * 1.0005
    assert polished.inertia == pytest.approx(optimum, rel=1e-9)
    assert polished.inertia <= polished.init_inertia


def test_lloyd_matches_the_textbook_iteration():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(400)
    start = np.array([-2.0, -0.5, 0.1, 0.8, 2.5])
    for iterations in (1, 2, 5, 20):
        ours = lloyd(SortedData.from_data(x), start, max_iter=iterations).centroids
        np.testing.assert_allclose(ours, brute_lloyd(x, start, iterations), rtol=1e-12, atol=1e-12)


def test_converges_to_a_fixed_point():
    x = np.random.default_rng(0).laplace(size=5000)
    result = kmeans1d(x, 16, init="density", max_iter=10_000)
    assert result.converged
    again = brute_lloyd(x, result.centroids, 1)
    np.testing.assert_allclose(again, result.centroids, rtol=1e-10)


def test_weights_equal_repeated_points():
    x = np.array([0.0, 1.0, 1.5, 4.0, 4.5, 9.0])
    counts = np.array([3, 1, 2, 5, 1, 2])
    weighted = kmeans1d(x, 3, init="linear", weights=counts)
    repeated = kmeans1d(np.repeat(x, counts), 3, init="linear")
    np.testing.assert_allclose(weighted.centroids, repeated.centroids)
    assert weighted.inertia == pytest.approx(repeated.inertia)
    assert inertia(x, weighted.centroids, counts) == pytest.approx(weighted.inertia)


def test_few_distinct_values_are_kept_exactly():
    x = np.array([0.25, -1.5, 0.25, 3.0, -1.5], np.float32)
    result = kmeans1d(x, 8)
    np.testing.assert_array_equal(result.centroids, [-1.5, 0.25, 3.0])
    assert result.inertia == 0.0
    np.testing.assert_array_equal(assign(x, result.centroids.astype(np.float32)), [1, 0, 1, 2, 0])


def test_inits():
    x = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(kmeans1d(x, 5, init="linear", max_iter=0).centroids,
                               [0.0, 0.25, 0.5, 0.75, 1.0])
    skewed = np.concatenate([np.linspace(0, 0.1, 900), np.linspace(0.9, 1.0, 100)])
    density = kmeans1d(skewed, 10, init="density", max_iter=0).centroids
    assert np.sum(density < 0.5) == 9  # 90% of the mass -> 9 of 10 initial centroids
    random = kmeans1d(x, 7, init="random", max_iter=0, n_init=1, seed=5, refine=False).centroids
    assert set(random) <= set(x) and len(random) == 7
    seeds = kmeans_plus_plus(SortedData.from_data(x), 7, np.random.default_rng(0))
    assert len(set(seeds)) == 7 and set(seeds) <= set(x)


def test_adjacent_float32_values_map_to_their_own_index():
    a = np.float32(1.0)
    b = np.nextafter(a, np.float32(2.0))
    codebook = np.array([a, b], np.float32)
    np.testing.assert_array_equal(assign(codebook, codebook), [0, 1])


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        kmeans1d([1.0, 2.0], 2, init="forgy")
    with pytest.raises(ValueError, match="finite"):
        kmeans1d([1.0, np.nan, 3.0], 2)
    with pytest.raises(ValueError, match="k must"):
        kmeans1d([1.0], 0)


def _distributions(rng, n):
    weights = rng.standard_normal(n)
    return {
        "normal": rng.standard_normal(n),
        "laplace": rng.laplace(size=n),
        "bimodal": np.concatenate([rng.normal(-1, 0.2, n // 2), rng.normal(1.5, 0.5, n - n // 2)]),
        "pruned": weights[np.abs(weights) > 1.0],  # zeros removed: two separated tails
    }


@pytest.mark.parametrize("k", [8, 64])
def test_kmeanspp_no_worse_than_sklearn(k):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(11)
    for name, x in _distributions(rng, 6000).items():
        x = x.astype(np.float32)
        ours = kmeans1d(x, k, init="kmeans++", seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = KMeans(n_clusters=k, random_state=0).fit(x.reshape(-1, 1))
        reference = inertia(x, np.sort(theirs.cluster_centers_.ravel()))
        assert ours.inertia <= reference, (name, ours.inertia / reference)


def test_draw_in_runs_is_the_d2_inverse_cdf():
    x = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 9.5])
    counts = np.array([1, 2, 1, 3, 1, 1, 2])
    data = SortedData.from_data(np.repeat(x, counts))
    for lo, hi, centre in [(0, 7, 2.0), (1, 5, 3.0), (3, 7, 9.5), (0, 3, 0.0)]:
        mass = counts[lo:hi] * (x[lo:hi] - centre) ** 2
        cumulative = np.cumsum(mass)
        # Residuals just inside every point's D^2 interval, and its ends.
        positive = mass > 0
        inside = np.concatenate(((cumulative - mass * 0.5)[positive],
                                 cumulative[positive] - 1e-9 * cumulative[-1], [0.0]))
        expected = lo + np.searchsorted(cumulative, inside, side="right")
        count = len(inside)
        drawn = _draw_in_runs(data, np.full(count, lo), np.full(count, hi), np.full(count, centre),
                              inside)
        np.testing.assert_array_equal(drawn, expected)
        assert np.all(mass[drawn - lo] > 0)  # a point on the centre is never drawn


@settings(max_examples=60, deadline=None)
@given(data_arrays, st.integers(1, 12), st.integers(1, 4), st.integers(0, 3))
def test_kmeans_plus_plus_batch_rows_are_distinct_sorted_data_points(x, k, count, seed):
    data = SortedData.from_data(x)
    seeds = kmeans_plus_plus_batch(data, k, np.random.default_rng(seed), count)
    again = kmeans_plus_plus_batch(data, k, np.random.default_rng(seed), count)
    np.testing.assert_array_equal(seeds, again)
    assert seeds.shape == (count, min(k, data.size))
    assert np.all(np.isin(seeds, data.values))
    assert np.all(np.diff(seeds, axis=1) > 0)  # every row sorted and distinct
    single = kmeans_plus_plus(data, k, np.random.default_rng(seed))
    if count == 1:
        np.testing.assert_array_equal(seeds[0], single)


def test_kmeans_plus_plus_batch_rows_are_independent_restarts():
    x = np.random.default_rng(4).standard_normal(20_000)
    data = SortedData.from_data(x)
    seeds = kmeans_plus_plus_batch(data, 32, np.random.default_rng(0), 4)
    assert len({tuple(row) for row in seeds}) == 4
    # Greedy D^2 seeding is far better than evenly spaced centres on normal data.
    linear = data.potential(np.linspace(x.min(), x.max(), 32))
    assert all(data.potential(row) < linear for row in seeds)
