"""Reverse-mode gradients through a graph, from the op table's per-op gradients.

A forward pass with :class:`Tape` keeps every intermediate array; :func:`backward` then walks
the nodes in reverse topological order, calls each op's registered gradient (see
:mod:`circ.ops.registry`) and sums the contributions a value receives from all its uses.
Only nodes on a path from a chosen value to a seeded one are visited, so integer shape
arithmetic (Shape -> Gather -> Concat -> Reshape) never needs a gradient.

The loss head is :func:`softmax_cross_entropy`, fused and stable: it takes logits, so a graph
that ends in Softmax is trained through the Softmax's input (:func:`loss_and_gradients` does
this), never through ``log(softmax(x))``.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

from circ.errors import DataError, ModelError
from circ.graph import Graph, Node, Value
from circ.interpreter import Interpreter
from circ.ops import get_op
from circ.ops.normalization import batch_norm_training, batch_norm_training_grad

ValueRef = Union[str, Value]


class Tape(Interpreter):
    """An interpreter that keeps every value's array for :func:`backward` (``self.values``,
    keyed by ``id(value)``, filled by :meth:`run`).

    With ``training`` set, BatchNormalization nodes with per-channel parameters normalize with
    the batch's statistics and are differentiated through them; ``self.batch_stats`` maps
    each such node's name to the batch ``(mean, var)`` of the last run, for the running
    averages a trainer keeps. Without it (the default) batch norm is frozen: the running
    statistics are used, and they are inputs like any other.
    """

    def __init__(self, graph: Graph, *, training: bool = False):
        super().__init__(graph, keep_all=True)
        self.training = training
        self.batch_stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def run_node(self, node: Node, args: list[Optional[np.ndarray]]) -> list[np.ndarray]:
        if self._trains(node):
            y, mean, var = batch_norm_training(node, *args[:3])
            self.batch_stats[node.name] = (mean, var)
            return [y]
        return super().run_node(node, args)

    def gradient_of(self, node: Node):
        """The gradient function :func:`backward` uses for ``node``; None when it has none."""
        if self._trains(node):
            return batch_norm_training_grad
        opdef = get_op(node.op, node.domain)
        return None if opdef is None else opdef.gradient

    def _trains(self, node: Node) -> bool:
        return (self.training and node.op == "BatchNormalization" and not node.domain
                and len(node.outputs) == 1 and node.inputs[1].shape is not None
                and len(node.inputs[1].shape) == 1)

    def array(self, value: ValueRef) -> np.ndarray:
        """The array the last :meth:`run` computed for ``value`` (a Value or its name)."""
        return self.values[id(_resolve(self.graph, value))]


def backward(tape: Tape, seeds: Mapping[ValueRef, np.ndarray],
             wrt: Sequence[ValueRef]) -> dict[str, np.ndarray]:
    """Gradients of ``sum(seed * value)`` over the seeded values with respect to each value in
    ``wrt`` (graph inputs, constants or intermediates), by value name. A value the seeds do
    not depend on gets zeros. Call after ``tape.run(feeds)``."""
    graph = tape.graph
    targets = [_resolve(graph, v) for v in wrt]
    grads: dict[int, np.ndarray] = {}
    for ref, seed in seeds.items():
        value = _resolve(graph, ref)
        seed = np.asarray(seed)
        if seed.shape != tape.values[id(value)].shape:
            raise DataError(f"seed for {value.name!r} has shape {list(seed.shape)}, the value "
                            f"has {list(tape.values[id(value)].shape)}")
        grads[id(value)] = seed
    reached = _downstream(graph, targets)
    for node in reversed(graph.nodes):
        grad_outputs = [grads.get(id(v)) for v in node.outputs]
        if all(g is None for g in grad_outputs):
            continue
        if not any(v is not None and id(v) in reached for v in node.inputs):
            continue
        gradient = tape.gradient_of(node)
        if gradient is None:
            raise ModelError(f"cannot differentiate {node.describe()}: op {node.op!r} has no "
                             f"gradient")
        outputs = [tape.values[id(v)] for v in node.outputs]
        grad_outputs = [np.zeros_like(a) if g is None else g for g, a in zip(grad_outputs, outputs)]
        inputs = [None if v is None else tape.values[id(v)] for v in node.inputs]
        input_grads = gradient(node, inputs, outputs, grad_outputs)
        for value, grad in zip(node.inputs, input_grads):
            if value is None or grad is None or id(value) not in reached:
                continue
            grad = np.asarray(grad)
            previous = grads.get(id(value))
            grads[id(value)] = grad if previous is None else previous + grad
    result = {}
    for value in targets:
        grad = grads.get(id(value))
        result[value.name] = np.zeros_like(tape.values[id(value)]) if grad is None else grad
    return result


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` over the last axis and its gradient with
    respect to the logits. ``labels`` are class indices (one per row) or target
    probabilities shaped like ``logits`` (soft targets, for distillation)."""
    logits = np.asarray(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    labels = np.asarray(labels)
    if labels.shape == logits.shape:
        targets = labels.astype(logits.dtype)
    elif labels.shape == logits.shape[:-1] and labels.dtype.kind in "iu":
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
            raise DataError(f"labels must be class indices in [0, {logits.shape[-1]}), got "
                            f"{labels.min()}..{labels.max()}")
        targets = np.zeros_like(logits)
        np.put_along_axis(targets, labels[..., None].astype(np.int64), 1, axis=-1)
    else:
        raise DataError(f"labels of shape {list(labels.shape)} ({labels.dtype}) do not fit logits "
                        f"of shape {list(logits.shape)}: give class indices or probabilities")
    rows = max(int(np.prod(logits.shape[:-1])), 1)
    loss = -float((targets * log_probs).sum()) / rows
    grad = (np.exp(log_probs) * targets.sum(axis=-1, keepdims=True) - targets) / rows
    return loss, grad.astype(logits.dtype, copy=False)


def logits_of(graph: Graph, output: Optional[ValueRef] = None) -> Value:
    """The value a loss should read for ``output`` (default: the first graph output): the
    input of a final Softmax over the last axis, else the output itself."""
    value = graph.outputs[0] if output is None else _resolve(graph, output)
    node = value.producer
    if node is not None and node.op == "Softmax":
        rank = None if value.shape is None else len(value.shape)
        axis = int(node.attrs.get("axis", -1 if node.opset >= 13 else 1))
        if rank is not None and axis % rank == rank - 1:
            return node.inputs[0]
    return value


def loss_and_gradients(graph: Graph, feeds: Mapping[str, np.ndarray], labels: np.ndarray,
                       wrt: Optional[Sequence[ValueRef]] = None, *,
                       tape: Optional[Tape] = None) -> tuple[float, dict[str, np.ndarray]]:
    """Softmax cross-entropy of the graph's first output against ``labels`` and its
    gradients with respect to ``wrt`` (default: every floating-point constant)."""
    tape = tape or Tape(graph)
    tape.run(feeds)
    logits = logits_of(graph)
    loss, grad = softmax_cross_entropy(tape.values[id(logits)], labels)
    if wrt is None:
        wrt = [v for v in graph.consts.values() if v.dtype is not None and v.dtype.kind == "f"]
    return loss, backward(tape, {logits: grad}, wrt)


def _resolve(graph: Graph, ref: ValueRef) -> Value:
    return graph.value(ref) if isinstance(ref, str) else ref


def _downstream(graph: Graph, sources: Sequence[Value]) -> set[int]:
    """Ids of the values that depend on any of ``sources`` (the sources included)."""
    reached = {id(v) for v in sources}
    for node in graph.nodes:
        if any(v is not None and id(v) in reached for v in node.inputs):
            reached.update(id(v) for v in node.outputs)
    return reached
