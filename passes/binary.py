"""binary: sign binarization with a scale (XNOR-Net's weights, Rastegari et al., 2016). Approximate."""

from __future__ import annotations

import attrs
import numpy as np

from circ.graph import Graph
from circ.passbase import STRUCTURE, Pass, PassContext, PassResult, register_pass
from passes.ternary import as_rows, float_dense_refs, to_quantized


@register_pass
class Binary(Pass):
    """Binarize Conv, ConvTranspose, Gemm and MatMul weights to ``alpha * sign(W)``.

    Per layer (or per output channel with ``per_channel=true``, as XNOR-Net does per filter):
    ``q = +1`` where ``W >= 0`` and ``-1`` elsewhere, ``alpha = mean|W|`` (the scale that
    minimises ``||W - alpha q||`` for that ``q``). Stored as Quantized: ``q`` in {-1, +1} as
    int8, ``num_bits=1``, ``scale=alpha``, ``zero_point=0``. A slice whose kept weights are
    all zero gets ``alpha=0`` and so stays zero.

    Pruned weights stay zero through the mask, not through ``q`` (one bit has no zero): the
    mask is carried over, ``alpha`` is the mean over the kept weights only, and ``q`` is +1
    at pruned positions, which decode to exactly 0. Weights already clustered or quantized
    are declined.
    """

    name = "binary"
    exact = False

    per_channel: bool = attrs.field(default=False, metadata={"help": "one alpha per output channel"})
    scope: str = attrs.field(default="all", metadata={"help": "layers: all, conv, fc or a name pattern"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        details: dict = {"alpha": {}}
        modified = False
        for ref in float_dense_refs(graph, self.scope, ctx):
            dense = ref.value.const
            axis = ref.out_axis if self.per_channel else None
            rows, kept = as_rows(dense, axis)
            count = kept.sum(axis=1)
            total = (np.abs(rows) * kept).sum(axis=1)
            alpha = total / np.maximum(count, 1)
            q = np.where(rows >= 0, 1, -1).astype(np.int8)
            q[~kept] = 1
            graph.set_const(ref.value, to_quantized(q, alpha, dense, axis, num_bits=1))
            modified = True
            details["alpha"][ref.name] = alpha.tolist() if axis is not None else float(alpha[0])
        return PassResult(modified, preserved={STRUCTURE}, details=details)
