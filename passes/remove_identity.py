"""Removal of no-op nodes: Identity and inference-time Dropout."""

from __future__ import annotations

import numpy as np

from circ.graph import Graph, Node
from circ.passbase import Pass, PassContext, PassResult, register_pass
from circ.rewrite import Declined, Rewriter, Rule, apply_rules


@register_pass
class RemoveIdentity(Pass):
    """Replace no-op nodes by their input. Exact.

    Rules:

    1. ``Identity(x)`` is replaced by ``x``. Exact.
    2. ``Dropout(x[, ratio[, training_mode]])`` whose ``training_mode`` is omitted or a
       constant false (inference: the output equals ``x`` whatever the ratio) and whose mask
       output is unused is replaced by ``x``. Exact. A used mask or a training mode not known
       to be false is declined.

    Graph output names stay stable: when the removed node's output is a graph output, the
    producer's value is renamed to the output's name; when ``x`` is a graph input, a constant
    or already a graph output (it cannot take the name), the node is kept.
    """

    name = "remove_identity"
    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        rules = [Rule("remove_identity", ("Identity", "Dropout"), _matcher(graph), _bypass)]
        count = apply_rules(graph, rules, ctx)
        return PassResult(modified=count > 0, details={"removed": count})


def _matcher(graph: Graph):
    rewriter = Rewriter(graph)

    def match(node: Node):
        source = node.input(0)
        if source is None:
            return None
        if node.op == "Dropout":
            reason = _dropout_problem(node, graph)
            if reason:
                return Declined(reason)
        if graph.is_output(node.output) and not rewriter.can_take_name(source):
            return None  # keeping this node is what keeps the output name; nothing to report
        return source

    return match


def _dropout_problem(node: Node, graph: Graph) -> str:
    mode = node.input(2)
    if mode is not None:
        if mode.const is None:
            return "training_mode is not a constant"
        if bool(np.asarray(mode.const.to_numpy()).reshape(-1)[0]):
            return "training_mode is true (random at run time)"
    if node.attrs.get("is_test", 1) == 0:
        return "is_test is 0 (training mode)"
    for mask in node.outputs[1:]:
        if mask.uses or graph.is_output(mask):
            return "its mask output is used"
    return ""


def _bypass(rewriter: Rewriter, node: Node, source) -> None:
    rewriter.replace_node(node, [source] + [None] * (len(node.outputs) - 1))
