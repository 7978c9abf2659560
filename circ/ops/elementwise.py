"""Elementwise ops with NumPy broadcasting: arithmetic, variadic, unary math, comparisons.

ONNX before opset 7 used ``broadcast``/``axis`` attributes for limited broadcasting; circ
imports opset 7 and later, where broadcasting is NumPy's, so the kernels are NumPy's own.
"""

from __future__ import annotations

import numpy as np

from circ.ops.registry import (TensorType, broadcast_shapes, gradient, kernel, same_as_input,
                               shape_rule)

_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Pow": np.power,
}
_COMPARE = {
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}
_UNARY = {
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Exp": np.exp,
    "Log": np.log,
    "Reciprocal": np.reciprocal,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.round,  # ONNX rounds half to even, as NumPy does
    "Sign": np.sign,
    "Sin": np.sin,
    "Cos": np.cos,
    "Not": np.logical_not,
}


def _sym_binary(op, a, b):
    """Shape arithmetic on known contents (e.g. batch * channels) when both sides are ints."""
    if a.sym is None and a.const is None or b.sym is None and b.const is None:
        return None
    from circ.ops.registry import known_ints

    left, right = known_ints(a), known_ints(b)
    if left is None or right is None or len(left) > 8 or len(right) > 8:
        return None
    if len(left) != len(right):
        if len(left) == 1:
            left = left * len(right)
        elif len(right) == 1:
            right = right * len(left)
        else:
            return None
    out = []
    for x, y in zip(left, right):
        if not (isinstance(x, int) and isinstance(y, int)):
            return None
        out.append(int(op(x, y)) if op is not np.divide else x // y if y else None)
    return tuple(out) if None not in out else None


@shape_rule("Add", "Sub", "Mul", "Div", "Pow")
def _binary_shape(node):
    a, b = node.inputs[0], node.inputs[1]
    sym = None
    if a.dtype is not None and a.dtype.kind in "iu" and node.op != "Pow":
        sym = _sym_binary(_BINARY.get(node.op, np.divide), a, b)
    return [TensorType(a.dtype, broadcast_shapes(a.shape, b.shape), sym)]


@kernel("Add", "Sub", "Mul", "Pow")
def _binary(node, a, b):
    out = _BINARY[node.op](a, b)
    return out.astype(a.dtype, copy=False)


@kernel("Div")
def _div(node, a, b):
    if a.dtype.kind in "iu":
        # ONNX integer division truncates toward zero (C semantics), unlike NumPy's floor.
        return (np.trunc(a / b)).astype(a.dtype)
    return np.divide(a, b).astype(a.dtype, copy=False)


def sum_to_shape(grad: np.ndarray, shape) -> np.ndarray:
    """``grad`` summed over the axes broadcasting added or stretched, so it has ``shape``
    (the gradient of a broadcast operand)."""
    shape = tuple(shape)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(axis for axis, dim in enumerate(shape) if dim == 1 and grad.shape[axis] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


@gradient("Add", "Sub", "Mul", "Div")
def _binary_grad(node, inputs, outputs, grad_outputs):
    a, b = inputs
    grad = grad_outputs[0]
    if node.op == "Add":
        grads = grad, grad
    elif node.op == "Sub":
        grads = grad, -grad
    elif node.op == "Mul":
        grads = grad * b, grad * a
    else:
        grads = grad / b, -grad * a / (b * b)
    return [sum_to_shape(g, x.shape) for g, x in zip(grads, (a, b))]


@shape_rule("Sum", "Max", "Min", "Mean")
def _variadic_shape(node):
    first = node.inputs[0]
    return [TensorType(first.dtype, broadcast_shapes(*[v.shape for v in node.inputs]))]


@kernel("Sum", "Max", "Min", "Mean")
def _variadic(node, *arrays):
    reduce = {"Sum": np.add, "Max": np.maximum, "Min": np.minimum, "Mean": np.add}[node.op]
    out = arrays[0]
    for other in arrays[1:]:
        out = reduce(out, other)
    if node.op == "Mean":
        out = out / len(arrays)
    return np.asarray(out).astype(arrays[0].dtype, copy=False)


@shape_rule(*_COMPARE)
def _compare_shape(node):
    a, b = node.inputs[0], node.inputs[1]
    return [TensorType(np.bool_, broadcast_shapes(a.shape, b.shape))]


@kernel(*_COMPARE)
def _compare(node, a, b):
    return _COMPARE[node.op](a, b)


shape_rule(*_UNARY)(same_as_input(0))


@kernel(*_UNARY)
def _unary(node, x):
    return _UNARY[node.op](x).astype(x.dtype, copy=False)


_UNARY_DERIVATIVES = {
    "Neg": lambda x, y: -np.ones_like(x),
    "Abs": lambda x, y: np.sign(x),
    "Sqrt": lambda x, y: 0.5 / y,
    "Exp": lambda x, y: y,
    "Log": lambda x, y: 1 / x,
    "Reciprocal": lambda x, y: -y * y,
}


@gradient(*_UNARY_DERIVATIVES)
def _unary_grad(node, inputs, outputs, grad_outputs):
    return [grad_outputs[0] * _UNARY_DERIVATIVES[node.op](inputs[0], outputs[0])]


@shape_rule("Where")
def _where_shape(node):
    cond, a, b = node.inputs
    return [TensorType(a.dtype, broadcast_shapes(cond.shape, a.shape, b.shape))]


@kernel("Where")
def _where(node, cond, a, b):
    return np.where(cond, a, b)
