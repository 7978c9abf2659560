"""Quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.

``y = saturate(round_half_to_even(x / scale) + zero_point)`` and ``x = (y - zero_point) * scale``
with a scale (and zero point) that is per tensor (a scalar), per axis (a 1-D tensor along
``axis``, opset 13) or per block (same rank as the input, ``block_size`` elements per entry
along ``axis``, opset 21). The division is done in the scale's precision and rounded as
onnxruntime does, so results match it bit for bit.
"""

from __future__ import annotations

import numpy as np

from circ import dtypes
from circ.errors import ModelError
from circ.ops.registry import ShapeError, TensorType, kernel, normalize_axis, shape_rule


def _quantized_dtype(node) -> np.dtype:
    zero_point = node.input(2)
    if zero_point is not None and zero_point.dtype is not None:
        return zero_point.dtype
    if "output_dtype" in node.attrs and int(node.attrs["output_dtype"]):
        return dtypes.from_onnx(int(node.attrs["output_dtype"]), node.describe())
    return np.dtype(np.uint8)


def _along_axis(node, param, x):
    """Reshape or repeat a scale/zero point so it broadcasts against ``x``."""
    param = np.asarray(param)
    if param.ndim == 0 or x.ndim == 0:
        return param
    axis = normalize_axis(int(node.attrs.get("axis", 1)), x.ndim)
    block = int(node.attrs.get("block_size", 0))
    if block:
        if param.ndim != x.ndim:
            raise ModelError(f"{node.describe()}: blocked quantization needs a scale of rank {x.ndim}")
        return np.repeat(param, block, axis=axis)[tuple(
            slice(0, x.shape[axis]) if i == axis else slice(None) for i in range(x.ndim))]
    if param.ndim != 1:
        raise ModelError(f"{node.describe()}: scale of shape {list(param.shape)} is neither a scalar "
                         f"nor 1-D along axis {axis}")
    if param.size not in (1, x.shape[axis]):
        raise ModelError(f"{node.describe()}: {param.size} scales for axis {axis} of length {x.shape[axis]}")
    shape = [1] * x.ndim
    shape[axis] = param.size
    return param.reshape(shape)


def _saturate(values, dtype):
    info = np.iinfo(dtype)
    return np.clip(values, info.min, info.max).astype(dtype)


@shape_rule("QuantizeLinear")
def _quantize_shape(node):
    x = node.inputs[0]
    return [TensorType(_quantized_dtype(node), x.shape)]


@kernel("QuantizeLinear")
def _quantize(node, x, scale, zero_point=None):
    dtype = _quantized_dtype(node)
    if dtype.kind not in "iu":
        raise ModelError(f"{node.describe()}: quantizing to {dtype} is not supported")
    scale = _along_axis(node, scale, x)
    scaled = np.rint(np.asarray(x).astype(scale.dtype) / scale)
    if zero_point is not None:
        scaled = scaled + _along_axis(node, zero_point, x).astype(scaled.dtype)
    return _saturate(scaled, dtype)


@shape_rule("DequantizeLinear")
def _dequantize_shape(node):
    x, scale = node.inputs[0], node.inputs[1]
    dtype = scale.dtype
    if "output_dtype" in node.attrs and int(node.attrs["output_dtype"]):
        dtype = dtypes.from_onnx(int(node.attrs["output_dtype"]), node.describe())
    if x.dtype is not None and x.dtype.kind not in "iu":
        raise ShapeError(f"dequantizing {x.dtype} is not supported")
    return [TensorType(dtype, x.shape)]


@kernel("DequantizeLinear")
def _dequantize(node, x, scale, zero_point=None):
    scale = _along_axis(node, scale, x)
    values = np.asarray(x).astype(np.int64)
    if zero_point is not None:
        values = values - _along_axis(node, zero_point, x).astype(np.int64)
    out = values.astype(scale.dtype) * scale
    if "output_dtype" in node.attrs and int(node.attrs["output_dtype"]):
        out = out.astype(dtypes.from_onnx(int(node.attrs["output_dtype"]), node.describe()))
    return out


@shape_rule("DynamicQuantizeLinear")
def _dynamic_quantize_shape(node):
    x = node.inputs[0]
    u8 = np.dtype(np.uint8)
    return [TensorType(u8, x.shape), TensorType(x.dtype, ()), TensorType(u8, ())]


@kernel("DynamicQuantizeLinear")
def _dynamic_quantize(node, x):
    """uint8 quantization whose range covers the data and zero (opset 11)."""
    low = min(float(np.min(x, initial=0.0)), 0.0)
    high = max(float(np.max(x, initial=0.0)), 0.0)
    scale = np.float32((high - low) / 255.0)
    if scale == 0:
        scale = np.float32(1.0)  # all-zero data: any scale works; onnxruntime picks 1
    zero_point = _saturate(np.rint(np.float32(0.0) - np.float32(low) / scale), np.dtype(np.uint8))
    y = _saturate(np.rint(x / scale) + zero_point.astype(np.float32), np.dtype(np.uint8))
    return y, np.asarray(scale, dtype=np.float32), np.asarray(zero_point)
