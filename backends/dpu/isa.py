"""The DPU instruction set: an int8 dense engine in the style of DeePhi's DPU (Angel-Eye).

A :class:`Program` has three parts:

- a **tensor table** (:class:`TensorDesc`): every activation tensor the program keeps in DRAM,
  its shape per sample (``(C, H, W)`` or ``(F,)``) and its fixed-point format: integers ``q``
  standing for ``q * 2**exp``, int8 (``signed``) or uint8;
- a **layer table** (:class:`Layer`): what the configuration registers of a layer hold —
  kind, geometry, fused ReLU, and for CONV/FC the int8 weights, their exponent per output
  channel and the int32 bias at the accumulator's exponent;
- the **instructions**, run in order, once per sample (the simulator runs every sample of a
  batch through the same instruction at once):

  - :class:`Load` ``ibuf[slot] <- DRAM tensor[c0:c1, r0:r1]`` (channels, rows; a flat tensor
    has one row and its features as channels);
  - :class:`LoadW` ``wbuf <- weights and bias of layer, output channels o0:o1``;
  - :class:`Conv`, :class:`Fc`, :class:`Pool`, :class:`Elew` compute one output tile
    ``obuf <- channels o0:o1, rows r0:r1`` from what the buffers hold;
  - :class:`Store` ``DRAM tensor[c0:c1, r0:r1] <- obuf``.

Graph inputs are quantized by the host into their DRAM tensor before the program starts and
graph outputs are dequantized by the host after it ends (:attr:`Program.inputs`,
:attr:`Program.outputs`). The integer semantics are in docs/dpu.md and backends/dpu/sim.py.
"""

from __future__ import annotations

import attrs
import numpy as np

LAYER_KINDS = ("conv", "fc", "maxpool", "avgpool", "gap", "add")
BUFFERS = ("ibuf", "wbuf", "obuf")


def _array(dtype):
    return attrs.field(factory=lambda: np.zeros(0, dtype),
                       converter=lambda a: np.ascontiguousarray(a, dtype=dtype), eq=False)


def _ints(value) -> tuple:
    return tuple(int(v) for v in value)


@attrs.define(eq=False)
class TensorDesc:
    """An activation tensor in DRAM: integers standing for ``q * 2**exp``."""

    name: str
    shape: tuple = attrs.field(converter=_ints)  # per sample: (C, H, W) or (F,)
    exp: int
    signed: bool

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def rows(self) -> int:
        return self.shape[1] if len(self.shape) == 3 else 1

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of one channel (one byte per element)."""
        return self.shape[2] if len(self.shape) == 3 else 1

    @property
    def bounds(self) -> tuple[int, int]:
        """Saturation bounds: int8 or uint8."""
        return (-128, 127) if self.signed else (0, 255)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@attrs.define(eq=False)
class Layer:
    """One layer's configuration. ``inputs``/``output`` name tensors of the tensor table.

    conv: ``weights`` (O, I/groups, kh, kw) int8; fc: ``weights`` (O, I) int8, the input
    flattened in C-order; ``w_exp`` (O,) weight exponent per output channel; ``bias`` (O,)
    int32 at exponent ``w_exp + input exp``. Pools and add have no weights.
    """

    name: str
    kind: str
    inputs: list
    output: str
    kernel: tuple = attrs.field(default=(1, 1), converter=_ints)
    stride: tuple = attrs.field(default=(1, 1), converter=_ints)
    pads: tuple = attrs.field(default=(0, 0, 0, 0), converter=_ints)  # top, left, bottom, right
    groups: int = 1
    relu: bool = False
    weights: np.ndarray = _array(np.int8)
    w_exp: np.ndarray = _array(np.int32)
    bias: np.ndarray = _array(np.int32)

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[0]) if self.kind in ("conv", "fc") else 0

    def weight_bytes(self, o0: int, o1: int) -> int:
        """On-chip bytes of output channels o0:o1: int8 weights plus int32 bias."""
        per_channel = int(np.prod(self.weights.shape[1:]))
        return (o1 - o0) * (per_channel + 4)


@attrs.define(eq=False)
class Load:
    """``ibuf[slot] <- DRAM tensor[c0:c1, r0:r1]`` for ``layer`` (which its cost is charged to)."""

    layer: str
    slot: int
    tensor: str
    c0: int
    c1: int
    r0: int
    r1: int


@attrs.define(eq=False)
class LoadW:
    """``wbuf <- weights and bias of layer``, output channels ``o0:o1``."""

    layer: str
    o0: int
    o1: int


@attrs.define(eq=False)
class Conv:
    """``obuf <-`` output channels ``o0:o1``, output rows ``r0:r1`` of a conv layer."""

    layer: str
    o0: int
    o1: int
    r0: int
    r1: int


@attrs.define(eq=False)
class Fc:
    """``obuf <-`` outputs ``o0:o1`` of a fully connected layer."""

    layer: str
    o0: int
    o1: int


@attrs.define(eq=False)
class Pool:
    """``obuf <-`` channels ``o0:o1``, output rows ``r0:r1`` of a maxpool/avgpool/gap layer."""

    layer: str
    o0: int
    o1: int
    r0: int
    r1: int


@attrs.define(eq=False)
class Elew:
    """``obuf <- ibuf[0] + ibuf[1]`` for channels ``o0:o1``, rows ``r0:r1`` of an add layer."""

    layer: str
    o0: int
    o1: int
    r0: int
    r1: int


@attrs.define(eq=False)
class Store:
    """``DRAM tensor[c0:c1, r0:r1] <- obuf``, the output of ``layer``."""

    layer: str
    tensor: str
    c0: int
    c1: int
    r0: int
    r1: int


Instruction = Load | LoadW | Conv | Fc | Pool | Elew | Store
COMPUTE = (Conv, Fc, Pool, Elew)
# Mnemonics of the assembly and the binary kind codes, in one place.
MNEMONICS = {Load: "load", LoadW: "loadw", Conv: "conv", Fc: "fc", Pool: "pool", Elew: "elew",
             Store: "store"}


@attrs.define(eq=False)
class Program:
    """A DPU program; ``inputs``/``outputs`` pair graph names with tensors (host side)."""

    tensors: dict = attrs.field(factory=dict)  # name -> TensorDesc, in creation order
    layers: dict = attrs.field(factory=dict)  # name -> Layer, in execution order
    instructions: list = attrs.field(factory=list)
    inputs: list = attrs.field(factory=list)  # [(graph input name, tensor name)]
    outputs: list = attrs.field(factory=list)  # [(graph output name, tensor name)]

    def add_tensor(self, desc: TensorDesc) -> TensorDesc:
        self.tensors[desc.name] = desc
        return desc

    def add_layer(self, layer: Layer) -> Layer:
        self.layers[layer.name] = layer
        return layer
