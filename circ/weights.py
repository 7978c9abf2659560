"""Which constants are layer weights, and how their axes are laid out.

Compression passes (prune, quant, cluster, huffman, ...) act on the weights of Conv,
ConvTranspose, Gemm and MatMul. :func:`weight_refs` finds them once, in graph order, with what
those passes need to know: the node and input index, conv or fc, and which axis of the array
holds the output channels (the axis per-channel scales and filter pruning run along).

Scope selection (the ``scope`` option of the passes): ``all``, ``conv`` (Conv and
ConvTranspose), ``fc`` (Gemm and MatMul), or a shell-style pattern matched against the node
name and the weight's value name (``scope=fc*``, ``scope=layer1.*``).
"""

from __future__ import annotations

import fnmatch
from typing import Optional

import attrs
import numpy as np

from circ.errors import PipelineError
from circ.graph import Graph, Node, Value

# op -> (weight input index, kind)
_LAYERS = {
    "Conv": (1, "conv"),
    "ConvTranspose": (1, "conv"),
    "Gemm": (1, "fc"),
    "MatMul": (1, "fc"),
}


@attrs.define(eq=False)
class WeightRef:
    """One weight constant and the layer that reads it."""

    node: Node
    index: int  # input index of the weight in ``node``
    value: Value
    kind: str  # "conv" or "fc"
    out_axis: int  # axis of the weight array that indexes output channels

    @property
    def name(self) -> str:
        """The layer's name, as tables and options show it."""
        return self.node.name or self.value.name

    @property
    def array(self) -> np.ndarray:
        return self.value.const.to_numpy()


def _out_axis(node: Node, weight: Value) -> int:
    if node.op == "Conv":
        return 0  # (M, C/group, kH, kW)
    if node.op == "ConvTranspose":
        return 1  # (C, M/group, kH, kW): output channels per group along axis 1
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1  # B is (N, K) when transposed
    return (weight.rank or 2) - 1  # MatMul: (..., K, N)


def _matmul_weight_index(node: Node) -> Optional[int]:
    """MatMul's constant operand: the right one (x @ W) — or None when it has none."""
    right = node.input(1)
    if right is not None and right.const is not None and (right.rank or 0) >= 2:
        return 1
    return None


def in_scope(ref: WeightRef, scope: str) -> bool:
    """Whether ``ref`` is selected by ``scope`` (all / conv / fc / a name pattern)."""
    if scope in ("all", "", None):
        return True
    if scope in ("conv", "fc"):
        return ref.kind == scope
    names = [ref.node.name, ref.value.name]
    return any(fnmatch.fnmatchcase(n, scope) for n in names if n)


def weight_refs(graph: Graph, scope: str = "all", *, float_only: bool = True) -> list[WeightRef]:
    """The weight constants of the graph's Conv/ConvTranspose/Gemm/MatMul layers, in order.

    A constant read by several layers is listed once (at its first layer). Weights that are not
    constants (computed at run time) are not listed; ``float_only`` skips integer weights.
    """
    refs: list[WeightRef] = []
    seen: set[int] = set()
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx") or node.op not in _LAYERS:
            continue
        index, kind = _LAYERS[node.op]
        if node.op == "MatMul":
            index = _matmul_weight_index(node)
            if index is None:
                continue
        weight = node.input(index)
        if weight is None or weight.const is None or id(weight) in seen:
            continue
        if float_only and weight.const.dtype.kind != "f":
            continue
        seen.add(id(weight))
        ref = WeightRef(node, index, weight, kind, _out_axis(node, weight))
        if in_scope(ref, scope):
            refs.append(ref)
    return refs


def parse_layer_values(text: str, option: str, pass_name: str, convert=float) -> list[tuple[str, object]]:
    """Per-layer overrides written ``pattern:value;pattern:value`` -> ``[(pattern, value)]``.

    A pattern is what ``scope`` accepts (``conv``, ``fc``, a node or weight name, a shell
    pattern such as ``layer1.*``); the value is the text after the last ``:``. The first
    pattern that matches a layer wins. Raises PipelineError naming the option on bad text.
    """
    overrides = []
    where = f"option {option!r} of pass {pass_name!r}"
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        pattern, colon, raw = item.rpartition(":")
        if not colon or not pattern.strip():
            raise PipelineError(f"{where}: expected pattern:value, got {item!r}")
        try:
            value = convert(raw.strip())
        except ValueError:
            raise PipelineError(f"{where}: bad value {raw.strip()!r} for {pattern!r}") from None
        overrides.append((pattern.strip(), value))
    return overrides


def override_for(ref: WeightRef, overrides: list, default):
    """The value of the first ``(pattern, value)`` override whose pattern selects ``ref``."""
    for pattern, value in overrides:
        if in_scope(ref, pattern):
            return value
    return default


def select_layers(graph: Graph, scope: str, overrides: list, ctx) -> list[WeightRef]:
    """:func:`weight_refs` in ``scope`` for a pass; records a decline (through ``ctx``) when
    nothing is in scope and for each override pattern that selects no layer."""
    refs = weight_refs(graph, scope)
    for node in foldable_weight_layers(graph):
        ctx.decline(node, "its weight is computed from constants at run time: run fold_constants first")
    if not refs:
        ctx.decline(None, f"no Conv/ConvTranspose/Gemm/MatMul weight constants in scope {scope!r}")
    for pattern, _ in overrides:
        if not any(in_scope(ref, pattern) for ref in refs):
            ctx.decline(None, f"layers pattern {pattern!r} matches no selected layer")
    return refs


def foldable_weight_layers(graph: Graph) -> list[Node]:
    """Layers whose weight input is not a constant but is computed only from constants (e.g.
    ``Transpose(W)``, the model zoo's ``ConstantOfShape``): fold_constants would make it one."""
    layers = []
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx") or node.op not in _LAYERS:
            continue
        weight = node.input(_LAYERS[node.op][0])
        producer = weight.producer if weight is not None else None
        if producer is not None and all(v is None or v.const is not None for v in producer.inputs):
            layers.append(node)
    return layers
