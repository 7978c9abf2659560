"""Convolutions: Conv and ConvTranspose over 1-D, 2-D and 3-D (any N-D) inputs.

Also home of the sliding-window geometry (pads, auto_pad, strides, dilations, ceil_mode) that
the pooling ops share, so Conv and MaxPool agree on every output size.

Conv kernels, fastest case first (all in the input's dtype, float32 stays float32):

- Depthwise convs (one input channel per group): a sum over kernel taps of shifted slices times
  per-channel weights, so memory stays at the size of the output. With one stride on all
  axes the slices are taken from the flattened image, one long slice per tap.
- 1x1 convs on an input in (N, C, spatial...) memory order: a strided slice and one matmul
  per batch item, no im2col.
- Everything else: im2col with one GEMM per chunk of the batch (see the section below):
  the windows are copied into a column matrix, channels last or channels first, whichever
  copies in longer runs, and multiplied by the weights with the bias folded in. The output
  is (N, spatial..., C) memory returned as an (N, C, spatial...) view, which the next conv
  reads without a copy (1x1 convs read it in place).

The Conv gradient builds the same column matrices: the weight's gradient is one GEMM per
chunk, the input's a GEMM and a scatter-add of each kernel tap's slice (no ``np.add.at``).
"""

from __future__ import annotations

import itertools
import threading
from typing import Optional

import attrs
import numpy as np
from numpy.lib.stride_tricks import as_strided

from circ.ops.registry import ShapeError, TensorType, gradient, kernel, shape_rule

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# ------------------------------------------------------------------ window geometry


@attrs.frozen
class Window:
    """Where a sliding window goes along each spatial axis. Pads and output dims are None
    along an axis whose input size is not known before running."""

    kernel: tuple
    strides: tuple
    dilations: tuple
    pads_begin: tuple
    pads_end: tuple
    out_dims: tuple

    @property
    def effective_kernel(self) -> tuple:
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))


def auto_pad_of(node) -> str:
    """The node's ``auto_pad`` attribute as text (ONNX files store it as bytes)."""
    value = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(value, bytes):
        value = value.decode()
    value = value or "NOTSET"
    if value not in _AUTO_PADS:
        raise ShapeError(f"auto_pad {value!r} is not one of {', '.join(_AUTO_PADS)}")
    return value


def int_list(node, name: str, rank: int, default: int) -> tuple:
    """An ints attribute with one entry per spatial axis (``default`` when absent)."""
    value = node.attrs.get(name)
    if value is None or len(value) == 0:
        return (default,) * rank
    value = tuple(int(v) for v in value)
    if len(value) != rank:
        raise ShapeError(f"{name} {list(value)} needs {rank} entries, one per spatial axis")
    return value


def window(node, in_dims, kernel_dims, *, ceil_mode: bool = False) -> Window:
    """Pads and output dims of a sliding window over ``in_dims`` (ints, symbolic or None).

    Follows the ONNX formulas: explicit pads with floor (or ceil) division; SAME_UPPER and
    SAME_LOWER give ``ceil(size / stride)`` outputs with the odd pad at the end (UPPER) or
    the beginning (LOWER); VALID pads nothing. With ``ceil_mode`` a last window that would
    start in the end padding is dropped, as onnxruntime and PyTorch do.
    """
    rank = len(kernel_dims)
    kernel_dims = tuple(int(k) for k in kernel_dims)
    strides = int_list(node, "strides", rank, 1)
    dilations = int_list(node, "dilations", rank, 1)
    if min(strides + dilations + kernel_dims, default=1) < 1:
        raise ShapeError(f"kernel {list(kernel_dims)}, strides {list(strides)} and dilations "
                         f"{list(dilations)} must be positive")
    auto_pad = auto_pad_of(node)
    pads = node.attrs.get("pads")
    if auto_pad == "NOTSET" and pads:
        if len(pads) != 2 * rank:
            raise ShapeError(f"pads {list(pads)} needs {2 * rank} entries")
        pads = [int(p) for p in pads]
    else:
        pads = [0] * (2 * rank)
    begins, ends, outs = [], [], []
    for axis in range(rank):
        size, stride = in_dims[axis], strides[axis]
        extent = (kernel_dims[axis] - 1) * dilations[axis] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if not isinstance(size, (int, np.integer)):
                # stride 1 keeps the size even when it is only known by name
                begins.append(None), ends.append(None)
                outs.append(size if stride == 1 and isinstance(size, str) else None)
                continue
            out = -(-int(size) // stride)
            total = max((out - 1) * stride + extent - int(size), 0)
            small, large = total // 2, total - total // 2
            begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        else:
            begin, end = pads[axis], pads[axis + rank]
            if not isinstance(size, (int, np.integer)):
                begins.append(begin), ends.append(end)
                same = extent == 1 and stride == 1 and begin == end == 0 and isinstance(size, str)
                outs.append(size if same else None)
                continue
            span = int(size) + begin + end - extent
            if span < 0:
                raise ShapeError(f"window of {extent} does not fit spatial size {size} with pads "
                                 f"{begin}, {end}")
            if ceil_mode:
                out = -(-span // stride) + 1
                if (out - 1) * stride >= int(size) + begin:
                    out -= 1
            else:
                out = span // stride + 1
        begins.append(begin), ends.append(end), outs.append(out)
    return Window(kernel_dims, strides, dilations, tuple(begins), tuple(ends), tuple(outs))


def pad_spatial(x: np.ndarray, begins, ends, value=0) -> np.ndarray:
    """``x`` with its spatial axes (2 and on) padded by ``value``; ``x`` itself when no pad."""
    if not any(begins) and not any(ends):
        return x
    shape = x.shape[:2] + tuple(s + b + e for s, b, e in zip(x.shape[2:], begins, ends))
    if _is_channels_last(x):  # keep the memory order of a channels-last input
        out = np.moveaxis(np.full((shape[0],) + shape[2:] + (shape[1],), value, dtype=x.dtype), -1, 1)
    else:
        out = np.full(shape, value, dtype=x.dtype)
    inner = tuple(slice(b, b + s) for b, s in zip(begins, x.shape[2:]))
    out[(slice(None), slice(None)) + inner] = x
    return out


def fit_windows(x: np.ndarray, win: Window, value=0) -> np.ndarray:
    """``x`` padded so every window of ``win`` lies inside it (ceil_mode may need more than
    the pads ask for)."""
    return pad_spatial(x, win.pads_begin, _fitted_ends(x.shape[2:], win), value)


def tap_slices(win: Window, tap: tuple) -> tuple:
    """Index of the input elements that kernel tap ``tap`` meets across all output positions
    (for an input padded by :func:`fit_windows`)."""
    return (slice(None), slice(None)) + tuple(
        slice(t * d, t * d + (o - 1) * s + 1, s)
        for t, d, s, o in zip(tap, win.dilations, win.strides, win.out_dims))


def windows_view(x: np.ndarray, win: Window) -> np.ndarray:
    """Read-only view ``(N, C, *kernel, *out)`` of every window of a padded ``x``."""
    spatial = x.strides[2:]
    shape = x.shape[:2] + win.kernel + win.out_dims
    strides = (x.strides[:2] + tuple(st * d for st, d in zip(spatial, win.dilations))
               + tuple(st * s for st, s in zip(spatial, win.strides)))
    return as_strided(x, shape, strides, writeable=False)


def _kernel_window(node, in_dims, kernel_dims, ceil_mode: bool = False) -> Window:
    """:func:`window` for kernels, where a bad geometry is a ValueError the interpreter reports."""
    try:
        return window(node, in_dims, kernel_dims, ceil_mode=ceil_mode)
    except ShapeError as err:
        raise ValueError(str(err)) from None


# ------------------------------------------------------------------ Conv


def _conv_kernel_dims(node, weight_shape) -> Optional[tuple]:
    """The kernel's spatial dims: the ``kernel_shape`` attribute (which must agree with the
    weight) or the weight's trailing dims; None when neither is known."""
    dims = node.attrs.get("kernel_shape")
    if dims:
        dims = tuple(int(k) for k in dims)
        if weight_shape is not None and any(
                isinstance(w, int) and w != k for w, k in zip(weight_shape[2:], dims)):
            raise ShapeError(f"kernel_shape {list(dims)} disagrees with the weight's shape "
                             f"{list(weight_shape)}")
        return dims
    if weight_shape is None or any(not isinstance(d, (int, np.integer)) for d in weight_shape[2:]):
        return None
    return tuple(int(d) for d in weight_shape[2:])


def _check_operands(node) -> int:
    """Spatial rank of a Conv/ConvTranspose whose input shape is known; checks the ranks."""
    x, w = node.inputs[0], node.inputs[1]
    if len(x.shape) < 3:
        raise ShapeError(f"{node.op} input must be (N, C, spatial...), got rank {len(x.shape)}")
    rank = len(x.shape) - 2
    if w.shape is not None and len(w.shape) != rank + 2:
        raise ShapeError(f"weight rank {len(w.shape)} does not match input rank {rank + 2}")
    return rank


@shape_rule("Conv")
def _conv_shape(node):
    x, w = node.inputs[0], node.inputs[1]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = _check_operands(node)
    group = int(node.attrs.get("group", 1))
    out_channels = None
    if w.shape is not None:
        out_channels = w.shape[0]
        channels, per_group = x.shape[1], w.shape[1]
        if isinstance(channels, int) and isinstance(per_group, int) and channels != per_group * group:
            raise ShapeError(f"input has {channels} channels but weight expects {per_group} per "
                             f"group x {group} groups")
    kernel_dims = _conv_kernel_dims(node, w.shape)
    if kernel_dims is None:
        return [TensorType(x.dtype, (x.shape[0], out_channels) + (None,) * rank)]
    if len(kernel_dims) != rank:
        raise ShapeError(f"kernel_shape {list(kernel_dims)} does not match {rank} spatial axes")
    win = window(node, x.shape[2:], kernel_dims)
    return [TensorType(x.dtype, (x.shape[0], out_channels) + win.out_dims)]


@kernel("Conv")
def _conv(node, x, w, bias=None):
    kernel_dims = tuple(w.shape[2:])
    win = _kernel_window(node, x.shape[2:], kernel_dims)
    group = int(node.attrs.get("group", 1))
    w = w.astype(x.dtype, copy=False)
    channels, out_channels = x.shape[1], w.shape[0]
    if channels != w.shape[1] * group or out_channels % group:
        raise ValueError(f"input channels {channels}, weight {list(w.shape)} and group {group} "
                         f"do not fit")
    bias = None if bias is None else bias.astype(x.dtype, copy=False)
    depthwise = w.shape[1] == 1 and group > 1
    pointwise = all(k == 1 for k in kernel_dims)
    if depthwise and len(set(win.strides)) == 1:
        out = _depthwise_flat(x, w, win, group)
    elif depthwise:
        out = _depthwise(fit_windows(x, win), w, win, group)
    elif pointwise and not _is_channels_last(x):
        out = _pointwise(fit_windows(x, win), w, win, group)
    elif pointwise or _prefers_channels_last(x, w, win, group):
        return _conv_channels_last(x, w, win, group, bias)
    else:
        return _conv_channels_first(x, w, win, group, bias)
    if bias is not None:
        out += bias.reshape((-1,) + (1,) * len(kernel_dims))
    return out


def _pointwise(padded, w, win, group):
    """1x1 kernels on a (N, C, spatial...) ordered input: sample the input at the strides,
    then one matmul per batch item and group, giving the output in the same order."""
    batch, channels = padded.shape[:2]
    sampled = padded[tap_slices(win, (0,) * len(win.kernel))]
    pixels = int(np.prod(win.out_dims))
    cols = sampled.reshape(batch, group, channels // group, pixels)
    weights = w.reshape(group, w.shape[0] // group, channels // group)
    return np.matmul(weights, cols).reshape((batch, w.shape[0]) + win.out_dims)


# ------------------------------------------------------------------ im2col with one GEMM
#
# The general kernel copies the windows into a column matrix and multiplies it by the
# weights, one large GEMM per chunk of the batch (BLAS runs its threads on it), instead of
# one small GEMM per batch item. How fast the copy goes depends on how long its contiguous
# runs are, so there are two layouts:
#
# - channels last: rows are output pixels, columns (taps, channels); the input is first
#   copied into an (N, spatial..., C) buffer (with its pads), where a window row of
#   ``kernel_width * channels`` values is contiguous. The output comes out as (N, spatial...,
#   C) memory and is returned as a transposed view, so a following channels-last conv (or
#   Relu, BatchNormalization, Add, which keep their input's memory order) needs no copy.
# - channels first: rows (channels, taps), columns (batch, pixels); a run is one output row
#   of the input (``out_width`` values at stride 1). Better for few input channels, such as
#   a first layer on a grey or RGB image at stride 1, and when there are fewer output pixels
#   than output channels (the weights are used as stored; see _prefers_channels_last).
#   Without groups the GEMM is ordered to write channels-last output too.

# Bytes of column matrix built at once: large enough that BLAS runs near full speed on two
# threads, small enough that a VGG layer at batch 8 needs megabytes, not gigabytes.
IM2COL_CHUNK_BYTES = 1 << 24


_scratch_space = threading.local()


def _scratch(slot: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array for temporary use, from a per-thread buffer kept between calls.

    Column matrices are rebuilt for every chunk of every call; allocating them fresh costs a
    page fault per 4 KiB (as much time as the copy itself), so each thread keeps one buffer
    per ``slot`` (at most about :data:`IM2COL_CHUNK_BYTES`) and hands out views of it. A view
    is only valid until the next call with the same slot on the same thread."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buffers = getattr(_scratch_space, "buffers", None)
    if buffers is None:
        buffers = _scratch_space.buffers = {}
    buffer = buffers.get(slot)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=np.uint8)
        if size <= IM2COL_CHUNK_BYTES:
            buffers[slot] = buffer
    return buffer[:size].view(dtype).reshape(shape)


def _is_channels_last(x: np.ndarray) -> bool:
    """True when ``x`` (N, C, spatial...) is a view of (N, spatial..., C) contiguous memory
    (and not also plainly contiguous, as with one channel)."""
    return (x.ndim > 2 and not x.flags.c_contiguous
            and np.moveaxis(x, 1, -1).flags.c_contiguous)


def _prefers_channels_last(x, w, win: Window, group: int) -> bool:
    """Whether the channels-last columns are cheaper to build: their copy has runs at least
    as long as channels-first's, and there are more pixels than output channels (otherwise
    re-laying the weights, which channels-first uses as they are, costs more than the copy
    saves: late ResNet layers at batch 1)."""
    if x.shape[0] * int(np.prod(win.out_dims)) < w.shape[0]:
        return False
    per_group = w.shape[1]
    last_run = per_group * (win.kernel[-1] if group == 1 and win.dilations[-1] == 1 else 1)
    first_run = win.out_dims[-1] if win.strides[-1] == 1 else 1
    return last_run >= first_run


def _gradient_prefers_channels_last(x, w, win: Window, group: int) -> bool:
    """:func:`_prefers_channels_last`, and the scatter of the input's gradient also runs
    longer channels last: its runs are ``channels`` long there (``out_width * channels`` at
    stride 1), ``out_width`` channels first. A strided stem on an RGB image (3-element runs)
    scatters channels first."""
    width = win.out_dims[-1]
    last_run = w.shape[1] * (width if group == 1 and win.strides[-1] == 1 else 1)
    return _prefers_channels_last(x, w, win, group) and last_run >= width


def _fitted_ends(in_dims, win: Window) -> list:
    """End pads so that every window of ``win`` lies inside the padded input (ceil_mode may
    need more than the pads ask for)."""
    ends = []
    for size, begin, end, out, stride, extent in zip(in_dims, win.pads_begin, win.pads_end,
                                                      win.out_dims, win.strides, win.effective_kernel):
        ends.append(max((out - 1) * stride + extent - size - begin, end))
    return ends


def _chunks(batch: int, rows: int, row_bytes: int):
    """``(n0, n1, r0, r1)`` pieces of the batch and the first output axis whose column
    matrices stay near :data:`IM2COL_CHUNK_BYTES`: whole batch items when one fits, else
    rows of one item (so each piece of a channels-last output is contiguous)."""
    item_bytes = max(rows * row_bytes, 1)
    if item_bytes <= IM2COL_CHUNK_BYTES:
        step = max(1, IM2COL_CHUNK_BYTES // item_bytes)
        for start in range(0, batch, step):
            yield start, min(start + step, batch), 0, rows
        return
    step = max(1, IM2COL_CHUNK_BYTES // max(row_bytes, 1))
    for item in range(batch):
        for start in range(0, rows, step):
            yield item, item + 1, start, min(start + step, rows)


class _ChannelsLast:
    """Channels-last im2col of one Conv: the padded input as (N, spatial..., G, Cg), the
    window view over it and the weights as (G, Cout / G, taps * Cg) (each output channel's
    (Cg, taps) block transposed, a cheap copy next to a full (taps, Cg, Cout) transpose).

    With a bias, each group's column matrix gets a last column of ones and the weights a
    last row holding the bias, so the GEMM adds it (a separate add over a (pixels, Cout)
    output with few channels costs as much as the copy)."""

    def __init__(self, x, w, win: Window, group: int, bias=None):
        rank = len(win.kernel)
        batch, channels = x.shape[:2]
        self.win, self.group, self.rank = win, group, rank
        self.per_group, self.out_per_group = channels // group, w.shape[0] // group
        self.depth = self.per_group * int(np.prod(win.kernel))
        ends = _fitted_ends(x.shape[2:], win)
        self.padded_dims = tuple(s + b + e for s, b, e in zip(x.shape[2:], win.pads_begin, ends))
        self.inner = tuple(slice(b, b + s) for b, s in zip(win.pads_begin, x.shape[2:]))
        moved = np.moveaxis(x, 1, -1)
        if self.padded_dims == x.shape[2:] and moved.flags.c_contiguous:
            padded = moved
        else:
            padded = np.zeros((batch,) + self.padded_dims + (channels,), dtype=x.dtype)
            padded[(slice(None),) + self.inner] = moved
        self.padded = padded
        spatial = padded.strides[1:-1]
        item = padded.itemsize
        shape = (batch,) + win.out_dims + win.kernel + (group, self.per_group)
        strides = ((padded.strides[0],) + tuple(st * s for st, s in zip(spatial, win.strides))
                   + tuple(st * d for st, d in zip(spatial, win.dilations))
                   + (self.per_group * item, item))
        view = as_strided(padded, shape, strides, writeable=False)
        # (N, out..., G, taps..., Cg): one row of the column matrix per output pixel and group
        order = (0,) + tuple(range(1, rank + 1)) + (2 * rank + 1,) \
            + tuple(range(rank + 1, 2 * rank + 1)) + (2 * rank + 2,)
        self.view = view.transpose(order)
        taps = int(np.prod(win.kernel))
        weights = w.reshape(group, self.out_per_group, self.per_group, taps) \
            .transpose(0, 1, 3, 2).reshape(group, self.out_per_group, self.depth)
        # a 1x1 kernel at stride 1 reads its input in place: no copy to add a column to
        self.in_place = self.view.flags.c_contiguous
        self.bias = bias
        self.with_bias = bias is not None and not self.in_place
        if self.with_bias:
            weights = np.concatenate([weights, bias.reshape(group, self.out_per_group, 1)], axis=2)
        self.weights = weights
        self.width = self.depth + self.with_bias
        self.row_bytes = int(np.prod(win.out_dims[1:])) * group * self.width * item

    def chunks(self):
        return _chunks(self.view.shape[0], self.win.out_dims[0], self.row_bytes)

    def cols(self, n0, n1, r0, r1) -> np.ndarray:
        """Column matrix ``(pixels, G, width)`` of batch items n0:n1, output rows r0:r1."""
        piece = self.view[n0:n1, r0:r1]
        if self.in_place:
            return piece.reshape(-1, self.group, self.depth)
        cols = _scratch("cols", piece.shape[:1 + self.rank] + (self.group, self.width), piece.dtype)
        np.copyto(cols[..., :self.depth].reshape(piece.shape), piece)
        if self.with_bias:
            cols[..., self.depth] = 1
        return cols.reshape(-1, self.group, self.width)


def _conv_channels_last(x, w, win: Window, group: int, bias):
    plan = _ChannelsLast(x, w, win, group, bias)
    batch, out_channels = x.shape[0], w.shape[0]
    out = np.empty((batch,) + win.out_dims + (out_channels,), dtype=x.dtype)
    for n0, n1, r0, r1 in plan.chunks():
        cols = plan.cols(n0, n1, r0, r1)
        target = out[n0:n1, r0:r1].reshape(-1, out_channels)  # contiguous: a view
        if group == 1:
            _matmul_into(target, cols[:, 0], plan.weights[0].T)
        else:
            products = np.matmul(cols.transpose(1, 0, 2), plan.weights.transpose(0, 2, 1))
            target.reshape(-1, group, plan.out_per_group)[...] = products.transpose(1, 0, 2)
        if plan.in_place and bias is not None:
            target += bias
    return np.moveaxis(out, -1, 1)


class _ChannelsFirst:
    """Channels-first im2col of one Conv: the window view (G, Cg, taps..., N, out...) of the
    padded input and the weights as (G, Cout / G, Cg * taps); with a bias, a last row of
    ones in the columns and the bias as the weights' last column (see :class:`_ChannelsLast`)."""

    def __init__(self, x, w, win: Window, group: int, bias=None):
        rank = len(win.kernel)
        batch, channels = x.shape[:2]
        self.win, self.group, self.rank = win, group, rank
        self.per_group, self.out_per_group = channels // group, w.shape[0] // group
        self.depth = self.per_group * int(np.prod(win.kernel))
        if not x.flags.c_contiguous:
            # windows of a channels-last input would be read one element at a time
            x = np.ascontiguousarray(x)
        self.padded = fit_windows(x, win)
        view = windows_view(self.padded, win)
        view = view.reshape((batch, group, self.per_group) + win.kernel + win.out_dims)
        self.view = view.transpose((1, 2) + tuple(range(3, 3 + rank)) + (0,)
                                   + tuple(range(3 + rank, 3 + 2 * rank)))
        weights = w.reshape(group, self.out_per_group, self.depth)
        self.with_bias = bias is not None
        if self.with_bias:
            weights = np.concatenate([weights, bias.reshape(group, self.out_per_group, 1)], axis=2)
        self.weights = weights
        self.width = self.depth + self.with_bias
        self.row_bytes = int(np.prod(win.out_dims[1:])) * group * self.width * x.itemsize

    def chunks(self):
        return _chunks(self.padded.shape[0], self.win.out_dims[0], self.row_bytes)

    def cols(self, n0, n1, r0, r1) -> np.ndarray:
        """Column matrix ``(G, width, pixels)`` of batch items n0:n1, output rows r0:r1."""
        piece = self.view[(slice(None),) * (2 + self.rank) + (slice(n0, n1), slice(r0, r1))]
        pixels = int(np.prod(piece.shape[2 + self.rank:]))
        cols = _scratch("cols", (self.group, self.width, pixels), piece.dtype)
        np.copyto(cols[:, :self.depth].reshape(piece.shape), piece)
        if self.with_bias:
            cols[:, self.depth] = 1
        return cols

    def batch_major(self, array, n0, n1, r0, r1) -> np.ndarray:
        """``(G, rows, pixels)`` products of one chunk as (n, G, rows, out...)."""
        dims = (n1 - n0, r1 - r0) + self.win.out_dims[1:]
        array = array.reshape(array.shape[:2] + dims)
        return np.moveaxis(array, 2, 0)


def _conv_channels_first(x, w, win: Window, group: int, bias):
    plan = _ChannelsFirst(x, w, win, group, bias)
    batch, out_channels = x.shape[0], w.shape[0]
    if group == 1:
        # cols^T @ weights^T writes (pixels, Cout) rows: channels-last output, no transpose
        out = np.empty((batch,) + win.out_dims + (out_channels,), dtype=x.dtype)
        for n0, n1, r0, r1 in plan.chunks():
            target = out[n0:n1, r0:r1].reshape(-1, out_channels)  # contiguous: a view
            _matmul_into(target, plan.cols(n0, n1, r0, r1)[0].T, plan.weights[0].T)
        return np.moveaxis(out, -1, 1)
    out = np.empty((batch, group, plan.out_per_group) + win.out_dims, dtype=x.dtype)
    for n0, n1, r0, r1 in plan.chunks():
        products = np.matmul(plan.weights, plan.cols(n0, n1, r0, r1))
        out[n0:n1, :, :, r0:r1] = plan.batch_major(products, n0, n1, r0, r1)
    return out.reshape((batch, out_channels) + win.out_dims)


def _sum_but_channels(grad: np.ndarray) -> np.ndarray:
    """Sum over all axes but the channels (axis 1), reading channels-last memory as rows
    of channels (a reduction over its outer axes goes one short row at a time)."""
    if _is_channels_last(grad):
        return np.moveaxis(grad, 1, -1).reshape(-1, grad.shape[1]).sum(axis=0)
    return grad.sum(axis=(0,) + tuple(range(2, grad.ndim)))


def _tall_matmul(left, right):
    """``left @ right`` (stacks of matrices), computed as ``(right^T @ left^T)^T`` when that
    product has more rows than columns.

    On a loaded 2-core machine, two-threaded OpenBLAS often takes 10-100 times longer on a
    product with few rows than on its transpose (64 x 800 @ 800 x 500: 35 ms against 3 ms;
    the first weight gradient of LeNet, 20 x 36864 @ 36864 x 25, up to 900 ms against
    1 ms); on an idle machine both orders run alike."""
    if left.shape[-2] >= right.shape[-1]:
        return np.matmul(left, right)
    return np.matmul(np.swapaxes(right, -1, -2), np.swapaxes(left, -1, -2)).swapaxes(-1, -2)


def _matmul_into(target, left, right) -> None:
    """``target[...] = left @ right`` for matrices, as a tall product (:func:`_tall_matmul`)
    written straight into ``target`` when it has more rows than columns (late ResNet
    layers at batch 1 have 49 pixels and 512 or 2048 channels: transposed there)."""
    if target.shape[0] >= target.shape[1]:
        np.matmul(left, right, out=target)
    else:
        target[...] = np.matmul(right.T, left.T).T


def _windows_disjoint(win: Window) -> bool:
    """Whether no input element is in two windows (each stride at least the window's
    extent, as in 1x1 convs and patch embeddings): the gradient's scatter then writes each
    element once and can assign instead of add."""
    return all(s >= e for s, e in zip(win.strides, win.effective_kernel))


@gradient("Conv")
def _conv_grad(node, inputs, outputs, grad_outputs):
    """Gradients of Conv through the same column matrices as the forward kernel, chunk by
    chunk: the weight's is ``grad^T @ cols`` (one GEMM over all batch items of a chunk); the
    input's is ``grad @ weights`` scattered back to the input one kernel tap at a time (each
    tap meets distinct input elements, so a plain ``+=`` on its slice is exact)."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    grad = grad_outputs[0]
    win = _kernel_window(node, x.shape[2:], tuple(w.shape[2:]))
    group = int(node.attrs.get("group", 1))
    w = w.astype(x.dtype, copy=False)
    grad = grad.astype(x.dtype, copy=False)
    if _gradient_prefers_channels_last(x, w, win, group):
        grad_x, grad_w = _grad_channels_last(x, w, win, group, grad)
    else:
        grad_x, grad_w = _grad_channels_first(x, w, win, group, grad)
    grad_bias = None if bias is None else _sum_but_channels(grad)
    return [grad_x, grad_w, grad_bias][: len(inputs)]


def _grad_channels_last(x, w, win: Window, group: int, grad):
    plan = _ChannelsLast(x, w, win, group)
    rank, channels = plan.rank, x.shape[1]
    grad_last = np.ascontiguousarray(np.moveaxis(grad, 1, -1))  # (N, out..., G * Cog)
    grad_weights = np.zeros_like(plan.weights)  # (G, Cog, depth)
    grad_padded = np.zeros(plan.padded.shape, dtype=x.dtype)  # (N, padded..., C)
    taps = list(itertools.product(*(range(k) for k in win.kernel)))
    disjoint = _windows_disjoint(win)
    for n0, n1, r0, r1 in plan.chunks():
        cols = plan.cols(n0, n1, r0, r1)  # (m, G, depth)
        grad_piece = grad_last[n0:n1, r0:r1].reshape(-1, group, plan.out_per_group)
        by_group = grad_piece.transpose(1, 0, 2)  # (G, m, Cog)
        grad_weights += _tall_matmul(by_group.transpose(0, 2, 1), cols.transpose(1, 0, 2))
        dims = (n1 - n0, r1 - r0) + win.out_dims[1:]
        # one GEMM for all taps (one GEMM per tap was 25 small multithreaded BLAS calls),
        # then reordered tap-major so each tap's piece is contiguous for the scatter below
        products = np.matmul(by_group, plan.weights)  # (G, m, taps * Cg)
        grad_cols = _scratch("grad_cols", (group, len(taps), cols.shape[0], plan.per_group),
                             x.dtype)
        np.copyto(grad_cols, products.reshape(grad_cols.shape[:1] + grad_cols.shape[2:3]
                                              + grad_cols.shape[1:2] + grad_cols.shape[3:])
                  .transpose(0, 2, 1, 3))
        for index, tap in enumerate(taps):
            target = (slice(n0, n1),) + tuple(
                slice(t * d + start * s, t * d + (start + o - 1) * s + 1, s)
                for t, d, s, o, start in zip(tap, win.dilations, win.strides, dims[1:],
                                             (r0,) + (0,) * (rank - 1)))
            piece = np.moveaxis(grad_cols[:, index], 0, -2)  # (m, G, Cg)
            if disjoint:
                grad_padded[target] = piece.reshape(dims + (channels,))
            else:
                grad_padded[target] += piece.reshape(dims + (channels,))
    grad_x = np.moveaxis(grad_padded[(slice(None),) + plan.inner], -1, 1)
    grad_w = grad_weights.reshape(w.shape[0], len(taps), plan.per_group).transpose(0, 2, 1)
    return grad_x, np.ascontiguousarray(grad_w).reshape(w.shape)


def _grad_channels_first(x, w, win: Window, group: int, grad):
    plan = _ChannelsFirst(x, w, win, group)
    rank, batch = plan.rank, x.shape[0]
    grad_groups = grad.reshape((batch, group, plan.out_per_group) + win.out_dims)
    grad_weights = np.zeros_like(plan.weights)  # (G, Cog, depth)
    grad_padded = np.zeros(plan.padded.shape, dtype=x.dtype)  # (N, C, padded...)
    taps = list(itertools.product(*(range(k) for k in win.kernel)))
    disjoint = _windows_disjoint(win)
    for n0, n1, r0, r1 in plan.chunks():
        cols = plan.cols(n0, n1, r0, r1)  # (G, depth, m)
        piece = grad_groups[n0:n1, :, :, r0:r1]  # (n, G, Cog, rows, out...)
        grad_piece = np.ascontiguousarray(np.moveaxis(piece, 0, 2)).reshape(
            group, plan.out_per_group, -1)
        grad_weights += _tall_matmul(grad_piece, cols.transpose(0, 2, 1))
        grad_cols = np.matmul(plan.weights.transpose(0, 2, 1), grad_piece)  # (G, depth, m)
        dims = (n1 - n0, r1 - r0) + win.out_dims[1:]
        grad_cols = grad_cols.reshape((group * plan.per_group,) + win.kernel + dims)
        for tap in taps:
            target = (slice(n0, n1), slice(None)) + tuple(
                slice(t * d + start * s, t * d + (start + o - 1) * s + 1, s)
                for t, d, s, o, start in zip(tap, win.dilations, win.strides, dims[1:],
                                             (r0,) + (0,) * (rank - 1)))
            if disjoint:
                grad_padded[target] = np.moveaxis(grad_cols[(slice(None),) + tap], 1, 0)
            else:
                grad_padded[target] += np.moveaxis(grad_cols[(slice(None),) + tap], 1, 0)
    grad_x = grad_padded[(slice(None), slice(None)) + tuple(
        slice(b, b + s) for b, s in zip(win.pads_begin, x.shape[2:]))]
    return grad_x, grad_weights.reshape(w.shape)


def _depthwise(padded, w, win, group):
    """One input channel per group: a sum over kernel taps of shifted input times one weight
    per channel. ``w`` is ``(group * multiplier, 1, *kernel)``."""
    batch = padded.shape[0]
    multiplier = w.shape[0] // group
    out = np.zeros((batch, group, multiplier) + win.out_dims, dtype=padded.dtype)
    scratch = np.empty_like(out)
    weights = w.reshape((group, multiplier) + win.kernel)
    spatial_ones = (1,) * len(win.kernel)
    for tap in itertools.product(*(range(k) for k in win.kernel)):
        piece = padded[tap_slices(win, tap)][:, :, None]
        weight = weights[(slice(None), slice(None)) + tap].reshape((group, multiplier) + spatial_ones)
        np.multiply(piece, weight, out=scratch)
        out += scratch
    return out.reshape((batch, group * multiplier) + win.out_dims)


def _depthwise_flat(x, w, win, group):
    """Depthwise conv with one stride on all axes, on the flattened spatial axes.

    With ``flat`` indexing by the padded input's row lengths, output position ``o`` of tap
    ``t`` reads flat input ``stride * flat(o) + offset(t)``, so each tap is one long 1-D
    strided slice (NumPy's fast inner loop) instead of many short rows. The output is
    computed over the padded width and cropped: a little extra arithmetic for much less loop
    overhead. ``x`` is the unpadded input; the padded copy is made here, in a buffer long
    enough for the last tap's slice.
    """
    batch = x.shape[0]
    stride = win.strides[0]
    multiplier = w.shape[0] // group
    dims = tuple(s + b + e for s, b, e in zip(x.shape[2:], win.pads_begin, win.pads_end))
    row_sizes = [int(np.prod(dims[axis + 1:])) for axis in range(len(dims))]
    length = win.out_dims[0] * row_sizes[0]
    offsets = [sum(t * d * r for t, d, r in zip(tap, win.dilations, row_sizes))
               for tap in itertools.product(*(range(k) for k in win.kernel))]
    size = int(np.prod(dims))
    flat = np.zeros((batch, group, 1, max(stride * (length - 1) + max(offsets) + 1, size)),
                    dtype=x.dtype)
    image = flat[:, :, 0, :size].reshape((batch, group) + dims)
    image[(slice(None), slice(None)) + tuple(
        slice(b, b + s) for b, s in zip(win.pads_begin, x.shape[2:]))] = x
    weights = w.reshape((group, multiplier, -1))
    out = None
    for index, offset in enumerate(offsets):
        piece = flat[..., offset: offset + stride * (length - 1) + 1: stride]
        if out is None:
            out = piece * weights[:, :, index: index + 1]
            scratch = np.empty_like(out)
        else:
            np.multiply(piece, weights[:, :, index: index + 1], out=scratch)
            out += scratch
    out = out.reshape((batch, group * multiplier, win.out_dims[0]) + dims[1:])
    # a cropped view, not a copy: consumers read strided arrays as fast
    return out[(slice(None),) * 3 + tuple(slice(0, o) for o in win.out_dims[1:])]


# ------------------------------------------------------------------ ConvTranspose


@attrs.frozen
class TransposeGeometry:
    """Where ConvTranspose's full (uncropped) output is cropped: ``pads_begin`` and output
    dims per spatial axis; entries None when not known before running."""

    pads_begin: tuple
    out_dims: tuple


def transpose_geometry(node, in_dims, kernel_dims) -> TransposeGeometry:
    """Output dims of ConvTranspose.

    Without ``output_shape`` (and auto_pad NOTSET/VALID) the size is
    ``stride * (in - 1) + output_padding + (kernel - 1) * dilation + 1 - pads``. With
    ``output_shape``, or auto_pad SAME_* (output ``in * stride``), the total padding follows
    from the requested size and is split as the ONNX text says (and onnxruntime does): the
    odd element goes to the end for SAME_UPPER and to the beginning otherwise.
    """
    rank = len(kernel_dims)
    strides = int_list(node, "strides", rank, 1)
    dilations = int_list(node, "dilations", rank, 1)
    out_pad = int_list(node, "output_padding", rank, 0)
    auto_pad = auto_pad_of(node)
    pads = [int(p) for p in node.attrs.get("pads") or [0] * (2 * rank)]
    if len(pads) != 2 * rank:
        raise ShapeError(f"pads {pads} needs {2 * rank} entries")
    requested = node.attrs.get("output_shape")
    if requested is not None and len(requested) == 0:
        requested = None
    if requested is not None:
        requested = [int(v) for v in requested][-rank:]
        if len(requested) != rank:
            raise ShapeError(f"output_shape {list(requested)} needs {rank} spatial entries")
    begins, outs = [], []
    for axis in range(rank):
        size = in_dims[axis]
        extent = (kernel_dims[axis] - 1) * dilations[axis] + 1
        if not isinstance(size, (int, np.integer)):
            begins.append(None)
            outs.append(requested[axis] if requested is not None else None)
            continue
        full = strides[axis] * (int(size) - 1) + out_pad[axis] + extent
        if requested is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = requested[axis] if requested is not None else int(size) * strides[axis]
            total = full - out
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            # A requested size past the natural one (by less than a stride, like
            # output_padding) adds zeros at the end, as in onnxruntime.
            begin = max(begin, 0)
        elif auto_pad == "VALID":
            begin, out = 0, full
        else:
            begin, out = pads[axis], full - pads[axis] - pads[axis + rank]
        if out < 1:
            raise ShapeError(f"output size {out} along spatial axis {axis} is not positive")
        begins.append(begin), outs.append(out)
    return TransposeGeometry(tuple(begins), tuple(outs))


@shape_rule("ConvTranspose")
def _conv_transpose_shape(node):
    x, w = node.inputs[0], node.inputs[1]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = _check_operands(node)
    group = int(node.attrs.get("group", 1))
    out_channels = None
    if w.shape is not None:
        if isinstance(w.shape[1], int):
            out_channels = w.shape[1] * group
    kernel_dims = _conv_kernel_dims(node, w.shape)
    if kernel_dims is None:
        return [TensorType(x.dtype, (x.shape[0], out_channels) + (None,) * rank)]
    geometry = transpose_geometry(node, x.shape[2:], kernel_dims)
    return [TensorType(x.dtype, (x.shape[0], out_channels) + geometry.out_dims)]


@kernel("ConvTranspose")
def _conv_transpose(node, x, w, bias=None):
    kernel_dims = tuple(w.shape[2:])
    in_dims = x.shape[2:]
    try:
        geometry = transpose_geometry(node, in_dims, kernel_dims)
    except ShapeError as err:
        raise ValueError(str(err)) from None
    rank = len(kernel_dims)
    strides = int_list(node, "strides", rank, 1)
    dilations = int_list(node, "dilations", rank, 1)
    group = int(node.attrs.get("group", 1))
    w = w.astype(x.dtype, copy=False)
    batch, channels = x.shape[:2]
    if channels != w.shape[0] or channels % group:
        raise ValueError(f"input channels {channels}, weight {list(w.shape)} and group {group} "
                         f"do not fit")
    per_group_out = w.shape[1]
    out_channels = per_group_out * group
    taps = int(np.prod(kernel_dims))
    pixels = int(np.prod(in_dims))
    # cols[n, g, (m, taps), p] = sum_c w[g, c, (m, taps)] * x[n, g, c, p]
    weights = w.reshape(group, channels // group, per_group_out * taps).transpose(0, 2, 1)
    cols = np.matmul(weights, x.reshape(batch, group, channels // group, pixels))
    cols = cols.reshape((batch, out_channels) + kernel_dims + in_dims)
    # Scatter-add each tap into the full output, then crop the pads. The buffer is large
    # enough for any crop window, including output_shape past the natural size.
    full_dims = []
    for axis in range(rank):
        natural = strides[axis] * (in_dims[axis] - 1) + (kernel_dims[axis] - 1) * dilations[axis] + 1
        full_dims.append(max(natural, geometry.pads_begin[axis] + geometry.out_dims[axis]))
    full = np.zeros((batch, out_channels) + tuple(full_dims), dtype=x.dtype)
    for tap in itertools.product(*(range(k) for k in kernel_dims)):
        target = (slice(None), slice(None)) + tuple(
            slice(t * d, t * d + (size - 1) * s + 1, s)
            for t, d, s, size in zip(tap, dilations, strides, in_dims))
        full[target] += cols[(slice(None), slice(None)) + tap]
    crop = (slice(None), slice(None)) + tuple(
        slice(b, b + size) for b, size in zip(geometry.pads_begin, geometry.out_dims))
    out = np.ascontiguousarray(full[crop])
    if bias is not None:
        out += bias.astype(out.dtype, copy=False).reshape((-1,) + (1,) * rank)
    return out
