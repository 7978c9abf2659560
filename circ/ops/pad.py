"""Pad: constant, reflect and edge modes; ``pads`` as an attribute (opset < 11) or an input."""

from __future__ import annotations


import numpy as np

from circ.errors import ModelError
from circ.ops.registry import (
    ShapeError, TensorType, kernel, known_ints, normalize_axis, shape_rule,
)
from circ.ops.tensor import attr_text


# ------------------------------------------------------------------ Pad


def _pad_args(node, rank, pads, axes):
    """Per-axis (before, after) pads from the flat ONNX list (all begins, then all ends)."""
    if axes is None:
        axes = list(range(rank))
    axes = [normalize_axis(int(a), rank) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ShapeError(f"pads {list(pads)} need {2 * len(axes)} entries")
    widths = [(0, 0)] * rank
    for k, axis in enumerate(axes):
        widths[axis] = (int(pads[k]), int(pads[k + len(axes)]))
    return widths


def _pads_known(node):
    """(pads, axes) known before running; (None, None) when either is an unknown input."""
    if "pads" in node.attrs:
        return list(node.attrs["pads"]), None
    pads = known_ints(node.input(1))
    axes = known_ints(node.input(3)) if node.input(3) is not None else None
    if pads is None or (axes is None and node.input(3) is not None):
        return None, None
    return pads, axes


@shape_rule("Pad")
def _pad_shape(node):
    x = node.inputs[0]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    pads, axes = _pads_known(node)
    if pads is None or any(isinstance(p, str) for p in pads):
        return [TensorType(x.dtype, (None,) * len(x.shape))]
    out = []
    for d, (before, after) in zip(x.shape, _pad_args(node, len(x.shape), pads, axes)):
        if before == after == 0:
            out.append(d)
        else:
            out.append(d + before + after if isinstance(d, int) else None)
    return [TensorType(x.dtype, out)]


@kernel("Pad")
def _pad(node, x, pads=None, constant_value=None, axes=None):
    mode = attr_text(node, "mode", "constant")
    pads_list = node.attrs["pads"] if "pads" in node.attrs else np.asarray(pads).reshape(-1).tolist()
    axes_list = None if axes is None else np.asarray(axes).reshape(-1).tolist()
    widths = _pad_args(node, x.ndim, pads_list, axes_list)
    grow = [(max(b, 0), max(a, 0)) for b, a in widths]
    if mode == "constant":
        value = node.attrs.get("value", 0.0) if constant_value is None else np.asarray(constant_value).item()
        out = np.pad(x, grow, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    elif mode in ("reflect", "edge", "wrap"):
        out = np.pad(x, grow, mode=mode)
    else:
        raise ModelError(f"{node.describe()}: Pad mode {mode!r} is not supported")
    # Negative pads crop.
    crop = tuple(slice(-min(b, 0), out.shape[i] + min(a, 0)) for i, (b, a) in enumerate(widths))
    return out[crop]
