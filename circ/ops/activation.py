"""Activations: Relu LeakyRelu PRelu Sigmoid Tanh Clip Softmax LogSoftmax Hardmax Elu Selu Celu
ThresholdedRelu HardSigmoid HardSwish Softplus Softsign Gelu Erf Mish.

Kernels compute in the input's dtype and use the numerically stable forms: softmax subtracts
the row maximum, sigmoid and softplus never exponentiate a large positive number.
"""

from __future__ import annotations

import math

import numpy as np

from circ.ops.registry import (
    ShapeError, TensorType, broadcast_shapes, gradient, kernel, kernel_arg, normalize_axis, same_as_input, shape_rule,
)

try:  # SciPy is optional; its erf is vectorized C, the fallback is a Python loop
    from scipy.special import erf as _erf_impl
except ImportError:  # pragma: no cover - depends on the environment
    _erf_impl = np.vectorize(math.erf, otypes=[np.float64])


def _attr(node, name, default):
    return float(node.attrs.get(name, default))


def _same_dtype(fn):
    """Wrap a float kernel so its result keeps the input's dtype."""

    def run(node, x, *rest):
        return np.asarray(fn(node, x, *rest)).astype(x.dtype, copy=False)

    return run


def _sigmoid(x):
    # exp(-|x|) never overflows; both branches are the same function for their sign of x
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x):
    return np.logaddexp(np.zeros((), dtype=x.dtype), x)


def erf(x):
    """The error function, elementwise, in the input's dtype."""
    return np.asarray(_erf_impl(x)).astype(np.asarray(x).dtype, copy=False)


_SIMPLE = {
    "Relu": lambda node, x: np.maximum(x, 0),
    "LeakyRelu": lambda node, x: np.where(x >= 0, x, x * _attr(node, "alpha", 0.01)),
    "Sigmoid": lambda node, x: _sigmoid(x),
    "Tanh": lambda node, x: np.tanh(x),
    "Elu": lambda node, x: np.where(x > 0, x, _attr(node, "alpha", 1.0) * np.expm1(np.minimum(x, 0))),
    "Selu": lambda node, x: _attr(node, "gamma", 1.05070102214813232421875) * np.where(
        x > 0, x, _attr(node, "alpha", 1.67326319217681884765625) * np.expm1(np.minimum(x, 0))),
    "Celu": lambda node, x: np.maximum(x, 0) + np.minimum(
        0, _attr(node, "alpha", 1.0) * np.expm1(np.minimum(x, 0) / _attr(node, "alpha", 1.0))),
    "ThresholdedRelu": lambda node, x: np.where(x > _attr(node, "alpha", 1.0), x, 0),
    "HardSigmoid": lambda node, x: np.clip(_attr(node, "alpha", 0.2) * x + _attr(node, "beta", 0.5), 0, 1),
    "HardSwish": lambda node, x: x * np.clip(x / 6 + 0.5, 0, 1),
    "Softplus": lambda node, x: _softplus(x),
    "Softsign": lambda node, x: x / (1 + np.abs(x)),
    "Erf": lambda node, x: erf(x),
    "Mish": lambda node, x: x * np.tanh(_softplus(x)),
    "Gelu": lambda node, x: _gelu(node, x),
}


def _gelu(node, x):
    approximate = node.attrs.get("approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


shape_rule(*_SIMPLE)(same_as_input(0))


@kernel(*_SIMPLE)
@_same_dtype
def _simple(node, x):
    return _SIMPLE[node.op](node, x)


_SIMPLE_DERIVATIVES = {
    "Relu": lambda node, x, y: (x > 0).astype(x.dtype),
    "LeakyRelu": lambda node, x, y: np.where(x >= 0, 1.0, _attr(node, "alpha", 0.01)),
    "Sigmoid": lambda node, x, y: y * (1 - y),
    "Tanh": lambda node, x, y: 1 - y * y,
}


@gradient(*_SIMPLE_DERIVATIVES)
def _simple_grad(node, inputs, outputs, grad_outputs):
    return [grad_outputs[0] * _SIMPLE_DERIVATIVES[node.op](node, inputs[0], outputs[0])]


# ------------------------------------------------------------------ PRelu


@shape_rule("PRelu")
def _prelu_shape(node):
    x, slope = node.inputs[0], node.inputs[1]
    out = broadcast_shapes(x.shape, slope.shape)
    if out is not None and x.shape is not None and len(out) != len(x.shape):
        raise ShapeError(f"slope {list(slope.shape)} has more dims than the input {list(x.shape)}")
    return [TensorType(x.dtype, x.shape if x.shape is not None else out)]


@kernel("PRelu")
@_same_dtype
def _prelu(node, x, slope):
    """The slope broadcasts unidirectionally to the input (NumPy rules, from opset 7)."""
    return np.where(x >= 0, x, x * slope)


# ------------------------------------------------------------------ Clip


shape_rule("Clip")(same_as_input(0))


@kernel("Clip")
def _clip(node, x, low=None, high=None):
    low = kernel_arg(node, "min", low)
    high = kernel_arg(node, "max", high)
    out = x
    if low is not None:
        out = np.maximum(out, np.asarray(low).astype(x.dtype))
    if high is not None:
        out = np.minimum(out, np.asarray(high).astype(x.dtype))
    return out.astype(x.dtype, copy=False)


@gradient("Clip")
def _clip_grad(node, inputs, outputs, grad_outputs):
    x = inputs[0]
    low = kernel_arg(node, "min", inputs[1] if len(inputs) > 1 else None)
    high = kernel_arg(node, "max", inputs[2] if len(inputs) > 2 else None)
    inside = np.ones(x.shape, dtype=bool)
    if low is not None:
        inside &= x >= low
    if high is not None:
        inside &= x <= high
    return [grad_outputs[0] * inside] + [None] * (len(inputs) - 1)


# ------------------------------------------------------------------ Softmax family


def _softmax_axes(node, rank):
    """Axes Softmax normalizes over: before opset 13 the input is viewed as 2-D at ``axis``
    (default 1) and every axis from there on is reduced; from 13 on, only ``axis`` (default -1)."""
    if node.opset < 13:
        axis = int(node.attrs.get("axis", 1))
        if not -rank <= axis <= rank:
            raise ShapeError(f"axis {axis} is out of range for rank {rank}")
        axis = axis + rank if axis < 0 else axis
        return tuple(range(axis, rank))
    return (normalize_axis(int(node.attrs.get("axis", -1)), rank),)


@shape_rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax_shape(node):
    x = node.inputs[0]
    if x.shape is not None:
        _softmax_axes(node, len(x.shape))
    return [TensorType(x.dtype, x.shape)]


@kernel("Softmax", "LogSoftmax")
@_same_dtype
def _softmax(node, x):
    axes = _softmax_axes(node, x.ndim)
    shifted = x - np.max(x, axis=axes, keepdims=True)
    if node.op == "LogSoftmax":
        return shifted - np.log(np.sum(np.exp(shifted), axis=axes, keepdims=True))
    e = np.exp(shifted)
    return e / np.sum(e, axis=axes, keepdims=True)


@gradient("Softmax", "LogSoftmax")
def _softmax_grad(node, inputs, outputs, grad_outputs):
    axes = _softmax_axes(node, inputs[0].ndim)
    y, grad = outputs[0], grad_outputs[0]
    if node.op == "LogSoftmax":
        return [grad - np.exp(y) * grad.sum(axis=axes, keepdims=True)]
    return [y * (grad - (grad * y).sum(axis=axes, keepdims=True))]


@kernel("Hardmax")
def _hardmax(node, x):
    axes = _softmax_axes(node, x.ndim)
    moved = np.moveaxis(x, axes, list(range(x.ndim - len(axes), x.ndim)))
    rows = moved.reshape(moved.shape[: x.ndim - len(axes)] + (-1,))
    one_hot = np.zeros_like(rows)
    np.put_along_axis(one_hot, np.argmax(rows, axis=-1)[..., None], 1, axis=-1)  # first maximum wins
    return np.moveaxis(one_hot.reshape(moved.shape), list(range(x.ndim - len(axes), x.ndim)), axes)
