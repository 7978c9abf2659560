"""Shape and dtype inference: runs each op's shape rule over the graph in order.

Opaque (unknown) ops keep whatever types their outputs carry (from the ONNX file's
``value_info`` when it had them); everything downstream of an unknown shape simply stays
partly unknown — the verifier accepts unknown dims, and the interpreter never needs them.
"""

from __future__ import annotations

from circ.errors import ModelError
from circ.graph import Graph, Node
from circ.ops import get_op
from circ.ops.registry import ShapeError


def infer_node(node: Node) -> None:
    """Set the dtype, shape and known contents of ``node``'s outputs from its op's rule."""
    types = compute_types(node)
    if types is None:
        return
    for value, t in zip(node.outputs, types):
        value.dtype = t.dtype
        value.shape = t.shape
        value.sym = t.sym


def compute_types(node: Node):
    """The op's shape rule applied to ``node``; None for an opaque op. Raises ModelError."""
    opdef = get_op(node.op, node.domain)
    if opdef is None or opdef.shape is None:
        return None
    try:
        types = opdef.shape(node)
    except ShapeError as err:
        raise ModelError(f"{node.describe()}: {err}") from None
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise ModelError(f"{node.describe()}: cannot infer shapes ({type(err).__name__}: {err})") from err
    if len(types) < len(node.outputs):
        # Optional trailing outputs (e.g. Dropout's mask, BatchNorm's running stats) that a
        # rule does not describe keep their current type.
        types = list(types) + [None] * (len(node.outputs) - len(types))
        return [t if t is not None else _keep(v) for t, v in zip(types, node.outputs)]
    return types[: len(node.outputs)]


def _keep(value):
    from circ.ops.registry import TensorType

    return TensorType(value.dtype, value.shape, value.sym)


def infer_shapes(graph: Graph) -> Graph:
    """Infer every node's output types, in topological order. Returns the graph."""
    for node in graph.nodes:
        infer_node(node)
    return graph
