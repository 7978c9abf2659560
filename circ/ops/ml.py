"""The ``ai.onnx.ml`` ops that scikit-learn exports (skl2onnx) of MLPs and simple preprocessing
pipelines use: Scaler (StandardScaler), Normalizer, Binarizer, Imputer, ArrayFeatureExtractor
(class label lookup after ArgMax) and LabelEncoder over numbers.

ZipMap (``zipmap=True`` classifiers) yields a sequence of maps, which circ does not model: it
is deliberately absent, so it stays an opaque node and the interpreter's refusal names it.
String tensors are not supported either (circ has no string dtype).
"""

from __future__ import annotations

import numpy as np

from circ.dtypes import FLOAT32
from circ.errors import ModelError
from circ.ops.registry import ShapeError, TensorType, dim_product, kernel, shape_rule

ML = "ai.onnx.ml"


def _text(node, name, default):
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _floats(node, name, default):
    return np.asarray(node.attrs.get(name, default), dtype=np.float32).reshape(-1)


def _same_shape_float(node):
    x = node.inputs[0]
    return [TensorType(FLOAT32, x.shape)]


# ------------------------------------------------------------------ Scaler, Normalizer, Binarizer

shape_rule("Scaler", "Normalizer", domain=ML)(_same_shape_float)


@kernel("Scaler", domain=ML)
def _scaler(node, x):
    """``(x - offset) * scale``, each attribute one value or one per feature (last axis)."""
    offset = _floats(node, "offset", [0.0])
    scale = _floats(node, "scale", [1.0])
    return ((x.astype(np.float32) - offset) * scale).astype(np.float32)


@kernel("Normalizer", domain=ML)
def _normalizer(node, x):
    """Each row divided by its max, L1 or L2 norm; rows whose norm is 0 stay as they are."""
    rows = np.atleast_2d(x.astype(np.float32))
    norm = _text(node, "norm", "MAX")
    if norm == "MAX":
        size = np.max(rows, axis=-1, keepdims=True)  # the maximum, not of magnitudes, per the spec
    elif norm == "L1":
        size = np.sum(np.abs(rows), axis=-1, keepdims=True)
    elif norm == "L2":
        size = np.sqrt(np.sum(np.square(rows), axis=-1, keepdims=True))
    else:
        raise ModelError(f"{node.describe()}: norm {norm!r} is not MAX, L1 or L2")
    out = rows / np.where(size == 0, np.float32(1), size)
    return out.reshape(x.shape)


@shape_rule("Binarizer", domain=ML)
def _binarizer_shape(node):
    x = node.inputs[0]
    return [TensorType(x.dtype, x.shape)]


@kernel("Binarizer", domain=ML)
def _binarizer(node, x):
    threshold = float(node.attrs.get("threshold", 0.0))
    return (x > threshold).astype(x.dtype)


# ------------------------------------------------------------------ Imputer


def _imputer_spec(node):
    """(values, replaced) for float or int64 data, from whichever attribute pair is set."""
    if "imputed_value_int64s" in node.attrs:
        return (np.asarray(node.attrs["imputed_value_int64s"], dtype=np.int64).reshape(-1),
                int(node.attrs.get("replaced_value_int64", 0)))
    return (_floats(node, "imputed_value_floats", []),
            float(node.attrs.get("replaced_value_float", 0.0)))


@shape_rule("Imputer", domain=ML)
def _imputer_shape(node):
    x = node.inputs[0]
    return [TensorType(x.dtype, x.shape)]


@kernel("Imputer", domain=ML)
def _imputer(node, x):
    """Replace ``replaced_value`` (NaN matches NaN) by one value or one per feature."""
    values, replaced = _imputer_spec(node)
    if values.size not in (1, x.shape[-1] if x.ndim else 1):
        raise ModelError(f"{node.describe()}: {values.size} imputed values for {x.shape[-1]} features")
    hit = np.isnan(x) if isinstance(replaced, float) and np.isnan(replaced) else x == replaced
    return np.where(hit, values.astype(x.dtype), x)


# ------------------------------------------------------------------ ArrayFeatureExtractor


@shape_rule("ArrayFeatureExtractor", domain=ML)
def _array_feature_extractor_shape(node):
    x, indices = node.inputs[0], node.inputs[1]
    count = None if indices.shape is None else dim_product(indices.shape)
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    if len(x.shape) <= 1:
        return [TensorType(x.dtype, (1, count))]
    return [TensorType(x.dtype, tuple(x.shape[:-1]) + (count,))]


@kernel("ArrayFeatureExtractor", domain=ML)
def _array_feature_extractor(node, x, indices):
    """Select entries of the last axis; a 1-D input is treated as one row."""
    picks = np.asarray(indices, dtype=np.int64).reshape(-1)
    rows = x.reshape(1, -1) if x.ndim <= 1 else x
    if picks.size and (picks.min() < 0 or picks.max() >= rows.shape[-1]):
        raise ModelError(f"{node.describe()}: index out of range for {rows.shape[-1]} features")
    return np.take(rows, picks, axis=-1)


# ------------------------------------------------------------------ LabelEncoder


def _tensor_attr(node, name):
    value = node.attrs.get(name)
    if value is None:
        return None
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)


def _label_encoder_table(node):
    """(keys, values, default) arrays of a numeric LabelEncoder (ai.onnx.ml opsets 2-4)."""
    keys = _tensor_attr(node, "keys_tensor")
    if keys is None:
        if "keys_int64s" in node.attrs:
            keys = np.asarray(node.attrs["keys_int64s"], dtype=np.int64)
        elif "keys_floats" in node.attrs:
            keys = np.asarray(node.attrs["keys_floats"], dtype=np.float32)
    values = _tensor_attr(node, "values_tensor")
    default = _tensor_attr(node, "default_tensor")
    if values is None:
        if "values_int64s" in node.attrs:
            values = np.asarray(node.attrs["values_int64s"], dtype=np.int64)
            default = np.asarray(node.attrs.get("default_int64", -1), dtype=np.int64)
        elif "values_floats" in node.attrs:
            values = np.asarray(node.attrs["values_floats"], dtype=np.float32)
            default = np.asarray(node.attrs.get("default_float", -0.0), dtype=np.float32)
    if keys is None or values is None or keys.dtype.kind not in "iuf" or values.dtype.kind not in "iuf":
        raise ShapeError("only numeric keys and values are supported (circ has no string tensors)")
    if keys.size != values.size:
        raise ShapeError(f"{keys.size} keys but {values.size} values")
    if default is None:
        default = np.zeros((), dtype=values.dtype)
    return keys.reshape(-1), values.reshape(-1), np.asarray(default, dtype=values.dtype).reshape(-1)[0]


@shape_rule("LabelEncoder", domain=ML)
def _label_encoder_shape(node):
    _, values, _ = _label_encoder_table(node)
    return [TensorType(values.dtype, node.inputs[0].shape)]


@kernel("LabelEncoder", domain=ML)
def _label_encoder(node, x):
    keys, values, default = _label_encoder_table(node)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order].astype(np.result_type(keys, x))
    flat = x.reshape(-1).astype(sorted_keys.dtype)
    position = np.clip(np.searchsorted(sorted_keys, flat), 0, max(len(keys) - 1, 0))
    found = sorted_keys[position] == flat if len(keys) else np.zeros(flat.shape, bool)
    if sorted_keys.dtype.kind == "f":  # NaN keys match NaN inputs
        nan_keys = np.flatnonzero(np.isnan(sorted_keys))
        if nan_keys.size:
            found = found | np.isnan(flat)
            position = np.where(np.isnan(flat), nan_keys[0], position)
    out = np.where(found, values[order][position] if len(keys) else default, default)
    return out.astype(values.dtype).reshape(x.shape)
