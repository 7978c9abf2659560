"""cluster: k-means weight sharing per layer (Han et al., Deep Compression, ICLR 2016, sec. 3)."""

from __future__ import annotations

from typing import Literal, Optional

import attrs
import numpy as np

from circ.graph import Graph
from circ.kmeans1d import assign, kmeans1d
from circ.passbase import STRUCTURE, Pass, PassContext, PassResult, register_pass
from circ.progress import track
from circ.tensors import Clustered
from circ.weights import WeightRef, override_for, parse_layer_values, select_layers

# The paper's choice (Deep Compression, Table 2 and sec. 3): 8-bit indices (256 shared
# weights) for conv layers, 5-bit (32) for fully connected ones, with no loss of accuracy.
DEFAULT_BITS = {"conv": 8, "fc": 5}
MAX_BITS = 16


def _bits_value(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_BITS:
        raise ValueError(text)
    return value


def _check_bits(instance, attribute, value):
    if value is not None and not 1 <= value <= MAX_BITS:
        raise ValueError(f"option 'bits' must be 1..{MAX_BITS} or none, got {value}")


def _check_layers(instance, attribute, value):
    parse_layer_values(value, "layers", "cluster", _bits_value)


def _check_positive(instance, attribute, value):
    if value is not None and value < 1:
        raise ValueError(f"option {attribute.name!r} must be at least 1, got {value}")


def index_dtype(count: int) -> np.dtype:
    """The smallest signed integer type holding indices 0..count-1 and -1 (pruned)."""
    for dtype in (np.int8, np.int16, np.int32):
        if count - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@register_pass
class Cluster(Pass):
    """k-means weight sharing: each selected layer's weights become a sorted codebook of at
    most ``2**bits`` shared values and one index per weight (:class:`~circ.tensors.Clustered`).

    Per layer (Conv/ConvTranspose/Gemm/MatMul weights chosen by ``scope``, see
    :mod:`circ.weights`):

    1. The kept weights — all of them, or those a pruning mask (Dense, Quantized or an
       earlier Clustered tensor) keeps — are clustered by exact 1-D Lloyd's k-means
       (:mod:`circ.kmeans1d`) into ``k = 2**bits`` clusters from the ``init`` centroids:
       ``linear`` (evenly spaced between min and max; the paper's best after retraining),
       ``density`` (evenly spaced on the CDF), ``random`` (Forgy) or ``kmeans++``. With
       ``kmeans++``, layers small enough (:func:`circ.kmeans1d.exact_is_cheap`) get the
       globally optimal clustering by dynamic programming when it beats the restarts.
    2. The codebook is the centroids rounded to the weight dtype, sorted and distinct; every
       kept weight gets the index of its nearest entry. Pruned weights get index -1 and decode
       to exactly 0, so pruning survives and zeros are not clustered.
    3. A layer with at most ``k`` distinct kept values gets exactly those values: exact.

    ``bits=none`` (default) uses 8 bits for conv and 5 for fc layers, as in the paper; an
    explicit ``bits`` applies to every selected layer. ``layers=PATTERN:BITS;...`` overrides
    it per layer (a pattern is what ``scope`` accepts; the first match wins), e.g.
    ``layers=fc3:4;conv:6`` — the same syntax as prune's and quant's ``layers``. Integer
    weights are not selected; a layer whose weights are all pruned is declined.

    Approximate: outputs change by the clustering error. ``details["layers"]`` reports per
    layer the bits, the codebook size ``k``, the k-means objective (``inertia``, the sum of
    squared weight errors), ``rel_error`` = ||W - W'|| / ||W|| over the kept weights, and
    the Lloyd iterations run.
    """

    name = "cluster"
    exact = False

    bits: Optional[int] = attrs.field(default=None, validator=_check_bits, metadata={
        "help": f"index bits (2**bits shared weights per layer), 1..{MAX_BITS}; "
                "none: 8 for conv, 5 for fc (the paper's choice)"})
    init: Literal["linear", "density", "random", "kmeans++"] = attrs.field(
        default="linear", metadata={"help": "centroid initialisation (linear: evenly spaced "
                                            "between min and max, as the paper recommends)"})
    scope: str = attrs.field(default="all", metadata={
        "help": "layers to cluster: all, conv, fc, or a name pattern"})
    layers: str = attrs.field(default="", validator=_check_layers, metadata={
        "help": "per-layer bits: PATTERN:BITS;... e.g. fc3:4;conv*:6 (first match wins)"})
    max_iter: int = attrs.field(default=300, validator=_check_positive, metadata={
        "help": "Lloyd iterations at most per layer (it stops earlier at a fixed point)"})
    n_init: Optional[int] = attrs.field(default=None, validator=_check_positive, metadata={
        "help": "restarts, best kept; none: 1 for linear/density, more for random/kmeans++"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        refs = select_layers(graph, self.scope, self.overrides(), ctx)
        if not refs:
            return PassResult(False)
        report = {}
        for ref in track(refs, desc="cluster", unit="layer"):
            tensor, layer_report = self.cluster_weight(ref, ctx)
            if tensor is None:
                ctx.decline(ref.node, layer_report)
                continue
            graph.set_const(ref.value, tensor)
            report[ref.name] = layer_report
        return PassResult(modified=bool(report), preserved={STRUCTURE}, details={"layers": report})

    def overrides(self) -> list[tuple[str, int]]:
        return parse_layer_values(self.layers, "layers", self.name, _bits_value)

    def bits_for(self, ref: WeightRef) -> int:
        default = self.bits if self.bits is not None else DEFAULT_BITS[ref.kind]
        return override_for(ref, self.overrides(), default)

    def cluster_weight(self, ref: WeightRef, ctx: PassContext):
        """``(Clustered, report)`` for ``ref``'s weight, or ``(None, reason)`` to decline."""
        const = ref.value.const
        array = const.to_numpy()
        kept = const.kept
        values = array.reshape(-1) if kept is None else array[kept]
        if values.size == 0:
            return None, "every weight is pruned: nothing to cluster"
        bits = self.bits_for(ref)
        result = kmeans1d(values, 2 ** bits, init=self.init, max_iter=self.max_iter,
                          n_init=self.n_init, seed=ctx.rng(ref.value.name))
        # Rounding to the weight dtype may merge two very close centroids: keep them distinct.
        codebook = np.unique(result.centroids.astype(array.dtype))
        indices = assign(array, codebook).astype(index_dtype(len(codebook)))
        if kept is not None:
            indices[~kept] = -1
        clustered = Clustered(codebook, indices)
        error = clustered.to_numpy().astype(np.float64) - array
        squared = float(np.dot(error.reshape(-1), error.reshape(-1)))
        norm = float(np.dot(values.astype(np.float64), values))
        report = {"bits": bits, "k": len(codebook), "inertia": squared,
                  "rel_error": (squared / norm) ** 0.5 if norm > 0 else 0.0,
                  "iterations": result.n_iter}
        return clustered, report
