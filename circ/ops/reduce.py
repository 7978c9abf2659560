"""Reductions: ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceSumSquare, and ArgMax ArgMin.

``axes`` is an attribute until opset 13 for ReduceSum and until opset 18 for the others, then
an optional input; :func:`attr_or_input` reads both. With no axes every axis is reduced, unless
``noop_with_empty_axes`` is set, which makes the op an identity.
"""

from __future__ import annotations

import numpy as np

from circ.dtypes import INT64
from circ.ops.registry import (
    TensorType, attr_or_input, kernel, kernel_arg, normalize_axis, shape_rule,
)


def _extreme(dtype, highest: bool):
    """The identity of max (``highest=False``) or min over ``dtype``: what an empty set reduces to."""
    if dtype.kind == "f":
        return np.inf if highest else -np.inf
    if dtype.kind == "b":
        return highest
    info = np.iinfo(dtype)
    return info.max if highest else info.min


def _logsumexp(x, axis, keepdims):
    # shift by the maximum so exp never overflows
    peak = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    peak = np.where(np.isfinite(peak), peak, 0)
    with np.errstate(divide="ignore"):  # an empty set sums to 0, whose log is -inf
        out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axis)


def _log_sum(x, axis, keepdims):
    with np.errstate(divide="ignore"):
        return np.log(np.sum(x, axis=axis, keepdims=keepdims))


_REDUCE = {
    "ReduceMean": lambda x, axis, keep: np.mean(x, axis=axis, keepdims=keep),
    "ReduceSum": lambda x, axis, keep: np.sum(x, axis=axis, keepdims=keep),
    "ReduceMax": lambda x, axis, keep: np.max(x, axis=axis, keepdims=keep, initial=_extreme(x.dtype, False)),
    "ReduceMin": lambda x, axis, keep: np.min(x, axis=axis, keepdims=keep, initial=_extreme(x.dtype, True)),
    "ReduceProd": lambda x, axis, keep: np.prod(x, axis=axis, keepdims=keep),
    "ReduceL1": lambda x, axis, keep: np.sum(np.abs(x), axis=axis, keepdims=keep),
    "ReduceL2": lambda x, axis, keep: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keep)),
    "ReduceSumSquare": lambda x, axis, keep: np.sum(np.square(x), axis=axis, keepdims=keep),
    "ReduceLogSum": _log_sum,
    "ReduceLogSumExp": _logsumexp,
}


def _reduced_axes(axes, rank, noop) -> tuple | None:
    """Normalized axes to reduce; () for an identity; None for all axes."""
    if axes is None or len(axes) == 0:
        return () if noop else None
    return tuple(sorted({normalize_axis(int(a), rank) for a in axes}))


@shape_rule(*_REDUCE)
def _reduce_shape(node):
    x = node.inputs[0]
    keepdims = int(node.attrs.get("keepdims", 1))
    noop = int(node.attrs.get("noop_with_empty_axes", 0))
    axes = attr_or_input(node, "axes", 1)
    if axes is None and node.input(1) is not None:  # an axes input not known before running
        unknown = None if x.shape is None or not keepdims else (None,) * len(x.shape)
        return [TensorType(x.dtype, unknown)]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    reduced = _reduced_axes(axes, rank, noop)
    if reduced is None:
        reduced = tuple(range(rank))
    if keepdims:
        out = [1 if i in reduced else d for i, d in enumerate(x.shape)]
    else:
        out = [d for i, d in enumerate(x.shape) if i not in reduced]
    return [TensorType(x.dtype, out)]


@kernel(*_REDUCE)
def _reduce(node, x, axes=None):
    keepdims = bool(int(node.attrs.get("keepdims", 1)))
    noop = int(node.attrs.get("noop_with_empty_axes", 0))
    axes = kernel_arg(node, "axes", axes)
    if axes is not None and np.ndim(axes) == 0:
        axes = [axes]
    reduced = _reduced_axes(axes, x.ndim, noop)
    if reduced == ():
        return x
    out = _REDUCE[node.op](x, reduced, keepdims)
    return np.asarray(out).astype(x.dtype, copy=False)


# ------------------------------------------------------------------ ArgMax, ArgMin


@shape_rule("ArgMax", "ArgMin")
def _arg_shape(node):
    x = node.inputs[0]
    if x.shape is None:
        return [TensorType(INT64, None)]
    axis = normalize_axis(int(node.attrs.get("axis", 0)), len(x.shape))
    out = list(x.shape)
    if int(node.attrs.get("keepdims", 1)):
        out[axis] = 1
    else:
        del out[axis]
    return [TensorType(INT64, out)]


@kernel("ArgMax", "ArgMin")
def _arg(node, x):
    axis = normalize_axis(int(node.attrs.get("axis", 0)), x.ndim)
    pick = np.argmax if node.op == "ArgMax" else np.argmin
    if int(node.attrs.get("select_last_index", 0)):
        out = x.shape[axis] - 1 - pick(np.flip(x, axis=axis), axis=axis)
    else:
        out = pick(x, axis=axis)
    if int(node.attrs.get("keepdims", 1)):
        out = np.expand_dims(out, axis)
    return out.astype(np.int64)
