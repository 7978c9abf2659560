"""Shape-manipulating ops: Reshape Flatten Transpose Concat Split Slice Squeeze Unsqueeze Gather
Shape Size Constant ConstantOfShape Identity Dropout Pad Cast CastLike Expand Tile Range, and
Resize/Upsample (nearest, linear, cubic; not tf_crop_and_resize, not antialiased downsampling).

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
from circ.errors import ModelError
from circ.ops.registry import (
    ShapeError, TensorType, attr_or_input, broadcast_shapes, dim_product, get_op, kernel, kernel_arg,
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
