"""Pattern rewriting: match a node by op and predicate, build its replacement, clean up.

A rewriting pass writes its rules as :class:`Rule` objects instead of walking the graph by
hand. A rule names the ops it looks at and two functions:

- ``match(node)`` inspects the node, its inputs and their users (never edits) and returns
  ``None`` (not this pattern, say nothing), :class:`Declined` (the pattern is here but cannot
  be rewritten; the reason reaches the report), or any other object: the match, handed on to
- ``rewrite(rewriter, node, match)``, which builds the replacement through the graph's
  editing methods, using the :class:`Rewriter` helpers that keep names and links right.

:func:`apply_rules` runs rules over the graph to a fixed point::

    rule = Rule("conv+bn", ("BatchNormalization",), match_conv_bn, fold_conv_bn)
    count = apply_rules(graph, [rule], ctx)

The helpers keep two promises every pass relies on: graph output names never change (a
replaced output hands its name to the new value, or an Identity keeps it), and nothing dead
stays behind (nodes and constants left without users by a rewrite are erased).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence, Union

import attrs
import numpy as np

from circ.graph import Graph, Node, Value, iter_nodes_safe
from circ.tensors import Dense, Tensor


@attrs.define(frozen=True)
class Declined:
    """What ``match`` returns when the pattern is present but cannot be rewritten."""

    reason: str


@attrs.define(frozen=True)
class Rule:
    """One rewrite: on nodes whose op is in ``ops`` (domain ``domain``), ``match`` then ``rewrite``."""

    name: str
    ops: tuple = attrs.field(converter=tuple)
    match: Callable[[Node], Any]
    rewrite: Callable[["Rewriter", Node, Any], None]
    domain: str = ""


class Rewriter:
    """Edits one graph on behalf of a rule; every edit goes through the graph's methods."""

    def __init__(self, graph: Graph):
        self.graph = graph

    # ------------------------------------------------------------------ replacing values
    def can_take_name(self, value: Value) -> bool:
        """Whether ``value`` may be renamed to a graph output's name: a node's output that is
        not itself a graph output (graph inputs and constants keep their names)."""
        return value.producer is not None and not self.graph.is_output(value)

    def replace_value(self, old: Value, new: Value) -> None:
        """Make every use of ``old`` read ``new``, keeping graph output names stable.

        When ``old`` is a graph output, ``new`` takes its name; if ``new`` cannot be renamed
        (graph input, constant, another output), an Identity named like ``old`` is appended.
        """
        graph = self.graph
        if old is new:
            return
        if not graph.is_output(old):
            graph.replace_all_uses_with(old, new)
            return
        name = old.name
        graph.rename(old, f"{name}__replaced")  # frees the name; ``old`` is erased later
        if self.can_take_name(new):
            graph.replace_all_uses_with(old, new)
            graph.rename(new, name)
            return
        keep = graph.add_node("Identity", [new], outputs=[name], name=f"{name}__keep", infer=False)
        keep.output.dtype, keep.output.shape, keep.output.sym = new.dtype, new.shape, new.sym
        graph.replace_all_uses_with(old, keep.output)

    def replace_node(self, node: Node, new_values: Sequence[Optional[Value]]) -> None:
        """Replace ``node``'s outputs by ``new_values`` (None: that output must be unused),
        erase the node and whatever it alone kept alive."""
        for old, new in zip(node.outputs, new_values):
            if new is not None:
                self.replace_value(old, new)
        self.erase_dead(node.outputs)

    # ------------------------------------------------------------------ constants
    def const(self, name: str, array: Union[np.ndarray, Tensor]) -> Value:
        """A new constant named after ``name`` (made unique)."""
        return self.graph.add_const(name, array)

    def set_const_input(self, node: Node, index: int, array: np.ndarray, *, name: str = "") -> Value:
        """Give ``node`` a new constant at input ``index``.

        The existing constant is updated in place when ``node`` is its only user (its name,
        and a pruning mask when the new array keeps the pruned zeros, survive); otherwise a new
        constant is added and the old one erased if nothing else reads it.
        """
        old = node.input(index)
        array = np.asarray(array)
        if old is not None and old.const is not None and len(old.uses) == 1 \
                and not self.graph.is_output(old):
            mask = old.const.kept  # any representation's pruning mask (Dense, Clustered, Quantized)
            if mask is not None and (mask.shape != array.shape or np.any(array[~mask] != 0)):
                mask = None
            self.graph.set_const(old, Dense(array, mask))
            return old
        base = name or (old.name if old is not None else f"{node.name}_in{index}")
        new = self.graph.add_const(base, array)
        self.graph.set_input(node, index, new)
        if old is not None:
            self.erase_dead([old])
        return new

    # ------------------------------------------------------------------ erasing
    def erase_dead(self, values: Iterable[Optional[Value]]) -> int:
        """Erase producers and constants of ``values`` that nothing uses any more, following
        their inputs upward (a worklist, no recursion). Graph inputs are kept. Returns the
        number of nodes and constants erased."""
        graph = self.graph
        erased = 0
        work = [v for v in values if v is not None]
        while work:
            value = work.pop()
            if value.uses or graph.is_output(value):
                continue
            if value.const is not None:
                if graph.consts.get(value.name) is value:
                    graph.erase_const(value)
                    erased += 1
                continue
            node = value.producer
            if node is None or node.graph is not graph:
                continue
            if any(out.uses or graph.is_output(out) for out in node.outputs):
                continue
            inputs = [v for v in node.inputs if v is not None]
            graph.erase_node(node)
            erased += 1
            work.extend(inputs)
        return erased


# ---------------------------------------------------------------------- predicates


def const_array(value: Optional[Value]) -> Optional[np.ndarray]:
    """The decoded array of a constant value, or None when it is not a constant."""
    if value is None or value.const is None:
        return None
    return value.const.to_numpy()


def sole_user(value: Value, graph: Graph) -> Optional[Node]:
    """The one node reading ``value`` (once), or None if it has other uses or is a graph output."""
    if len(value.uses) != 1 or graph.is_output(value):
        return None
    return value.uses[0][0]


def produced_by(value: Optional[Value], *ops: str) -> Optional[Node]:
    """The producer of ``value`` when its op (default domain) is one of ``ops``."""
    if value is None or value.producer is None:
        return None
    node = value.producer
    return node if node.domain in ("", "ai.onnx") and node.op in ops else None


# ---------------------------------------------------------------------- driver


def apply_rules(graph: Graph, rules: Sequence[Rule], ctx=None, *, max_rounds: int = 10) -> int:
    """Apply ``rules`` over ``graph`` until none matches (at most ``max_rounds`` sweeps).

    Each sweep visits a snapshot of the nodes in order; the first rule that matches a node
    rewrites it. Declines are reported to ``ctx`` once, at the end, for nodes still in the
    graph that no later sweep rewrote. Returns the number of rewrites.
    """
    by_op: dict[tuple, list[Rule]] = {}
    for rule in rules:
        for op in rule.ops:
            by_op.setdefault((rule.domain, op), []).append(rule)
    rewriter = Rewriter(graph)
    declined: dict[tuple, tuple] = {}
    count = 0
    for _ in range(max_rounds):
        changed = False
        for node in iter_nodes_safe(graph):
            domain = "" if node.domain == "ai.onnx" else node.domain
            for rule in by_op.get((domain, node.op), ()):
                found = rule.match(node)
                if found is None:
                    continue
                if isinstance(found, Declined):
                    declined[(id(node), rule.name)] = (node, found.reason)
                    continue
                declined.pop((id(node), rule.name), None)
                rule.rewrite(rewriter, node, found)
                count += 1
                changed = True
                break
        if not changed:
            break
    if ctx is not None:
        for node, reason in declined.values():
            if node.graph is graph:
                ctx.decline(node, reason)
    return count
