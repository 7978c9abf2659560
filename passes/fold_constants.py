"""Constant folding: nodes whose inputs are all known become constants."""

from __future__ import annotations

from typing import Optional

import attrs
import numpy as np

from circ.graph import Graph, Node, Value, iter_nodes_safe
from circ.ops import get_op
from circ.passbase import Pass, PassContext, PassResult, register_pass
from circ.rewrite import Rewriter
from circ.shape_inference import infer_node

# Ops whose result is not a function of their inputs: never folded.
NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli",
})

# Inputs that hold weights: a large folded constant is still worth having there, because the
# compression passes only see weights that are constants.
WEIGHT_INPUTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
    "BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2), "PRelu": (1,), "QLinearConv": (3,), "MatMulInteger": (1,),
    "ConvInteger": (1,),
}

# Ops that only rearrange their first input: a weight passing through them is still a weight.
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity",
                        "Cast"})


@register_pass
class FoldConstants(Pass):
    """Replace every node whose result is known before running by a constant. Exact.

    Rules:

    1. A node whose inputs are all constants (or omitted) is evaluated with the
       interpreter's kernel; its outputs become constants named like them. Exact: the same
       kernel would compute the same arrays at run time.
    2. ``Shape`` and ``Size`` of a value whose shape is fully static become constants. Exact.
    3. Any output whose contents shape inference knows as all integers (``Value.sym``, e.g.
       ``Gather(Shape(x), 1)`` when dim 1 is static) becomes a constant. Exact.

    Kept as they are: non-deterministic ops, opaque ops (no kernel; declined when all their
    inputs are constant), nodes with subgraphs, outputs that are graph outputs, and results
    larger than both ``max_bytes`` and their inputs unless every use ends in a weight input,
    directly or through layout ops (Reshape, Transpose, ...) that fold too — so the
    ``ConstantOfShape`` weights of the model-zoo graphs do become weight constants.
    """

    name = "fold_constants"
    exact = True

    max_bytes: int = attrs.field(default=1 << 20, metadata={
        "help": "largest result (bytes) folded when it is bigger than the node's inputs and "
                "does not feed a weight input"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        rewriter = Rewriter(graph)
        folded = 0
        # Nodes whose inputs changed type since shape inference ran: re-inferred when reached
        # (in topological order), so e.g. a Reshape fed a folded shape learns its output shape
        # and everything downstream sees it in the same sweep.
        stale: set[int] = set()
        for node in iter_nodes_safe(graph):
            if id(node) in stale and _reinfer(node):
                stale.update(id(user) for value in node.outputs for user in value.users)
            results = self._evaluate(node, graph, ctx)
            if results is None:
                continue
            replacements = []
            for value, array in zip(node.outputs, results):
                replacements.append(self._to_const(graph, value, array) if value.uses else None)
            stale.update(id(user) for value in node.outputs for user in value.users)
            rewriter.replace_node(node, replacements)
            folded += 1
        return PassResult(modified=folded > 0, details={"folded": folded})

    # ------------------------------------------------------------------ deciding
    def _evaluate(self, node: Node, graph: Graph, ctx: PassContext) -> Optional[list]:
        """The arrays of ``node``'s outputs when it can and should be folded, else None."""
        if not any(v.uses for v in node.outputs) or any(graph.is_output(v) for v in node.outputs):
            return None
        if node.op in NONDETERMINISTIC or node.raw_attrs or _dropout_training(node):
            return None
        known = _known_outputs(node)
        if known is not None:
            return known
        if not all(v is None or v.const is not None for v in node.inputs):
            return None
        opdef = get_op(node.op, node.domain)
        if opdef is None or opdef.kernel is None:
            ctx.decline(node, f"all inputs are constant but there is no kernel for {node.op!r}")
            return None
        args = [None if v is None else v.const.to_numpy() for v in node.inputs]
        try:
            results = opdef.kernel(node, *args)
        except Exception as err:  # a kernel failing on constants must not break the pass
            ctx.decline(node, f"kernel failed on constant inputs: {type(err).__name__}: {err}")
            return None
        if not isinstance(results, (tuple, list)):
            results = (results,)
        results = [np.asarray(r) for r in results]
        if node.op != "Constant" and not self._small_enough(node, results):
            return None
        return results

    def _small_enough(self, node: Node, results: list) -> bool:
        out_bytes = sum(r.nbytes for r in results)
        in_bytes = sum(v.const.storage_bytes for v in node.inputs if v is not None)
        if out_bytes <= max(self.max_bytes, in_bytes):
            return True
        return all(_feeds_weights(value) for value in node.outputs)

    # ------------------------------------------------------------------ building
    @staticmethod
    def _to_const(graph: Graph, value: Value, array: np.ndarray) -> Value:
        if value.dtype is not None and array.dtype != value.dtype:
            array = array.astype(value.dtype)
        name = value.name
        graph.rename(value, f"{name}__folded")  # the constant takes the value's own name
        return graph.add_const(name, array)


def _known_outputs(node: Node) -> Optional[list]:
    """Outputs computable from static shapes alone (rules 2 and 3), or None."""
    if node.op in ("Shape", "Size") and node.inputs and node.inputs[0] is not None:
        shape = node.inputs[0].shape
        if shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
            dims = [int(d) for d in shape]
            if node.op == "Size":
                return [np.array(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)]
            start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
            return [np.array(dims[slice(start, end)], dtype=np.int64)]
    arrays = []
    for value in node.outputs:
        array = _sym_array(value)
        if array is None:
            return None
        arrays.append(array)
    return arrays


def _sym_array(value: Value) -> Optional[np.ndarray]:
    if value.sym is None or not all(isinstance(d, (int, np.integer)) for d in value.sym):
        return None
    shape = value.shape
    if shape is None or not all(isinstance(d, (int, np.integer)) for d in shape) \
            or int(np.prod(shape, dtype=np.int64)) != len(value.sym):
        return None
    if value.dtype is None or value.dtype.kind not in "iu":
        return None
    return np.array([int(d) for d in value.sym], dtype=value.dtype).reshape(shape)


def _dropout_training(node: Node) -> bool:
    """Dropout that may be in training mode (random): not folded."""
    if node.op != "Dropout":
        return False
    mode = node.input(2)
    if mode is None:
        return False
    return mode.const is None or bool(np.asarray(mode.const.to_numpy()).reshape(-1)[0])


def _feeds_weights(value: Value) -> bool:
    """Whether every use of ``value`` ends in a weight input, directly or through layout ops
    that will fold too (model-zoo classifiers: ConstantOfShape -> Reshape -> Gemm)."""
    work = [value]
    while work:
        current = work.pop()
        if not current.uses:
            return False
        for user, index in current.uses:
            if index in WEIGHT_INPUTS.get(user.op, ()):
                continue
            others_constant = all(v is None or v.const is not None
                                  for i, v in enumerate(user.inputs) if i != index)
            if user.op in LAYOUT_OPS and index == 0 and others_constant:
                work.extend(user.outputs[:1])
                continue
            return False
    return True


def _reinfer(node: Node) -> bool:
    """Re-run ``node``'s shape rule; True when an output's type or known contents changed."""
    from circ.errors import ModelError

    before = [(v.dtype, v.shape, v.sym) for v in node.outputs]
    try:
        infer_node(node)
    except ModelError:
        return False  # keep the types it had; the graph was valid with them
    return before != [(v.dtype, v.shape, v.sym) for v in node.outputs]
