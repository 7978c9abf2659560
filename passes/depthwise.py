"""depthwise: rewrite a standard Conv as depthwise then pointwise (MobileNet style). Approximate.

A standard ``k x k`` convolution with ``M`` filters over ``C`` channels is
``y = sum_c W[:, c] * x_c``. Writing each input channel's ``M x k^2`` slice ``W[:, c]`` as
``P_c @ D_c`` through rank ``m`` gives ``y = sum_c P_c (D_c * x_c)``: a depthwise Conv
(``group = C``, ``m`` filters per channel from ``D_c``) followed by a 1x1 Conv mixing the
``C m`` channels with ``P_c``. Taking ``P_c D_c`` as each slice's truncated SVD is the best
such approximation in the Frobenius norm (the channels are independent problems), and it is
exact once ``m`` reaches ``min(M, k^2)``, the largest rank a slice can have.
The depthwise-separable convolution is the "architecture design" part of seed 001
(MobileNet, Howard et al., 2017): its cost relative to the standard conv is
``1/N + 1/k^2`` for ``N`` output channels and depth multiplier 1, ``m (1/N + 1/k^2)`` in general.
"""

from __future__ import annotations

from typing import Union

import attrs
import numpy as np

from circ.analysis.stats import node_macs
from circ.errors import PipelineError
from circ.graph import Graph, Node
from circ.passbase import Pass, PassContext, PassResult, register_pass
from circ.rewrite import Declined, Rewriter
from circ.weights import WeightRef, select_layers
from passes.svd import factor_weight, split_layer


@attrs.define
class Separation:
    """The per-channel factorisation of one Conv weight ``M x C x k...``."""

    depthwise: np.ndarray  # (C m) x 1 x k...
    pointwise: np.ndarray  # M x (C m) x 1...
    multiplier: int
    error: float  # relative Frobenius error of the whole weight


def separate(weight: np.ndarray, multiplier: int) -> Separation:
    """Best depthwise-separable approximation of ``weight`` (``M x C x k...``, float64) with
    ``multiplier`` filters per input channel (clipped to ``min(M, prod(k))``)."""
    out_channels, in_channels = weight.shape[:2]
    kernel = weight.shape[2:]
    taps = int(np.prod(kernel, dtype=np.int64))
    multiplier = min(multiplier, out_channels, taps)
    slices = weight.reshape(out_channels, in_channels, taps).transpose(1, 0, 2)  # C x M x k^2
    left, singular, right = np.linalg.svd(slices, full_matrices=False)  # batched over channels
    root = np.sqrt(singular[:, :multiplier])
    mixing = left[:, :, :multiplier] * root[:, None, :]  # C x M x m
    filters = root[:, :, None] * right[:, :multiplier, :]  # C x m x k^2
    # Depthwise output channel c*m + j belongs to group c (ONNX groups are contiguous).
    depthwise = filters.reshape((in_channels * multiplier, 1) + kernel)
    pointwise = mixing.transpose(1, 0, 2).reshape((out_channels, in_channels * multiplier) + (1,) * len(kernel))
    dropped = float(np.square(singular[:, multiplier:]).sum())
    total = float(np.square(singular).sum())
    error = float(np.sqrt(dropped / total)) if total > 0 else 0.0
    return Separation(depthwise, pointwise, multiplier, error)


def mobilenet_ratio(out_channels: int, taps: int, multiplier: int = 1) -> float:
    """MobileNet's cost of depthwise + pointwise relative to the standard conv:
    ``m (1/N + 1/k^2)`` (Howard et al., 2017, section 3.1, with depth multiplier ``m``)."""
    return multiplier * (1.0 / out_channels + 1.0 / taps)


@register_pass
class DepthwiseSeparable(Pass):
    """Rewrite standard Convs as a depthwise Conv followed by a pointwise (1x1) Conv.

    Rules:

    1. ``Conv(x, W[, b])`` with group 1 and weight ``M x C x k...`` (any spatial rank) becomes
       ``Conv(Conv(x, D; group=C), P[, b])``: the depthwise Conv keeps the kernel, strides,
       pads, dilations and auto_pad and has ``C m`` output channels (``m = multiplier``,
       clipped to ``min(M, k^2)``); the 1x1 pointwise Conv carries the bias. ``D`` and ``P``
       come from the rank-``m`` truncated SVD of each input channel's ``M x k^2`` slice, the
       best approximation of this form. Exact (to float rounding) when ``m = min(M, k^2)``.

    A layer is declined when the rewrite would not reduce its MACs (MobileNet's ratio
    ``m (1/N + 1/k^2) >= 1``, e.g. every 1x1 conv) unless ``force=true``; and, like ``svd``,
    for grouped or depthwise Convs, ConvTranspose, shared weights, weights smaller than
    ``min_size`` and compressed or pruned weights unless ``decode=true``.

    ``details["layers"]`` gives per layer the multiplier, the relative Frobenius error of
    the weight, the MACs before and after and ``mac_ratio`` (after / before; from the graph's
    shapes, None when a spatial size is unknown) and ``mobilenet_ratio`` (the formula ``m (1/N + 1/k^2)``, equal to
    ``mac_ratio`` since the depthwise conv runs at the output's resolution).
    """

    name = "depthwise"
    exact = False

    multiplier: int = attrs.field(default=1, metadata={"help": "depthwise filters per input channel"})
    scope: str = attrs.field(default="conv", metadata={"help": "layers to rewrite: conv or a name pattern"})
    min_size: int = attrs.field(default=0, metadata={"help": "leave weights with fewer elements alone"})
    force: bool = attrs.field(default=False, metadata={"help": "rewrite even when MACs would not shrink"})
    decode: bool = attrs.field(
        default=False, metadata={"help": "factor compressed or pruned weights (decoded) instead of declining"})

    def __attrs_post_init__(self):
        if self.multiplier < 1:
            raise PipelineError(f"option 'multiplier' of pass 'depthwise' must be >= 1, got {self.multiplier}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        selected = select_layers(graph, self.scope, [], ctx)
        refs = [ref for ref in selected if ref.kind == "conv"]
        if selected and not refs:
            ctx.decline(None, f"no Conv weight constants in scope {self.scope!r}")
        if not refs:
            return PassResult(False)
        rewriter = Rewriter(graph)
        layers = {}
        for ref in refs:
            found = self._separate(ref, graph)
            if isinstance(found, Declined):
                ctx.decline(ref.node, found.reason)
                continue
            name, before = ref.name, node_macs(ref.node)
            out_channels, taps = found.pointwise.shape[0], int(np.prod(found.depthwise.shape[2:]))
            head, tail = _rewrite(rewriter, ref.node, found)
            after = node_macs(head), node_macs(tail)
            known = before and None not in after
            layers[name] = {
                "multiplier": found.multiplier, "error": found.error,
                "macs_before": before, "macs_after": sum(after) if known else None,
                "mac_ratio": sum(after) / before if known else None,
                "mobilenet_ratio": mobilenet_ratio(out_channels, taps, found.multiplier),
            }
        return PassResult(bool(layers), details={"layers": layers})

    def _separate(self, ref: WeightRef, graph: Graph) -> Union[Separation, Declined]:
        node = ref.node
        if node.op != "Conv":
            return Declined(f"{node.op} is not rewritten")
        if int(node.attrs.get("group", 1)) != 1:
            return Declined(f"grouped Conv (group={node.attrs['group']}) is left alone")
        out_channels = ref.value.shape[0]
        taps = int(np.prod(ref.value.shape[2:], dtype=np.int64))
        multiplier = min(self.multiplier, out_channels, taps)
        ratio = mobilenet_ratio(out_channels, taps, multiplier)
        if ratio >= 1 and not self.force:
            return Declined(f"depthwise + pointwise would cost {ratio:.3g}x the MACs "
                            f"({out_channels} filters of {taps} taps, multiplier {multiplier})")
        weight = factor_weight(ref, graph, decode=self.decode, min_size=self.min_size)
        if isinstance(weight, Declined):
            return weight
        return separate(weight, multiplier)


def _rewrite(rewriter: Rewriter, node: Node, found: Separation) -> tuple[Node, Node]:
    graph = rewriter.graph
    dtype = node.input(1).dtype
    head_attrs = dict(node.attrs)
    head_attrs["group"] = found.depthwise.shape[0] // found.multiplier
    head_attrs["kernel_shape"] = list(found.depthwise.shape[2:])
    first = ("Conv", [node.input(0), graph.add_const(f"{node.name}_dw", found.depthwise.astype(dtype))],
             head_attrs, f"{node.name}_depthwise")
    tail_inputs = [None, graph.add_const(f"{node.name}_pw", found.pointwise.astype(dtype))]
    if node.input(2) is not None:
        tail_inputs.append(node.input(2))
    second = ("Conv", tail_inputs, {"kernel_shape": [1] * (found.pointwise.ndim - 2)}, f"{node.name}_pointwise")
    return split_layer(rewriter, node, first, second)
