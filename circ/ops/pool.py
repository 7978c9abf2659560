"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool over any spatial rank.

Windows follow the same geometry as Conv (:func:`circ.ops.conv.window`: pads, auto_pad,
strides, dilations, ceil_mode). The kernels reduce over kernel taps one spatial axis at a
time, one strided slice of the padded input per tap, which keeps NumPy on long inner loops
and memory at the size of the input.
"""

from __future__ import annotations

import itertools

import numpy as np

from circ.ops.conv import Window, fit_windows, tap_slices, window, windows_view
from circ.ops.registry import ShapeError, TensorType, gradient, kernel, shape_rule


def _kernel_dims(node) -> tuple:
    dims = node.attrs.get("kernel_shape")
    if not dims:
        raise ShapeError(f"{node.op} needs the kernel_shape attribute")
    return tuple(int(k) for k in dims)


def _pool_window(node, in_dims) -> Window:
    dims = _kernel_dims(node)
    if len(dims) != len(in_dims):
        raise ShapeError(f"kernel_shape {list(dims)} does not match {len(in_dims)} spatial axes")
    return window(node, in_dims, dims, ceil_mode=bool(node.attrs.get("ceil_mode", 0)))


@shape_rule("MaxPool", "AveragePool")
def _pool_shape(node):
    x = node.inputs[0]
    if x.shape is None:
        shape = None
    elif len(x.shape) < 3:
        raise ShapeError(f"{node.op} input must be (N, C, spatial...), got rank {len(x.shape)}")
    else:
        shape = x.shape[:2] + _pool_window(node, x.shape[2:]).out_dims
    types = [TensorType(x.dtype, shape)]
    if node.op == "MaxPool" and len(node.outputs) > 1:
        types.append(TensorType(np.int64, shape))  # Indices
    return types


def _run_window(node, x) -> Window:
    try:
        return _pool_window(node, x.shape[2:])
    except ShapeError as err:
        raise ValueError(str(err)) from None


def _reduce_windows(padded: np.ndarray, win: Window, combine) -> np.ndarray:
    """Max or sum over every window of a padded input, one spatial axis at a time (both are
    separable), so each axis costs ``kernel`` passes over a shrinking array instead of
    ``prod(kernel)`` passes over the output. ``combine`` is ``np.maximum`` or ``np.add``."""
    result = padded
    for axis in range(len(win.kernel)):
        stride, dilation, out = win.strides[axis], win.dilations[axis], win.out_dims[axis]
        before = (slice(None),) * (2 + axis)
        reduced = None
        for tap in range(win.kernel[axis]):
            start = tap * dilation
            piece = result[before + (slice(start, start + (out - 1) * stride + 1, stride),)]
            if reduced is None:
                reduced = piece.copy(order="K")  # a channels-last input stays channels-last
            else:
                combine(reduced, piece, out=reduced)
        result = reduced
    return result


@kernel("MaxPool")
def _max_pool(node, x):
    win = _run_window(node, x)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    padded = fit_windows(x, win, lowest)
    if len(node.outputs) > 1:
        return _max_pool_with_indices(x, padded, win, int(node.attrs.get("storage_order", 0)))
    return _reduce_windows(padded, win, np.maximum)


def _max_pool_with_indices(x, padded, win: Window, storage_order: int):
    """MaxPool's values and Indices: the flat index into ``x`` of each window's first
    maximum, over (N, C, spatial...) in row-major order, or with the spatial axes in
    column-major order when ``storage_order`` is 1."""
    batch, channels = x.shape[:2]
    taps = int(np.prod(win.kernel))
    windows = windows_view(padded, win).reshape((batch, channels, taps) + win.out_dims)
    best = windows.argmax(axis=2)
    values = np.take_along_axis(windows, best[:, :, None], axis=2)[:, :, 0]
    tap_coords = np.unravel_index(best, win.kernel)
    spatial = x.shape[2:]
    positions = []
    for axis, coord in enumerate(tap_coords):
        grid_shape = [1] * len(spatial)
        grid_shape[axis] = win.out_dims[axis]
        starts = np.arange(win.out_dims[axis]).reshape(grid_shape) * win.strides[axis]
        positions.append(starts + coord * win.dilations[axis] - win.pads_begin[axis])
    order = "C" if storage_order == 0 else "F"
    within = np.ravel_multi_index(positions, spatial, order=order)
    plane = np.arange(batch * channels).reshape(batch, channels, *([1] * len(spatial)))
    return values, (plane * int(np.prod(spatial)) + within).astype(np.int64)


@kernel("AveragePool")
def _average_pool(node, x):
    win = _run_window(node, x)
    out = _reduce_windows(fit_windows(x, win, 0), win, np.add)
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    out /= _window_counts(win, x.shape[2:], include_pad).astype(out.dtype)
    return out


def _scatter_taps(x, win: Window, per_tap) -> np.ndarray:
    """Gradient of a pooling input: ``per_tap(index, tap)`` is what each output position sends
    to the element kernel tap ``tap`` meets; summed over taps into the padded input, then the
    padding is cropped away."""
    grad_padded = np.zeros(fit_windows(x, win).shape, dtype=x.dtype)
    taps = itertools.product(*(range(k) for k in win.kernel))
    for index, tap in enumerate(taps):
        grad_padded[tap_slices(win, tap)] += per_tap(index, tap)
    return grad_padded[(slice(None), slice(None)) + tuple(
        slice(b, b + s) for b, s in zip(win.pads_begin, x.shape[2:]))]


@gradient("MaxPool")
def _max_pool_grad(node, inputs, outputs, grad_outputs):
    """Each window's gradient goes to its first maximum (the element the forward pass picked
    under ties, as in PyTorch). The maxima are the forward output, so each tap finds its
    windows by comparing its slice with the output, in tap order, skipping windows an
    earlier tap took; no argmax over a window view is needed. (A window whose maximum is
    NaN passes no gradient.)"""
    x, grad = inputs[0], grad_outputs[0]
    maxima = outputs[0]
    win = _run_window(node, x)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    padded = fit_windows(x, win, lowest)
    grad = grad.astype(np.result_type(x.dtype, grad.dtype), copy=False)
    grad_padded = np.zeros_like(padded, dtype=grad.dtype)  # keeps padded's memory order
    # windows that share no input element (stride at least the window's extent) each write
    # their own slice; otherwise the taps' shares add up
    disjoint = all(s >= e for s, e in zip(win.strides, win.effective_kernel))
    finite = bool(np.isfinite(grad).all()) if grad.dtype.kind == "f" else True
    hit = np.empty(maxima.shape, dtype=bool)
    free = None  # windows no earlier tap has taken (None: all of them)
    taps = list(itertools.product(*(range(k) for k in win.kernel)))
    for index, tap in enumerate(taps):
        where = tap_slices(win, tap)
        np.equal(padded[where], maxima, out=hit)
        if free is None:
            free = ~hit
        else:
            hit &= free
            if index + 1 < len(taps):
                free ^= hit  # hit is within free: this clears the windows just taken
        # A multiply by the mask is the fastest way to pick (masked copies mispredict on a
        # random mask), and exact unless the gradient has inf or NaN (0 * inf is NaN).
        if not finite:
            share = np.where(hit, grad, 0)
        elif disjoint:
            np.multiply(grad, hit, out=grad_padded[where])
            continue
        else:
            share = grad * hit
        if disjoint:
            grad_padded[where] = share
        else:
            grad_padded[where] += share
    return [grad_padded[(slice(None), slice(None)) + tuple(
        slice(b, b + s) for b, s in zip(win.pads_begin, x.shape[2:]))]]


@gradient("AveragePool")
def _average_pool_grad(node, inputs, outputs, grad_outputs):
    x = inputs[0]
    win = _run_window(node, x)
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    share = grad_outputs[0] / _window_counts(win, x.shape[2:], include_pad).astype(x.dtype)
    return [_scatter_taps(x, win, lambda index, tap: share)]


def _window_counts(win: Window, in_dims, include_pad: bool) -> np.ndarray:
    """How many taps of each window fall on input elements (or on pads too, with
    ``include_pad``), as an array broadcasting over the output. Never on the extra padding
    ceil_mode adds past the pads: onnxruntime divides by the part inside the padded input."""
    counts = np.ones((1, 1), dtype=np.float64)
    for axis, size in enumerate(in_dims):
        begin, end = win.pads_begin[axis], win.pads_end[axis]
        low, high = (-begin, size + end) if include_pad else (0, size)
        starts = np.arange(win.out_dims[axis]) * win.strides[axis] - begin
        positions = starts[:, None] + np.arange(win.kernel[axis]) * win.dilations[axis]
        per_axis = ((positions >= low) & (positions < high)).sum(axis=1)
        counts = counts[..., None] * per_axis
    return counts


@shape_rule("GlobalAveragePool", "GlobalMaxPool")
def _global_pool_shape(node):
    x = node.inputs[0]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    if len(x.shape) < 3:
        raise ShapeError(f"{node.op} input must be (N, C, spatial...), got rank {len(x.shape)}")
    return [TensorType(x.dtype, x.shape[:2] + (1,) * (len(x.shape) - 2))]


@kernel("GlobalAveragePool")
def _global_average_pool(node, x):
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=x.dtype)


@kernel("GlobalMaxPool")
def _global_max_pool(node, x):
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@gradient("GlobalAveragePool")
def _global_average_pool_grad(node, inputs, outputs, grad_outputs):
    x = inputs[0]
    size = int(np.prod(x.shape[2:]))
    return [np.broadcast_to(grad_outputs[0] / size, x.shape).astype(x.dtype)]
