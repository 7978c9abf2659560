"""Normalizations: BatchNormalization (inference), LRN, InstanceNormalization, LayerNormalization.

BatchNormalization runs in inference mode only: ``y = (x - mean) / sqrt(var + eps) * scale
+ bias`` with the running statistics. Attributes of old opsets are accepted: ``is_test`` and
``consumed_inputs`` (no effect on inference) and ``spatial`` (0 means statistics per
activation, shaped like ``x.shape[1:]``). Training mode (opset 14+ ``training_mode=1``) is
refused. Old exports sometimes list the optional statistics outputs; in inference they are
the running mean and variance unchanged, and saved mean / inverse std from them.
"""

from __future__ import annotations

import numpy as np

from circ.ops.registry import ShapeError, TensorType, gradient, kernel, normalize_axis, shape_rule


def _epsilon(node, default: float = 1e-5) -> float:
    return float(node.attrs.get("epsilon", default))


# ------------------------------------------------------------------ BatchNormalization


@shape_rule("BatchNormalization")
def _batch_norm_shape(node):
    if node.attrs.get("training_mode", 0):
        raise ShapeError("BatchNormalization in training mode (training_mode=1) is not supported; "
                         "circ runs inference graphs")
    x = node.inputs[0]
    if x.shape is not None and len(x.shape) < 2:
        raise ShapeError(f"BatchNormalization input must be (N, C, ...), got rank {len(x.shape)}")
    types = [TensorType(x.dtype, x.shape)]
    # Optional statistics outputs (old opsets): running mean/var, then saved mean/inv std.
    for index in range(1, len(node.outputs)):
        stat = node.inputs[3] if index in (1, 3) else node.inputs[4]
        types.append(TensorType(stat.dtype, stat.shape))
    return types


def _per_channel(param: np.ndarray, rank: int) -> np.ndarray:
    """A (C,) parameter reshaped to broadcast over (N, C, ...); a (C, ...) one (spatial=0)
    already broadcasts."""
    return param.reshape((-1,) + (1,) * (rank - 2)) if param.ndim == 1 else param


@kernel("BatchNormalization")
def _batch_norm(node, x, scale, bias, mean, var):
    # Fold into one multiply-add; float64 for the fold so eps + var keeps its precision.
    inv_std = 1.0 / np.sqrt(var.astype(np.float64) + _epsilon(node))
    factor = scale.astype(np.float64) * inv_std
    shift = bias.astype(np.float64) - mean.astype(np.float64) * factor
    y = x * _per_channel(factor.astype(x.dtype), x.ndim)
    y += _per_channel(shift.astype(x.dtype), x.ndim)
    extras = [mean, var, mean, inv_std.astype(var.dtype)][: len(node.outputs) - 1]
    return (y, *extras) if extras else y


@gradient("BatchNormalization")
def _batch_norm_grad(node, inputs, outputs, grad_outputs):
    """Frozen (inference) batch norm: the statistics are inputs like the others, so each gets
    its partial derivative; a training step simply does not update mean and var."""
    x, scale, bias, mean, var = inputs
    grad = grad_outputs[0]
    rank = x.ndim
    # per-channel parameters reduce over batch and spatial axes; spatial=0 ones over batch only
    axes = (0,) + tuple(range(2, rank)) if scale.ndim == 1 else (0,)
    inv_std = 1.0 / np.sqrt(var + _epsilon(node))
    centered = x - _per_channel(mean, rank)
    grad_sum = grad.sum(axis=axes)
    grad_centered = (grad * centered).sum(axis=axes)
    grad_x = grad * _per_channel(scale * inv_std, rank)
    grad_scale = grad_centered * inv_std
    grad_mean = -grad_sum * scale * inv_std
    grad_var = -0.5 * grad_centered * scale * inv_std ** 3
    return [grad_x, grad_scale, grad_sum, grad_mean, grad_var]


def batch_norm_training(node, x, scale, bias):
    """BatchNormalization as in training: normalized with the batch's own statistics over
    the batch and spatial axes. Returns ``y`` and the batch mean and (biased, as ONNX's
    training mode) variance, per channel, for the caller's running averages. Used by
    :class:`circ.autodiff.Tape` in training mode; the op's kernel stays inference-only."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + _epsilon(node))
    normalized = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    y = normalized * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)
    return y.astype(x.dtype, copy=False), mean, var


def batch_norm_training_grad(node, inputs, outputs, grad_outputs):
    """Gradient of :func:`batch_norm_training`: through the batch statistics too (Ioffe and
    Szegedy 2015, section 3); the running mean and var inputs get none."""
    x, scale = inputs[0], inputs[1]
    grad = grad_outputs[0]
    axes = (0,) + tuple(range(2, x.ndim))
    count = x.size // x.shape[1]
    inv_std = 1.0 / np.sqrt(x.var(axis=axes) + _epsilon(node))
    normalized = (x - _per_channel(x.mean(axis=axes), x.ndim)) * _per_channel(inv_std, x.ndim)
    grad_bias = grad.sum(axis=axes)
    grad_scale = (grad * normalized).sum(axis=axes)
    grad_x = _per_channel(scale * inv_std / count, x.ndim) * (
        count * grad - _per_channel(grad_bias, x.ndim)
        - normalized * _per_channel(grad_scale, x.ndim))
    return [grad_x, grad_scale, grad_bias, None, None]


# ------------------------------------------------------------------ LRN


@shape_rule("LRN", "InstanceNormalization")
def _same_shape(node):
    x = node.inputs[0]
    if x.shape is not None and len(x.shape) < 3 and node.op == "InstanceNormalization":
        raise ShapeError(f"InstanceNormalization input must be (N, C, spatial...), got {x.shape}")
    return [TensorType(x.dtype, x.shape)]


@kernel("LRN")
def _lrn(node, x):
    """Local response normalization across channels (AlexNet, section 3.3):
    ``x / (bias + alpha / size * sum of x^2 over the window) ** beta``, where the window
    covers channels ``c - floor((size-1)/2)`` to ``c + ceil((size-1)/2)``."""
    size = int(node.attrs["size"])
    alpha = float(node.attrs.get("alpha", 1e-4))
    beta = float(node.attrs.get("beta", 0.75))
    bias = float(node.attrs.get("bias", 1.0))
    before = (size - 1) // 2
    squares = np.square(x)
    channels = x.shape[1]
    padded = np.zeros((x.shape[0], channels + size - 1) + x.shape[2:], dtype=x.dtype)
    padded[:, before: before + channels] = squares
    window_sum = np.zeros_like(x)
    for shift in range(size):
        window_sum += padded[:, shift: shift + channels]
    return x / np.power(bias + (alpha / size) * window_sum, beta).astype(x.dtype)


# ------------------------------------------------------------------ InstanceNormalization


@kernel("InstanceNormalization")
def _instance_norm(node, x, scale, bias):
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = np.square(centered).mean(axis=axes, keepdims=True)
    y = centered / np.sqrt(var + np.asarray(_epsilon(node), dtype=x.dtype))
    return (y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)).astype(x.dtype, copy=False)


# ------------------------------------------------------------------ LayerNormalization


def _stat_dtype(node, x_dtype):
    # stash_type 1 (the default) computes statistics in float32
    return np.dtype(np.float32) if node.attrs.get("stash_type", 1) == 1 else x_dtype


@shape_rule("LayerNormalization")
def _layer_norm_shape(node):
    x = node.inputs[0]
    types = [TensorType(x.dtype, x.shape)]
    if len(node.outputs) > 1:
        stat_shape = None
        if x.shape is not None:
            axis = normalize_axis(int(node.attrs.get("axis", -1)), len(x.shape))
            stat_shape = tuple(x.shape[:axis]) + (1,) * (len(x.shape) - axis)
        stat_dtype = None if x.dtype is None else _stat_dtype(node, x.dtype)
        types += [TensorType(stat_dtype, stat_shape)] * (len(node.outputs) - 1)
    return types


@kernel("LayerNormalization")
def _layer_norm(node, x, scale, bias=None):
    axis = normalize_axis(int(node.attrs.get("axis", -1)), x.ndim)
    axes = tuple(range(axis, x.ndim))
    stash = x.astype(_stat_dtype(node, x.dtype), copy=False)
    mean = stash.mean(axis=axes, keepdims=True)
    centered = stash - mean
    var = np.square(centered).mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + np.asarray(_epsilon(node), dtype=var.dtype))
    y = (centered * inv_std).astype(x.dtype, copy=False) * scale
    if bias is not None:
        y = y + bias
    y = y.astype(x.dtype, copy=False)
    return (y, mean, inv_std)[: len(node.outputs)]
