"""The IR verifier: checks the invariants every pass must keep, naming the node that breaks one.

1. Names: every value name and node name is unique.
2. Order: ``graph.nodes`` is topological — each input is a graph input, a constant, or the
   output of an earlier node (so the graph is acyclic).
3. Links: each value has one producer; a value's ``uses`` list is exactly the set of
   ``(node, index)`` pairs that read it; no node reads a value that is not in the graph.
4. Types: re-running each known op's shape rule gives types compatible with the stored ones
   (unknown dims are compatible with anything).
5. Outputs: every graph output is defined.
"""

from __future__ import annotations

from circ.errors import VerificationError
from circ.graph import Graph, format_type
from circ.shape_inference import compute_types


def verify(graph: Graph, *, check_types: bool = True) -> None:
    """Raise :class:`VerificationError` on the first broken invariant."""
    defined: dict[int, object] = {}
    names: set[str] = set()

    def define(value, where: str):
        if value.name in names:
            raise VerificationError(f"{where}: value name {value.name!r} is defined twice")
        names.add(value.name)
        defined[id(value)] = value

    for v in graph.inputs:
        if v.producer is not None:
            raise VerificationError(f"graph input {v.name!r} has a producer")
        define(v, f"graph input {v.name!r}")
    for key, v in graph.consts.items():
        if v.const is None or key != v.name:
            raise VerificationError(f"constant {v.name!r} has no tensor or is filed as {key!r}")
        define(v, f"constant {v.name!r}")

    node_names: set[str] = set()
    seen_nodes: set[int] = set()
    for node in graph.nodes:
        where = node.describe()
        if node.graph is not graph:
            raise VerificationError(f"{where} does not belong to graph {graph.name!r}")
        if node.name and node.name in node_names:
            raise VerificationError(f"{where}: node name is used twice")
        node_names.add(node.name)
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            if id(value) not in defined:
                later = value.producer is not None and value.producer.graph is graph
                why = "is produced later (cycle or bad order)" if later else "is not defined in the graph"
                raise VerificationError(f"{where}: input {index} {value.name!r} {why}")
            if not any(u is node and i == index for u, i in value.uses):
                raise VerificationError(f"{where}: input {index} {value.name!r} does not list this use")
        for value in node.outputs:
            if value.producer is not node:
                raise VerificationError(f"{where}: output {value.name!r} names another producer")
            define(value, where)
        seen_nodes.add(id(node))

    for value in list(defined.values()):
        for user, index in value.uses:
            if id(user) not in seen_nodes:
                raise VerificationError(f"value {value.name!r} lists a use by {user.describe()}, "
                                        f"which is not in the graph (dangling use)")
            if index >= len(user.inputs) or user.inputs[index] is not value:
                raise VerificationError(f"value {value.name!r} lists a use by {user.describe()} "
                                        f"input {index}, which reads something else")

    for value in graph.outputs:
        if id(value) not in defined:
            raise VerificationError(f"graph output {value.name!r} is not defined")

    if check_types:
        for node in graph.nodes:
            types = compute_types(node)
            if types is None:
                continue
            for value, t in zip(node.outputs, types):
                if not _compatible(value.dtype, value.shape, t.dtype, t.shape):
                    raise VerificationError(
                        f"{node.describe()}: output {value.name!r} is stored as "
                        f"{format_type(value.dtype, value.shape)} but the shape rule gives "
                        f"{format_type(t.dtype, t.shape)}")


def _compatible(dtype_a, shape_a, dtype_b, shape_b) -> bool:
    if dtype_a is not None and dtype_b is not None and dtype_a != dtype_b:
        return False
    if shape_a is None or shape_b is None:
        return True
    if len(shape_a) != len(shape_b):
        return False
    return all(a is None or b is None or a == b for a, b in zip(shape_a, shape_b))
