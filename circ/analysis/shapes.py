"""The shapes analysis: fresh dtypes and shapes of every value, by re-running shape inference.

Passes that build new nodes with ``infer=False`` or edit constants in place ask for it
through ``ctx.shapes(graph)``; it depends on the graph structure only.
"""

from __future__ import annotations

from circ.graph import Graph
from circ.passbase import STRUCTURE, analysis
from circ.shape_inference import infer_shapes


@analysis(STRUCTURE)
def value_types(graph: Graph) -> dict:
    """Value name -> (dtype, shape), after inferring shapes over the whole graph."""
    infer_shapes(graph)
    return {value.name: (value.dtype, value.shape) for value in graph.values()}
