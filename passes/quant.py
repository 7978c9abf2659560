"""quant: uniform linear quantization of layer weights, and of activations given calibration data."""

from __future__ import annotations

from typing import Literal, Optional

import attrs
import numpy as np

from circ.calibrate import Grid, calibrate, grid_for_range
from circ.graph import Graph, Node, Value
from circ.passbase import NONE, STRUCTURE, Pass, PassContext, PassResult, register_pass
from circ.tensors import Quantized
from circ.weights import WeightRef, override_for, parse_layer_values, select_layers

# Inputs of each layer that carry activations (quantized when calibration data is given).
ACTIVATION_INPUTS = {"Conv": (0,), "ConvTranspose": (0,), "Gemm": (0, 1), "MatMul": (0, 1)}
ACTIVATION_BITS = 8  # QuantizeLinear saturates to int8/uint8: activations are 8-bit


def _check_bits(instance, attribute, value):
    if not 2 <= value <= 8:
        raise ValueError(f"option {attribute.name!r} must be 2..8, got {value}")


def _check_percentile(instance, attribute, value):
    if not 50.0 < value <= 100.0:
        raise ValueError(f"option 'percentile' must be in (50, 100], got {value}")


def _bits_value(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 8:
        raise ValueError(text)
    return value


def _check_layers(instance, attribute, value):
    parse_layer_values(value, "layers", "quant", _bits_value)


@register_pass
class Quantize(Pass):
    """Uniform linear quantization of Conv/ConvTranspose/Gemm/MatMul weights (and activations).

    Weights become :class:`~circ.tensors.Quantized` constants: ``bits``-bit integers stored in
    int8 (symmetric: ``[-(2^(b-1)-1), 2^(b-1)-1]``, zero point 0) or uint8 (asymmetric:
    ``[0, 2^b-1]``, zero point chosen so 0 is exact), a float32 scale per tensor or per output
    channel (``per_channel``, along the layer's output axis), rounded half to even as ONNX
    QuantizeLinear does. ``pow2`` rounds every scale up to a power of two (fixed-point
    hardware such as DeePhi's DPU shifts instead of multiplying). Pruned weights stay exactly
    zero and keep their mask. Every weight moves by at most half a step (``scale / 2``).

    Activations (``activations=auto``, when calibration data is given with ``--data
    FILE.npz``): the graph, with its weights quantized, runs on the data; the activation
    inputs of the selected layers get a range by ``calibration`` (``minmax``, ``percentile``
    of each tail, ``mse`` or ``entropy``/KL; see :mod:`circ.calibrate`) and a
    QuantizeLinear -> DequantizeLinear pair (8-bit, per tensor: uint8 with zero point 0 for
    data >= 0 such as ReLU outputs, else int8 symmetric or uint8 asymmetric following
    ``symmetric``). Without data, activations stay float and the pass says so (a decline).

    Per-layer bit widths: ``layers=PATTERN:BITS;...`` (a pattern is what ``scope`` accepts:
    ``conv``, ``fc``, a layer or weight name or shell pattern; the first match wins; e.g.
    ``layers=fc3:4;conv:6``), the syntax of prune's per-layer sparsity. Already quantized
    weights and weights that are not float32 are declined. Export writes a QDQ ONNX model
    (integer initializers + DequantizeLinear; see :mod:`circ.onnx_export`).

    onnxruntime runs the exported model; its optimized int8 kernels on x86 CPUs without VNNI
    add pairs of uint8 x int8 products in 16 bits, which saturates with full-range 8-bit
    weights (its own quantizer's ``reduce_range``): for such targets use ``bits=7``.

    Approximate: outputs change by the quantization error; ``details`` reports per layer the
    bits, the largest weight change and the signal-to-quantization-noise ratio (dB).
    """

    name = "quant"
    exact = False

    bits: int = attrs.field(default=8, validator=_check_bits,
                            metadata={"help": "weight bit width, 2..8"})
    symmetric: bool = attrs.field(default=True, metadata={
        "help": "zero point 0 and a grid symmetric about 0 (int8); false: affine uint8"})
    per_channel: bool = attrs.field(default=True, metadata={
        "help": "one scale per output channel (QDQ export needs opset >= 13; raised if lower)"})
    pow2: bool = attrs.field(default=False, metadata={
        "help": "round scales up to powers of two (fixed-point hardware)"})
    scope: str = attrs.field(default="all", metadata={
        "help": "layers to quantize: all, conv, fc, or a name pattern"})
    layers: str = attrs.field(default="", validator=_check_layers, metadata={
        "help": "per-layer bits: PATTERN:BITS;... e.g. fc3:4;conv*:6 (first match wins)"})
    activations: Literal["auto", "none"] = attrs.field(default="auto", metadata={
        "help": "auto: quantize layer inputs to 8 bits when calibration data is given; none: never"})
    calibration: Literal["minmax", "percentile", "mse", "entropy"] = attrs.field(
        default="minmax", metadata={"help": "how activation ranges are chosen from the data"})
    percentile: float = attrs.field(default=99.99, validator=_check_percentile, metadata={
        "help": "percentile kept by calibration=percentile (each tail)"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        refs = select_layers(graph, self.scope, self.overrides(), ctx)
        if not refs:
            return PassResult(False)
        quantized: list[WeightRef] = []
        report = {}
        for ref in refs:
            problem = _weight_problem(ref)
            if problem:
                ctx.decline(ref.node, problem)
                continue
            bits = self.bits_for(ref)
            tensor = self.quantize_weight(ref, bits)
            report[ref.name] = _weight_report(ref.value.const.to_numpy(), tensor)
            graph.set_const(ref.value, tensor)
            quantized.append(ref)
        details = {"layers": report}
        inserted = 0
        if self.activations == "auto" and quantized:
            if ctx.data is None:
                ctx.decline(None, "activations left in float: no calibration data "
                                  "(give --data FILE.npz, or activations=none)")
            else:
                ranges = self.quantize_activations(graph, ctx, quantized)
                details["activations"] = ranges
                inserted = len(ranges)
        preserved = NONE if inserted else {STRUCTURE}
        return PassResult(modified=bool(quantized), preserved=preserved, details=details)

    # ------------------------------------------------------------------ weights
    def overrides(self) -> list[tuple[str, int]]:
        return parse_layer_values(self.layers, "layers", self.name, _bits_value)

    def bits_for(self, ref: WeightRef) -> int:
        return override_for(ref, self.overrides(), self.bits)

    def quantize_weight(self, ref: WeightRef, bits: int) -> Quantized:
        """The Quantized tensor for ``ref``'s weight at ``bits`` bits."""
        const = ref.value.const
        array = const.to_numpy()
        kept = const.kept
        axis = ref.out_axis if self.per_channel and array.ndim > 0 else None
        grid = weight_grid(array, bits=bits, symmetric=self.symmetric, pow2=self.pow2, axis=axis)
        # Pruned weights decode to exactly 0 (to_numpy applies the mask) and every grid holds
        # 0 exactly (q = zero point), so they stay zero; the mask is kept for later passes.
        q = grid.quantize(array, axis)
        return Quantized(q, grid.scale, grid.zero_point, axis, bits, array.dtype,
                         None if kept is None else kept.copy())

    # ------------------------------------------------------------------ activations
    def quantize_activations(self, graph: Graph, ctx: PassContext,
                             quantized: list[WeightRef]) -> dict:
        """Calibrate and insert Q/DQ pairs on the activation inputs of ``quantized`` layers."""
        targets = _activation_targets(graph, quantized, ctx)
        if not targets:
            return {}
        values = list(targets.values())
        ranges = calibrate(graph, [t.value for t in values], ctx.data, method=self.calibration,
                           percentile=self.percentile, bits=ACTIVATION_BITS,
                           symmetric=self.symmetric, pow2=self.pow2)
        report = {}
        for target in values:
            lo, hi = ranges[id(target.value)]
            grid = grid_for_range(lo, hi, bits=ACTIVATION_BITS, symmetric=self.symmetric,
                                  pow2=self.pow2, unsigned=self.symmetric and lo >= 0)
            insert_qdq(graph, target.value, grid, target.uses)
            report[target.value.name] = {"min": lo, "max": hi, "scale": float(grid.scale),
                                         "zero_point": int(grid.zero_point),
                                         "dtype": grid.dtype.name}
        return report


# ---------------------------------------------------------------------- helpers


def weight_grid(array: np.ndarray, *, bits: int, symmetric: bool, pow2: bool,
                axis: Optional[int]) -> Grid:
    """The grid covering ``array``, per tensor or per slice along ``axis``."""
    values = np.asarray(array, np.float64)
    if axis is None:
        lo, hi = (values.min(), values.max()) if values.size else (0.0, 0.0)
    else:
        others = tuple(i for i in range(values.ndim) if i != axis)
        lo, hi = values.min(axis=others), values.max(axis=others)
    return grid_for_range(lo, hi, bits=bits, symmetric=symmetric, pow2=pow2)


def _weight_problem(ref: WeightRef) -> str:
    const = ref.value.const
    if isinstance(const, Quantized):
        return "the weights are already quantized"
    if const.dtype != np.float32:
        return f"only float32 weights are quantized (these are {const.dtype})"
    return ""


def _weight_report(before: np.ndarray, tensor: Quantized) -> dict:
    after = tensor.to_numpy()
    before = np.asarray(before, np.float64)
    noise = float(np.sum((before - after) ** 2))
    signal = float(np.sum(before**2))
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise) if signal else 0.0
    return {"bits": tensor.num_bits, "per_channel": tensor.axis is not None,
            "max_abs_error": float(np.max(np.abs(before - after), initial=0.0)),
            "sqnr_db": round(sqnr, 2)}


@attrs.define(eq=False)
class _Target:
    """An activation to quantize and the (layer, input index) uses that will read it."""

    value: Value
    uses: list


def _activation_targets(graph: Graph, refs: list[WeightRef], ctx: PassContext) -> dict:
    """``id(value) -> _Target`` for the float32 activation inputs of the quantized layers."""
    targets: dict[int, _Target] = {}
    for ref in refs:
        node = ref.node
        for index in ACTIVATION_INPUTS.get(node.op, ()):
            value = node.input(index)
            if value is None or value.const is not None or index == ref.index:
                continue
            if value.producer is not None and value.producer.op == "DequantizeLinear":
                continue  # already quantized
            if value.dtype != np.float32:
                ctx.decline(node, f"input {index} ({value.name!r}) is {value.dtype}, not float32: "
                                  f"left in float")
                continue
            target = targets.setdefault(id(value), _Target(value, []))
            target.uses.append((node, index))
    return targets


def insert_qdq(graph: Graph, value: Value, grid: Grid, uses: list[tuple[Node, int]]) -> Value:
    """Insert ``QuantizeLinear -> DequantizeLinear`` after ``value`` and make ``uses`` (pairs
    of node and input index) read the dequantized value. Returns that value."""
    scale = graph.add_const(f"{value.name}_scale", np.asarray(grid.scale.reshape(()), np.float32))
    zero_point = graph.add_const(f"{value.name}_zero_point", grid.zero_point.reshape(()))
    if value.producer is not None:
        where = {"after": value.producer}
    else:
        where = {"before": graph.nodes[0]}
    quant = graph.add_node("QuantizeLinear", [value, scale, zero_point],
                           name=f"{value.name}_quantize", **where)
    dequant = graph.add_node("DequantizeLinear", [quant.output, scale, zero_point],
                             name=f"{value.name}_dequantize", after=quant)
    dequant.output.shape = value.shape  # keep symbolic dims exactly as they were
    for node, index in uses:
        graph.set_input(node, index, dequant.output)
    return dequant.output
