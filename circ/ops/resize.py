"""Resize and Upsample: nearest, linear and cubic, every coordinate transformation mode;
not tf_crop_and_resize, not antialiased downsampling (refused, naming the node)."""

from __future__ import annotations

import math

import numpy as np

from circ.errors import ModelError
from circ.ops.registry import (
    ShapeError, TensorType, kernel, normalize_axis, shape_rule,
)
from circ.ops.tensor import attr_text, static_array


# ------------------------------------------------------------------ Resize, Upsample
#
# Resize is separable: each resized axis is interpolated on its own, which for "linear" is the
# N-linear interpolation ONNX defines. Coordinates are computed in float32 as onnxruntime does,
# so nearest-neighbour picks agree with it at rounding ties.


def _resize_args(node, args):
    """(scales, sizes) as lists or None, from attributes or inputs depending on op and opset."""
    if node.op == "Upsample" and "scales" in node.attrs:
        return list(node.attrs["scales"]), None
    if node.op == "Upsample" or node.opset == 10:
        scales = args[0] if args else None
        return (None if scales is None else np.asarray(scales).reshape(-1).tolist()), None
    scales = args[1] if len(args) > 1 else None
    sizes = args[2] if len(args) > 2 else None
    scales = None if scales is None or np.size(scales) == 0 else np.asarray(scales).reshape(-1).tolist()
    sizes = None if sizes is None or np.size(sizes) == 0 else np.asarray(sizes).reshape(-1).tolist()
    return scales, sizes


def _resize_plan(node, in_shape, scales, sizes):
    """Output dims and the per-axis scale the coordinate transform uses."""
    rank = len(in_shape)
    axes = [normalize_axis(int(a), rank) for a in node.attrs.get("axes", range(rank))]
    out, used = list(in_shape), [1.0] * rank
    if sizes is not None:
        if len(sizes) != len(axes):
            raise ShapeError(f"sizes {sizes} do not match {len(axes)} axes")
        policy = attr_text(node, "keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            for axis, size in zip(axes, sizes):
                out[axis] = int(size)
                used[axis] = int(size) / in_shape[axis] if isinstance(in_shape[axis], int) else None
            return out, used
        ratios = [size / in_shape[a] for a, size in zip(axes, sizes)]
        common = min(ratios) if policy == "not_larger" else max(ratios)
        for axis in axes:
            out[axis] = int(math.floor(common * in_shape[axis] + 0.5))
            used[axis] = common
        return out, used
    if scales is None:
        raise ShapeError("needs scales or sizes")
    if len(scales) != len(axes):
        raise ShapeError(f"scales {scales} do not match {len(axes)} axes")
    for axis, scale in zip(axes, scales):
        used[axis] = float(scale)
        dim = in_shape[axis]
        if scale == 1:
            continue
        out[axis] = int(np.float32(dim) * np.float32(scale)) if isinstance(dim, int) else None
    return out, used


def resize_output_shape(node):
    """Shape rule of Resize/Upsample: output dims from known scales or sizes."""
    x = node.inputs[0]
    if x.shape is None:
        return None
    unknown = (None,) * len(x.shape)
    arrays = []
    for index, value in enumerate(node.inputs[1:], start=1):
        array = None if value is None else static_array(value)
        roi = node.op == "Resize" and node.opset >= 11 and index == 1  # only tf_crop_and_resize reads it
        if value is not None and array is None and not roi:
            if value.shape is None or 0 not in value.shape:
                return unknown
            array = np.zeros(0, dtype=np.float32)
        arrays.append(array)
    scales, sizes = _resize_args(node, arrays)
    try:
        out, _ = _resize_plan(node, list(x.shape), scales, sizes)
    except TypeError:
        return unknown  # a symbolic dim met a scale other than 1
    return tuple(out)


def _source_coords(node, out_len, in_len, scale, legacy):
    """Where each output index samples the input, per coordinate_transformation_mode."""
    out_index = np.arange(out_len, dtype=np.float32)
    scale = np.float32(scale)
    mode = "asymmetric" if legacy else attr_text(node, "coordinate_transformation_mode", "half_pixel")
    if mode == "half_pixel":
        return (out_index + np.float32(0.5)) / scale - np.float32(0.5)
    if mode == "pytorch_half_pixel":
        if out_len == 1:
            return np.zeros(1, dtype=np.float32)
        return (out_index + np.float32(0.5)) / scale - np.float32(0.5)
    if mode == "align_corners":
        if out_len == 1:
            return np.zeros(1, dtype=np.float32)
        return out_index * np.float32(in_len - 1) / np.float32(out_len - 1)
    if mode == "asymmetric":
        return out_index / scale
    if mode == "tf_half_pixel_for_nn":
        return (out_index + np.float32(0.5)) / scale
    if mode == "half_pixel_symmetric":
        adjustment = np.float32(out_len) / (scale * np.float32(in_len))
        center = np.float32(in_len) / np.float32(2)
        offset = center * (np.float32(1) - adjustment)
        return offset + (out_index + np.float32(0.5)) / scale - np.float32(0.5)
    raise ModelError(f"{node.describe()}: coordinate_transformation_mode {mode!r} is not supported")


def _nearest_indices(node, coords, in_len, scale, legacy):
    if legacy:
        # onnxruntime's rule before opset 11: truncate when upsampling, ceil when downsampling
        picked = np.ceil(coords) if scale < 1 else np.trunc(coords)
    else:
        rounding = attr_text(node, "nearest_mode", "round_prefer_floor")
        if rounding == "round_prefer_floor":
            picked = np.ceil(coords - np.float32(0.5))
        elif rounding == "round_prefer_ceil":
            picked = np.floor(coords + np.float32(0.5))
        elif rounding == "floor":
            picked = np.floor(coords)
        elif rounding == "ceil":
            picked = np.ceil(coords)
        else:
            raise ModelError(f"{node.describe()}: nearest_mode {rounding!r} is not supported")
    return np.clip(picked, 0, in_len - 1).astype(np.int64)


def _linear_axis(x, axis, coords, in_len):
    coords = np.clip(coords.astype(np.float64), 0, in_len - 1)
    low = np.floor(coords).astype(np.int64)
    high = np.minimum(low + 1, in_len - 1)
    weight_shape = [1] * x.ndim
    weight_shape[axis] = len(coords)
    weight = (coords - low).reshape(weight_shape)
    return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight


def _cubic_axis(node, x, axis, coords, in_len):
    """Keys cubic convolution over 4 taps (coefficient ``cubic_coeff_a``); taps beyond the edge
    repeat the edge pixel, or are dropped and the rest renormalized with ``exclude_outside``."""
    a = float(node.attrs.get("cubic_coeff_a", -0.75))
    coords = coords.astype(np.float64)
    base = np.floor(coords)
    frac = coords - base
    distances = [1 + frac, frac, 1 - frac, 2 - frac]
    weights = []
    for k, d in enumerate(distances):
        if k in (1, 2):
            weights.append(((a + 2) * d - (a + 3)) * d * d + 1)
        else:
            weights.append(((a * d - 5 * a) * d + 8 * a) * d - 4 * a)
    taps = [base.astype(np.int64) + offset for offset in (-1, 0, 1, 2)]
    if int(node.attrs.get("exclude_outside", 0)):
        weights = [np.where((t >= 0) & (t < in_len), w, 0.0) for t, w in zip(taps, weights)]
        total = sum(weights)
        weights = [w / total for w in weights]
    weight_shape = [1] * x.ndim
    weight_shape[axis] = len(coords)
    out = 0
    for tap, weight in zip(taps, weights):
        out = out + np.take(x, np.clip(tap, 0, in_len - 1), axis=axis) * weight.reshape(weight_shape)
    return out


def resize_array(node, x, *args):
    """Kernel of Resize/Upsample for modes nearest, linear and cubic."""
    legacy = node.op == "Upsample" or node.opset == 10
    mode = attr_text(node, "mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    if mode not in ("nearest", "linear", "cubic"):
        raise ModelError(f"{node.describe()}: Resize mode {mode!r} is not supported")
    if not legacy and attr_text(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise ModelError(f"{node.describe()}: coordinate_transformation_mode 'tf_crop_and_resize' is not supported")
    scales, sizes = _resize_args(node, args)
    out_shape, used = _resize_plan(node, list(x.shape), scales, sizes)
    if mode != "nearest" and int(node.attrs.get("antialias", 0)) and any(s < 1 for s in used):
        raise ModelError(f"{node.describe()}: antialiased downsampling is not supported")
    out = x if mode == "nearest" else x.astype(np.float64)
    for axis, (in_len, out_len) in enumerate(zip(x.shape, out_shape)):
        if in_len == out_len and used[axis] == 1:
            continue
        coords = _source_coords(node, out_len, in_len, used[axis], legacy)
        if mode == "nearest":
            out = np.take(out, _nearest_indices(node, coords, in_len, used[axis], legacy), axis=axis)
        elif mode == "linear":
            out = _linear_axis(out, axis, coords, in_len)
        else:
            out = _cubic_axis(node, out, axis, coords, in_len)
    if out.dtype != x.dtype:
        out = np.rint(out) if x.dtype.kind in "iu" else out
        out = out.astype(x.dtype)
    return out


@shape_rule("Resize", "Upsample")
def _resize_shape(node):
    x = node.inputs[0]
    return [TensorType(x.dtype, resize_output_shape(node))]


@kernel("Resize", "Upsample")
def _resize(node, x, *args):
    return resize_array(node, x, *args)
