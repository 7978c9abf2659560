"""Quantization grids, and calibration: choosing an activation's range from the values it takes.

A :class:`Grid` is a uniform affine quantizer ``q = clip(round_half_even(x / scale) + zp,
qmin, qmax)``, ``x' = (q - zp) * scale`` (ONNX QuantizeLinear/DequantizeLinear semantics).
:func:`grid_for_range` builds one that covers a range ``[lo, hi]`` (widened to include 0, so
zero — a pruned weight, a ReLU's floor, padding — is represented exactly):

- symmetric, signed: ``zp = 0``, ``q`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (the narrow range:
  the grid is symmetric about 0), ``scale = max(|lo|, |hi|) / (2^(b-1) - 1)``;
- symmetric, unsigned (data known to be >= 0, e.g. after ReLU): ``zp = 0``, ``q`` in
  ``[0, 2^b - 1]``;
- asymmetric: ``q`` in ``[0, 2^b - 1]``, ``scale = (hi - lo) / (2^b - 1)``, ``zp =
  round(-lo / scale)``. Every value in ``[lo, hi]`` is within ``scale / 2`` of a grid point.
- ``pow2`` rounds each scale *up* to a power of two (a fixed-point DPU shifts instead of
  multiplying), so the range is still covered.

Calibration (:func:`calibrate`) runs the reference interpreter over calibration data and
records, for chosen values, their min/max and (for the methods that need it) a histogram of
2048 bins per sign, then picks a range with one of:

- ``minmax`` — the observed min and max;
- ``percentile`` — the ``p``-th percentile of each tail (outliers beyond it saturate);
- ``mse`` — the range, shrunk from min/max in steps, minimising the expected squared
  quantization error over the histogram (clipping plus rounding);
- ``entropy`` — the threshold minimising the KL divergence between the histogram of
  magnitudes and its quantized version (the TensorRT calibration recipe, Migacz 2017). It
  wants many samples: on a sparse histogram it tends to clip too much.

Histograms are exact counts over the whole data (two passes over the data: min/max first,
then counts over the known range), so results do not depend on batch order.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Optional

import attrs
import numpy as np

from circ.errors import DataError
from circ.graph import Graph, Value
from circ.interpreter import Interpreter

METHODS = ("minmax", "percentile", "mse", "entropy")
BINS = 2048  # histogram bins per sign
DEFAULT_BATCH = 32  # samples per interpreter run when the batch axis is not fixed


# --------------------------------------------------------------------------- grids


@attrs.define
class Grid:
    """A uniform quantizer: ``scale`` and ``zero_point`` (scalars, or 1-D along an axis)."""

    scale: np.ndarray  # float32
    zero_point: np.ndarray  # int8 or uint8
    qmin: int
    qmax: int

    @property
    def dtype(self) -> np.dtype:
        return self.zero_point.dtype

    def _along(self, param: np.ndarray, ndim: int, axis: Optional[int]) -> np.ndarray:
        if axis is None or param.ndim == 0:
            return param
        shape = [1] * ndim
        shape[axis] = -1
        return param.reshape(shape)

    def quantize(self, x: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
        """The integers of ``x`` (rounded half to even, saturated), dtype of ``zero_point``."""
        x = np.asarray(x, np.float64)
        scale = self._along(self.scale.astype(np.float64), x.ndim, axis)
        zero_point = self._along(self.zero_point.astype(np.float64), x.ndim, axis)
        q = np.rint(x / scale) + zero_point
        return np.clip(q, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, q: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
        """``(q - zp) * scale`` in float32, as DequantizeLinear computes it."""
        q = np.asarray(q)
        scale = self._along(self.scale, q.ndim, axis)
        zero_point = self._along(self.zero_point.astype(np.int64), q.ndim, axis)
        return ((q.astype(np.int64) - zero_point).astype(np.float32) * scale).astype(np.float32)


def pow2_ceil(scale: np.ndarray) -> np.ndarray:
    """The smallest power of two >= each scale (exact in float32)."""
    exponent = np.ceil(np.log2(np.asarray(scale, np.float64)))
    return np.ldexp(1.0, exponent.astype(np.int64))


def grid_for_range(lo, hi, *, bits: int = 8, symmetric: bool = True, pow2: bool = False,
                   unsigned: bool = False) -> Grid:
    """A grid covering ``[min(lo, 0), max(hi, 0)]`` (arrays give one grid per channel).

    ``unsigned`` (symmetric only) uses ``[0, 2^b - 1]`` with zero point 0: for data >= 0.
    A degenerate range (all zeros) gets scale 1.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be 2..8, got {bits}")
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if symmetric and not unsigned:
        qmax = 2 ** (bits - 1) - 1
        qmin, dtype = -qmax, np.int8
        scale = np.maximum(-lo, hi) / qmax
    else:
        qmin, qmax, dtype = 0, 2**bits - 1, np.uint8
        if symmetric and np.any(lo < 0):
            raise ValueError("an unsigned symmetric grid needs data >= 0")
        scale = (hi - lo) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    if pow2:
        scale = pow2_ceil(scale)
    scale = scale.astype(np.float32)
    # Round scales below float32's normal range up, so 1/scale stays finite.
    scale = np.maximum(scale, np.finfo(np.float32).tiny)
    if symmetric:
        zero_point = np.zeros(scale.shape, dtype)
    else:
        zero_point = np.clip(np.rint(-lo / scale.astype(np.float64)), qmin, qmax).astype(dtype)
    return Grid(scale, zero_point, qmin, qmax)


# --------------------------------------------------------------------------- histograms


@attrs.define
class Histogram:
    """Counts of a tensor's values in equal bins over ``[start, start + width * len(counts)]``.

    Signed data is binned over ``[-A, A]`` (``2 * BINS`` bins, 0 on a bin edge), data >= 0
    over ``[0, A]`` (``BINS`` bins), with ``A`` the largest magnitude seen.
    """

    start: float
    width: float
    counts: np.ndarray  # float64
    low: float  # the observed min and max
    high: float

    @classmethod
    def empty(cls, low: float, high: float, bins: int = BINS) -> "Histogram":
        magnitude = max(abs(low), abs(high))
        if magnitude == 0:
            magnitude = 1.0
        signed = low < 0
        total = 2 * bins if signed else bins
        return cls(-magnitude if signed else 0.0, magnitude / bins, np.zeros(total), low, high)

    @classmethod
    def of(cls, values: np.ndarray, bins: int = BINS) -> "Histogram":
        """The histogram of one array (tests and one-off use)."""
        values = np.asarray(values, np.float64).ravel()
        hist = cls.empty(float(values.min()), float(values.max()), bins)
        hist.add(values)
        return hist

    @property
    def signed(self) -> bool:
        return self.start < 0

    @property
    def centers(self) -> np.ndarray:
        return self.start + self.width * (np.arange(len(self.counts)) + 0.5)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        index = np.floor((values - self.start) / self.width).astype(np.int64)
        np.clip(index, 0, len(self.counts) - 1, out=index)
        self.counts += np.bincount(index, minlength=len(self.counts))

    def magnitudes(self) -> np.ndarray:
        """Counts of ``|x|`` in ``BINS`` bins over ``[0, A]``."""
        if not self.signed:
            return self.counts
        half = len(self.counts) // 2
        return self.counts[half:] + self.counts[:half][::-1]

    def quantile(self, fraction: float) -> float:
        """The value below which ``fraction`` of the counts lie (linear within a bin)."""
        cumulative = np.cumsum(self.counts)
        target = fraction * cumulative[-1]
        index = int(np.searchsorted(cumulative, target, side="left"))
        index = min(index, len(self.counts) - 1)
        before = cumulative[index - 1] if index else 0.0
        inside = self.counts[index]
        part = (target - before) / inside if inside > 0 else 0.0
        return self.start + self.width * (index + part)


# --------------------------------------------------------------------------- range choice


def choose_range(hist: Histogram, method: str, *, percentile: float = 99.99, bits: int = 8,
                 symmetric: bool = True, pow2: bool = False) -> tuple[float, float]:
    """The range ``(lo, hi)`` to quantize a tensor with histogram ``hist`` to, by ``method``."""
    low, high = min(hist.low, 0.0), max(hist.high, 0.0)
    if method == "minmax":
        return low, high
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        top = hist.quantile(percentile / 100.0) if high > 0 else 0.0
        bottom = hist.quantile(1.0 - percentile / 100.0) if low < 0 else 0.0
        # Interpolation inside the outermost bins may overshoot the observed extremes.
        return min(max(bottom, low), 0.0), max(min(top, high), 0.0)
    if method == "mse":
        return _mse_range(hist, bits, symmetric, pow2)
    if method == "entropy":
        threshold = _entropy_threshold(hist, _levels(hist, bits, symmetric))
        return max(low, -threshold), min(high, threshold)
    raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")


def _levels(hist: Histogram, bits: int, symmetric: bool) -> int:
    """Grid steps spanning the magnitude range [0, A] (the KL target resolution): half the
    grid for signed data, all of it for data >= 0."""
    return 2 ** (bits - 1) if hist.signed else 2**bits


def _mse_range(hist: Histogram, bits: int, symmetric: bool, pow2: bool) -> tuple[float, float]:
    """Shrink ``[min, max]`` by factors ``f`` and keep the one with the least expected squared
    error, measured at bin centers. Factors stop where a grid step would be narrower than a
    bin (the histogram cannot resolve rounding error below that)."""
    low, high = min(hist.low, 0.0), max(hist.high, 0.0)
    if high - low == 0:
        return low, high
    centers, counts = hist.centers, hist.counts
    occupied = counts > 0
    centers, counts = centers[occupied], counts[occupied]
    levels = 2**bits - 1
    smallest = min(1.0, levels * hist.width / (high - low))
    best, best_error = (low, high), np.inf
    for factor in np.linspace(1.0, smallest, 200):
        grid = grid_for_range(low * factor, high * factor, bits=bits, symmetric=symmetric,
                              pow2=pow2, unsigned=symmetric and low >= 0)
        error = float(np.dot(counts, (centers - grid.dequantize(grid.quantize(centers))) ** 2))
        if error < best_error * (1 - 1e-9):
            best, best_error = (low * factor, high * factor), error
    return best


def _entropy_threshold(hist: Histogram, levels: int) -> float:
    """The magnitude threshold whose clipped-and-quantized histogram is closest in KL
    divergence to the clipped one (outliers folded into the last bin)."""
    counts = hist.magnitudes()
    bins = len(counts)
    if counts.sum() == 0 or bins <= levels:
        return hist.width * bins
    best_bin, best_kl = bins, np.inf
    stride = max(1, (bins - levels) // 512)  # about 512 candidates: plenty, and fast
    for stop in range(levels, bins + 1, stride):
        reference = counts[:stop].copy()
        reference[-1] += counts[stop:].sum()
        candidate = _spread(counts[:stop], levels)
        kl = _kl_divergence(reference, candidate)
        if kl < best_kl:
            best_bin, best_kl = stop, kl
    return hist.width * best_bin


def _spread(counts: np.ndarray, levels: int) -> np.ndarray:
    """Merge ``counts`` into ``levels`` groups, then spread each group's total evenly over the
    group's non-empty bins (what quantizing to ``levels`` steps keeps of the distribution)."""
    group = np.minimum((np.arange(len(counts)) * levels) // len(counts), levels - 1)
    totals = np.bincount(group, weights=counts, minlength=levels)
    nonempty = np.bincount(group, weights=(counts > 0).astype(np.float64), minlength=levels)
    per_bin = np.divide(totals, nonempty, out=np.zeros(levels), where=nonempty > 0)
    return np.where(counts > 0, per_bin[group], 0.0)


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q_total = q.sum()
    if q_total == 0:
        return np.inf
    q = q / q_total
    support = p > 0
    # A bin the quantized distribution misses gets a tiny mass instead of infinite divergence.
    q = np.where(support & (q == 0), 1e-12, q)
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


# --------------------------------------------------------------------------- observing


def feed_batches(graph: Graph, data: Mapping[str, np.ndarray], *,
                 batch: Optional[int] = None) -> Iterator[dict]:
    """Split calibration ``data`` (input name -> array, samples along axis 0) into feeds.

    A graph with one input accepts a single array under any name. The batch size is the
    graph's fixed batch dimension when it has one, else ``batch`` (default 32); a remainder
    that does not fill a fixed batch is left out.
    """
    arrays = _match_inputs(graph, data)
    counts = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise DataError("calibration data: every array needs the same number of samples along "
                        f"axis 0; got {', '.join(f'{k}: {list(v.shape)}' for k, v in arrays.items())}")
    total = counts.pop()
    fixed = {v.shape[0] for v in graph.inputs if v.shape and isinstance(v.shape[0], int)}
    if fixed:
        size = min(fixed)
        if size > total or len(fixed) > 1:
            raise DataError(f"calibration data: the graph takes batches of {sorted(fixed)}, the "
                            f"data has {total} samples")
        stop = total - total % size
    else:
        size, stop = max(1, batch or DEFAULT_BATCH), total
    for begin in range(0, stop, size):
        yield {name: array[begin:begin + size] for name, array in arrays.items()}


def _match_inputs(graph: Graph, data: Mapping[str, np.ndarray]) -> dict:
    names = [v.name for v in graph.inputs]
    if len(names) == 1 and len(data) == 1:
        return {names[0]: np.asarray(next(iter(data.values())))}
    unknown = sorted(set(data) - set(names))
    missing = [n for n in names if n not in data]
    if unknown or missing:
        what = f"unknown input {unknown[0]!r}" if unknown else f"missing input {missing[0]!r}"
        raise DataError(f"calibration data: {what}; the graph's inputs are {', '.join(names)}")
    return {name: np.asarray(data[name]) for name in names}


class _Recorder(Interpreter):
    """Runs the graph and hands the arrays of watched values to ``sink(value, array)``."""

    def __init__(self, graph: Graph, watched: Iterable[Value], sink):
        super().__init__(graph)
        self.watched = {id(v): v for v in watched}
        self.sink = sink

    def run(self, feeds):
        for value in self.graph.inputs:
            if id(value) in self.watched and value.name in feeds:
                self.sink(value, np.asarray(feeds[value.name]))
        return super().run(feeds)

    def run_node(self, node, args):
        results = super().run_node(node, args)
        for value, array in zip(node.outputs, results):
            if id(value) in self.watched:
                self.sink(value, array)
        return results


def observe(graph: Graph, values: list[Value], data: Mapping[str, np.ndarray], *,
            histograms: bool = True, batch: Optional[int] = None) -> dict[int, Histogram]:
    """Histograms (or, without ``histograms``, just min/max) of ``values`` over ``data``.

    Returns ``id(value) -> Histogram``; with ``histograms=False`` the counts stay empty.
    """
    low = {id(v): np.inf for v in values}
    high = {id(v): -np.inf for v in values}

    def record_range(value, array):
        if array.size:
            low[id(value)] = min(low[id(value)], float(np.min(array)))
            high[id(value)] = max(high[id(value)], float(np.max(array)))

    recorder = _Recorder(graph, values, record_range)
    for feeds in feed_batches(graph, data, batch=batch):
        recorder.run(feeds)
    result = {}
    for value in values:
        lo, hi = low[id(value)], high[id(value)]
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise DataError(f"calibration: value {value.name!r} took no finite values "
                            f"(min {lo}, max {hi})")
        result[id(value)] = Histogram.empty(lo, hi)
    if histograms:
        recorder.sink = lambda value, array: result[id(value)].add(array)
        for feeds in feed_batches(graph, data, batch=batch):
            recorder.run(feeds)
    return result


def calibrate(graph: Graph, values: list[Value], data: Mapping[str, np.ndarray], *,
              method: str = "minmax", percentile: float = 99.99, bits: int = 8,
              symmetric: bool = True, pow2: bool = False,
              batch: Optional[int] = None) -> dict[int, tuple[float, float]]:
    """``id(value) -> (lo, hi)``: the range each of ``values`` should be quantized to."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")
    hists = observe(graph, values, data, histograms=method != "minmax", batch=batch)
    return {key: choose_range(hist, method, percentile=percentile, bits=bits, symmetric=symmetric,
                              pow2=pow2)
            for key, hist in hists.items()}
