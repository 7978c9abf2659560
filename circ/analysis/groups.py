"""Dependency groups: sets of weighted nodes whose output channels must be pruned together.

Placeholder API: for now every weighted node (Conv, ConvTranspose, Gemm, MatMul with a
constant weight) is its own group. The structured-pruning issue fills in the coupling rules
(residual Add, Concat, depthwise Conv) on the networkx view; callers keep this signature.
"""

from __future__ import annotations

from circ.graph import Graph
from circ.passbase import STRUCTURE, analysis

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@analysis(STRUCTURE)
def dependency_groups(graph: Graph) -> list[frozenset]:
    """Groups of nodes (frozensets of :class:`~circ.graph.Node`) in graph order."""
    view = graph.nx()
    groups = []
    for node in view.nodes:
        weight = node.input(1)
        if node.op in WEIGHTED_OPS and weight is not None and weight.const is not None:
            groups.append(frozenset({node}))
    return groups
