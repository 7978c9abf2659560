"""Size and work statistics of a graph: parameters, non-zeros, storage bytes, bits, MACs.

What is counted:

- **params**: elements of parameter constants. A constant is a parameter when it is
  floating point or has two or more dimensions (weights, biases, BN statistics, int8 weight
  matrices); small integer vectors (shapes, axes, indices) are not.
- **nonzeros**: non-zero elements of the decoded parameters (``Tensor.nnz``).
- **storage_bytes**: ``Tensor.storage_bytes`` of every constant, parameters or not — the
  size of the weights in memory before entropy coding.
- **weight_bits**: ``sum(size * Tensor.bits)`` over parameters; ``bits`` is its mean per
  parameter (32 for float32, the index width for clustered, ``num_bits`` for quantized).
- **macs**: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul for one sample
  (symbolic dims such as the batch count as 1). Bias additions, elementwise ops, pooling and
  normalization are not counted. A node whose shapes are not known statically has
  ``macs = None`` and the total covers the known nodes only (``macs_complete`` is False).
- **effective_macs**: MACs scaled by the density of the node's weight, the work left for
  hardware that skips zero weights (EIE-style).

Per-node figures attribute each constant to the first node that reads it, so the node rows
add up to the totals (constants no node reads are only in the totals).
"""

from __future__ import annotations

from typing import Optional

import attrs
import numpy as np

from circ.graph import Graph, Node, Value
from circ.passbase import STRUCTURE, WEIGHTS, analysis

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@attrs.define
class NodeStats:
    """Figures of one node (its first-read constants and its MACs)."""

    name: str
    op: str
    params: int = 0
    nonzeros: int = 0
    storage_bytes: int = 0
    weight_bits: float = 0.0
    macs: Optional[int] = 0
    effective_macs: Optional[int] = 0

    @property
    def bits(self) -> float:
        return self.weight_bits / self.params if self.params else 0.0

    def to_dict(self) -> dict:
        out = attrs.asdict(self)
        out["bits"] = self.bits
        return out


@attrs.define
class GraphStats:
    """Totals and per-node rows; :meth:`totals` is what reports and tables show."""

    params: int
    nonzeros: int
    storage_bytes: int
    weight_bits: float
    macs: int
    effective_macs: int
    macs_complete: bool
    nodes: int
    per_node: list = attrs.field(factory=list)  # list[NodeStats], in graph order

    @property
    def bits(self) -> float:
        return self.weight_bits / self.params if self.params else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    def totals(self) -> dict:
        """JSON-ready totals."""
        return {
            "params": self.params, "nonzeros": self.nonzeros, "storage_bytes": self.storage_bytes,
            "bits": round(self.bits, 4), "macs": self.macs, "effective_macs": self.effective_macs,
            "macs_complete": self.macs_complete, "nodes": self.nodes,
        }

    def node(self, name: str) -> NodeStats:
        for row in self.per_node:
            if row.name == name:
                return row
        raise KeyError(name)


def is_parameter(value: Value) -> bool:
    """Whether constant ``value`` counts as a parameter (see the module docstring)."""
    return value.const is not None and (np.dtype(value.const.dtype).kind == "f"
                                        or len(value.const.shape) >= 2)


@analysis(STRUCTURE, WEIGHTS)
def graph_stats(graph: Graph) -> GraphStats:
    """Statistics of ``graph``; cached by the pass manager until structure or weights change."""
    rows = []
    counted: set[int] = set()
    for node in graph.nodes:
        row = NodeStats(node.name, node.op)
        for value in node.inputs:
            if value is None or value.const is None or id(value) in counted:
                continue
            counted.add(id(value))
            _add_constant(row, value)
        row.macs = node_macs(node)
        row.effective_macs = _effective(node, row.macs)
        rows.append(row)

    total = NodeStats("", "")
    for value in graph.consts.values():
        _add_constant(total, value)
    known = [r for r in rows if r.macs is not None]
    return GraphStats(
        params=total.params, nonzeros=total.nonzeros, storage_bytes=total.storage_bytes,
        weight_bits=total.weight_bits, macs=sum(r.macs for r in known),
        effective_macs=sum(r.effective_macs for r in known), macs_complete=len(known) == len(rows),
        nodes=len(graph.nodes), per_node=rows)


def _add_constant(row: NodeStats, value: Value) -> None:
    tensor = value.const
    row.storage_bytes += tensor.storage_bytes
    if is_parameter(value):
        row.params += tensor.size
        row.nonzeros += tensor.nnz
        row.weight_bits += tensor.size * tensor.bits


def _dims(shape) -> Optional[list[int]]:
    """Static dims with symbolic ones read as 1; None when the rank or a dim is unknown."""
    if shape is None or any(d is None for d in shape):
        return None
    return [d if isinstance(d, (int, np.integer)) else 1 for d in shape]


def _product(dims) -> int:
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


def node_macs(node: Node) -> Optional[int]:
    """Multiply-accumulates of one node for one sample; 0 for ops not counted, None if unknown."""
    if node.op not in MAC_OPS or node.domain not in ("", "ai.onnx"):
        return 0
    out = _dims(node.outputs[0].shape) if node.outputs else None
    first = _dims(node.input(0).shape) if node.input(0) is not None else None
    second = _dims(node.input(1).shape) if node.input(1) is not None else None
    if node.op == "Conv":
        # every output element is a dot product over (C/group) * kernel weights: W[M, C/g, k...]
        return None if out is None or second is None else _product(out) * _product(second[1:])
    if node.op == "ConvTranspose":
        # every input element scatters into (M/group) * kernel outputs: W[C, M/g, k...]
        return None if first is None or second is None else _product(first) * _product(second[1:])
    if node.op == "Gemm":
        if out is None or first is None or len(first) != 2:
            return None
        inner = first[0] if node.attrs.get("transA", 0) else first[1]
        return _product(out) * inner
    # MatMul: each output element is a dot product along A's last axis
    if out is None or first is None or not first:
        return None
    return _product(out) * first[-1]


def _effective(node: Node, macs: Optional[int]) -> Optional[int]:
    if not macs:
        return macs
    constants = [v for v in (node.input(1), node.input(0)) if v is not None and v.const is not None]
    if not constants or constants[0].const.size == 0:
        return macs
    weight = constants[0]
    density = weight.const.nnz / weight.const.size
    return int(round(macs * density))
