"""ternary: Ternary Weight Networks (Li & Liu, 2016) — weights in {-alpha, 0, +alpha}. Approximate."""

from __future__ import annotations

import attrs
import numpy as np

from circ.graph import Graph
from circ.passbase import STRUCTURE, Pass, PassContext, PassResult, register_pass
from circ.tensors import Dense, Quantized
from circ.weights import WeightRef, select_layers


@register_pass
class Ternary(Pass):
    """Ternarize Conv, ConvTranspose, Gemm and MatMul weights (TWN).

    Per layer (or per slice along the output-channel axis with ``per_channel=true``; for a
    grouped ConvTranspose that axis holds the channels within a group): ``delta = threshold *
    mean|W|`` (TWN's approximation with ``threshold=0.7``), ``q = sign(W)`` where ``|W| >
    delta`` and 0 elsewhere, and ``alpha = mean |W|`` over ``|W| > delta`` (the scale that
    minimises ``||W - alpha q||`` for that ``q``). Stored as Quantized: ``q`` in {-1, 0, 1}
    as int8, ``num_bits=2``, ``scale=alpha``, ``zero_point=0``, so later passes and coders
    see integers. A slice with no weight above delta gets ``alpha=1`` (its ``q`` is all 0).

    Pruned weights stay zero: the statistics run over the kept weights only (on an
    unpruned layer this is exactly TWN's rule), pruned positions get ``q=0`` and the mask is
    carried over. Weights already clustered or quantized are declined.
    """

    name = "ternary"
    exact = False

    threshold: float = attrs.field(default=0.7, metadata={"help": "delta = threshold x mean|W| (TWN: 0.7)"})
    per_channel: bool = attrs.field(default=False, metadata={"help": "one delta and alpha per output channel"})
    scope: str = attrs.field(default="all", metadata={"help": "layers: all, conv, fc or a name pattern"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        details: dict = {"alpha": {}, "sparsity": {}}
        modified = False
        for ref in float_dense_refs(graph, self.scope, ctx):
            dense = ref.value.const
            axis = ref.out_axis if self.per_channel else None
            rows, kept = as_rows(dense, axis)
            magnitude = np.abs(rows) * kept
            count = np.maximum(kept.sum(axis=1), 1)
            delta = self.threshold * magnitude.sum(axis=1) / count
            large = (magnitude > delta[:, None]) & kept
            n_large = large.sum(axis=1)
            alpha = np.where(n_large > 0, (magnitude * large).sum(axis=1) / np.maximum(n_large, 1), 1.0)
            q = (np.sign(rows) * large).astype(np.int8)
            graph.set_const(ref.value, to_quantized(q, alpha, dense, axis, num_bits=2))
            modified = True
            details["alpha"][ref.name] = alpha.tolist() if axis is not None else float(alpha[0])
            details["sparsity"][ref.name] = 1.0 - float(large.sum()) / large.size
        return PassResult(modified, preserved={STRUCTURE}, details=details)


def float_dense_refs(graph: Graph, scope: str, ctx: PassContext) -> list[WeightRef]:
    """Weights in ``scope`` still held as float Dense arrays; the others are declined."""
    selected = select_layers(graph, scope, [], ctx)
    refs = []
    for ref in selected:
        if isinstance(ref.value.const, Dense):
            refs.append(ref)
        else:
            kind = type(ref.value.const).__name__
            ctx.decline(ref.node, f"weights are already {kind}; {ctx.current_pass} needs float weights")
    return refs


def as_rows(dense: Dense, axis) -> tuple[np.ndarray, np.ndarray]:
    """The weights as float64 rows — one per slice along ``axis``, or a single row when
    ``axis`` is None — and the matching kept mask."""
    array = dense.to_numpy().astype(np.float64)
    kept = np.ones(array.shape, dtype=bool) if dense.kept is None else dense.kept
    if axis is None:
        return array.reshape(1, -1), kept.reshape(1, -1)
    rows = np.moveaxis(array, axis, 0)
    return rows.reshape(rows.shape[0], -1), np.moveaxis(kept, axis, 0).reshape(rows.shape[0], -1)


def to_quantized(q_rows: np.ndarray, alpha: np.ndarray, dense: Dense, axis, *, num_bits: int) -> Quantized:
    """Quantized weights from rows of ``q`` (layout of :func:`as_rows`) and per-row ``alpha``."""
    shape = dense.shape
    if axis is None:
        q = q_rows.reshape(shape)
        scale = np.asarray(alpha[0], dtype=np.float32)
    else:
        moved = (shape[axis],) + shape[:axis] + shape[axis + 1:]
        q = np.moveaxis(q_rows.reshape(moved), 0, axis)
        scale = alpha.astype(np.float32)
    zero_point = np.zeros(scale.shape, dtype=np.int8)
    mask = None if dense.mask is None else dense.mask.copy()
    return Quantized(np.ascontiguousarray(q), scale, zero_point, axis, num_bits, dense.dtype, mask)
