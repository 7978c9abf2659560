"""The EIE instruction set: a program is a list of instructions over named activation buffers.

A buffer is a 2-D float32 array, one row per sample (or, after :class:`Im2Col`, per patch);
a sample's features are its tensor flattened in C-order (NCHW images as ``C*H*W``).

- :class:`Load` copies a graph input into a buffer.
- :class:`SpMV` is one fully connected layer, ``dst = relu?(W @ src + bias)``, with ``W`` held
  as in the paper (sec. III-B): rows interleaved over ``pes`` processing elements (row ``i``
  lives in PE ``i % pes`` as local row ``i // pes``); each PE stores its rows in compressed
  sparse column form as a stream of entries, each a ``v``-bit codebook index (``code``) and a
  ``z``-bit relative row index (``rel``), plus ``cols + 1`` pointers per PE into that stream.
- :class:`Store` names a buffer as a graph output.
- :class:`Im2Col`, :class:`Unpatch` and :class:`Pool` are host steps around the engine for
  convolutional nets (EIE itself only does matrix-vector products): ``Im2Col`` is the
  LOAD-side gather that turns each image into one row per output pixel (its receptive
  field, ``C*kh*kw`` values, zeros for padding), so a convolution is an ``SpMV`` over those
  rows with the ``(C_out, C_in*kh*kw)`` weight matrix; ``Unpatch`` puts the per-pixel results
  back into ``C_out*H*W`` image order; ``Pool`` is max or average pooling.

Relative indices (exact): within one PE and one column, an entry with ``rel = r < 2**z - 1``
skips ``r`` zero local rows and holds a weight at the next one; ``rel = 2**z - 1`` is a filler
entry that skips ``2**z - 1`` zero rows and holds no weight. The paper stores a filler as an
explicit zero weight; we mark it by the escape value instead so that all ``2**v`` codes stay
available for shared weights (cluster(bits=4) fills all 16).
"""

from __future__ import annotations

import attrs
import numpy as np


def _array(dtype):
    return attrs.field(converter=lambda a: np.ascontiguousarray(a, dtype=dtype), eq=False)


def _dims(value) -> tuple:
    return tuple(int(v) for v in value)


@attrs.define(eq=False)
class Load:
    """``dst`` <- graph input ``name`` of shape (batch, *``shape``), flattened per sample."""

    name: str
    dst: str
    shape: tuple = attrs.field(converter=_dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@attrs.define(eq=False)
class SpMV:
    """``dst = relu?(W @ src + bias)`` for one layer; see the module docstring for ``W``."""

    layer: str
    src: str
    dst: str
    rows: int
    cols: int
    pes: int
    v_bits: int
    z_bits: int
    relu: bool
    codebook: np.ndarray = _array(np.float32)  # (2**v_bits,) shared weights, unused codes 0
    bias: np.ndarray = _array(np.float32)  # (rows,)
    pe_ptr: np.ndarray = _array(np.int64)  # (pes + 1,) start of each PE's entries
    col_ptr: np.ndarray = _array(np.int64)  # (pes, cols + 1) offsets within a PE's entries
    code: np.ndarray = _array(np.uint16)  # (entries,) v-bit codebook indices
    rel: np.ndarray = _array(np.uint8)  # (entries,) z-bit relative row indices

    @property
    def filler(self) -> int:
        """The relative-index escape value marking a filler entry."""
        return (1 << self.z_bits) - 1

    @property
    def entries(self) -> int:
        return int(self.code.size)

    @property
    def nnz(self) -> int:
        """Stored weights (entries that are not fillers)."""
        return int(np.count_nonzero(self.rel != self.filler))

    @property
    def pointer_bits(self) -> int:
        """Width of a column pointer: 16 bits as in the paper, 32 when a PE's stream is longer."""
        longest = int(np.max(np.diff(self.pe_ptr))) if self.pes else 0
        return 16 if longest < (1 << 16) else 32

    @property
    def storage_bytes(self) -> int:
        """Bytes of the sparse matrix: packed entries plus column pointers (codebook and bias
        excluded; they are a few bytes per layer)."""
        entry_bits = self.entries * (self.v_bits + self.z_bits)
        pointer_bits = self.pes * (self.cols + 1) * self.pointer_bits
        return (entry_bits + 7) // 8 + (pointer_bits + 7) // 8


@attrs.define(eq=False)
class Store:
    """Graph output ``name`` <- buffer ``src``, reshaped to (batch, *``shape``)."""

    src: str
    name: str
    shape: tuple = attrs.field(converter=_dims)


def _window_extent(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                   dilation: int) -> int:
    """Output positions along one axis (ONNX Conv/Pool with ceil_mode=0); <= 0 if none."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


@attrs.define(eq=False)
class Window:
    """The geometry of a sliding window over (channels, height, width) images."""

    channels: int
    height: int
    width: int
    kernel: tuple = attrs.field(converter=_dims)  # (kh, kw)
    stride: tuple = attrs.field(converter=_dims)  # (sh, sw)
    pads: tuple = attrs.field(converter=_dims)  # (top, left, bottom, right)
    dilation: tuple = attrs.field(converter=_dims, default=(1, 1))

    @property
    def out_height(self) -> int:
        return _window_extent(self.height, self.kernel[0], self.stride[0], self.pads[0],
                              self.pads[2], self.dilation[0])

    @property
    def out_width(self) -> int:
        return _window_extent(self.width, self.kernel[1], self.stride[1], self.pads[1],
                              self.pads[3], self.dilation[1])

    @property
    def positions(self) -> int:
        return self.out_height * self.out_width

    def problem(self) -> str | None:
        """Why this window is malformed (a damaged program), or None."""
        numbers = (self.channels, self.height, self.width, *self.kernel, *self.stride,
                   *self.dilation)
        if len(self.kernel) != 2 or len(self.stride) != 2 or len(self.pads) != 4 \
                or len(self.dilation) != 2:
            return "window needs 2 kernel, 2 stride, 4 pad and 2 dilation values"
        if min(numbers) < 1 or min(self.pads) < 0:
            return "window sizes must be positive and pads non-negative"
        extent = (self.dilation[0] * (self.kernel[0] - 1) + 1, self.dilation[1] * (self.kernel[1] - 1) + 1)
        if max(self.pads[0], self.pads[2]) >= extent[0] or max(self.pads[1], self.pads[3]) >= extent[1]:
            return "a pad is as large as the window (only zeros would be read)"
        if self.out_height < 1 or self.out_width < 1:
            return "the window is larger than the padded image"
        return None


@attrs.define(eq=False)
class Im2Col:
    """``dst`` <- one row per output pixel of each image of ``src``: its ``C*kh*kw``
    receptive field in (channel, kernel row, kernel column) order, zeros where padded."""

    src: str
    dst: str
    window: Window


@attrs.define(eq=False)
class Unpatch:
    """``dst`` <- the (batch*positions, channels) rows of ``src`` as (batch, channels*positions)
    images: row ``b*positions + p``, column ``c`` goes to sample ``b``, feature ``c*positions + p``."""

    src: str
    dst: str
    positions: int


@attrs.define(eq=False)
class Pool:
    """``dst`` <- max or average pooling of the images of ``src`` (ONNX MaxPool/AveragePool
    with ceil_mode=0; padding never wins a max; ``count_include_pad`` as in ONNX)."""

    src: str
    dst: str
    kind: str  # "max" | "avg"
    window: Window
    count_include_pad: bool = False


Instruction = Load | SpMV | Store | Im2Col | Unpatch | Pool


@attrs.define(eq=False)
class Program:
    """An EIE program: instructions run in order."""

    instructions: list = attrs.field(factory=list)

    @property
    def layers(self) -> list[SpMV]:
        return [ins for ins in self.instructions if isinstance(ins, SpMV)]

    @property
    def inputs(self) -> list[Load]:
        return [ins for ins in self.instructions if isinstance(ins, Load)]

    @property
    def outputs(self) -> list[Store]:
        return [ins for ins in self.instructions if isinstance(ins, Store)]
