"""Dead code elimination."""

from __future__ import annotations

from circ.graph import Graph
from circ.onnx_import import implicit_inputs
from circ.passbase import Pass, PassContext, PassResult, register_pass


@register_pass
class DeadCodeElimination(Pass):
    """Remove what no graph output depends on. Exact.

    Rules:

    1. A node none of whose outputs is used or is a graph output is erased. Nodes are visited
       in reverse topological order, so a whole dangling chain goes in one sweep (no
       recursion). Exact: nothing observable read the node.
    2. A constant nothing reads (and that is not a graph output) is erased. Exact.

    Graph inputs are the model's interface and are always kept, used or not. Values that an
    opaque node's subgraph (If/Loop/Scan body) reads from the outer scope are not linked as
    uses in circ's IR; they are kept too.
    """

    name = "dce"
    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        captured = set()
        for node in graph.nodes:
            if node.raw_attrs:
                captured |= implicit_inputs(node)

        def live(value) -> bool:
            return bool(value.uses) or graph.is_output(value) or value.name in captured

        nodes = 0
        for node in reversed(list(graph.nodes)):
            if any(live(out) for out in node.outputs):
                continue
            graph.erase_node(node)
            nodes += 1
        consts = 0
        for value in list(graph.consts.values()):
            if not live(value):
                graph.erase_const(value)
                consts += 1
        return PassResult(modified=bool(nodes or consts),
                          details={"nodes_removed": nodes, "constants_removed": consts})
