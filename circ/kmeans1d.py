"""Exact Lloyd's k-means for one-dimensional data, fast because the data is 1-D.

In one dimension the clusters of any sorted centroid set are contiguous runs of the sorted
data, split at the midpoints between neighbouring centroids. So the data is sorted once (equal
values merged, with their counts or weights), and prefix sums of ``w``, ``w*x`` and ``w*x**2``
are taken. Each Lloyd iteration then

1. finds the run boundaries by binary search of the ``k - 1`` midpoints in the sorted values
   (``np.searchsorted``), and
2. moves every centroid to the mean of its run from two prefix-sum differences,

which costs ``O(k log n)`` per iteration after the ``O(n log n)`` sort — no ``n x k``
distance matrix. The iteration is exact Lloyd: the same assignments and means a generic
implementation computes (ties at a midpoint go to the right-hand centroid), so the sum of
squared errors never increases from one iteration to the next.

Initialisations (Han et al., Deep Compression, ICLR 2016, section 3.2, compare the first three):

- ``linear``: ``k`` points evenly spaced between the minimum and the maximum.
- ``density``: ``k`` points evenly spaced on the (weighted) CDF, at levels
  ``(i + 1/2) / k`` — the quantiles at the middle of ``k`` equal-mass slices.
- ``random`` (Forgy): ``k`` distinct data points drawn without replacement, by weight.
- ``kmeans++``: greedy D^2 sampling (Arthur & Vassilvitskii 2007; each step draws
  ``2 + ln k`` candidates and keeps the one that lowers the potential most, as scikit-learn
  does). In 1-D the potential of a candidate is evaluated from the prefix sums on the three
  runs it changes, and drawing a point by D^2 is a search on a monotone prefix-sum
  expression, so the whole initialisation costs ``O(k (k + log k log n))`` instead of
  ``O(n k)``. The per-step cost is mostly NumPy call overhead, so the ``n_init`` restarts'
  seedings run side by side (:func:`kmeans_plus_plus_batch`): three cost little more than one.

Empty clusters (two centroids on the same side of every point, or duplicates from the
initialisation) are re-seeded deterministically at the data points with the largest squared
error; that never increases the objective either. With ``k`` at least the number of distinct
values the result is those values, exactly (inertia 0).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import attrs
import numpy as np

INITS = ("linear", "density", "random", "kmeans++")

Seed = Union[int, np.random.Generator, None]


@attrs.define
class KMeansResult:
    """The outcome of :func:`kmeans1d` (the best of its restarts)."""

    centroids: np.ndarray  # float64, strictly increasing, at most k of them
    inertia: float  # sum of weight * squared distance to the nearest centroid
    init_inertia: float  # the same for the initial centroids of the returned restart
    n_iter: int  # Lloyd iterations run (of the returned restart)
    converged: bool  # assignments stopped changing (or the tolerance was met)
    reseeded: int = 0  # empty clusters re-seeded (returned restart)

    @property
    def k(self) -> int:
        return len(self.centroids)


@attrs.define(eq=False)
class SortedData:
    """Distinct sorted values with their weights, and prefix sums for O(1) run statistics.

    Prefix sums are taken of the values minus their weighted mean (``shift``): that keeps
    the sums small, so the differences that give run sums lose little to cancellation.
    """

    values: np.ndarray  # float64, strictly increasing
    weights: np.ndarray  # float64, > 0
    shift: float
    cum_w: np.ndarray  # length m + 1, cum_w[0] = 0
    cum_x: np.ndarray  # of w * (x - shift)
    cum_xx: np.ndarray  # of w * (x - shift) ** 2
    # The three as the rows of one 3 x (m + 1) array (the above are views of it when built
    # by from_data): one np.take fetches all three sums at an index.
    sums: Optional[np.ndarray] = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self):
        if self.sums is None:
            self.sums = np.stack((self.cum_w, self.cum_x, self.cum_xx))

    @classmethod
    def from_data(cls, x, weights=None) -> "SortedData":
        x = np.asarray(x).reshape(-1)
        unit = False
        if weights is None:
            values = np.sort(x).astype(np.float64, copy=False)
            counts = _run_lengths(values)
            if counts is not None:
                values = values[np.cumsum(counts) - counts]
                weights = counts.astype(np.float64)
            else:
                weights = np.ones(len(values))
                unit = True
        else:
            weights = np.asarray(weights, np.float64).reshape(-1)
            if weights.shape != x.shape:
                raise ValueError(f"weights shape {weights.shape} != data shape {x.shape}")
            if np.any(weights < 0) or not np.all(np.isfinite(weights)):
                raise ValueError("weights must be finite and non-negative")
            keep = weights > 0
            values, inverse = np.unique(x[keep].astype(np.float64), return_inverse=True)
            weights = np.bincount(inverse.reshape(-1), weights=weights[keep], minlength=len(values))
        if len(values) and not np.all(np.isfinite(values[[0, -1]])):
            raise ValueError("data must be finite (no NaN or infinity)")
        total = float(weights.sum())
        shift = float(np.dot(weights, values) / total) if total > 0 else 0.0
        centred = values - shift
        sums = np.empty((3, len(values) + 1))
        sums[:, 0] = 0.0
        cum_w, cum_x, cum_xx = sums
        if unit:  # skip multiplying by ones: this is most of the work on big layers
            cum_w[:] = np.arange(len(values) + 1, dtype=np.float64)
            weighted = centred
        else:
            np.cumsum(weights, out=cum_w[1:])
            weighted = weights * centred
        np.cumsum(weighted, out=cum_x[1:])
        weighted *= centred
        np.cumsum(weighted, out=cum_xx[1:])
        return cls(values, weights, shift, cum_w, cum_x, cum_xx, sums)

    @property
    def size(self) -> int:
        return len(self.values)

    @property
    def total_weight(self) -> float:
        return float(self.cum_w[-1])

    def edges(self, centroids: np.ndarray) -> np.ndarray:
        """Run boundaries (length k + 1) of sorted ``centroids``: run j is values[e[j]:e[j+1]]."""
        middles = 0.5 * (centroids[:-1] + centroids[1:])
        inner = np.searchsorted(self.values, middles, side="left")
        return np.concatenate(([0], inner, [self.size]))

    def run_cost(self, lo, hi, centre):
        """Sum of w * (x - centre)^2 over values[lo:hi] (scalars or arrays), from prefix sums."""
        c = centre - self.shift
        w = self.cum_w[hi] - self.cum_w[lo]
        sx = self.cum_x[hi] - self.cum_x[lo]
        sxx = self.cum_xx[hi] - self.cum_xx[lo]
        return np.maximum(sxx - 2.0 * c * sx + c * c * w, 0.0)

    def level(self, index, centre):
        """``cost(0, index)`` around ``centre`` (arrays broadcast): increasing in ``index``
        for any centre, and ``level(hi, c) - level(lo, c)`` is the cost of ``values[lo:hi]``."""
        c = centre - self.shift
        w, x, xx = np.take(self.sums, index, axis=1)  # several times faster than sums[:, index]
        return xx + c * (c * w - 2.0 * x)

    def run_mean(self, lo, hi):
        """Weighted mean of values[lo:hi] (non-empty runs)."""
        w = self.cum_w[hi] - self.cum_w[lo]
        return (self.cum_x[hi] - self.cum_x[lo]) / np.maximum(w, 1e-300) + self.shift

    def potential(self, centroids: np.ndarray) -> float:
        """Inertia of sorted ``centroids`` from the prefix sums: O(k log n)."""
        if self.size == 0:
            return 0.0
        edges = self.edges(centroids)
        return float(np.sum(self.run_cost(edges[:-1], edges[1:], centroids)))

    def sse(self, centroids: np.ndarray) -> float:
        """Exact inertia of sorted ``centroids``: summed directly, not from prefix sums."""
        if self.size == 0:
            return 0.0
        if len(centroids) == 0:
            raise ValueError("no centroids")
        nearest = np.repeat(centroids, np.diff(self.edges(centroids)))
        residual = self.values - nearest
        return float(np.dot(self.weights, residual * residual))

    def quantile_values(self, levels: np.ndarray) -> np.ndarray:
        """The smallest values whose weighted CDF reaches ``levels`` (fractions in [0, 1])."""
        targets = levels * self.total_weight
        index = np.searchsorted(self.cum_w[1:], targets, side="left")
        return self.values[np.minimum(index, self.size - 1)]


def _run_lengths(sorted_values: np.ndarray) -> Optional[np.ndarray]:
    """Lengths of the runs of equal values, or None when every value is distinct."""
    if len(sorted_values) < 2:
        return None
    repeats = sorted_values[1:] == sorted_values[:-1]
    if not repeats.any():
        return None
    starts = np.flatnonzero(np.concatenate(([True], ~repeats)))
    return np.diff(np.append(starts, len(sorted_values)))


# ---------------------------------------------------------------------------- public API


def kmeans1d(x, k: int, *, init: str = "linear", weights=None, max_iter: int = 300,
             tol: float = 0.0, seed: Seed = 0, n_init: Optional[int] = None,
             refine: Optional[bool] = None, exact: Optional[bool] = None) -> KMeansResult:
    """Lloyd's k-means of 1-D data ``x`` (any shape, flattened) into at most ``k`` clusters.

    ``weights`` (same shape, >= 0) weight each point. Iteration stops when the assignments
    no longer change (a fixed point: exact convergence), when the summed squared centroid
    shift is at most ``tol`` times the data variance (``tol=0``: only the former), or after
    ``max_iter`` iterations. ``n_init`` restarts (default 1 for the deterministic ``linear``
    and ``density``, 3 for ``kmeans++`` and ``random``) keep the lowest inertia. The same
    ``seed`` gives the same result. The returned objective is never above that of the
    returned initialisation. With ``exact`` (default: for ``kmeans++``, the method meant to
    give the best clustering; the other inits stay as they are, so comparing them keeps its
    meaning) and ``max_iter > 0``, problems small enough for :func:`exact_is_cheap` also get
    the globally optimal clustering by dynamic programming, returned when it sums lower than
    the best restart (it does unless the restart found an optimum too).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    data = x if isinstance(x, SortedData) else SortedData.from_data(x, weights)
    if data.size <= k:  # every distinct value gets its own centroid: exact
        return KMeansResult(data.values.copy(), 0.0, 0.0, 0, True)
    if n_init is None:
        n_init = 1 if init in ("linear", "density") else 3
    if refine is None:
        refine = init in ("random", "kmeans++")
    if exact is None:
        exact = init == "kmeans++"
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n_init = max(1, n_init)
    if init == "kmeans++":  # the restarts' seedings run side by side
        starts = list(kmeans_plus_plus_batch(data, k, rng, n_init))
    else:
        starts = [_initial(data, k, init, rng) for _ in range(n_init)]
    best = None
    for start, result in zip(starts, lloyd_batch(data, np.asarray(starts), max_iter=max_iter, tol=tol)):
        if refine:
            result = swap_refine(data, result, max_iter=max_iter, tol=tol)
        if best is None or result.inertia < best.inertia:
            best, best_start = result, start
    # The inertias so far come from prefix sums; the returned ones are summed exactly.
    start_sse, final_sse = data.sse(best_start), data.sse(best.centroids)
    if exact and max_iter > 0 and exact_is_cheap(data, k):
        optimal = optimal_centroids(data, k)
        optimal_sse = data.sse(optimal)
        if optimal_sse < final_sse and np.all(np.diff(optimal) > 0):
            best, final_sse = attrs.evolve(best, centroids=optimal, converged=True), optimal_sse
    if final_sse > start_sse:  # only possible through float rounding at a fixed point
        return attrs.evolve(best, centroids=best_start, inertia=start_sse, init_inertia=start_sse)
    return attrs.evolve(best, inertia=final_sse, init_inertia=start_sse)


def lloyd(data: SortedData, centroids, *, max_iter: int = 300, tol: float = 0.0) -> KMeansResult:
    """Lloyd iterations from ``centroids`` on prepared ``data`` (see :func:`kmeans1d`).

    The inertias of the result are computed from the prefix sums (relative error about
    1e-12); :meth:`SortedData.sse` sums them exactly.
    """
    start = np.sort(np.asarray(centroids, np.float64))
    centres = start
    threshold = tol * _variance(data)
    previous = None
    converged = False
    reseeded = 0
    iterations = 0
    while iterations < max_iter:
        edges = data.edges(centres)
        if previous is not None and (edges == previous).all():
            converged = True  # same runs -> same means: a fixed point
            break
        sums = np.diff(np.take(data.sums, edges, axis=1), axis=1)  # per run: w, w x, w x^2
        weight = sums[0]
        empty = weight <= 0
        if empty.any():
            centres = _reseed(data, centres, edges, empty)
            reseeded += int(empty.sum())
            previous = None
            iterations += 1
            continue
        means = sums[1] / weight + data.shift
        # Runs are disjoint and in order, so their means are increasing; the maximum keeps
        # rounding from ever unsorting two nearly equal neighbours.
        means = np.maximum.accumulate(means)
        moved = float(np.sum((means - centres) ** 2)) if threshold > 0 else 0.0
        centres, previous = means, edges
        iterations += 1
        if threshold > 0 and moved <= threshold:
            converged = True
            break
    else:
        converged = previous is not None and np.array_equal(data.edges(centres), previous)
    return KMeansResult(centres, data.potential(centres), data.potential(start), iterations,
                        converged, reseeded)


# Exact optimum by dynamic programming when it is cheap: at most this many layers (clusters
# times binary-search levels) and this much work (clusters times distinct values).
EXACT_MAX_LEVELS = 400
EXACT_MAX_WORK = 1 << 18


def exact_is_cheap(data: SortedData, k: int) -> bool:
    """Whether :func:`optimal_centroids` is used for ``k`` clusters of ``data``."""
    levels = k * max(1, data.size.bit_length())
    return 1 < k < data.size and levels <= EXACT_MAX_LEVELS and k * data.size <= EXACT_MAX_WORK


def optimal_centroids(data: SortedData, k: int) -> np.ndarray:
    """The centroids of a globally optimal k-means of ``data`` (``1 < k < data.size``).

    In one dimension an optimal clustering is ``k`` contiguous runs of the sorted values, so
    ``best[c][j]``, the least cost of ``values[:j]`` in ``c`` runs, is the minimum over ``i``
    of ``best[c-1][i] + cost(i, j)`` (Wang & Song, Ckmeans.1d.dp, R Journal 2011). The
    minimising ``i`` never decreases with ``j`` (the run cost is a Monge array), so each layer
    is solved by divide and conquer (Grønlund et al. 2017, section 2): the middle ``j`` of
    every open interval is minimised over its allowed ``i`` at once, which bounds the
    ``i`` of both halves — about ``log2(m)`` vectorised steps per layer, ``O(k m log m)``
    work. Costs come from the prefix sums, so ties and rounding may pick a partition a hair
    from optimal; :func:`kmeans1d` keeps whichever of this and its restarts sums lower.
    """
    m = data.size
    w, x, xx = data.cum_w, data.cum_x, data.cum_xx

    def cost(i, j):  # sum of w (v - mean)^2 over values[i:j], j > i
        weight = w[j] - w[i]
        total = x[j] - x[i]
        return np.maximum(xx[j] - xx[i] - total * total / weight, 0.0)

    ends = np.arange(m + 1)
    best = np.full(m + 1, np.inf)
    best[1:] = cost(np.zeros(m, np.int64), ends[1:])
    splits = np.zeros((k + 1, m + 1), np.int64)
    for layer in range(2, k + 1):
        current = np.full(m + 1, np.inf)
        # open intervals: j in [j_lo, j_hi], the minimising i in [i_lo, i_hi]
        j_lo = np.array([m if layer == k else layer])
        j_hi, i_lo, i_hi = np.array([m]), np.array([layer - 1]), np.array([m - 1])
        while len(j_lo):
            middle = (j_lo + j_hi) // 2
            top = np.minimum(i_hi, middle - 1)
            counts = top - i_lo + 1
            first = np.cumsum(counts) - counts
            segment = np.repeat(np.arange(len(middle)), counts)
            i = np.arange(counts.sum()) - first[segment] + i_lo[segment]
            values = best[i] + cost(i, middle[segment])
            lowest = np.minimum.reduceat(values, first)
            split = np.minimum.reduceat(np.where(values <= lowest[segment], i, m), first)
            current[middle], splits[layer, middle] = lowest, split
            left, right = j_lo <= middle - 1, middle + 1 <= j_hi
            j_lo, j_hi, i_lo, i_hi = (np.concatenate((j_lo[left], middle[right] + 1)),
                                      np.concatenate((middle[left] - 1, j_hi[right])),
                                      np.concatenate((i_lo[left], split[right])),
                                      np.concatenate((split[left], i_hi[right])))
        best = current
    bounds = [m]
    for layer in range(k, 1, -1):
        bounds.append(int(splits[layer, bounds[-1]]))
    bounds.append(0)
    bounds = np.array(bounds[::-1])
    return data.run_mean(bounds[:-1], bounds[1:])


def lloyd_batch(data: SortedData, starts: np.ndarray, *, max_iter: int = 300,
                tol: float = 0.0) -> list[KMeansResult]:
    """:func:`lloyd` from every row of ``starts`` (``restarts x k``), the same results
    exactly, with the rows' iterations run side by side: one binary search, one lookup and
    one mean per iteration for all rows (per-iteration work is mostly NumPy call overhead).
    A row that empties a cluster is finished by :func:`lloyd` itself (re-seeding is rare)."""
    starts = np.sort(np.asarray(starts, np.float64), axis=1)
    count = len(starts)
    results: list = [None] * count
    if count == 1 or starts.shape[1] < 2:
        return [lloyd(data, start, max_iter=max_iter, tol=tol) for start in starts]
    threshold = tol * _variance(data)
    centres = starts.copy()
    previous = np.full((count, starts.shape[1] + 1), -1, np.int64)  # no row's edges yet
    active = np.arange(count)
    iterations = 0

    def finish(rows, converged):
        for row in rows.tolist():
            results[row] = KMeansResult(centres[row], data.potential(centres[row]),
                                        data.potential(starts[row]), iterations, bool(converged))

    while iterations < max_iter and len(active):
        current = centres[active]
        middles = 0.5 * (current[:, :-1] + current[:, 1:])
        edges = np.zeros((len(active), current.shape[1] + 1), np.int64)
        edges[:, 1:-1] = np.searchsorted(data.values, middles)
        edges[:, -1] = data.size
        same = (edges == previous[active]).all(axis=1)
        if iterations and same.any():  # same runs -> same means: a fixed point
            finish(active[same], True)
            active, edges, current = active[~same], edges[~same], current[~same]
            if not len(active):
                break
        sums = np.diff(np.take(data.sums, edges, axis=2 - 1), axis=2)  # (3, rows, k): w, w x, w x^2
        weight = sums[0]
        empty = (weight <= 0).any(axis=1)
        for row in active[empty].tolist():  # finished the scalar way, re-seeding included
            results[row] = lloyd(data, starts[row], max_iter=max_iter, tol=tol)
        if empty.any():
            keep = ~empty
            active, edges, current, sums, weight = active[keep], edges[keep], current[keep], sums[:, keep], weight[keep]
            if not len(active):
                break
        means = sums[1] / weight + data.shift
        means = np.maximum.accumulate(means, axis=1)
        centres[active], previous[active] = means, edges
        iterations += 1
        if threshold > 0:
            moved = np.sum((means - current) ** 2, axis=1) <= threshold
            finish(active[moved], True)
            active = active[~moved]
    if len(active):  # out of iterations
        for row in active.tolist():
            converged = np.array_equal(data.edges(centres[row]), previous[row])
            finish(np.array([row]), converged)
    return results


def swap_refine(data: SortedData, result: KMeansResult, *, max_iter: int = 300,
                tol: float = 0.0, rounds: Optional[int] = None, tries: int = 8) -> KMeansResult:
    """Local search past Lloyd's fixed point: remove a centre that costs little to lose,
    split a run that gains much from two centres, re-run Lloyd, and keep the move if the
    objective drops. Each round tries the ``tries`` pairs with the best estimated net gain;
    the search ends when none improves or after ``rounds`` moves (default ``k``). Lloyd only
    moves centres locally; this moves one across the data, which is how a fixed point is
    left for a better one. Both costs come from the prefix sums in O(k log n)."""
    best = result
    for _ in range(len(result.centroids) if rounds is None else rounds):
        improved = None
        for trial in _swap_candidates(data, best.centroids, tries):
            candidate = lloyd(data, trial, max_iter=max_iter, tol=tol)
            if candidate.inertia < best.inertia * (1.0 - 1e-12):  # beyond rounding noise
                improved = candidate
                break
        if improved is None:
            break
        best = attrs.evolve(improved, init_inertia=result.init_inertia,
                            n_iter=best.n_iter + improved.n_iter,
                            reseeded=best.reseeded + improved.reseeded)
    return best


def _swap_candidates(data: SortedData, centres, tries: int):
    """Centre sets with one centre removed and one run split, best estimated first."""
    count = len(centres)
    if count < 3:
        return
    edges = data.edges(centres)
    costs = data.run_cost(edges[:-1], edges[1:], centres)
    removal = _removal_costs(data, centres, edges, costs)
    gain, halves = _split_gains(data, centres, edges, costs)
    drops = np.argsort(removal, kind="stable")[:tries]
    splits = np.argsort(-gain, kind="stable")[:tries]
    net = gain[splits][None, :] - removal[drops][:, None]
    # The estimates assume the two moves touch separate neighbourhoods.
    net[np.abs(drops[:, None] - splits[None, :]) <= 1] = -np.inf
    for flat in np.argsort(-net, axis=None, kind="stable")[:tries]:
        row, col = divmod(int(flat), len(splits))
        if net[row, col] <= 0:
            return
        drop, split = int(drops[row]), int(splits[col])
        yield np.concatenate((np.delete(centres, [drop, split]), halves[:, split]))


def _removal_costs(data: SortedData, centres, edges, costs) -> np.ndarray:
    """Increase of the potential when each centre is removed (its run going to its
    neighbours, the other centres fixed)."""
    count = len(centres)
    index = np.arange(count)
    has_left, has_right = index > 0, index < count - 1
    left, right = np.maximum(index - 1, 0), np.minimum(index + 1, count - 1)
    middle = np.searchsorted(data.values, 0.5 * (centres[left] + centres[right]))
    split = np.where(has_left & has_right, middle, np.where(has_left, edges[index + 1], edges[index]))
    new = (np.where(has_left, data.run_cost(edges[left], split, centres[left]), 0.0)
           + np.where(has_right, data.run_cost(split, edges[right + 1], centres[right]), 0.0))
    old = costs + np.where(has_left, costs[left], 0.0) + np.where(has_right, costs[right], 0.0)
    return new - old


def _split_gains(data: SortedData, centres, edges, costs):
    """Decrease of each run's cost when split at its centre into two halves with centres at
    their means; returns the gains and the two new centres per run (2 x k)."""
    lo, hi = edges[:-1], edges[1:]
    cut = np.clip(np.searchsorted(data.values, centres), lo + 1, np.maximum(hi - 1, lo + 1))
    single = hi - lo < 2
    cut = np.where(single, hi, cut)
    first, second = data.run_mean(lo, cut), data.run_mean(cut, hi)
    second = np.where(single, first, second)
    gain = costs - data.run_cost(lo, cut, first) - np.where(single, 0.0, data.run_cost(cut, hi, second))
    return np.where(single, 0.0, gain), np.stack((first, second))


def assign(x, centroids) -> np.ndarray:
    """Index of the nearest of sorted, distinct ``centroids`` for every element of ``x`` (same
    shape); a value exactly between two centroids goes to the right-hand one, as in
    :func:`kmeans1d`. Every centroid value maps to its own index."""
    centroids = np.asarray(centroids)
    x = np.asarray(x)
    middles = 0.5 * (centroids[:-1].astype(np.float64) + centroids[1:])
    if x.dtype.kind == "f" and x.dtype.itemsize < 8:
        # Comparing in the data's own precision is several times faster. A rounded midpoint
        # moves by half an ulp at most; it is kept strictly above the left centroid and at
        # most the right one, so the centroids themselves still map to their own index.
        left = centroids[:-1].astype(x.dtype)
        middles = np.clip(middles.astype(x.dtype), np.nextafter(left, x.dtype.type(np.inf)),
                          centroids[1:].astype(x.dtype))
    return np.searchsorted(middles, x, side="right")


def inertia(x, centroids, weights=None) -> float:
    """Sum of (weighted) squared distances of ``x`` to the nearest of ``centroids``."""
    data = SortedData.from_data(x, weights)
    return data.sse(np.sort(np.asarray(centroids, np.float64)))


# ---------------------------------------------------------------------------- initialisation


def _initial(data: SortedData, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    if init == "linear":
        return np.linspace(data.values[0], data.values[-1], k)
    if init == "density":
        return data.quantile_values((np.arange(k) + 0.5) / k)
    if init == "random":
        return np.sort(data.values[_weighted_sample(data.weights, k, rng)])
    return kmeans_plus_plus(data, k, rng)


def _weighted_sample(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct indices drawn without replacement with probability ~ weight
    (Efraimidis & Spirakis: the largest ``log(u) / w`` keys)."""
    keys = np.log(rng.random(len(weights))) / weights
    return np.argpartition(keys, len(keys) - count)[len(keys) - count:]


def kmeans_plus_plus(data: SortedData, k: int, rng: np.random.Generator,
                     trials: Optional[int] = None) -> np.ndarray:
    """Greedy k-means++ seeds on sorted data, in increasing order (see the module docstring)."""
    return kmeans_plus_plus_batch(data, k, rng, 1, trials)[0]


def kmeans_plus_plus_batch(data: SortedData, k: int, rng: np.random.Generator, count: int,
                           trials: Optional[int] = None) -> np.ndarray:
    """``count`` independent greedy k-means++ seedings run side by side: a ``count x k``
    array, each row increasing (``k`` at most the number of distinct values).

    Every centre of a row owns its run ``values[lo:hi]`` (the points nearest to it) and the
    run's cost, and knows its left and right neighbours (a linked list in the order of the
    values), so adding a centre is a few writes and the centres need no sorting until the
    end. Every step draws ``trials`` candidates per row by D^2 and scores them all at once:
    a candidate drawn in the run of centre ``j`` lies between ``j`` and one of its
    neighbours, and only those two runs change. The rows advance together, which shares the
    per-step Python overhead among the restarts.
    """
    k = min(k, data.size)
    trials = trials or 2 + int(math.log(k))
    rows = np.arange(count)[:, None]
    # Columns k and k + 1 stand for "no left / right neighbour": centres at -inf / +inf (so
    # the midpoints cut at 0 / size), empty runs at 0 / size, cost 0.
    none_left, none_right = k, k + 1
    centre = np.zeros((count, k + 2))
    centre[:, none_left], centre[:, none_right] = -np.inf, np.inf
    lo = np.zeros((count, k + 2), np.int64)
    hi = np.full((count, k + 2), data.size, np.int64)
    hi[:, none_left] = lo[:, none_right] = 0
    lo[:, none_right] = data.size
    cost = np.zeros((count, k + 2))
    before = np.full((count, k + 2), none_left)
    after = np.full((count, k + 2), none_right)
    first = np.searchsorted(data.cum_w[1:], rng.random(count) * data.total_weight, side="right")
    centre[:, 0] = data.values[np.minimum(first, data.size - 1)]
    cost[:, 0] = data.run_cost(0, data.size, centre[:, 0])
    bounded = (data.values[0], data.values[-1])
    start = np.zeros(count * k + 1)
    for size in range(1, k):
        # One cumulative sum over all rows: row r's costs occupy [r * size, (r + 1) * size)
        # of start[1:]; start[0] = 0.
        offset = rows * size
        cumulative = np.cumsum(cost[:, :size], out=start[1:count * size + 1])
        base, top = start[offset], start[offset + size]
        targets = base + rng.random((count, trials)) * (top - base)  # in [base, top]
        flat = np.minimum(np.searchsorted(cumulative, targets, side="right"), offset + size - 1)
        run = flat - offset
        owner = centre[rows, run]
        drawn = data.values[_draw_in_runs(data, lo[rows, run], hi[rows, run], owner,
                                          np.maximum(targets - start[flat], 0.0))]
        on_right = drawn > owner
        left = np.where(on_right, run, before[rows, run])
        right = np.where(on_right, after[rows, run], run)
        outer = np.stack((centre[rows, left], centre[rows, right]))
        cut = np.searchsorted(data.values, 0.5 * (outer + drawn))
        # Levels at the ends of the three changed runs (left neighbour, new, right neighbour).
        index = np.stack((lo[rows, left], cut[0], cut[0], cut[1], cut[1], hi[rows, right]))
        around = np.clip(outer, *bounded)  # a missing neighbour's empty run costs 0
        levels = data.level(index, np.stack((around[0], around[0], drawn, drawn,
                                             around[1], around[1])))
        new = np.maximum(levels[1::2] - levels[0::2], 0.0)
        change = new.sum(axis=0) - cost[rows, left] - cost[rows, right]
        pick = (rows, np.argmin(change, axis=1)[:, None])
        l, r = left[pick], right[pick]
        centre[:, size:size + 1] = drawn[pick]
        lo[:, size:size + 1], hi[:, size:size + 1] = cut[0][pick], cut[1][pick]
        cost[:, size:size + 1] = new[1][pick]
        before[:, size:size + 1], after[:, size:size + 1] = l, r
        # A missing neighbour's writes leave its column as it was (empty run, cost 0); lo of
        # none_left and hi of none_right, the only bounds read there, are never written.
        hi[rows, l], cost[rows, l], after[rows, l] = cut[0][pick], new[0][pick], size
        lo[rows, r], cost[rows, r], before[rows, r] = cut[1][pick], new[2][pick], size
    return np.sort(centre[:, :k], axis=1)


def _draw_in_runs(data: SortedData, lo, hi, centre, residual, fanout: int = 128) -> np.ndarray:
    """For each run ``values[lo:hi]`` around ``centre`` (arrays of one shape), the point
    whose D^2 cumulative interval holds ``residual``: the first ``j`` with
    ``cost(lo, j + 1) > residual``, found on the monotone :meth:`SortedData.level` by a
    search that cuts every interval into up to ``fanout`` pieces per round, vectorised over
    the draws — as few rounds as that allows (three for a million points), with as few
    pieces as those rounds need, since both the rounds and the pieces cost time. (Rejection
    sampling was tried: the outermost runs, which D^2 favours, reject too often.)"""
    shape = lo.shape
    lo, centre = lo.reshape(-1), centre.reshape(-1, 1)
    target = data.level(lo, centre[:, 0]) + residual.reshape(-1)
    # Invariant: the answer j + 1 lies in (below, last], and level(below) <= target.
    below, last = lo, hi.reshape(-1)
    widest = int((last - below).max())
    if widest <= 1:
        return (last - 1).reshape(shape)
    rounds = max(1, math.ceil(math.log(widest) / math.log(fanout)))
    ways = math.ceil(widest ** (1.0 / rounds))
    while ways ** rounds < widest:  # each round divides the span by ways: enough rounds
        ways += 1
    steps = np.arange(1, ways + 1)
    picked = np.arange(len(lo))
    for _ in range(rounds):
        probes = below[:, None] + ((last - below)[:, None] * steps) // ways  # ..., last
        over = data.level(probes, centre) > target[:, None]
        over[:, -1] = True  # rounding may leave no probe over the residual: the last point
        hit = np.argmax(over, axis=1)
        last = probes[picked, hit]
        below = np.where(hit > 0, probes[picked, hit - 1], below)
    return (last - 1).reshape(shape)


def _reseed(data: SortedData, centres, edges, empty) -> np.ndarray:
    """Move the centres of empty runs onto the points of largest weighted squared error.
    Points already on a centre (error 0) are never chosen: when fewer points than empty
    centres are off-centre (more centres than distinct values), the rest are dropped."""
    nearest = np.repeat(centres, np.diff(edges))
    error = data.weights * (data.values - nearest) ** 2
    count = min(int(empty.sum()), len(error))
    worst = np.argpartition(error, len(error) - count)[len(error) - count:]
    worst = worst[error[worst] > 0]
    return np.sort(np.concatenate((centres[~empty], data.values[worst])))


def _variance(data: SortedData) -> float:
    total = data.total_weight
    if total <= 0:
        return 0.0
    mean = data.cum_x[-1] / total
    return float(data.cum_xx[-1] / total - mean * mean)
