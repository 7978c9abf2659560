"""Lowering: a CNN graph -> a DPU :class:`~backends.dpu.isa.Program` of int8 layers and tiles.

Accepted (everything else is refused with a BackendError naming the node and why):

- one or more inputs ``(N, C, H, W)`` or ``(N, F)`` with static non-batch dims;
- ``Conv`` (2-D, any stride, pads, groups; no dilation) with a constant weight, optionally
  followed by an ``Add`` of a constant per-channel bias, then a ``Relu`` (fused);
  ``BatchNormalization`` must be folded beforehand (the ``fold_bn`` pass);
- ``Gemm`` (``transA=0``, ``alpha=beta=1``) / ``MatMul`` with a constant 2-D weight, fused
  bias Add and Relu as for Conv; its input may come through ``Flatten(axis=1)`` or a
  ``Reshape`` to ``(N, features)`` (C-order, a no-op on the DRAM layout);
- ``MaxPool``, ``AveragePool`` (no padding, ``ceil_mode=0``), ``GlobalAveragePool``;
- ``Add`` of two activations (a residual), optionally followed by ``Relu``;
- ``QuantizeLinear -> DequantizeLinear`` pairs with a power-of-two scale and zero point 0
  (from ``quant(pow2=true)`` with calibration data): they fix the format of the tensor they
  sit on and run as nothing; ``Identity`` and ``Dropout`` run as nothing.

Weights: :class:`~circ.tensors.Quantized` weights with power-of-two scales and zero point 0
(``quant(pow2=true)``) are used as they are (per tensor or per output channel). Any other
weight (float, pruned, clustered) is quantized here to int8 with a power-of-two scale per
layer (DeePhi's per-layer fixed point), or per output channel with ``weight_per_channel``.
Biases become int32 at the accumulator's exponent.

Activation formats (the exponent of each DRAM tensor, and int8 vs uint8): from the QDQ pairs
in the graph when present; every other tensor from ``calibration`` data (input name ->
array, run through the reference interpreter; ``method`` as in :mod:`circ.calibrate`):
uint8 when the calibration range is >= 0, else int8, the exponent the smallest covering it.
Without calibration data a tensor with no QDQ is refused (lowering never guesses ranges).
A max pool's output keeps its input's format (it only selects values).

Tiling: each layer is cut into output tiles (output channels x output rows) so that its input
rows (with the window's halo), its weights and its outputs fit the configured buffers; loads
are emitted only when the buffer does not already hold what the next tile needs. A layer
whose smallest tile does not fit is refused, naming the buffer to enlarge.
"""

from __future__ import annotations

from typing import Mapping, Optional

import attrs
import numpy as np

from backends.dpu.isa import Conv, Elew, Fc, Layer, Load, LoadW, Pool, Program, Store, TensorDesc
from backends.dpu.sim import Config
from circ.calibrate import calibrate, grid_for_range
from circ.errors import BackendError
from circ.graph import Graph, Node, Value
from circ.progress import track
from circ.tensors import Dense, Quantized

ACC_MAX = 2**31 - 1  # the int32 accumulator
MAX_SHIFT = 31
MAX_ALIGN = 16  # largest exponent difference ELEW aligns (keeps the sum inside int32)


def _refuse(node: Node, why: str) -> BackendError:
    return BackendError(f"dpu: cannot run {node.describe()}: {why}")


@attrs.define(eq=False)
class _Tensor:
    """A DRAM tensor being planned: the graph values holding its contents and its format."""

    name: str
    shape: tuple
    values: list  # graph Values whose contents are this tensor (fused outputs, views, QDQ)
    group: "_Group"


@attrs.define(eq=False)
class _Group:
    """Tensors sharing one format (a max pool's output and its input)."""

    tensors: list = attrs.field(factory=list)
    exp: Optional[int] = None  # fixed by a QDQ pair
    signed: Optional[bool] = None
    source: Optional[Node] = None  # the QDQ that fixed it


@attrs.define(eq=False)
class _Pending:
    """A layer before formats are known: float bias, weights quantized or to quantize."""

    layer: Layer
    node: Node
    weight: Optional[Value] = None  # graph constant of the weight
    float_bias: Optional[np.ndarray] = None
    bias_values: list = attrs.field(factory=list)  # graph constants holding bias terms
    transposed: bool = False  # the graph stores the fc weight as (I, O)


class _Lowering:
    def __init__(self, graph: Graph, config: Config, weight_per_channel: bool):
        self.graph = graph
        self.config = config
        self.weight_per_channel = weight_per_channel
        self.tensors: dict[str, _Tensor] = {}
        self.by_value: dict[int, _Tensor] = {}
        self.pending: list[_Pending] = []
        self.consumed: set[int] = set()  # ids of nodes fused into an earlier layer

    # ------------------------------------------------------------ tensors

    def new_tensor(self, value: Value, shape, group: Optional[_Group] = None) -> _Tensor:
        name = f"t{len(self.tensors)}"
        group = group or _Group()
        tensor = _Tensor(name, tuple(int(d) for d in shape), [value], group)
        group.tensors.append(tensor)
        self.tensors[name] = tensor
        self.by_value[id(value)] = tensor
        return tensor

    def alias(self, value: Value, tensor: _Tensor) -> None:
        tensor.values.append(value)
        self.by_value[id(value)] = tensor

    def input_of(self, node: Node, index: int = 0, rank: Optional[int] = None) -> _Tensor:
        value = node.input(index)
        tensor = None if value is None else self.by_value.get(id(value))
        if tensor is None:
            origin = "a constant" if value is not None and value.const is not None else \
                "not produced by a layer the DPU runs"
            raise _refuse(node, f"its input {index} ({getattr(value, 'name', None)!r}) is {origin}")
        if rank is not None and value.rank != rank:
            raise _refuse(node, f"its input must have rank {rank}, got shape {value.shape}")
        return tensor

    # ------------------------------------------------------------ graph walk

    def walk(self) -> None:
        for value in self.graph.inputs:
            shape = value.shape
            if shape is None or len(shape) not in (2, 4) or \
                    not all(isinstance(d, int) and d > 0 for d in shape[1:]):
                raise BackendError(f"dpu: graph input {value.name!r} must be (N, C, H, W) or "
                                   f"(N, F) with known sizes after the batch, got {shape}")
            self.new_tensor(value, shape[1:])
        handlers = {
            "Conv": self.conv, "Gemm": self.fc, "MatMul": self.fc, "MaxPool": self.pool,
            "AveragePool": self.pool, "GlobalAveragePool": self.pool, "Add": self.add,
            "Flatten": self.flatten, "Reshape": self.flatten, "QuantizeLinear": self.qdq,
            "Identity": self.identity, "Dropout": self.identity,
        }
        nodes = self.graph.nodes
        for node in track(nodes, total=len(nodes), desc="dpu: lowering", unit="node"):
            if id(node) in self.consumed:
                continue
            handler = handlers.get(node.op) if node.domain in ("", "ai.onnx") else None
            if handler is None:
                raise _refuse(node, _why_unsupported(node))
            handler(node)

    def fuse_tail(self, node: Node, pending: _Pending, out: Value) -> Value:
        """Fuse a following Add of a constant bias and a Relu; returns the layer's output."""
        add = self.sole_user(out, "Add")
        if add is not None:
            other = [v for v in add.inputs if v is not out]
            if len(other) == 1 and other[0] is not None and other[0].const is not None:
                self.consumed.add(id(add))
                pending.bias_values.append(other[0])
                extra = _per_channel(other[0].const.to_numpy(), pending.layer.out_channels,
                                     pending.layer.kind, add)
                pending.float_bias = pending.float_bias + extra
                out = add.output
        relu = self.sole_user(out, "Relu")
        if relu is not None:
            self.consumed.add(id(relu))
            pending.layer.relu = True
            out = relu.output
        return out

    def sole_user(self, value: Value, op: str) -> Optional[Node]:
        users = value.users
        if len(users) == 1 and users[0].op == op and not self.graph.is_output(value):
            return users[0]
        return None

    def conv(self, node: Node) -> None:
        source = self.input_of(node, 0, rank=4)
        weight = _constant(node, 1, "weight")
        if len(weight.shape) != 4:
            raise _refuse(node, "only 2-D convolutions are supported")
        attrs_ = node.attrs
        if any(d != 1 for d in attrs_.get("dilations", [1, 1])):
            raise _refuse(node, "dilated convolutions are not supported")
        if attrs_.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise _refuse(node, "auto_pad SAME_* is not supported (export with explicit pads)")
        out_channels, icg, kh, kw = weight.shape
        groups = int(attrs_.get("group", 1))
        if icg * groups != source.shape[0] or out_channels % groups:
            raise _refuse(node, f"{out_channels} output channels in {groups} groups do not fit "
                                f"{source.shape[0]} input channels")
        pads = list(attrs_.get("pads", [0, 0, 0, 0]))
        pads = (pads[0], pads[1], pads[2], pads[3])
        layer = Layer(node.name, "conv", [source.name], "", kernel=(kh, kw),
                      stride=attrs_.get("strides", [1, 1]), pads=pads, groups=groups,
                      weights=np.zeros(weight.shape, np.int8))
        bias = np.zeros(out_channels)
        pending = _Pending(layer, node, weight, bias)
        if node.input(2) is not None:
            pending.float_bias = bias + _per_channel(_constant(node, 2, "bias").const.to_numpy(),
                                                     out_channels, "conv", node)
            pending.bias_values.append(node.input(2))
        out = self.fuse_tail(node, pending, node.output)
        _, height, width = source.shape
        out_h = (height + pads[0] + pads[2] - kh) // layer.stride[0] + 1
        out_w = (width + pads[1] + pads[3] - kw) // layer.stride[1] + 1
        if out_h < 1 or out_w < 1:
            raise _refuse(node, "the kernel is larger than the padded input")
        self.finish(pending, out, (out_channels, out_h, out_w))

    def fc(self, node: Node) -> None:
        source = self.input_of(node, 0, rank=2)
        weight = _constant(node, 1, "weight")
        if len(weight.shape) != 2:
            raise _refuse(node, "the weight must be a 2-D matrix")
        transposed = True  # MatMul and Gemm(transB=0) store (I, O)
        if node.op == "Gemm":
            if node.attrs.get("transA", 0):
                raise _refuse(node, "transA=1 is not supported")
            if float(node.attrs.get("alpha", 1.0)) != 1.0 or float(node.attrs.get("beta", 1.0)) != 1.0:
                raise _refuse(node, "alpha and beta must be 1")
            transposed = not node.attrs.get("transB", 0)
        outputs, inputs = weight.shape[::-1] if transposed else weight.shape
        if inputs != int(np.prod(source.shape)):
            raise _refuse(node, f"the weight expects {inputs} inputs, the input has "
                                f"{int(np.prod(source.shape))}")
        layer = Layer(node.name, "fc", [source.name], "", weights=np.zeros((outputs, inputs), np.int8))
        pending = _Pending(layer, node, weight, np.zeros(outputs), transposed=transposed)
        if node.op == "Gemm" and node.input(2) is not None:
            pending.float_bias = pending.float_bias + _per_channel(
                _constant(node, 2, "bias").const.to_numpy(), outputs, "fc", node)
            pending.bias_values.append(node.input(2))
        out = self.fuse_tail(node, pending, node.output)
        self.finish(pending, out, (outputs,))

    def finish(self, pending: _Pending, out: Value, shape) -> None:
        tensor = self.new_tensor(out, shape)
        pending.layer.output = tensor.name
        self.pending.append(pending)

    def pool(self, node: Node) -> None:
        source = self.input_of(node, 0, rank=4)
        channels, height, width = source.shape
        if node.op == "GlobalAveragePool":
            layer = Layer(node.name, "gap", [source.name], "", kernel=(height, width))
            shape = (channels, 1, 1)
        else:
            attrs_ = node.attrs
            kernel = attrs_.get("kernel_shape")
            if kernel is None or len(kernel) != 2:
                raise _refuse(node, "only 2-D pooling is supported")
            if attrs_.get("ceil_mode", 0) or any(d != 1 for d in attrs_.get("dilations", [1, 1])):
                raise _refuse(node, "ceil_mode and dilations are not supported")
            if attrs_.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                raise _refuse(node, "auto_pad SAME_* is not supported")
            if len(node.outputs) > 1 and node.outputs[1].uses:
                raise _refuse(node, "the indices output is not supported")
            pads = tuple(attrs_.get("pads", [0, 0, 0, 0]))
            kind = "maxpool" if node.op == "MaxPool" else "avgpool"
            if kind == "avgpool" and any(pads):
                raise _refuse(node, "average pooling with padding is not supported")
            layer = Layer(node.name, kind, [source.name], "", kernel=kernel,
                          stride=attrs_.get("strides", [1, 1]), pads=pads)
            out_h = (height + pads[0] + pads[2] - kernel[0]) // layer.stride[0] + 1
            out_w = (width + pads[1] + pads[3] - kernel[1]) // layer.stride[1] + 1
            shape = (channels, out_h, out_w)
        # a max pool only selects values: its output keeps the input's format
        group = source.group if layer.kind == "maxpool" else None
        tensor = self.new_tensor(node.output, shape, group)
        layer.output = tensor.name
        self.pending.append(_Pending(layer, node))

    def add(self, node: Node) -> None:
        values = node.inputs
        if any(v is None or v.const is not None for v in values):
            raise _refuse(node, "an Add of a constant must directly follow a Conv/Gemm/MatMul "
                                "whose output has no other use (it is fused as the bias)")
        a, b = self.input_of(node, 0), self.input_of(node, 1)
        if a.shape != b.shape:
            raise _refuse(node, f"ELEW adds tensors of equal shape, got {a.shape} and {b.shape}")
        if a is b:
            raise _refuse(node, "adding a tensor to itself is not supported")
        layer = Layer(node.name, "add", [a.name, b.name], "")
        pending = _Pending(layer, node)
        out = node.output
        relu = self.sole_user(out, "Relu")
        if relu is not None:
            self.consumed.add(id(relu))
            layer.relu = True
            out = relu.output
        tensor = self.new_tensor(out, a.shape)
        layer.output = tensor.name
        self.pending.append(pending)

    def flatten(self, node: Node) -> None:
        source = self.input_of(node, 0)
        out = node.output
        if node.op == "Flatten" and int(node.attrs.get("axis", 1)) != 1:
            raise _refuse(node, "only Flatten(axis=1) is supported")
        if out.shape is None or len(out.shape) != 2 or out.shape[1] != int(np.prod(source.shape)):
            raise _refuse(node, "only a flatten to (batch, features) is supported "
                                f"(output shape {out.shape})")
        self.alias(out, source)

    def identity(self, node: Node) -> None:
        self.alias(node.output, self.input_of(node, 0))

    def qdq(self, node: Node) -> None:
        source = self.input_of(node, 0)
        dequant = self.sole_user(node.output, "DequantizeLinear")
        if dequant is None:
            raise _refuse(node, "a QuantizeLinear must be followed by a DequantizeLinear only")
        scale, zero_point = node.input(1), node.input(2)
        same = all(a is b for a, b in zip(node.inputs[1:], dequant.inputs[1:]))
        if not same or scale is None or scale.const is None or zero_point is None \
                or zero_point.const is None:
            raise _refuse(node, "the Q/DQ pair must share constant scale and zero point")
        scale_array = np.asarray(scale.const.to_numpy(), np.float64)
        zp_array = np.asarray(zero_point.const.to_numpy())
        exponent = np.log2(scale_array) if np.all(scale_array > 0) else np.array(np.nan)
        if scale_array.size != 1 or exponent.reshape(()) != np.round(exponent.reshape(())) \
                or np.any(zp_array != 0) or zp_array.dtype not in (np.int8, np.uint8):
            raise _refuse(node, "activations need one power-of-two scale and zero point 0 "
                                "(run quant with pow2=true and symmetric=true)")
        exp, signed = int(np.round(exponent.reshape(()))), zp_array.dtype == np.int8
        group = source.group
        if group.exp is not None and (group.exp, group.signed) != (exp, signed):
            raise _refuse(node, f"its format (exp {exp}) disagrees with "
                                f"{group.source.describe()} (exp {group.exp}) on the same tensor")
        group.exp, group.signed, group.source = exp, signed, node
        self.consumed.add(id(dequant))
        self.alias(dequant.output, source)

    # ------------------------------------------------------------ formats

    def assign_formats(self, calibration, method: str) -> None:
        groups = {id(t.group): t.group for t in self.tensors.values()}.values()
        missing = [g for g in groups if g.exp is None]
        if not missing:
            return
        if calibration is None:
            tensor = missing[0].tensors[0]
            raise BackendError(
                f"dpu: no fixed-point format for {tensor.values[0].name!r} (tensor {tensor.name}): "
                "give calibration data (calibration=FILE.npz, or lower(..., calibration=...)), "
                "or quantize activations with quant(pow2=true) and --data")
        values = [v for g in missing for t in g.tensors for v in t.values[:1]]
        ranges = calibrate(self.graph, values, calibration, method=method, bits=8,
                           symmetric=True, pow2=True)
        for group in missing:
            lows = [ranges[id(t.values[0])][0] for t in group.tensors]
            highs = [ranges[id(t.values[0])][1] for t in group.tensors]
            lo, hi = min(lows), max(highs)
            grid = grid_for_range(lo, hi, bits=8, symmetric=True, pow2=True, unsigned=lo >= 0)
            group.exp = int(np.round(np.log2(float(grid.scale))))
            group.signed = bool(lo < 0)

    # ------------------------------------------------------------ layers

    def build(self) -> Program:
        program = Program()
        for tensor in self.tensors.values():
            program.add_tensor(TensorDesc(tensor.name, tensor.shape, tensor.group.exp,
                                          tensor.group.signed))
        for pending in self.pending:
            layer = pending.layer
            if layer.kind in ("conv", "fc"):
                self.quantize_layer(pending, program)
            elif layer.kind == "add":
                self.check_add(pending, program)
            elif layer.kind in ("avgpool", "gap"):
                self.check_shift(pending.node, program.tensors[layer.inputs[0]].exp
                                 - program.tensors[layer.output].exp)
            program.add_layer(layer)
        for value in self.graph.inputs:
            program.inputs.append((value.name, self.by_value[id(value)].name))
        for value in self.graph.outputs:
            tensor = self.by_value.get(id(value))
            if tensor is None or value.rank != len(tensor.shape) + 1:
                raise BackendError(f"dpu: graph output {value.name!r} is not the output of a "
                                   "layer the DPU runs")
            program.outputs.append((value.name, tensor.name))
        return program

    def quantize_layer(self, pending: _Pending, program: Program) -> None:
        layer, node = pending.layer, pending.node
        ints, w_exp = self.weight_ints(pending)
        layer.weights, layer.w_exp = ints, w_exp
        source = program.tensors[layer.inputs[0]]
        out = program.tensors[layer.output]
        acc_exp = w_exp.astype(np.int64) + source.exp
        bias = np.rint(pending.float_bias / np.ldexp(1.0, acc_exp))
        largest = max(abs(b) for b in source.bounds)
        worst = np.abs(ints.astype(np.int64)).reshape(len(ints), -1).sum(axis=1) * largest \
            + np.abs(bias)
        if np.any(worst > ACC_MAX):
            raise _refuse(node, "its int32 accumulator could overflow (weights and bias too "
                                "large for the chosen exponents)")
        layer.bias = bias.astype(np.int32)
        for shift in np.unique(out.exp - acc_exp):
            self.check_shift(node, int(shift))

    def weight_ints(self, pending: _Pending) -> tuple[np.ndarray, np.ndarray]:
        """(int8 weights in the layer's layout, exponent per output channel)."""
        node, const = pending.node, pending.weight.const
        outputs = pending.layer.out_channels
        out_axis = 1 if pending.transposed else 0
        if isinstance(const, Quantized):
            scale = np.asarray(const.scale, np.float64)
            exponent = np.log2(scale)
            axis_ok = const.axis is None or scale.size == 1 or const.axis == out_axis
            if np.any(np.asarray(const.zero_point) != 0) or np.any(exponent != np.round(exponent)) \
                    or not axis_ok or const.num_bits > 8:
                raise _refuse(node, "its quantized weight needs power-of-two scales, zero point 0, "
                                    "<= 8 bits and one scale per tensor or output channel "
                                    "(quant(pow2=true,symmetric=true))")
            ints = np.asarray(const.q, np.int64)
            if const.mask is not None:
                ints = np.where(const.mask, ints, 0)
            w_exp = np.broadcast_to(np.round(exponent).astype(np.int32).reshape(-1), (outputs,))
        else:
            from passes.quant import weight_grid

            array = np.asarray(const.to_numpy(), np.float64)
            axis = out_axis if self.weight_per_channel else None
            grid = weight_grid(array, bits=8, symmetric=True, pow2=True, axis=axis)
            ints = grid.quantize(array, axis).astype(np.int64)
            exponent = np.round(np.log2(grid.scale.astype(np.float64))).astype(np.int32)
            w_exp = np.broadcast_to(exponent.reshape(-1), (outputs,))
        if pending.transposed:
            ints = ints.T
        return ints.astype(np.int8), np.array(w_exp, np.int32)

    def check_add(self, pending: _Pending, program: Program) -> None:
        a, b = (program.tensors[name] for name in pending.layer.inputs)
        out = program.tensors[pending.layer.output]
        if abs(a.exp - b.exp) > MAX_ALIGN:
            raise _refuse(pending.node, f"its operands' exponents {a.exp} and {b.exp} differ by "
                                        f"more than {MAX_ALIGN}")
        self.check_shift(pending.node, out.exp - min(a.exp, b.exp))

    @staticmethod
    def check_shift(node: Node, shift: int) -> None:
        if abs(shift) > MAX_SHIFT:
            raise _refuse(node, f"it needs a shift by {shift}, beyond +-{MAX_SHIFT}")


def _why_unsupported(node: Node) -> str:
    if node.op == "BatchNormalization":
        return "BatchNormalization must be folded into the convolution first (run fold_bn)"
    if node.op == "Relu":
        return "a Relu must directly follow a Conv, Gemm, MatMul or Add whose output has no other use"
    if node.op == "DequantizeLinear":
        return "a DequantizeLinear must follow a QuantizeLinear (quantized weights are constants)"
    return (f"{node.op} is not a DPU operation (CONV, FC, POOL and ELEW add run on the DPU; "
            "run the rest on the host)")


def _constant(node: Node, index: int, what: str) -> Value:
    value = node.input(index)
    if value is None or value.const is None:
        raise _refuse(node, f"its {what} is not a constant")
    return value


def _per_channel(array, channels: int, kind: str, node: Node) -> np.ndarray:
    """A bias term as one float per output channel, or BackendError if it is not one."""
    array = np.asarray(array, np.float64)
    # a bias broadcasts along axis 1 of (N, C, H, W) or (N, F)
    shapes = {"conv": [(channels,), (channels, 1, 1), (1, channels, 1, 1)],
              "fc": [(channels,), (1, channels)]}[kind]
    if array.size != 1 and array.shape not in shapes:
        raise _refuse(node, f"the bias of shape {array.shape} is not one value per output channel")
    return np.broadcast_to(array.reshape(-1), (channels,)).astype(np.float64)


# ------------------------------------------------------------------ tiling


def _ranges(total: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, total)) for start in range(0, total, step)]


class _Emitter:
    """Emits a layer's tiles, loading into a buffer only when it lacks what a tile needs."""

    def __init__(self, program: Program, config: Config):
        self.program = program
        self.config = config
        self.ibuf: dict[int, tuple] = {}
        self.wbuf: Optional[tuple] = None

    def load(self, layer: Layer, slot: int, tensor: str, c0, c1, r0, r1) -> None:
        held = self.ibuf.get(slot)
        if held and held[0] == tensor and held[1] <= c0 and c1 <= held[2] and held[3] <= r0 \
                and r1 <= held[4]:
            return
        if slot == 0:
            self.ibuf.clear()  # as the simulator does: slot 1 is only ELEW's second operand
        self.ibuf[slot] = (tensor, c0, c1, r0, r1)
        self.program.instructions.append(Load(layer.name, slot, tensor, c0, c1, r0, r1))

    def load_weights(self, layer: Layer, o0, o1) -> None:
        if self.wbuf and self.wbuf[0] == layer.name and self.wbuf[1] <= o0 and o1 <= self.wbuf[2]:
            return
        self.wbuf = (layer.name, o0, o1)
        self.program.instructions.append(LoadW(layer.name, o0, o1))

    def emit(self, layer: Layer, node: Node) -> None:
        getattr(self, layer.kind if layer.kind != "avgpool" else "maxpool")(layer, node)

    def input_rows(self, layer: Layer, rows_in: int, r0: int, r1: int) -> tuple[int, int]:
        kh, sh, top = layer.kernel[0], layer.stride[0], layer.pads[0]
        return max(r0 * sh - top, 0), min((r1 - 1) * sh - top + kh, rows_in)

    def row_tile(self, layer: Layer, node: Node, channels_in: int, width_in: int,
                 out_channels: int, out_rows: int, out_width: int) -> int:
        """The most output rows per tile whose inputs fit ibuf and outputs fit obuf."""
        kh, sh = layer.kernel[0], layer.stride[0]
        by_input = ((self.config.ibuf_bytes // (channels_in * width_in)) - kh) // sh + 1
        by_output = self.config.obuf_bytes // (out_channels * out_width)
        return min(by_input, by_output, out_rows)

    def conv(self, layer: Layer, node: Node) -> None:
        source = self.program.tensors[layer.inputs[0]]
        out = self.program.tensors[layer.output]
        out_channels, icg, kh, kw = layer.weights.shape
        ocg = out_channels // layer.groups
        per_channel = layer.weight_bytes(0, 1)
        step = ocg * max(1, min(layer.groups, self.config.wbuf_bytes // (per_channel * ocg))) \
            if layer.groups > 1 else min(out_channels, self.config.wbuf_bytes // per_channel)
        if step < 1 or layer.weight_bytes(0, step) > self.config.wbuf_bytes:
            raise _refuse(node, f"the weights of one output {'group' if layer.groups > 1 else 'channel'}"
                                f" ({layer.weight_bytes(0, max(step, 1))} bytes) do not fit "
                                f"wbuf_bytes={self.config.wbuf_bytes}")
        if layer.groups == 1 and step >= self.config.mac_cols:
            step -= step % self.config.mac_cols  # whole passes of the MAC array
        while True:
            channels_in = icg * (step // ocg) if layer.groups > 1 else source.channels
            rows = self.row_tile(layer, node, channels_in, source.shape[2], step, out.shape[1],
                                 out.shape[2])
            if rows >= 1:
                break
            smaller = step - (ocg if layer.groups > 1 else 1)
            if smaller < 1 or (layer.groups > 1 and smaller < ocg):
                raise _refuse(node, f"one output row does not fit the buffers (ibuf_bytes="
                                    f"{self.config.ibuf_bytes}, obuf_bytes={self.config.obuf_bytes})")
            step = smaller
        channel_tiles = _ranges(out_channels, step)
        row_tiles = _ranges(out.shape[1], rows)
        order = [(c, r) for r in row_tiles for c in channel_tiles] if len(channel_tiles) == 1 \
            else [(c, r) for c in channel_tiles for r in row_tiles]
        for (o0, o1), (r0, r1) in order:
            lo, hi = self.input_rows(layer, source.rows, r0, r1)
            c0, c1 = ((o0 // ocg) * icg, ((o1 - 1) // ocg + 1) * icg) if layer.groups > 1 \
                else (0, source.channels)
            self.load(layer, 0, source.name, c0, c1, lo, hi)
            self.load_weights(layer, o0, o1)
            self.program.instructions.append(Conv(layer.name, o0, o1, r0, r1))
            self.program.instructions.append(Store(layer.name, out.name, o0, o1, r0, r1))

    def fc(self, layer: Layer, node: Node) -> None:
        source = self.program.tensors[layer.inputs[0]]
        outputs, inputs = layer.weights.shape
        if inputs > self.config.ibuf_bytes:
            raise _refuse(node, f"its {inputs} inputs do not fit ibuf_bytes={self.config.ibuf_bytes}")
        step = min(outputs, self.config.wbuf_bytes // (inputs + 4), self.config.obuf_bytes)
        if step < 1:
            raise _refuse(node, f"one output's weights ({inputs + 4} bytes) do not fit "
                                f"wbuf_bytes={self.config.wbuf_bytes}")
        if step >= self.config.mac_cols:
            step -= step % self.config.mac_cols
        for o0, o1 in _ranges(outputs, step):
            self.load(layer, 0, source.name, 0, source.channels, 0, source.rows)
            self.load_weights(layer, o0, o1)
            self.program.instructions.append(Fc(layer.name, o0, o1))
            self.program.instructions.append(Store(layer.name, layer.output, o0, o1, 0, 1))

    def maxpool(self, layer: Layer, node: Node) -> None:
        source = self.program.tensors[layer.inputs[0]]
        out = self.program.tensors[layer.output]
        channels = source.channels
        while True:
            rows = self.row_tile(layer, node, channels, source.shape[2], channels, out.shape[1],
                                 out.shape[2])
            if rows >= 1:
                break
            if channels == 1:
                raise _refuse(node, "one output row of one channel does not fit the buffers")
            channels = (channels + 1) // 2
        for o0, o1 in _ranges(source.channels, channels):
            for r0, r1 in _ranges(out.shape[1], rows):
                lo, hi = self.input_rows(layer, source.rows, r0, r1)
                self.load(layer, 0, source.name, o0, o1, lo, hi)
                self.program.instructions.append(Pool(layer.name, o0, o1, r0, r1))
                self.program.instructions.append(Store(layer.name, out.name, o0, o1, r0, r1))

    def gap(self, layer: Layer, node: Node) -> None:
        source = self.program.tensors[layer.inputs[0]]
        plane = source.rows * source.shape[2]
        channels = min(source.channels, self.config.ibuf_bytes // plane, self.config.obuf_bytes)
        if channels < 1:
            raise _refuse(node, f"one channel ({plane} bytes) does not fit ibuf_bytes="
                                f"{self.config.ibuf_bytes}")
        for o0, o1 in _ranges(source.channels, channels):
            self.load(layer, 0, source.name, o0, o1, 0, source.rows)
            self.program.instructions.append(Pool(layer.name, o0, o1, 0, 1))
            self.program.instructions.append(Store(layer.name, layer.output, o0, o1, 0, 1))

    def add(self, layer: Layer, node: Node) -> None:
        a, b = (self.program.tensors[name] for name in layer.inputs)
        row_bytes = a.row_bytes
        channels = a.channels
        rows = min(a.rows, self.config.ibuf_bytes // (2 * channels * row_bytes),
                   self.config.obuf_bytes // (channels * row_bytes))
        while rows < 1:
            if channels == 1:
                raise _refuse(node, "one row of one channel does not fit the buffers")
            channels = (channels + 1) // 2
            rows = min(a.rows, self.config.ibuf_bytes // (2 * channels * row_bytes),
                       self.config.obuf_bytes // (channels * row_bytes))
        for o0, o1 in _ranges(a.channels, channels):
            for r0, r1 in _ranges(a.rows, rows):
                self.ibuf.pop(0, None)  # the two slots share ibuf: reload both
                self.ibuf.pop(1, None)
                self.load(layer, 0, a.name, o0, o1, r0, r1)
                self.load(layer, 1, b.name, o0, o1, r0, r1)
                self.program.instructions.append(Elew(layer.name, o0, o1, r0, r1))
                self.program.instructions.append(Store(layer.name, layer.output, o0, o1, r0, r1))


def _lower(graph: Graph, config: Config, calibration, method: str,
           weight_per_channel: bool) -> tuple[Program, _Lowering]:
    config.check()
    lowering = _Lowering(graph, config, weight_per_channel)
    lowering.walk()
    lowering.assign_formats(calibration, method)
    program = lowering.build()
    emitter = _Emitter(program, config)
    for pending in lowering.pending:
        emitter.emit(pending.layer, pending.node)
    return program, lowering


def lower(graph: Graph, config: Config = Config(), *,
          calibration: Optional[Mapping[str, np.ndarray]] = None, method: str = "minmax",
          weight_per_channel: bool = False) -> Program:
    """Lower ``graph`` to a DPU program for ``config``; see the module docstring."""
    return _lower(graph, config, calibration, method, weight_per_channel)[0]


# ------------------------------------------------------------------ fake-quant reference


def reference_graph(graph: Graph, config: Config = Config(), *,
                    calibration: Optional[Mapping[str, np.ndarray]] = None, method: str = "minmax",
                    weight_per_channel: bool = False) -> tuple[Graph, Program]:
    """The program :func:`lower` makes with these arguments, and a copy of ``graph`` that
    circ's reference interpreter runs to the program's exact outputs: weights and biases
    replaced by the program's integers times their powers of two, and a QuantizeLinear ->
    DequantizeLinear pair (the program's exponent, int8/uint8, zero point 0) after every value
    the DPU stores as a tensor. Outputs keep their names."""
    program, plan = _lower(graph, config, calibration, method, weight_per_channel)
    copy = graph.copy()
    for pending in plan.pending:
        layer = pending.layer
        if layer.kind not in ("conv", "fc"):
            continue
        scale = np.ldexp(1.0, layer.w_exp.astype(np.int64))
        weights = layer.weights.astype(np.float64) \
            * scale.reshape((-1,) + (1,) * (layer.weights.ndim - 1))
        if pending.transposed:
            weights = weights.T
        copy.set_const(copy.value(pending.weight.name), Dense(weights.astype(np.float32)))
        source = program.tensors[layer.inputs[0]]
        bias = layer.bias * np.ldexp(1.0, layer.w_exp.astype(np.int64) + source.exp)
        assert pending.bias_values or not np.any(layer.bias)
        for index, value in enumerate(pending.bias_values):
            shape = value.const.shape
            if int(np.prod(shape)) != len(bias):  # a broadcast scalar: widen it
                shape = (len(bias), 1, 1) if layer.kind == "conv" else (len(bias),)
            term = bias if index == 0 else np.zeros_like(bias)
            copy.set_const(copy.value(value.name), np.asarray(term, np.float32).reshape(shape))
    for tensor in plan.tensors.values():
        _insert_qdq(copy, copy.value(tensor.values[0].name), program.tensors[tensor.name])
    return copy, program


def _insert_qdq(graph: Graph, value: Value, desc: TensorDesc) -> None:
    scale = graph.add_const(f"{value.name}_dpu_scale", np.float32(np.ldexp(1.0, desc.exp)))
    zero = graph.add_const(f"{value.name}_dpu_zero",
                           np.zeros((), np.int8 if desc.signed else np.uint8))
    where = {"after": value.producer} if value.producer is not None else {"before": graph.nodes[0]}
    quant = graph.add_node("QuantizeLinear", [value, scale, zero], name=f"{value.name}_dpu_q",
                           **where)
    dequant = graph.add_node("DequantizeLinear", [quant.output, scale, zero],
                             name=f"{value.name}_dpu_dq", after=quant)
    graph.replace_all_uses_with(value, dequant.output)
    graph.set_input(quant, 0, value)
    if graph.is_output(dequant.output):  # keep the graph's output names
        name = value.name
        graph.rename(value, graph.unique_name(f"{name}_float"))
        graph.rename(dequant.output, name)
