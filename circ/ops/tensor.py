"""Shape-manipulating ops: Reshape Flatten Transpose Concat Split Slice Squeeze Unsqueeze Gather
Shape Size Constant ConstantOfShape Identity Dropout Cast CastLike Expand Tile Range.
(Pad is in ``pad.py``, Resize and Upsample in ``resize.py``.)

Besides dtype and shape, the rules of the ops that torch exports use for shape arithmetic
(Shape, Gather, Slice, Concat, Squeeze, Unsqueeze, Cast, Identity, Reshape, Constant, Range)
propagate *known contents* (``TensorType.sym``) of small integer tensors: entries are ints or
symbolic dims such as ``"N"``. That is how ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``
with a dynamic batch infers ``[N, 512]``. Contents that are not known leave dims unknown
(``None``), never an error.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional

import numpy as np

from circ import dtypes
from circ.ops.registry import (
    ShapeError, TensorType, attr_or_input, broadcast_shapes, dim_product, get_op, gradient, kernel,
    kernel_arg,
    known_ints, normalize_axis, shape_rule,
)

# Known contents are only tracked for tensors this small: shape vectors, not data.
_SYM_LIMIT = 64


def attr_text(node, name: str, default: str) -> str:
    """A string attribute as ``str`` (importers may hand over ``bytes``)."""
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _sym_of(value) -> Optional[list]:
    """Known contents of an integer input (constant or symbolic), if small enough to track."""
    if value is None or value.dtype is None or value.dtype.kind not in "iu":
        return None
    contents = known_ints(value)
    if contents is None or len(contents) > _SYM_LIMIT:
        return None
    return contents


def _sym_result(dtype, shape, contents) -> Optional[tuple]:
    """``contents`` as a ``sym`` for an integer scalar or 1-D result, else None."""
    if contents is None or dtype is None or np.dtype(dtype).kind not in "iu":
        return None
    if shape is None or len(shape) > 1 or len(contents) > _SYM_LIMIT:
        return None
    if any(d is None for d in contents):
        return None
    return tuple(contents)


# Ops whose small outputs :func:`static_array` may compute while inferring shapes.
_STATIC_OPS = {"Constant", "Concat", "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Slice",
               "Gather", "Add", "Sub", "Mul", "Div"}


def static_array(value, depth: int = 0) -> Optional[np.ndarray]:
    """The contents of a small tensor known before running, or None.

    A constant's array; or, for the output of a short chain of Constant/Concat/Cast/... nodes
    over known inputs (how torch exports Resize scales), the chain evaluated by its kernels.
    Integer contents derived from shapes (``sym``) count when every entry is an int.
    """
    if value is None:
        return None
    if value.const is not None:
        return value.const.to_numpy()
    if value.sym is not None and all(isinstance(d, int) for d in value.sym):
        return np.array(value.sym, dtype=value.dtype).reshape(value.shape if value.shape == () else (-1,))
    node = value.producer
    if node is None or node.domain or node.op not in _STATIC_OPS or depth > 8:
        return None
    args = []
    for source in node.inputs:
        array = None if source is None else static_array(source, depth + 1)
        if source is not None and (array is None or array.size > _SYM_LIMIT):
            return None
        args.append(array)
    try:
        result = get_op(node.op).kernel(node, *args)
    except Exception:  # noqa: BLE001  a chain that fails to evaluate is simply not known here
        return None
    results = result if isinstance(result, (tuple, list)) else (result,)
    index = next(i for i, out in enumerate(node.outputs) if out is value)
    return np.asarray(results[index])


def _fold_dims(dims) -> object:
    """Product of dims that may be symbolic: an int, a single symbol times ones, or None."""
    ints = dim_product([d for d in dims if not isinstance(d, str)])
    symbols = [d for d in dims if isinstance(d, str)]
    if ints is None:
        return None
    if not symbols:
        return ints
    if len(symbols) == 1 and ints == 1:
        return symbols[0]
    return None


# ------------------------------------------------------------------ Identity, Dropout, Cast


@shape_rule("Identity")
def _identity_shape(node):
    x = node.inputs[0]
    return [TensorType(x.dtype, x.shape, _sym_result(x.dtype, x.shape, _sym_of(x)))]


@kernel("Identity")
def _identity(node, x):
    return x


@shape_rule("Dropout")
def _dropout_shape(node):
    x = node.inputs[0]
    mask = x.dtype if node.opset < 10 else np.bool_  # Dropout-7 typed its mask like the input
    return [TensorType(x.dtype, x.shape), TensorType(mask, x.shape)]


@kernel("Dropout")
def _dropout(node, x, *_ratio_and_training_mode):
    """Inference semantics: the input passes unchanged and the mask keeps everything.

    Before opset 10 the mask was typed like the input and left undefined in inference;
    onnxruntime fills it with zeros, and so does circ."""
    if len(node.outputs) > 1:
        if node.opset < 10:
            return x, np.zeros(x.shape, dtype=x.dtype)
        return x, np.ones(x.shape, dtype=bool)
    return x


@shape_rule("Cast")
def _cast_shape(node):
    x = node.inputs[0]
    to = dtypes.from_onnx(int(node.attrs["to"]), node.describe())
    return [TensorType(to, x.shape, _sym_result(to, x.shape, _sym_of(x)))]


@kernel("Cast")
def _cast(node, x):
    to = dtypes.from_onnx(int(node.attrs["to"]), node.describe())
    return np.asarray(x).astype(to)


@shape_rule("CastLike")
def _cast_like_shape(node):
    x, like = node.inputs[0], node.inputs[1]
    return [TensorType(like.dtype, x.shape, _sym_result(like.dtype, x.shape, _sym_of(x)))]


@kernel("CastLike")
def _cast_like(node, x, like):
    return np.asarray(x).astype(like.dtype)


# ------------------------------------------------------------------ Constant, ConstantOfShape


def _constant_array(node) -> np.ndarray:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32).reshape(-1)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64).reshape(-1)
    raise ShapeError("needs one of the attributes value, value_float(s), value_int(s) "
                     "(string and sparse constants are not supported)")


@shape_rule("Constant")
def _constant_shape(node):
    array = _constant_array(node)
    contents = array.reshape(-1).tolist() if array.dtype.kind in "iu" and array.size <= _SYM_LIMIT else None
    return [TensorType(array.dtype, array.shape, _sym_result(array.dtype, array.shape, contents))]


@kernel("Constant")
def _constant(node):
    return _constant_array(node).copy()


def _fill_value(node) -> np.ndarray:
    value = node.attrs.get("value")
    if value is None:
        return np.zeros(1, dtype=np.float32)
    array = value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
    return array.reshape(-1)[:1]


@shape_rule("ConstantOfShape")
def _constant_of_shape_shape(node):
    fill = _fill_value(node)
    target = known_ints(node.inputs[0])
    if target is not None:
        return [TensorType(fill.dtype, target)]
    length = node.inputs[0].shape
    if length is not None and len(length) == 1 and isinstance(length[0], int):
        return [TensorType(fill.dtype, (None,) * length[0])]
    return [TensorType(fill.dtype, None)]


@kernel("ConstantOfShape")
def _constant_of_shape(node, shape):
    fill = _fill_value(node)
    return np.full([int(d) for d in np.asarray(shape).reshape(-1)], fill[0], dtype=fill.dtype)


# ------------------------------------------------------------------ Shape, Size


def _shape_range(node, rank):
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else int(end)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return start, max(start, end)


@shape_rule("Shape")
def _shape_shape(node):
    x = node.inputs[0]
    if x.shape is None:
        return [TensorType(dtypes.INT64, (None,))]
    start, end = _shape_range(node, len(x.shape))
    dims = list(x.shape[start:end])
    return [TensorType(dtypes.INT64, (len(dims),), _sym_result(dtypes.INT64, (len(dims),), dims))]


@kernel("Shape")
def _shape(node, x):
    start, end = _shape_range(node, np.ndim(x))
    return np.array(np.shape(x)[start:end], dtype=np.int64)


@shape_rule("Size")
def _size_shape(node):
    x = node.inputs[0]
    total = None if x.shape is None else _fold_dims(x.shape)
    contents = None if total is None else [total]
    return [TensorType(dtypes.INT64, (), _sym_result(dtypes.INT64, (), contents))]


@kernel("Size")
def _size(node, x):
    return np.array(np.size(x), dtype=np.int64)


# ------------------------------------------------------------------ Reshape, Flatten


def _resolve_infer_dim(in_shape, out_dims) -> object:
    """The dim a ``-1`` stands for: input size divided by the other output dims.

    Symbolic dims cancel by name, so ``[N, 512, 7, 7] -> [-1, 25088]`` gives ``N``.
    """
    if in_shape is None or any(d is None for d in in_shape) or any(d is None for d in out_dims):
        return None
    in_symbols = Counter(d for d in in_shape if isinstance(d, str))
    out_symbols = Counter(d for d in out_dims if isinstance(d, str))
    if out_symbols - in_symbols:
        return None
    in_ints = dim_product([d for d in in_shape if not isinstance(d, str)])
    out_ints = dim_product([d for d in out_dims if not isinstance(d, str)])
    if out_ints == 0 or in_ints % out_ints:
        return None
    left = list((in_symbols - out_symbols).elements())
    return _fold_dims([in_ints // out_ints, *left])


@shape_rule("Reshape")
def _reshape_shape(node):
    data, target_value = node.inputs[0], node.input(1)
    target = known_ints(target_value) if target_value is not None else node.attrs.get("shape")
    if target is None:
        length = None if target_value is None else target_value.shape
        if length is not None and len(length) == 1 and isinstance(length[0], int):
            return [TensorType(data.dtype, (None,) * length[0])]
        return [TensorType(data.dtype, None)]
    allowzero = int(node.attrs.get("allowzero", 0))
    in_shape = data.shape
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            out.append(in_shape[i] if in_shape is not None and i < len(in_shape) else None)
        else:
            out.append(d)
    if out.count(-1) > 1:
        raise ShapeError(f"shape {list(target)} has more than one -1")
    if -1 in out:
        k = out.index(-1)
        out[k] = _resolve_infer_dim(in_shape, out[:k] + out[k + 1:])
    elif in_shape is not None:
        want, have = _fold_dims(out), _fold_dims(in_shape)
        if isinstance(want, int) and isinstance(have, int) and want != have:
            raise ShapeError(f"cannot reshape {list(in_shape)} ({have} elements) to {out}")
    sym = _sym_result(data.dtype, out, _sym_of(data))
    return [TensorType(data.dtype, out, sym)]


@kernel("Reshape")
def _reshape(node, data, shape=None):
    target = [int(d) for d in (np.asarray(shape).reshape(-1) if shape is not None else node.attrs["shape"])]
    if not int(node.attrs.get("allowzero", 0)):
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return np.reshape(data, target)


def _flatten_axis(node, rank):
    axis = int(node.attrs.get("axis", 1))
    if not -rank <= axis <= rank:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


@shape_rule("Flatten")
def _flatten_shape(node):
    x = node.inputs[0]
    if x.shape is None:
        return [TensorType(x.dtype, (None, None))]
    axis = _flatten_axis(node, len(x.shape))
    outer, inner = x.shape[:axis], x.shape[axis:]
    return [TensorType(x.dtype, (_fold_dims(outer), _fold_dims(inner)))]


@kernel("Flatten")
def _flatten(node, x):
    axis = _flatten_axis(node, x.ndim)
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return np.reshape(x, (outer, -1) if outer else (0, int(np.prod(x.shape[axis:], dtype=np.int64))))


@gradient("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")
def _reshape_like_grad(node, inputs, outputs, grad_outputs):
    """Ops that only move (or keep) elements in row-major order: the gradient is the output's
    gradient reshaped back; shape/axes/ratio inputs get none. Dropout is the identity in
    inference, the only mode circ runs."""
    return [grad_outputs[0].reshape(inputs[0].shape)] + [None] * (len(inputs) - 1)


# ------------------------------------------------------------------ Transpose


def _perm(node, rank):
    perm = node.attrs.get("perm")
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(p % rank if rank else p for p in perm) != list(range(rank)):
        raise ShapeError(f"perm {perm} is not a permutation of {rank} axes")
    return [p % rank for p in perm]


@shape_rule("Transpose")
def _transpose_shape(node):
    x = node.inputs[0]
    if x.shape is None:
        perm = node.attrs.get("perm")
        return [TensorType(x.dtype, None if perm is None else (None,) * len(perm))]
    perm = _perm(node, len(x.shape))
    return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]


@kernel("Transpose")
def _transpose(node, x):
    return np.transpose(x, _perm(node, x.ndim))


@gradient("Transpose")
def _transpose_grad(node, inputs, outputs, grad_outputs):
    return [np.transpose(grad_outputs[0], np.argsort(_perm(node, inputs[0].ndim)))]


# ------------------------------------------------------------------ Concat, Split


@shape_rule("Concat")
def _concat_shape(node):
    inputs = [v for v in node.inputs if v is not None]
    dtype = inputs[0].dtype
    shapes = [v.shape for v in inputs]
    if any(s is None for s in shapes):
        rank = next((len(s) for s in shapes if s is not None), None)
        return [TensorType(dtype, None if rank is None else (None,) * rank)]
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise ShapeError(f"inputs of ranks {[len(s) for s in shapes]} cannot be concatenated")
    axis = normalize_axis(int(node.attrs["axis"]), rank)
    out = []
    for i in range(rank):
        dims = [s[i] for s in shapes]
        if i == axis:
            out.append(_concat_dim(dims))
            continue
        known = [d for d in dims if isinstance(d, int)]
        if len(set(known)) > 1:
            raise ShapeError(f"inputs {[list(s) for s in shapes]} differ outside axis {axis}")
        out.append(known[0] if known else next((d for d in dims if d is not None), None))
    contents = None
    if rank == 1:
        parts = [_sym_of(v) for v in inputs]
        if all(p is not None for p in parts):
            contents = [d for p in parts for d in p]
    return [TensorType(dtype, out, _sym_result(dtype, out, contents))]


def _concat_dim(dims):
    if all(isinstance(d, int) for d in dims):
        return sum(dims)
    rest = [d for d in dims if d != 0]
    return rest[0] if len(rest) == 1 else None


@kernel("Concat")
def _concat(node, *arrays):
    return np.concatenate([a for a in arrays if a is not None], axis=int(node.attrs["axis"]))


@gradient("Concat")
def _concat_grad(node, inputs, outputs, grad_outputs):
    axis = int(node.attrs["axis"])
    grads, start = [], 0
    for array in inputs:
        if array is None:
            grads.append(None)
            continue
        size = array.shape[axis]
        grads.append(np.take(grad_outputs[0], np.arange(start, start + size), axis=axis))
        start += size
    return grads


def _split_sizes(node, dim, split) -> Optional[list]:
    """Sizes of Split's outputs along the axis; None when not known before running."""
    n = len(node.outputs)
    if split is not None:
        return [int(s) for s in split]
    if not isinstance(dim, int):
        return None
    if "num_outputs" in node.attrs:
        # opset 18: chunks of ceil(dim / n), the last one smaller
        chunk = -(-dim // n)
        return [max(0, min(chunk, dim - chunk * i)) for i in range(n)]
    if dim % n:
        raise ShapeError(f"axis of length {dim} does not split evenly into {n} outputs")
    return [dim // n] * n


@shape_rule("Split")
def _split_shape(node):
    x = node.inputs[0]
    n = len(node.outputs)
    if x.shape is None:
        return [TensorType(x.dtype, None) for _ in range(n)]
    axis = normalize_axis(int(node.attrs.get("axis", 0)), len(x.shape))
    split = attr_or_input(node, "split", 1)
    if split is None and node.input(1) is not None or split is not None and any(
            isinstance(s, str) for s in split):
        sizes = None  # an input whose value is unknown, or symbolic
    else:
        sizes = _split_sizes(node, x.shape[axis], split)
    if sizes is not None and len(sizes) != n:
        raise ShapeError(f"split {sizes} does not match {n} outputs")
    if sizes is not None and isinstance(x.shape[axis], int) and sum(sizes) != x.shape[axis]:
        raise ShapeError(f"split {sizes} does not add up to the axis length {x.shape[axis]}")
    out = []
    for i in range(n):
        shape = list(x.shape)
        shape[axis] = None if sizes is None else sizes[i]
        out.append(TensorType(x.dtype, shape))
    return out


@kernel("Split")
def _split(node, x, split=None):
    axis = int(node.attrs.get("axis", 0)) % x.ndim
    sizes = _split_sizes(node, x.shape[axis], kernel_arg(node, "split", split))
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, bounds, axis=axis))


# ------------------------------------------------------------------ Slice


def _slice_args(node, rank, starts, ends, axes, steps):
    """Normalize Slice arguments to per-axis (start, end, step); raises ShapeError."""
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length")
    out = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(int(axis), rank)
        if axis in out:
            raise ShapeError(f"axis {axis} is sliced twice")
        if step == 0:
            raise ShapeError("a slice step cannot be 0")
        out[axis] = (int(start), int(end), int(step))
    return out


def _slice_inputs(node):
    """starts, ends, axes, steps as known lists (attributes before opset 10, inputs after)."""
    if node.opset and node.opset < 10 or "starts" in node.attrs:
        return node.attrs["starts"], node.attrs["ends"], node.attrs.get("axes"), None
    starts, ends = known_ints(node.input(1)), known_ints(node.input(2))
    axes = known_ints(node.input(3)) if node.input(3) is not None else None
    steps = known_ints(node.input(4)) if node.input(4) is not None else None
    unknown = (starts is None or ends is None or (axes is None and node.input(3) is not None)
               or (steps is None and node.input(4) is not None))
    return None if unknown else (starts, ends, axes, steps)


def _sliced_length(dim, start, end, step) -> object:
    """Length of ``range(dim)[start:end:step]``; Python's clamping is ONNX's."""
    if isinstance(dim, int):
        return len(range(*slice(start, end, step).indices(dim)))
    if step == 1 and start == 0 and end >= 2 ** 31 - 1:
        return dim  # the whole of a symbolic axis
    return None


def _sliced_axes_unknown(node, shape):
    """``shape`` with the axes a Slice of unknown extent touches set to None (all, if unsure)."""
    axes = node.attrs.get("axes")
    if axes is None and node.input(3) is not None:
        axes = known_ints(node.input(3))
    if axes is None and node.input(3) is None:
        starts = node.attrs.get("starts")
        count = len(starts) if starts is not None else None
        start_shape = node.input(1).shape if node.input(1) is not None else None
        if count is None and start_shape is not None and len(start_shape) == 1:
            count = start_shape[0] if isinstance(start_shape[0], int) else None
        axes = None if count is None else list(range(count))
    if axes is None or any(not isinstance(a, int) for a in axes):
        return (None,) * len(shape)
    touched = {normalize_axis(a, len(shape)) for a in axes}
    return tuple(None if i in touched else d for i, d in enumerate(shape))


@shape_rule("Slice")
def _slice_shape(node):
    x = node.inputs[0]
    args = _slice_inputs(node)
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    if args is None or any(isinstance(v, str) for part in args if part for v in part):
        return [TensorType(x.dtype, _sliced_axes_unknown(node, x.shape))]
    per_axis = _slice_args(node, len(x.shape), *args)
    out = list(x.shape)
    for axis, (start, end, step) in per_axis.items():
        out[axis] = _sliced_length(x.shape[axis], start, end, step)
    contents = _sym_of(x)
    if contents is not None and len(x.shape) == 1 and 0 in per_axis:
        contents = contents[slice(*per_axis[0])]
    return [TensorType(x.dtype, out, _sym_result(x.dtype, out, contents))]


@kernel("Slice")
def _slice(node, x, starts=None, ends=None, axes=None, steps=None):
    if starts is None:
        args = (node.attrs["starts"], node.attrs["ends"], node.attrs.get("axes"), None)
    else:
        def as_list(a):
            return None if a is None else np.asarray(a).reshape(-1).tolist()

        args = (as_list(starts), as_list(ends), as_list(axes), as_list(steps))
    per_axis = _slice_args(node, x.ndim, *args)
    index = tuple(slice(*per_axis[a]) if a in per_axis else slice(None) for a in range(x.ndim))
    return x[index]


# ------------------------------------------------------------------ Squeeze, Unsqueeze


@shape_rule("Squeeze")
def _squeeze_shape(node):
    x = node.inputs[0]
    axes = attr_or_input(node, "axes", 1)
    if x.shape is None or (axes is None and node.input(1) is not None):
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    if axes is None:
        if any(d is None for d in x.shape):
            return [TensorType(x.dtype, None)]
        out = [d for d in x.shape if d != 1]
    else:
        drop = {normalize_axis(int(a), rank) for a in axes}
        for a in drop:
            if isinstance(x.shape[a], int) and x.shape[a] != 1:
                raise ShapeError(f"cannot squeeze axis {a} of length {x.shape[a]}")
        out = [d for i, d in enumerate(x.shape) if i not in drop]
    return [TensorType(x.dtype, out, _sym_result(x.dtype, out, _sym_of(x)))]


@kernel("Squeeze")
def _squeeze(node, x, axes=None):
    axes = kernel_arg(node, "axes", axes)
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) % x.ndim for a in np.atleast_1d(axes)))


def _unsqueeze_axes(axes, out_rank):
    axes = sorted(normalize_axis(int(a), out_rank) for a in np.atleast_1d(axes))
    if len(set(axes)) != len(axes):
        raise ShapeError(f"axes {axes} repeat")
    return axes


@shape_rule("Unsqueeze")
def _unsqueeze_shape(node):
    x = node.inputs[0]
    axes = attr_or_input(node, "axes", 1)
    if axes is None:
        return [TensorType(x.dtype, None)]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    out = list(x.shape)
    for a in _unsqueeze_axes(axes, len(x.shape) + len(np.atleast_1d(axes))):
        out.insert(a, 1)
    return [TensorType(x.dtype, out, _sym_result(x.dtype, out, _sym_of(x)))]


@kernel("Unsqueeze")
def _unsqueeze(node, x, axes=None):
    axes = np.atleast_1d(kernel_arg(node, "axes", axes))
    out = x
    for a in _unsqueeze_axes(axes, x.ndim + len(axes)):
        out = np.expand_dims(out, a)
    return out


# ------------------------------------------------------------------ Gather


@shape_rule("Gather")
def _gather_shape(node):
    data, indices = node.inputs[0], node.inputs[1]
    if data.shape is None or indices.shape is None:
        return [TensorType(data.dtype, None)]
    axis = normalize_axis(int(node.attrs.get("axis", 0)), len(data.shape))
    out = list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1:])
    contents = None
    source, picks = _sym_of(data), known_ints(indices)
    if source is not None and picks is not None and len(data.shape) == 1 \
            and all(isinstance(i, int) and -len(source) <= i < len(source) for i in picks):
        contents = [source[i] for i in picks]
    return [TensorType(data.dtype, out, _sym_result(data.dtype, out, contents))]


@kernel("Gather")
def _gather(node, data, indices):
    axis = int(node.attrs.get("axis", 0)) % data.ndim
    indices = np.asarray(indices).astype(np.int64)
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    return np.take(data, indices, axis=axis)


# ------------------------------------------------------------------ Expand, Tile, Range


@shape_rule("Expand")
def _expand_shape(node):
    x, shape = node.inputs[0], node.inputs[1]
    target = known_ints(shape)
    if target is None:
        length = shape.shape
        if x.shape is not None and length is not None and len(length) == 1 and isinstance(length[0], int):
            return [TensorType(x.dtype, (None,) * max(len(x.shape), length[0]))]
        return [TensorType(x.dtype, None)]
    # A 1 in the target keeps the input's dim, whatever it is (it broadcasts the other way).
    return [TensorType(x.dtype, broadcast_shapes(x.shape, tuple(target)))]


@kernel("Expand")
def _expand(node, x, shape):
    target = np.broadcast_shapes(x.shape, tuple(int(d) for d in np.asarray(shape).reshape(-1)))
    return np.array(np.broadcast_to(x, target))


@shape_rule("Tile")
def _tile_shape(node):
    x = node.inputs[0]
    repeats = known_ints(node.inputs[1])
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    if repeats is None:
        return [TensorType(x.dtype, (None,) * len(x.shape))]
    if len(repeats) != len(x.shape):
        raise ShapeError(f"repeats {repeats} do not match rank {len(x.shape)}")
    out = []
    for d, r in zip(x.shape, repeats):
        if r == 1:
            out.append(d)
        elif isinstance(d, int) and isinstance(r, int):
            out.append(d * r)
        else:
            out.append(None)
    return [TensorType(x.dtype, out)]


@kernel("Tile")
def _tile(node, x, repeats):
    return np.tile(x, [int(r) for r in np.asarray(repeats).reshape(-1)])


def _range_length(start, limit, delta) -> int:
    return max(int(math.ceil((limit - start) / delta)), 0)


@shape_rule("Range")
def _range_shape(node):
    start, limit, delta = (static_array(v) for v in node.inputs[:3])
    dtype = node.inputs[0].dtype
    if start is None or limit is None or delta is None:
        return [TensorType(dtype, (None,))]
    length = _range_length(start.item(), limit.item(), delta.item())
    contents = None
    if np.dtype(dtype).kind in "iu":
        contents = list(range(int(start.item()), int(limit.item()), int(delta.item())))
    return [TensorType(dtype, (length,), _sym_result(dtype, (length,), contents))]


@kernel("Range")
def _range(node, start, limit, delta):
    length = _range_length(start.item(), limit.item(), delta.item())
    # start + i * delta, as the spec defines it (np.arange accumulates differently for floats)
    return (start + np.arange(length).astype(start.dtype) * delta).astype(start.dtype)
