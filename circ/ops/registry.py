"""The op table: for each ONNX op, its shape/dtype rule, its NumPy kernel and (later) its gradient.

An op module registers its pieces next to each other::

    @shape_rule("Relu")
    def _relu_shape(node):
        x = node.inputs[0]
        return [TensorType(x.dtype, x.shape)]

    @kernel("Relu")
    def _relu(node, x):
        return np.maximum(x, 0)

A shape rule receives the :class:`~circ.graph.Node` (its inputs carry dtype, shape, and for
constants ``const``) and returns one :class:`TensorType` per output. It raises
:class:`ShapeError` with a plain message when the inputs do not fit; the caller adds the node.

A kernel receives the node and the input arrays (``None`` for an omitted optional input) and
returns an array, or a tuple of arrays for a multi-output op.

A gradient (``@gradient("Relu")``, next to the kernel) is the op's reverse-mode rule::

    grad(node, inputs, outputs, grad_outputs) -> list[array | None]

``inputs`` are the forward input arrays (``None`` for an omitted optional input), ``outputs``
the forward results, ``grad_outputs`` one gradient per output (zeros for an output nothing
reads). It returns one gradient per input, shaped like that input (broadcast operands summed
back to their shape), or ``None`` for an input with no gradient (shapes, axes, indices).
:func:`circ.autodiff.backward` calls it; see that module for the graph-level pass.
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs
import numpy as np


class ShapeError(Exception):
    """Inputs of a node do not fit its op's shape rule (turned into a ModelError by callers)."""


@attrs.define(eq=False)
class TensorType:
    """What a shape rule says about one output: dtype, shape and optional known contents."""

    dtype: Optional[np.dtype] = attrs.field(converter=attrs.converters.optional(np.dtype))
    shape: Optional[tuple] = attrs.field(converter=lambda s: None if s is None else tuple(s))
    sym: Optional[tuple] = None


@attrs.define(eq=False)
class OpDef:
    """Everything circ knows about one op, found in one place."""

    name: str
    domain: str = ""
    shape: Optional[Callable] = None
    kernel: Optional[Callable] = None
    gradient: Optional[Callable] = None


OPS: dict[tuple[str, str], OpDef] = {}


def _normalize_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def get_op(op: str, domain: str = "") -> Optional[OpDef]:
    """The registered definition of ``op`` in ``domain``, or None for an unknown (opaque) op."""
    return OPS.get((_normalize_domain(domain), op))


def _entry(name: str, domain: str) -> OpDef:
    key = (_normalize_domain(domain), name)
    if key not in OPS:
        OPS[key] = OpDef(name, key[0])
    return OPS[key]


def shape_rule(*names: str, domain: str = ""):
    """Register the decorated function as the shape rule of ``names``."""

    def register(fn):
        for name in names:
            _entry(name, domain).shape = fn
        return fn

    return register


def kernel(*names: str, domain: str = ""):
    """Register the decorated function as the NumPy kernel of ``names``."""

    def register(fn):
        for name in names:
            _entry(name, domain).kernel = fn
        return fn

    return register


def gradient(*names: str, domain: str = ""):
    """Register the decorated function as the reverse-mode gradient of ``names``."""

    def register(fn):
        for name in names:
            _entry(name, domain).gradient = fn
        return fn

    return register


# ------------------------------------------------------------------ helpers for shape rules


def same_as_input(index: int = 0):
    """A shape rule whose single output has the type of input ``index``."""

    def rule(node):
        x = node.inputs[index]
        return [TensorType(x.dtype, x.shape)]

    return rule


def known_ints(value) -> Optional[list]:
    """Contents of a 1-D (or scalar) integer input known before running: a constant's values,
    or the symbolic contents shape inference derived (ints and symbolic-dim strings).
    None when unknown."""
    if value is None:
        return None
    if value.const is not None:
        return [int(v) for v in np.asarray(value.const.to_numpy()).reshape(-1)]
    if value.sym is not None:
        return list(value.sym)
    return None


def known_array(value) -> Optional[np.ndarray]:
    """A constant input's array, or None when it is not a constant."""
    if value is None or value.const is None:
        return None
    return value.const.to_numpy()


def attr_or_input(node, attr: str, index: int, default=None):
    """An argument that is an attribute in old opsets and an input in new ones (Squeeze axes,
    Split sizes, Pad pads, ...), as a list of ints; ``default`` when absent; None when it is an
    input whose value is not known before running."""
    if attr in node.attrs:
        value = node.attrs[attr]
        return list(value) if isinstance(value, (list, tuple, np.ndarray)) else value
    if index < len(node.inputs) and node.inputs[index] is not None:
        return known_ints(node.inputs[index])
    return default


def kernel_arg(node, attr: str, array, default=None):
    """The kernel-side twin of :func:`attr_or_input`: attribute value, input array, or default."""
    if attr in node.attrs:
        return node.attrs[attr]
    if array is not None:
        return np.asarray(array).reshape(-1).tolist() if np.ndim(array) else np.asarray(array).item()
    return default


def normalize_axis(axis: int, rank: int, node=None) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def dims_equal(a, b) -> bool:
    """True when two dims may be equal (unknown matches anything)."""
    return a is None or b is None or a == b


def broadcast_shapes(*shapes) -> Optional[tuple]:
    """NumPy-style multidirectional broadcasting over dims that may be symbolic or unknown."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        dims = [s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0]
        result = 1
        for d in dims:
            if d == 1:
                continue
            if result == 1:
                result = d
            elif d is None or result is None:
                result = result if d is None else d
            elif d != result:
                if isinstance(d, str) or isinstance(result, str):
                    # symbolic vs other: trust the concrete one, runtime checks the rest
                    result = result if isinstance(d, str) else d
                else:
                    raise ShapeError(f"shapes {' and '.join(map(str, shapes))} do not broadcast")
        out.append(result)
    return tuple(out)


def dim_product(dims) -> object:
    """Product of dims: an int when all are ints, else None."""
    total = 1
    for d in dims:
        if not isinstance(d, (int, np.integer)):
            return None
        total *= int(d)
    return total
