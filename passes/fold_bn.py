"""Folding of inference BatchNormalization and per-channel affine ops into the layer before."""

from __future__ import annotations

from typing import Optional, Union

import attrs
import numpy as np

from circ.graph import Graph, Node, Value
from circ.passbase import Pass, PassContext, PassResult, register_pass
from circ.rewrite import Declined, Rewriter, Rule, apply_rules, const_array, produced_by, sole_user

LINEAR = ("Conv", "ConvTranspose", "Gemm")


@register_pass
class FoldBatchNorm(Pass):
    """Fold per-channel affine maps into the Conv, ConvTranspose or Gemm that feeds them.

    An inference BatchNormalization is ``y = s * x + t`` per channel (axis 1) with
    ``s = scale / sqrt(var + epsilon)`` and ``t = bias - mean * s``. A layer whose output
    channel ``c`` is ``W_c * x + b_c`` absorbs it as ``W'_c = s_c W_c``, ``b'_c = s_c b_c + t_c``.

    Rules:

    1. ``BatchNormalization(Conv(x, W[, b]))`` becomes one Conv (any group count, bias
       added when absent). Exact up to float rounding (the new weights are computed in
       float64 and rounded once to the weight dtype).
    2. ``BatchNormalization(ConvTranspose(x, W[, b]))``: the scale runs along the output
       channels, axis 1 of ``W`` within each group. Exact up to float rounding.
    3. ``BatchNormalization(Gemm(A, B[, C]))`` on the 2-D output: columns of ``B`` (rows when
       ``transB=1``) are scaled and ``C`` becomes ``beta * C * s + t`` (``beta`` set to 1).
       Exact up to float rounding.
    4. ``Mul``/``Div``/``Add``/``Sub`` of a Conv, ConvTranspose or Gemm output by a constant
       that varies only along axis 1 (model-zoo graphs write a folded BatchNorm as
       ``Mul(Unsqueeze(w))`` then ``Add(Unsqueeze(b))``) is folded the same way. Exact up to
       float rounding; a divisor with a zero is left alone.
    5. The same ``Mul``/``Div``/``Add``/``Sub`` after a BatchNormalization that rules 1-3 cannot
       fold (e.g. DenseNet's BatchNorm after a Concat) is merged into that BatchNorm's scale
       and bias. Exact up to float rounding.

    Every rule requires the folded layer's output to have no other user (and not be a graph
    output) and its weights, bias and the BatchNorm statistics to be constants; otherwise the
    case is declined with the reason. BatchNormalization in training mode, with
    ``spatial=0`` or with its running-statistics outputs used is declined too.
    """

    name = "fold_bn"
    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        rules = [
            Rule("batchnorm_into_layer", ("BatchNormalization",), _match_bn(graph), _fold_into),
            Rule("affine_into_layer", ("Mul", "Div", "Add", "Sub"), _match_affine(graph), _fold_into),
        ]
        count = apply_rules(graph, rules, ctx)
        return PassResult(modified=count > 0, details={"folded": count})


@attrs.define
class Affine:
    """A per-channel map ``y = scale * x + shift`` to fold into ``layer`` (None = 1 or 0)."""

    layer: Node
    scale: Optional[np.ndarray]
    shift: Optional[np.ndarray]


# ---------------------------------------------------------------------- matching


def _match_bn(graph: Graph):
    def match(bn: Node) -> Union[Affine, Declined, None]:
        affine = _bn_affine(bn, graph)
        if isinstance(affine, Declined):
            return affine
        scale, shift = affine
        source = bn.input(0)
        layer = produced_by(source, *LINEAR)
        if layer is None:
            what = source.producer.op if source.producer is not None else "a graph input"
            return Declined(f"its input comes from {what}, not Conv/ConvTranspose/Gemm")
        problem = _layer_problem(layer, source, graph, len(scale))
        return Declined(problem) if problem else Affine(layer, scale, shift)

    return match


def _match_affine(graph: Graph):
    def match(node: Node) -> Union[Affine, Declined, None]:
        if len(node.inputs) != 2 or node.inputs[0] is None or node.inputs[1] is None:
            return None
        # Mul and Add commute; Sub and Div only fold with the layer on the left.
        sides = [(0, 1), (1, 0)] if node.op in ("Mul", "Add") else [(0, 1)]
        for layer_side, const_side in sides:
            source, constant = node.inputs[layer_side], node.inputs[const_side]
            layer = produced_by(source, *LINEAR, "BatchNormalization")
            if layer is None or constant.const is None:
                continue
            vector = _channel_vector(constant, source, node.output)
            if vector is None:
                continue
            if node.op == "Div" and np.any(vector == 0):
                return Declined("the divisor has a zero")
            scale = {"Mul": vector, "Div": 1.0 / vector}.get(node.op)
            shift = {"Add": vector, "Sub": -vector}.get(node.op)
            if layer.op == "BatchNormalization":
                problem = _bn_affine(layer, graph)
                problem = problem.reason if isinstance(problem, Declined) else ""
                if not problem and sole_user(source, graph) is not node:
                    problem = "the BatchNormalization output has other users"
            else:
                problem = _layer_problem(layer, source, graph, len(vector))
            return Declined(problem) if problem else Affine(layer, scale, shift)
        return None

    return match


def _bn_affine(bn: Node, graph: Graph):
    """``(s, t)`` of an inference BatchNormalization, float64, or Declined."""
    if bn.attrs.get("training_mode", 0):
        return Declined("training_mode is set")
    if bn.attrs.get("spatial", 1) == 0:
        return Declined("spatial=0 (per-activation statistics) is not folded")
    if bn.attrs.get("is_test", 1) == 0:
        return Declined("is_test=0 (training mode)")
    for extra in bn.outputs[1:]:
        if extra.uses or graph.is_output(extra):
            return Declined("its running-statistics outputs are used")
    params = [const_array(bn.input(i)) for i in range(1, 5)]
    if any(p is None for p in params):
        return Declined("scale, bias, mean or var is not a constant")
    gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
    if not len(gamma) == len(beta) == len(mean) == len(var):
        return Declined("scale, bias, mean and var differ in length")
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return scale, beta - mean * scale


def _layer_problem(layer: Node, output: Value, graph: Graph, channels: int) -> str:
    """Why the per-channel map on ``output`` cannot be folded into ``layer`` ("" if it can)."""
    users = [u.describe() for u in output.users]
    if len(output.uses) != 1 or graph.is_output(output):
        also = "a graph output" if graph.is_output(output) else ", ".join(users)
        return f"the {layer.describe()} output is shared ({also})"
    weight, bias = layer.input(1), layer.input(2)
    if weight is None or weight.const is None:
        return f"the weights of {layer.describe()} are not a constant"
    if bias is not None and bias.const is None:
        return f"the bias of {layer.describe()} is not a constant"
    if weight.dtype is None or weight.dtype.kind != "f":
        return f"the weights of {layer.describe()} are not floating point"
    shape = output.shape
    if shape is None or len(shape) < 2 or shape[1] != channels:
        return f"{channels} channels do not match the {layer.describe()} output {shape}"
    if layer.op == "Gemm" and weight.rank != 2:
        return f"the B input of {layer.describe()} is not 2-D"
    if layer.op == "ConvTranspose" and channels % int(layer.attrs.get("group", 1)):
        return f"{channels} channels do not split into the groups of {layer.describe()}"
    return ""


def _channel_vector(constant: Value, source: Value, result: Value) -> Optional[np.ndarray]:
    """The float64 per-channel vector a constant operand stands for, or None when it varies
    along another axis, would broadcast the output to a new shape, or changes the dtype."""
    array = const_array(constant)
    shape = source.shape
    if array is None or shape is None or len(shape) < 2 or not isinstance(shape[1], int):
        return None
    if array.dtype.kind != "f" or (source.dtype is not None and array.dtype != source.dtype):
        return None
    if array.ndim > len(shape) or result.shape is None or len(result.shape) != len(shape):
        return None
    padded = (1,) * (len(shape) - array.ndim) + array.shape
    if any(d != 1 for axis, d in enumerate(padded) if axis != 1) or padded[1] not in (1, shape[1]):
        return None
    return np.broadcast_to(array.astype(np.float64).reshape(-1), (shape[1],)).copy()


# ---------------------------------------------------------------------- rewriting


def _fold_into(rewriter: Rewriter, node: Node, found: Affine) -> None:
    """Fold ``found`` into its layer; ``node`` (the BatchNorm, Mul, ...) disappears."""
    layer = found.layer
    if layer.op == "BatchNormalization":
        _into_batchnorm(rewriter, layer, found.scale, found.shift)
    elif layer.op == "Gemm":
        _into_gemm(rewriter, layer, found.scale, found.shift)
    else:
        _into_conv(rewriter, layer, found.scale, found.shift)
    rewriter.replace_node(node, [layer.output] + [None] * (len(node.outputs) - 1))


def _into_conv(rewriter: Rewriter, conv: Node, scale, shift) -> None:
    weight = const_array(conv.input(1))
    channels = conv.output.shape[1]
    bias = const_array(conv.input(2))
    bias = np.zeros(channels) if bias is None else bias.astype(np.float64)
    if scale is not None:
        wide = weight.astype(np.float64)
        if conv.op == "Conv":  # output channels on axis 0
            wide = wide * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        else:  # ConvTranspose: (in, out/group, k...) per group, output channels on axis 1
            groups = int(conv.attrs.get("group", 1))
            per_group = weight.shape[0] // groups
            grouped = wide.reshape((groups, per_group) + weight.shape[1:])
            grouped = grouped * scale.reshape((groups, 1, -1) + (1,) * (weight.ndim - 2))
            wide = grouped.reshape(weight.shape)
        rewriter.set_const_input(conv, 1, wide.astype(weight.dtype))
        bias = bias * scale
    if shift is not None:
        bias = bias + shift
    rewriter.set_const_input(conv, 2, bias.astype(weight.dtype), name=f"{conv.name}_bias")


def _into_gemm(rewriter: Rewriter, gemm: Node, scale, shift) -> None:
    weight = const_array(gemm.input(1))
    beta = float(gemm.attrs.get("beta", 1.0))
    bias = const_array(gemm.input(2))
    bias = None if bias is None else bias.astype(np.float64) * beta
    if scale is not None:
        along = scale[:, None] if gemm.attrs.get("transB", 0) else scale[None, :]
        rewriter.set_const_input(gemm, 1, (weight.astype(np.float64) * along).astype(weight.dtype))
        bias = None if bias is None else bias * scale
    if shift is not None:
        bias = shift if bias is None else bias + shift
    if bias is not None:
        rewriter.set_const_input(gemm, 2, bias.astype(weight.dtype), name=f"{gemm.name}_bias")
        gemm.attrs["beta"] = 1.0


def _into_batchnorm(rewriter: Rewriter, bn: Node, scale, shift) -> None:
    gamma = const_array(bn.input(1))
    beta = const_array(bn.input(2)).astype(np.float64)
    new_gamma = gamma.astype(np.float64)
    if scale is not None:
        new_gamma = new_gamma * scale
        beta = beta * scale
        rewriter.set_const_input(bn, 1, new_gamma.astype(gamma.dtype))
    if shift is not None:
        beta = beta + shift
    rewriter.set_const_input(bn, 2, beta.astype(gamma.dtype))
