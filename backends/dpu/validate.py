"""Check a DPU program against every invariant the simulator relies on, before it runs.

A program read from a file may be damaged in ways its checksum cannot see (a payload changed
and re-sealed): names of tensors that do not exist, geometries that disagree with the tensor
shapes, shapes that would allocate gigabytes, shifts an int64 cannot hold. :func:`validate`
refuses all of these with one BackendError line naming the source and the table entry or
instruction, so the simulator never meets them. :func:`backends.dpu.encode.decode` calls it
without a configuration (the tables and instructions alone); :class:`backends.dpu.sim.Simulator`
calls it with its :class:`~backends.dpu.sim.Config` before running, which adds the buffer
capacities. What lowering produces always passes (tests/test_dpu.py checks it).

The invariants:

- tensors: rank 1 or 3, every dimension >= 1, exponent in [MIN_EXP, MAX_EXP]; all tensors
  together at most ``max_elements`` values per sample (the simulator's DRAM);
- graph inputs and outputs and every layer's operands name tensors of the table;
- conv: 4-D weights ``(O, I/groups, kh, kw)`` matching ``kernel``, ``O`` and the input's
  channels divisible into ``groups``, stride >= 1, the output shape is exactly what the
  kernel, stride and pads give on the input, the padded input plane within ``max_elements``;
- fc: 2-D weights ``(O, I)``, ``I`` the input's size, a flat output of ``O`` values;
- conv/fc: one weight exponent and one int32 bias per output channel, the int32 accumulator
  bound ``sum|w| * max|x| + |bias| <= 2**31 - 1`` per output channel (docs/dpu.md), every
  requantizing shift within +-MAX_SHIFT;
- maxpool keeps its input's format; avgpool has no pads; gap's kernel is its input plane and
  its output one value per channel; average windows small enough that the exact rescale
  stays inside int64;
- add: operands and output of one shape, operand exponents at most MAX_ALIGN apart;
- instructions: the layer exists and has the instruction's kind, slots 0 or 1, channel and
  row ranges non-empty and inside their tensors, a store writes its layer's output, and each
  compute instruction's working arrays within ``max_elements`` per sample; with a
  configuration, every load, weight load and output tile within its buffer.
"""

from __future__ import annotations

from typing import Optional

import attrs
import numpy as np

from backends.dpu.isa import MNEMONICS, Conv, Elew, Fc, Layer, Load, LoadW, Pool, Program, \
    Store, TensorDesc
from circ.errors import BackendError

# Values per sample: all DRAM tensors together, and each instruction's working arrays (the
# simulator holds those as int64/float64 for the whole batch). 32 M covers VGG-16 at 224x224.
DEFAULT_MAX_ELEMENTS = 1 << 25
# q * 2**exp of every int8/uint8 q is a finite float32 (255 * 2**119 < 2**128), and the host's
# x / 2**exp stays finite in float64.
MIN_EXP, MAX_EXP = -149, 119
MAX_SHIFT = 31  # as lowering: an int32 accumulator shifted left by 31 still fits int64
MAX_ALIGN = 16  # ELEW aligns operand exponents at most this far (lowering's limit)
ACC_MAX = 2**31 - 1
# An average window's sum (<= 255 * window) shifted left by MAX_SHIFT must fit int64.
MAX_WINDOW = 1 << 23

_KINDS = {LoadW: ("conv", "fc"), Conv: ("conv",), Fc: ("fc",),
          Pool: ("maxpool", "avgpool", "gap"), Elew: ("add",)}


class _Invalid(Exception):
    """One broken invariant; :func:`validate` adds where it was found."""


def describe(index: int, ins) -> str:
    """``instruction 3 (conv layer=conv1 o0=0 ...)``, as errors name an instruction."""
    fields = " ".join(f"{key}={value}" for key, value in attrs.asdict(ins).items())
    return f"instruction {index} ({MNEMONICS[type(ins)]} {fields})"


def validate(program: Program, source: str = "dpu", config=None, *,
             max_elements: int = DEFAULT_MAX_ELEMENTS) -> None:
    """Raise a one-line BackendError ``"{source}: invalid DPU program: {where}: {why}"`` if
    ``program`` breaks an invariant of the module docstring; ``config`` (a sim.Config) adds
    the buffer capacities."""
    checker = _Checker(program, config, max_elements)
    where = "tensor table"
    try:
        total = 0
        for desc in program.tensors.values():
            where = f"tensor {desc.name!r}"
            _check_tensor(desc)
            total += desc.size
        where = "tensor table"
        if total > max_elements:
            raise _Invalid(f"its tensors hold {total} values per sample, more than the limit "
                           f"of {max_elements}")
        for name, tensor in program.inputs:
            where = f"input {name!r}"
            checker.tensor(tensor)
        for name, tensor in program.outputs:
            where = f"output {name!r}"
            checker.tensor(tensor)
        for layer in program.layers.values():
            where = f"layer {layer.name!r}"
            checker.layer(layer)
        for index, ins in enumerate(program.instructions):
            where = describe(index, ins)
            checker.instruction(ins)
    except _Invalid as problem:
        raise BackendError(f"{source}: invalid DPU program: {where}: {problem}") from None


def _check_tensor(desc: TensorDesc) -> None:
    if len(desc.shape) not in (1, 3) or min(desc.shape) < 1:
        raise _Invalid(f"shape {desc.shape} is not (C, H, W) or (F,) of positive sizes")
    if not MIN_EXP <= desc.exp <= MAX_EXP:
        raise _Invalid(f"exponent {desc.exp} outside [{MIN_EXP}, {MAX_EXP}]")


def _extent(size: int, kernel: int, stride: int, before: int, after: int) -> int:
    return (size + before + after - kernel) // stride + 1


def _shift(shift: int, what: str) -> None:
    if abs(shift) > MAX_SHIFT:
        raise _Invalid(f"{what} shift by {shift} is beyond +-{MAX_SHIFT}")


@attrs.define
class _Checker:
    program: Program
    config: Optional[object]
    max_elements: int

    def tensor(self, name: str) -> TensorDesc:
        desc = self.program.tensors.get(name)
        if desc is None:
            raise _Invalid(f"no tensor named {name!r}")
        return desc

    def work(self, elements: int, what: str) -> None:
        if elements > self.max_elements:
            raise _Invalid(f"its {what} would hold {elements} values per sample, more than the "
                           f"limit of {self.max_elements}")

    # ------------------------------------------------------------------ layers

    def layer(self, layer: Layer) -> None:
        wanted = 2 if layer.kind == "add" else 1
        if len(layer.inputs) != wanted:
            raise _Invalid(f"a {layer.kind} layer reads {wanted} tensor(s), not {len(layer.inputs)}")
        inputs = [self.tensor(name) for name in layer.inputs]
        out = self.tensor(layer.output)
        if min(layer.kernel) < 1 or min(layer.stride) < 1 or layer.groups < 1:
            raise _Invalid(f"kernel {layer.kernel}, stride {layer.stride} and groups "
                           f"{layer.groups} must be at least 1")
        getattr(self, "_" + layer.kind)(layer, inputs, out)

    def _window(self, layer: Layer, desc: TensorDesc, out: TensorDesc, channels: int) -> None:
        """Rank-3 input and output, and the output shape the window gives on the input."""
        if len(desc.shape) != 3 or len(out.shape) != 3:
            raise _Invalid(f"input {desc.shape} and output {out.shape} must both be (C, H, W)")
        top, left, bottom, right = layer.pads
        expected = (channels, _extent(desc.shape[1], layer.kernel[0], layer.stride[0], top, bottom),
                    _extent(desc.shape[2], layer.kernel[1], layer.stride[1], left, right))
        if min(expected) < 1 or out.shape != expected:
            raise _Invalid(f"kernel {layer.kernel}, stride {layer.stride} and pads {layer.pads} "
                           f"on input {desc.shape} give {expected}, not the output {out.shape}")
        padded = desc.shape[0] * (desc.shape[1] + top + bottom) * (desc.shape[2] + left + right)
        self.work(padded, "padded input")

    def _weights(self, layer: Layer, desc: TensorDesc, out: TensorDesc, rank: int) -> None:
        """Weight table shapes, exponents, the int32 accumulator bound and the shifts."""
        if layer.weights.ndim != rank or min(layer.weights.shape) < 1:
            raise _Invalid(f"weights of shape {layer.weights.shape} are not {rank}-D")
        outputs = layer.weights.shape[0]
        if layer.w_exp.shape != (outputs,) or layer.bias.shape != (outputs,):
            raise _Invalid(f"needs one weight exponent and one bias per output channel "
                           f"({outputs}), got {layer.w_exp.size} and {layer.bias.size}")
        w_exp = layer.w_exp.astype(np.int64)
        if w_exp.min() < MIN_EXP or w_exp.max() > MAX_EXP:
            raise _Invalid(f"weight exponents outside [{MIN_EXP}, {MAX_EXP}]")
        largest = max(abs(bound) for bound in desc.bounds)
        worst = np.abs(layer.weights.astype(np.int64)).reshape(outputs, -1).sum(axis=1) * largest \
            + np.abs(layer.bias.astype(np.int64))
        if worst.max() > ACC_MAX:
            channel = int(np.argmax(worst))
            raise _Invalid(f"output channel {channel} could overflow the int32 accumulator "
                           f"(bound {int(worst[channel])})")
        shifts = out.exp - (w_exp + desc.exp)
        _shift(int(shifts[np.argmax(np.abs(shifts))]), "a requantizing")

    def _conv(self, layer: Layer, inputs, out: TensorDesc) -> None:
        desc = inputs[0]
        self._weights(layer, desc, out, 4)
        outputs, icg, kh, kw = layer.weights.shape
        if (kh, kw) != layer.kernel:
            raise _Invalid(f"weights of shape {layer.weights.shape} disagree with kernel {layer.kernel}")
        if outputs % layer.groups or len(desc.shape) != 3 or desc.shape[0] != icg * layer.groups:
            raise _Invalid(f"{outputs} output and {desc.shape[0]} input channels do not split "
                           f"into {layer.groups} groups of weights {layer.weights.shape}")
        self._window(layer, desc, out, outputs)

    def _fc(self, layer: Layer, inputs, out: TensorDesc) -> None:
        desc = inputs[0]
        self._weights(layer, desc, out, 2)
        outputs, features = layer.weights.shape
        if features != desc.size:
            raise _Invalid(f"weights of shape {layer.weights.shape} do not read input {desc.shape}")
        if out.size != outputs or out.rows != 1 or out.row_bytes != 1:
            raise _Invalid(f"output {out.shape} is not {outputs} values")

    def _maxpool(self, layer: Layer, inputs, out: TensorDesc) -> None:
        desc = inputs[0]
        self._window(layer, desc, out, desc.channels)
        if (out.exp, out.signed) != (desc.exp, desc.signed):
            raise _Invalid("a max pool's output must keep its input's format")

    def _average(self, desc: TensorDesc, out: TensorDesc, window: int) -> None:
        if window > MAX_WINDOW:
            raise _Invalid(f"its window of {window} values exceeds {MAX_WINDOW}")
        _shift(desc.exp - out.exp, "the rescaling")

    def _avgpool(self, layer: Layer, inputs, out: TensorDesc) -> None:
        desc = inputs[0]
        if any(layer.pads):
            raise _Invalid("average pooling has no pads")
        self._window(layer, desc, out, desc.channels)
        self._average(desc, out, layer.kernel[0] * layer.kernel[1])

    def _gap(self, layer: Layer, inputs, out: TensorDesc) -> None:
        desc = inputs[0]
        if len(desc.shape) != 3 or layer.kernel != desc.shape[1:]:
            raise _Invalid(f"kernel {layer.kernel} is not the plane of input {desc.shape}")
        if out.channels != desc.channels or out.rows != 1 or out.row_bytes != 1:
            raise _Invalid(f"output {out.shape} is not one value per channel of input {desc.shape}")
        self._average(desc, out, desc.shape[1] * desc.shape[2])

    def _add(self, layer: Layer, inputs, out: TensorDesc) -> None:
        a, b = inputs
        if not a.shape == b.shape == out.shape:
            raise _Invalid(f"operands {a.shape}, {b.shape} and output {out.shape} differ in shape")
        if abs(a.exp - b.exp) > MAX_ALIGN:
            raise _Invalid(f"operand exponents {a.exp} and {b.exp} differ by more than {MAX_ALIGN}")
        _shift(out.exp - min(a.exp, b.exp), "the output")

    # ------------------------------------------------------------------ instructions

    def instruction(self, ins) -> None:
        layer = self.program.layers.get(ins.layer)
        if layer is None:
            raise _Invalid(f"no layer named {ins.layer!r}")
        kinds = _KINDS.get(type(ins))
        if kinds is not None and layer.kind not in kinds:
            raise _Invalid(f"layer {layer.name!r} is a {layer.kind} layer, not {'/'.join(kinds)}")
        if isinstance(ins, (Load, Store)):
            self._region(ins)
        elif isinstance(ins, (LoadW, Fc)):
            if not 0 <= ins.o0 < ins.o1 <= layer.out_channels:
                raise _Invalid(f"output channels {ins.o0}:{ins.o1} outside 0:{layer.out_channels}")
            self._fits("wbuf_bytes", layer.weight_bytes(ins.o0, ins.o1))
            if isinstance(ins, Fc):
                self._fits("obuf_bytes", ins.o1 - ins.o0)
        else:
            self._tile(ins, layer)

    def _region(self, ins) -> None:
        desc = self.tensor(ins.tensor)
        if isinstance(ins, Load) and ins.slot not in (0, 1):
            raise _Invalid(f"ibuf has slots 0 and 1, not {ins.slot}")
        if isinstance(ins, Store) and ins.tensor != self.program.layers[ins.layer].output:
            raise _Invalid(f"layer {ins.layer!r} writes tensor "
                           f"{self.program.layers[ins.layer].output!r}, not {ins.tensor!r}")
        if not (0 <= ins.c0 < ins.c1 <= desc.channels and 0 <= ins.r0 < ins.r1 <= desc.rows):
            raise _Invalid(f"region [{ins.c0}:{ins.c1}, {ins.r0}:{ins.r1}] is not inside tensor "
                           f"{desc.name!r} of shape {desc.shape}")
        if isinstance(ins, Load):
            self._fits("ibuf_bytes", (ins.c1 - ins.c0) * (ins.r1 - ins.r0) * desc.row_bytes)

    def _tile(self, ins, layer: Layer) -> None:
        """Conv, Pool and Elew: an output tile inside the output, its arrays within limits."""
        out = self.program.tensors[layer.output]
        if not (0 <= ins.o0 < ins.o1 <= out.channels and 0 <= ins.r0 < ins.r1 <= out.rows):
            raise _Invalid(f"tile [{ins.o0}:{ins.o1}, {ins.r0}:{ins.r1}] is not inside output "
                           f"{out.name!r} of shape {out.shape}")
        rows = ins.r1 - ins.r0
        self._fits("obuf_bytes", (ins.o1 - ins.o0) * rows * out.row_bytes)
        desc = self.program.tensors[layer.inputs[0]]
        if layer.kind == "add":
            return
        if layer.kind == "gap":
            self._fits("ibuf_bytes", (ins.o1 - ins.o0) * desc.rows * desc.row_bytes)
            return
        channels = ins.o1 - ins.o0
        if layer.kind == "conv":
            ocg = layer.out_channels // layer.groups
            icg = layer.weights.shape[1]
            channels = ((ins.o1 - 1) // ocg + 1 - ins.o0 // ocg) * icg
            self._fits("wbuf_bytes", layer.weight_bytes(ins.o0, ins.o1))
        kh, sh, top = layer.kernel[0], layer.stride[0], layer.pads[0]
        first, last = ins.r0 * sh - top, (ins.r1 - 1) * sh - top + kh
        in_rows = max(min(last, desc.rows) - max(first, 0), 0)
        self._fits("ibuf_bytes", channels * in_rows * desc.row_bytes)
        patches = channels * rows * out.row_bytes * kh * layer.kernel[1]
        self.work(patches, "windows")

    def _fits(self, option: str, nbytes: int) -> None:
        if self.config is not None and nbytes > getattr(self.config, option):
            raise _Invalid(f"needs {nbytes} bytes of {option.split('_')[0]}, more than "
                           f"{option}={getattr(self.config, option)}")
