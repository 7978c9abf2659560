"""Run a DPU program with NumPy, bit-exact to the integer semantics of docs/dpu.md, and model
its cycles, memory traffic and energy.

Integer semantics (the full text is in docs/dpu.md):

- A tensor holds integers ``q`` (int8 ``[-128, 127]`` or uint8 ``[0, 255]``) standing for
  ``q * 2**exp``. The host quantizes a graph input with ``rint(x / 2**exp)`` (half to even)
  and saturation, and dequantizes outputs exactly.
- CONV/FC: int8 x int8 products summed in an int32 accumulator (lowering proves no overflow),
  plus the int32 bias, then ReLU if fused, then :func:`shift_round` from the accumulator's
  exponent ``w_exp[o] + in_exp`` to the output's, then saturation.
- :func:`shift_round`: a right shift by ``s > 0`` rounds half to even (the rounding of ONNX
  QuantizeLinear, so a fake-quant graph reproduces it); ``s <= 0`` is an exact left shift.
- MAXPOOL keeps the input's format (padding never wins). AVGPOOL/GAP: the window sum
  divided by the window size and rescaled to the output exponent as one exact rational,
  rounded half to even (:func:`divide_round`), then saturated.
- ELEW add: both operands shifted left to the finer of their two exponents (exact), added,
  then ReLU if fused, ``shift_round`` to the output exponent, saturation.

The simulator runs each instruction for every sample of the batch at once; the hardware runs
the instruction stream once per sample, so statistics are per-sample costs times the batch.
Integer sums are computed with float64 matrix products: every partial sum is an integer below
2**53, so they are exact.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import numpy as np

from backends.dpu.isa import (Conv, Elew, Fc, Layer, Load, LoadW, Pool, Program, Store,
                              TensorDesc)
from backends.dpu.validate import DEFAULT_MAX_ELEMENTS, describe, validate
from backends.energy import ENERGY_PJ
from circ.errors import BackendError, DataError

REGISTER_BYTES_PER_MAC = 10  # int8 input + int8 weight read, int32 accumulator read + write


@attrs.define(frozen=True)
class Config:
    """The hardware: a ``mac_rows x mac_cols`` MAC array (input x output channels per cycle),
    on-chip buffers in bytes per sample, and DRAM bytes per cycle."""

    mac_rows: int = 16
    mac_cols: int = 16
    ibuf_bytes: int = 32 << 10
    wbuf_bytes: int = 32 << 10
    obuf_bytes: int = 16 << 10
    dram_bytes_per_cycle: int = 8

    def check(self) -> None:
        for field in attrs.fields(Config):
            if getattr(self, field.name) < 1:
                raise BackendError(f"dpu: option {field.name!r} must be at least 1, "
                                   f"got {getattr(self, field.name)}")


@attrs.define
class LayerStats:
    """What one layer cost over the whole batch (bytes by memory level, operations, cycles)."""

    layer: str
    kind: str
    instructions: int = 0
    macs: int = 0
    compute_cycles: int = 0
    transfer_cycles: int = 0
    register_bytes: int = 0
    sram_read: int = 0
    sram_written: int = 0
    dram_read: int = 0
    dram_written: int = 0
    int_mults: int = 0
    int_adds: int = 0

    @property
    def cycles(self) -> int:
        """Loads and stores are double-buffered behind compute: the slower of the two."""
        return max(self.compute_cycles, self.transfer_cycles)

    @property
    def energy_pj(self) -> float:
        return (self.register_bytes / 4 * ENERGY_PJ["register"]
                + (self.sram_read + self.sram_written) / 4 * ENERGY_PJ["sram"]
                + (self.dram_read + self.dram_written) / 4 * ENERGY_PJ["dram"]
                + self.int_mults * ENERGY_PJ["int_mult"] + self.int_adds * ENERGY_PJ["int_add"])


# ------------------------------------------------------------------ integer primitives


def shift_round(acc: np.ndarray, shift) -> np.ndarray:
    """``acc * 2**-shift`` as integers: right shifts (``shift > 0``) round half to even,
    left shifts (``shift <= 0``) are exact. ``shift`` broadcasts against ``acc``."""
    acc = np.asarray(acc, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)  # small (per channel): broadcast lazily
    right, left = np.maximum(shift, 0), np.maximum(-shift, 0)
    # floor((acc + half - 1 + odd) / 2**right), odd the parity of floor(acc / 2**right), is
    # acc / 2**right rounded half to even: a remainder above half carries, below half does
    # not, exactly half carries only onto an odd floor.
    half_less_one = np.where(right > 0, (np.int64(1) << np.maximum(right - 1, 0)) - 1, 0)
    odd = (acc >> right) & (right > 0)
    return ((acc + half_less_one + odd) >> right) << left


def divide_round(numerator: np.ndarray, denominator: int) -> np.ndarray:
    """``numerator / denominator`` rounded half to even (``denominator > 0``), exactly."""
    numerator = np.asarray(numerator, dtype=np.int64)
    floor, remainder = np.divmod(numerator, denominator)
    twice = 2 * remainder
    up = (twice > denominator) | ((twice == denominator) & (floor & 1 == 1))
    return floor + up


def saturate(q: np.ndarray, desc: TensorDesc) -> np.ndarray:
    lo, hi = desc.bounds
    return np.clip(q, lo, hi)


def quantize_input(x: np.ndarray, desc: TensorDesc) -> np.ndarray:
    """The host's quantization of a float input: ``rint(x / 2**exp)`` (half to even), saturated."""
    q = np.rint(np.asarray(x, np.float64) / np.ldexp(1.0, desc.exp))
    lo, hi = desc.bounds
    return np.clip(q, lo, hi).astype(np.int16)


def dequantize(q: np.ndarray, desc: TensorDesc) -> np.ndarray:
    return (np.asarray(q, np.float64) * np.ldexp(1.0, desc.exp)).astype(np.float32)


# ------------------------------------------------------------------ buffers


@attrs.define(eq=False)
class _Tile:
    """What a buffer slot holds: a region of a tensor (or an output tile) for every sample."""

    tensor: str
    c0: int
    c1: int
    r0: int
    r1: int
    array: np.ndarray  # (batch, c1 - c0, r1 - r0, width) int64; flat tensors have width 1

    @property
    def bytes(self) -> int:
        return int(np.prod(self.array.shape[1:]))

    def covers(self, tensor: str, c0: int, c1: int, r0: int, r1: int) -> bool:
        return (self.tensor == tensor and self.c0 <= c0 and c1 <= self.c1 and self.r0 <= r0
                and r1 <= self.r1)

    def region(self, c0: int, c1: int, r0: int, r1: int) -> np.ndarray:
        return self.array[:, c0 - self.c0:c1 - self.c0, r0 - self.r0:r1 - self.r0]


@attrs.define(eq=False)
class _State:
    batch: int
    dram: dict  # tensor name -> (batch, C, H, W) int16 (flat tensors as (batch, F, 1, 1))
    ibuf: dict = attrs.field(factory=dict)  # slot -> _Tile
    wbuf: tuple = None  # (layer name, o0, o1)
    obuf: _Tile = None
    stats: dict = attrs.field(factory=dict)  # layer name -> LayerStats


def _as_4d(array: np.ndarray, desc: TensorDesc) -> np.ndarray:
    if len(desc.shape) == 3:
        return array
    return array.reshape(array.shape[0], desc.shape[0], 1, 1)


# ------------------------------------------------------------------ the simulator


class Simulator:
    """Runs a DPU program on batches under a hardware :class:`Config`."""

    def __init__(self, program: Program, config: Config = Config(), *,
                 max_elements: int = DEFAULT_MAX_ELEMENTS):
        config.check()
        # every invariant the instruction functions rely on, before anything is allocated
        validate(program, "dpu", config, max_elements=max_elements)
        self.program = program
        self.config = config

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict, list[LayerStats]]:
        """Outputs (graph output name -> float32 array) and per-layer statistics."""
        program = self.program
        dram, batch = {}, None
        for name, tensor in program.inputs:
            desc = program.tensors[tensor]
            if name not in feeds:
                raise DataError(f"dpu: missing input {name!r}")
            array = np.asarray(feeds[name])
            if array.ndim != len(desc.shape) + 1 or tuple(array.shape[1:]) != desc.shape:
                raise DataError(f"dpu: input {name!r} must have shape (batch, "
                                f"{', '.join(map(str, desc.shape))}), got {array.shape}")
            if batch is not None and array.shape[0] != batch:
                raise DataError(f"dpu: inputs disagree on the batch size ({batch} vs {array.shape[0]})")
            batch = array.shape[0]
            dram[tensor] = _as_4d(quantize_input(array, desc), desc)
        state = _State(batch or 0, dram)
        for layer in program.layers.values():
            state.stats[layer.name] = LayerStats(layer.name, layer.kind)
        for index, ins in enumerate(program.instructions):
            try:
                self._execute[type(ins)](self, ins, state)
            except BackendError as error:
                raise BackendError(f"dpu: {describe(index, ins)}: {error}") from None
        outputs = {}
        for name, tensor in program.outputs:
            desc = program.tensors[tensor]
            if tensor not in state.dram:
                raise BackendError(f"dpu: output tensor {tensor!r} was never written")
            outputs[name] = dequantize(state.dram[tensor].reshape((batch,) + desc.shape), desc)
        return outputs, list(state.stats.values())

    # -------------------------------------------------------------- data movement

    def _transfer(self, state: _State, stats: LayerStats, nbytes: int, *, write: bool) -> None:
        stats.instructions += 1
        stats.transfer_cycles += -(-nbytes // self.config.dram_bytes_per_cycle) * state.batch
        if write:
            stats.dram_written += nbytes * state.batch
            stats.sram_read += nbytes * state.batch
        else:
            stats.dram_read += nbytes * state.batch
            stats.sram_written += nbytes * state.batch

    def _load(self, ins: Load, state: _State) -> None:
        desc = self.program.tensors.get(ins.tensor)
        if desc is None or ins.tensor not in state.dram:
            raise BackendError(f"tensor {ins.tensor!r} is not in DRAM yet")
        if not (0 <= ins.c0 < ins.c1 <= desc.channels and 0 <= ins.r0 < ins.r1 <= desc.rows):
            raise BackendError(f"region outside tensor {ins.tensor!r} of shape {desc.shape}")
        array = state.dram[ins.tensor][:, ins.c0:ins.c1, ins.r0:ins.r1].astype(np.int64)
        if ins.slot == 0:
            state.ibuf.clear()  # slot 1 is ELEW's second operand, loaded after slot 0
        state.ibuf[ins.slot] = _Tile(ins.tensor, ins.c0, ins.c1, ins.r0, ins.r1, array)
        used = sum(tile.bytes for tile in state.ibuf.values())
        if used > self.config.ibuf_bytes:
            raise BackendError(f"ibuf overflow: {used} bytes > ibuf_bytes={self.config.ibuf_bytes}")
        self._transfer(state, self._stats(state, ins.layer), state.ibuf[ins.slot].bytes,
                       write=False)

    @staticmethod
    def _stats(state: _State, layer: str) -> LayerStats:
        if layer not in state.stats:
            raise BackendError(f"no layer named {layer!r}")
        return state.stats[layer]

    def _load_weights(self, ins: LoadW, state: _State) -> None:
        layer = self._layer(ins.layer, ("conv", "fc"))
        if not 0 <= ins.o0 < ins.o1 <= layer.out_channels:
            raise BackendError(f"output channels {ins.o0}:{ins.o1} outside layer {layer.name!r}")
        nbytes = layer.weight_bytes(ins.o0, ins.o1)
        if nbytes > self.config.wbuf_bytes:
            raise BackendError(f"wbuf overflow: {nbytes} bytes > wbuf_bytes={self.config.wbuf_bytes}")
        state.wbuf = (layer.name, ins.o0, ins.o1)
        stats = state.stats[layer.name]
        stats.instructions += 1
        stats.transfer_cycles += -(-nbytes // self.config.dram_bytes_per_cycle) * state.batch
        stats.dram_read += nbytes * state.batch
        stats.sram_written += nbytes * state.batch

    def _store(self, ins: Store, state: _State) -> None:
        tile = state.obuf
        if tile is None or (tile.tensor, tile.c0, tile.c1, tile.r0, tile.r1) != \
                (ins.tensor, ins.c0, ins.c1, ins.r0, ins.r1):
            raise BackendError("obuf does not hold this region")
        desc = self.program.tensors[ins.tensor]
        if ins.tensor not in state.dram:
            per_sample = desc.shape if len(desc.shape) == 3 else (desc.shape[0], 1, 1)
            state.dram[ins.tensor] = np.zeros((state.batch,) + per_sample, np.int16)
        state.dram[ins.tensor][:, ins.c0:ins.c1, ins.r0:ins.r1] = tile.array
        self._transfer(state, self._stats(state, ins.layer), tile.bytes, write=True)

    # -------------------------------------------------------------- compute

    def _layer(self, name: str, kinds) -> Layer:
        layer = self.program.layers.get(name)
        if layer is None or layer.kind not in kinds:
            raise BackendError(f"no {'/'.join(kinds)} layer named {name!r}")
        return layer

    def _input_tile(self, state: _State, slot: int, tensor: str, c0, c1, r0, r1) -> np.ndarray:
        tile = state.ibuf.get(slot)
        if tile is None or not tile.covers(tensor, c0, c1, r0, r1):
            held = "nothing" if tile is None else \
                f"{tile.tensor}[{tile.c0}:{tile.c1}, {tile.r0}:{tile.r1}]"
            raise BackendError(f"ibuf slot {slot} holds {held}, needs {tensor}[{c0}:{c1}, {r0}:{r1}]")
        return tile.region(c0, c1, r0, r1)

    def _put_output(self, state: _State, layer: Layer, o0, o1, r0, r1, array) -> None:
        out = self.program.tensors[layer.output]
        expected = (o1 - o0, r1 - r0, out.row_bytes)
        if not (0 <= o0 < o1 <= out.channels and 0 <= r0 < r1 <= out.rows) \
                or tuple(array.shape[1:]) != expected:
            raise BackendError(f"the tile [{o0}:{o1}, {r0}:{r1}] does not fit output tensor "
                               f"{out.name!r} of shape {out.shape}")
        tile = _Tile(layer.output, o0, o1, r0, r1, array)
        if tile.bytes > self.config.obuf_bytes:
            raise BackendError(f"obuf overflow: {tile.bytes} bytes > obuf_bytes="
                               f"{self.config.obuf_bytes}")
        state.obuf = tile

    def _window_rows(self, layer: Layer, desc: TensorDesc, r0: int, r1: int):
        """Input rows [lo, hi) read by output rows [r0, r1), and the zero rows padded above
        and below them."""
        kh, sh, top = layer.kernel[0], layer.stride[0], layer.pads[0]
        first, last = r0 * sh - top, (r1 - 1) * sh - top + kh
        lo, hi = max(first, 0), min(last, desc.rows)
        return lo, hi, lo - first, last - hi

    def _padded(self, x: np.ndarray, layer: Layer, above: int, below: int, fill) -> np.ndarray:
        left, right = layer.pads[1], layer.pads[3]
        return np.pad(x, ((0, 0), (0, 0), (above, below), (left, right)), constant_values=fill)

    @staticmethod
    def _windows(x: np.ndarray, layer: Layer) -> np.ndarray:
        """(batch, C, rows, cols, kh, kw) windows of a padded input."""
        kh, kw = layer.kernel
        sh, sw = layer.stride
        view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
        return view[:, :, ::sh, ::sw]

    def _conv(self, ins: Conv, state: _State) -> None:
        layer = self._layer(ins.layer, ("conv",))
        self._check_weights(state, layer, ins.o0, ins.o1)
        desc = self.program.tensors[layer.inputs[0]]
        out = self.program.tensors[layer.output]
        out_channels, icg, kh, kw = layer.weights.shape
        ocg = out_channels // layer.groups
        g0, g1 = ins.o0 // ocg, (ins.o1 - 1) // ocg + 1
        lo, hi, above, below = self._window_rows(layer, desc, ins.r0, ins.r1)
        x = self._input_tile(state, 0, desc.name, g0 * icg, g1 * icg, lo, hi)
        windows = self._windows(self._padded(x, layer, above, below, 0), layer)
        batch, _, rows, cols = windows.shape[:4]
        # (groups, batch*rows*cols, icg*kh*kw) @ (groups, icg*kh*kw, ocg) per group of the tile
        patches = windows.reshape(batch, g1 - g0, icg, rows, cols, kh * kw)
        patches = patches.transpose(1, 0, 3, 4, 2, 5).reshape(g1 - g0, batch * rows * cols, -1)
        weights = layer.weights[g0 * ocg:g1 * ocg].reshape(g1 - g0, ocg, -1).transpose(0, 2, 1)
        acc = np.matmul(patches.astype(np.float64), weights.astype(np.float64))
        acc = acc.reshape(g1 - g0, batch, rows, cols, ocg).transpose(1, 0, 4, 2, 3)
        acc = acc.reshape(batch, (g1 - g0) * ocg, rows, cols)[:, ins.o0 - g0 * ocg:ins.o1 - g0 * ocg]
        result = self._requantize(np.rint(acc).astype(np.int64), layer, ins.o0, ins.o1, desc, out)
        self._put_output(state, layer, ins.o0, ins.o1, ins.r0, ins.r1, result)

        stats = state.stats[layer.name]
        pixels = rows * cols
        per_group = np.bincount(np.arange(ins.o0, ins.o1) // ocg)[g0:g1]
        cycles = sum(-(-icg // self.config.mac_rows) * -(-int(n) // self.config.mac_cols)
                     for n in per_group) * pixels * kh * kw
        passes = sum(-(-int(n) // self.config.mac_cols) for n in per_group)
        macs = (ins.o1 - ins.o0) * pixels * icg * kh * kw
        self._count_compute(state, stats, macs, cycles, outputs=(ins.o1 - ins.o0) * pixels,
                            sram_read=layer.weight_bytes(ins.o0, ins.o1)
                            + passes * pixels * icg * kh * kw)

    def _fc(self, ins: Fc, state: _State) -> None:
        layer = self._layer(ins.layer, ("fc",))
        self._check_weights(state, layer, ins.o0, ins.o1)
        desc = self.program.tensors[layer.inputs[0]]
        out = self.program.tensors[layer.output]
        x = self._input_tile(state, 0, desc.name, 0, desc.channels, 0, desc.rows)
        x = x.reshape(x.shape[0], -1)
        weights = layer.weights[ins.o0:ins.o1]
        acc = np.rint(x.astype(np.float64) @ weights.T.astype(np.float64)).astype(np.int64)
        result = self._requantize(acc[:, :, None, None], layer, ins.o0, ins.o1, desc, out)
        self._put_output(state, layer, ins.o0, ins.o1, 0, 1, result)

        inputs = weights.shape[1]
        cycles = -(-inputs // self.config.mac_rows) * -(-(ins.o1 - ins.o0) // self.config.mac_cols)
        passes = -(-(ins.o1 - ins.o0) // self.config.mac_cols)
        self._count_compute(state, state.stats[layer.name], (ins.o1 - ins.o0) * inputs, cycles,
                            outputs=ins.o1 - ins.o0,
                            sram_read=layer.weight_bytes(ins.o0, ins.o1) + passes * inputs)

    def _check_weights(self, state: _State, layer: Layer, o0: int, o1: int) -> None:
        held = state.wbuf
        if held is None or held[0] != layer.name or not held[1] <= o0 < o1 <= held[2]:
            raise BackendError(f"wbuf holds {held}, needs layer {layer.name!r} channels {o0}:{o1}")

    def _requantize(self, acc, layer: Layer, o0, o1, desc: TensorDesc, out: TensorDesc):
        """Bias, fused ReLU, shift-round from the accumulator exponent, saturation."""
        acc = acc + layer.bias[o0:o1].astype(np.int64)[None, :, None, None]
        if layer.relu:
            acc = np.maximum(acc, 0)
        shift = out.exp - (layer.w_exp[o0:o1].astype(np.int64) + desc.exp)
        return saturate(shift_round(acc, shift[None, :, None, None]), out)

    def _pool(self, ins: Pool, state: _State) -> None:
        layer = self._layer(ins.layer, ("maxpool", "avgpool", "gap"))
        desc = self.program.tensors[layer.inputs[0]]
        out = self.program.tensors[layer.output]
        if layer.kind == "gap":
            x = self._input_tile(state, 0, desc.name, ins.o0, ins.o1, 0, desc.rows)
            window = x.shape[2] * x.shape[3]
            total = x.sum(axis=(2, 3), keepdims=True)
            result = saturate(self._average(total, window, desc, out), out)
            pixels = 1
        else:
            lo, hi, above, below = self._window_rows(layer, desc, ins.r0, ins.r1)
            x = self._input_tile(state, 0, desc.name, ins.o0, ins.o1, lo, hi)
            window = layer.kernel[0] * layer.kernel[1]
            if layer.kind == "maxpool":
                # padding never wins: it is below every representable value
                windows = self._windows(self._padded(x, layer, above, below, -(1 << 20)), layer)
                result = windows.max(axis=(4, 5))
            else:
                windows = self._windows(self._padded(x, layer, above, below, 0), layer)
                total = windows.sum(axis=(4, 5))
                result = saturate(self._average(total, window, desc, out), out)
            pixels = result.shape[2] * result.shape[3]
        self._put_output(state, layer, ins.o0, ins.o1, ins.r0, ins.r1, result)
        channels = ins.o1 - ins.o0
        stats = state.stats[layer.name]
        stats.instructions += 1
        stats.compute_cycles += -(-channels // self.config.mac_cols) * pixels * window * state.batch
        reads = channels * pixels * window
        stats.sram_read += reads * state.batch
        stats.sram_written += channels * pixels * state.batch
        stats.register_bytes += 2 * reads * state.batch  # running max/sum read and write
        stats.int_adds += reads * state.batch
        if layer.kind != "maxpool":
            stats.int_mults += channels * pixels * state.batch  # the division

    @staticmethod
    def _average(total, window: int, desc: TensorDesc, out: TensorDesc) -> np.ndarray:
        """``total / window`` rescaled from ``desc.exp`` to ``out.exp``, rounded half to even."""
        difference = desc.exp - out.exp
        numerator = total << max(difference, 0)
        return divide_round(numerator, window << max(-difference, 0))

    def _elew(self, ins: Elew, state: _State) -> None:
        layer = self._layer(ins.layer, ("add",))
        a_desc, b_desc = (self.program.tensors[name] for name in layer.inputs)
        out = self.program.tensors[layer.output]
        a = self._input_tile(state, 0, a_desc.name, ins.o0, ins.o1, ins.r0, ins.r1)
        b = self._input_tile(state, 1, b_desc.name, ins.o0, ins.o1, ins.r0, ins.r1)
        finer = min(a_desc.exp, b_desc.exp)
        total = (a << (a_desc.exp - finer)) + (b << (b_desc.exp - finer))
        if layer.relu:
            total = np.maximum(total, 0)
        result = saturate(shift_round(total, out.exp - finer), out)
        self._put_output(state, layer, ins.o0, ins.o1, ins.r0, ins.r1, result)
        elements = int(np.prod(result.shape[1:]))
        stats = state.stats[layer.name]
        stats.instructions += 1
        stats.compute_cycles += -(-elements // self.config.mac_cols) * state.batch
        stats.sram_read += 2 * elements * state.batch
        stats.sram_written += elements * state.batch
        stats.register_bytes += 3 * 4 * elements * state.batch
        stats.int_adds += 2 * elements * state.batch  # the add and the rounding shift

    def _count_compute(self, state: _State, stats: LayerStats, macs: int, cycles: int, *,
                       outputs: int, sram_read: int) -> None:
        batch = state.batch
        stats.instructions += 1
        stats.macs += macs * batch
        stats.compute_cycles += cycles * batch
        stats.int_mults += macs * batch
        stats.int_adds += (macs + 2 * outputs) * batch  # accumulate; bias and rounding shift
        stats.register_bytes += REGISTER_BYTES_PER_MAC * macs * batch
        stats.sram_read += sram_read * batch
        stats.sram_written += outputs * batch

    _execute = {Load: _load, LoadW: _load_weights, Store: _store, Conv: _conv, Fc: _fc,
                Pool: _pool, Elew: _elew}


def run(program: Program, feeds: Mapping[str, np.ndarray], config: Config = Config()):
    """Run ``program`` on ``feeds``: (outputs, per-layer stats)."""
    return Simulator(program, config).run(feeds)
