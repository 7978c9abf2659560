"""Constant tensors: the representations a weight goes through as it is compressed.

Every representation answers :meth:`to_numpy` with the float (or integer) array it stands
for, so the interpreter runs a graph at any stage of compression without knowing which one it
holds. ``storage_bytes`` is what the representation needs in memory before entropy coding;
honest on-disk sizes come from the container writer, not from here.

- :class:`Dense` — a plain array, optionally with a pruning ``mask`` (True = kept). The mask
  is part of the IR so later passes and fine-tuning keep pruned weights at exactly zero.
- :class:`Clustered` — weight sharing: a codebook and an index per element (Deep Compression).
- :class:`Quantized` — uniform affine quantization: integers, scale, zero point, and the axis
  the scale varies along (``None`` for per-tensor).
"""

from __future__ import annotations

from typing import Optional

import attrs
import numpy as np


def _as_array(value) -> np.ndarray:
    return np.asarray(value)


@attrs.define(eq=False)
class Tensor:
    """Base of the constant-tensor family."""

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:
        raise NotImplementedError

    def to_numpy(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nnz(self) -> int:
        """Number of non-zero elements of the decoded array."""
        return int(np.count_nonzero(self.to_numpy()))

    @property
    def storage_bytes(self) -> int:
        raise NotImplementedError

    @property
    def kept(self) -> Optional[np.ndarray]:
        """Boolean array, True where a weight survived pruning; None when nothing was pruned.
        Every representation keeps pruned positions at exactly zero."""
        return None

    @property
    def bits(self) -> float:
        """Bits per stored element (before entropy coding)."""
        return 8.0 * self.dtype.itemsize

    def copy(self) -> "Tensor":
        raise NotImplementedError


@attrs.define(eq=False)
class Dense(Tensor):
    """A plain array; ``mask`` (same shape, bool, True = kept) marks pruned positions."""

    array: np.ndarray = attrs.field(converter=_as_array)
    mask: Optional[np.ndarray] = None

    def __attrs_post_init__(self):
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool)
            if self.mask.shape != self.array.shape:
                raise ValueError(f"mask shape {self.mask.shape} != array shape {self.array.shape}")

    @property
    def kept(self):
        return self.mask

    @property
    def shape(self):
        return tuple(self.array.shape)

    @property
    def dtype(self):
        return self.array.dtype

    def to_numpy(self) -> np.ndarray:
        if self.mask is None:
            return self.array
        return np.where(self.mask, self.array, np.zeros((), self.array.dtype))

    @property
    def storage_bytes(self) -> int:
        return int(self.array.nbytes)

    def copy(self) -> "Dense":
        return Dense(self.array.copy(), None if self.mask is None else self.mask.copy())


@attrs.define(eq=False)
class Clustered(Tensor):
    """Shared weights: ``codebook[indices]``; index -1 marks a pruned (exactly zero) weight."""

    codebook: np.ndarray = attrs.field(converter=_as_array)
    indices: np.ndarray = attrs.field(converter=_as_array)

    @property
    def shape(self):
        return tuple(self.indices.shape)

    @property
    def dtype(self):
        return self.codebook.dtype

    @property
    def kept(self):
        return self.indices >= 0 if np.any(self.indices < 0) else None

    @property
    def index_bits(self) -> int:
        return max(1, int(np.ceil(np.log2(max(2, len(self.codebook))))))

    @property
    def bits(self) -> float:
        return float(self.index_bits)

    def to_numpy(self) -> np.ndarray:
        table = np.append(self.codebook, np.zeros(1, self.codebook.dtype))  # index -1 -> 0
        return table[self.indices]

    @property
    def storage_bytes(self) -> int:
        return int(self.codebook.nbytes + (self.size * self.index_bits + 7) // 8)

    def copy(self) -> "Clustered":
        return Clustered(self.codebook.copy(), self.indices.copy())


@attrs.define(eq=False)
class Quantized(Tensor):
    """Affine integers: ``(q - zero_point) * scale``, per tensor or per slice along ``axis``."""

    q: np.ndarray = attrs.field(converter=_as_array)
    scale: np.ndarray = attrs.field(converter=_as_array)
    zero_point: np.ndarray = attrs.field(converter=_as_array)
    axis: Optional[int] = None
    num_bits: int = 8
    float_dtype: np.dtype = attrs.field(default=np.dtype("float32"), converter=np.dtype)
    mask: Optional[np.ndarray] = None  # True = kept; pruned positions decode to exactly zero

    @property
    def kept(self):
        return self.mask

    @property
    def shape(self):
        return tuple(self.q.shape)

    @property
    def dtype(self):
        return self.float_dtype

    @property
    def bits(self) -> float:
        return float(self.num_bits)

    def _broadcast(self, param: np.ndarray) -> np.ndarray:
        if self.axis is None or param.ndim == 0:
            return param
        shape = [1] * self.q.ndim
        shape[self.axis] = -1
        return param.reshape(shape)

    def to_numpy(self) -> np.ndarray:
        q = self.q.astype(np.float64)
        zp = self._broadcast(self.zero_point.astype(np.float64))
        scale = self._broadcast(self.scale.astype(np.float64))
        out = ((q - zp) * scale).astype(self.float_dtype)
        if self.mask is not None:
            out[~self.mask] = 0
        return out

    @property
    def storage_bytes(self) -> int:
        return int((self.size * self.num_bits + 7) // 8 + self.scale.nbytes + self.zero_point.nbytes)

    def copy(self) -> "Quantized":
        return Quantized(self.q.copy(), self.scale.copy(), self.zero_point.copy(), self.axis,
                         self.num_bits, self.float_dtype, None if self.mask is None else self.mask.copy())
