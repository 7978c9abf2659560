"""svd: low-rank split of Conv, Gemm and MatMul weights by truncated SVD. Approximate.

A weight matrix ``W`` (``rows x cols``) is replaced by two factors through rank ``r``,
``W ~ P @ Q`` with ``P = U_r sqrt(S_r)`` and ``Q = sqrt(S_r) V_r^T`` (the singular values are
split evenly so neither factor is badly scaled). By Eckart–Young this is the best rank-``r``
approximation in the Frobenius norm; its relative error is
``sqrt(sum of the dropped sigma^2) / ||W||``, and at full rank the split is exact. The low-rank
split is one of the four compression families of the survey (seed 004) and the "low rank
approximation" slide of Hung-yi Lee's lecture (seed 001): a linear layer ``M x N`` becomes
``M x K`` then ``K x N``, fewer parameters when ``K < MN / (M + N)``.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import attrs
import numpy as np

from circ.errors import PipelineError
from circ.graph import Graph, Node
from circ.ops.conv import window
from circ.ops.registry import ShapeError
from circ.passbase import Pass, PassContext, PassResult, register_pass
from circ.rewrite import Declined, Rewriter
from circ.tensors import Dense
from circ.weights import WeightRef, select_layers

DEFAULT_RATIO = 0.5


# ---------------------------------------------------------------------- shared with depthwise


def factor_weight(ref: WeightRef, graph: Graph, *, decode: bool, min_size: int) -> Union[np.ndarray, Declined]:
    """The float64 weight array of ``ref`` when its layer may be factored, else Declined.

    Factored layers get new weight constants, so a weight stored compressed (Clustered,
    Quantized, or Dense with a pruning mask) would lose its codebook, scale or zeros: such
    layers are declined unless ``decode`` is set, in which case the decoded floats are factored.
    A weight read by more than one layer is declined (factoring one reader would keep both),
    and so is one holding NaN or infinity (no SVD exists).
    """
    tensor = ref.value.const
    if tensor.size < min_size:
        return Declined(f"the weight has {tensor.size} elements, fewer than min_size={min_size}")
    if len(ref.value.uses) != 1 or graph.is_output(ref.value):
        return Declined(f"the weight {ref.value.name!r} is shared with other nodes")
    if not decode:
        if not isinstance(tensor, Dense):
            return Declined(f"the weight is stored {type(tensor).__name__}; decode=true factors "
                            "its decoded values (the compressed form is lost)")
        if tensor.mask is not None:
            return Declined("the weight is pruned (has a mask); decode=true factors it anyway "
                            "(the factors are dense)")
    weight = tensor.to_numpy().astype(np.float64)
    if not np.all(np.isfinite(weight)):
        return Declined("the weight holds NaN or infinity")
    return weight


def relative_error(singular: np.ndarray, rank: int) -> float:
    """``sqrt(sum of sigma_i^2 for i >= rank) / sqrt(sum of all sigma_i^2)`` (0 for a zero matrix):
    the Frobenius error of the best rank-``rank`` approximation, relative to the matrix."""
    energy = np.square(singular)
    total = float(energy.sum())
    return float(np.sqrt(energy[rank:].sum() / total)) if total > 0 else 0.0


def split_layer(rewriter: Rewriter, node: Node, first: tuple, second: tuple) -> tuple[Node, Node]:
    """Replace ``node`` by two nodes, each given as ``(op, inputs, attributes, name)``; the second
    reads the first's output in place of the placeholder ``None`` among its inputs. The old
    node and its dead constants are erased; a graph output keeps its name."""
    graph = rewriter.graph
    op, inputs, attributes, name = first
    head = graph.add_node(op, inputs, attributes, name=name, before=node)
    op, inputs, attributes, name = second
    inputs = [head.output if value is None else value for value in inputs]
    tail = graph.add_node(op, inputs, attributes, name=name, before=node)
    rewriter.replace_node(node, [tail.output])
    return head, tail


def _fraction(name: str):
    def check(instance, attribute, value):
        if value is not None and not 0.0 < value <= 1.0:
            raise PipelineError(f"option {name!r} of pass {instance.name!r} must be in (0, 1], got {value}")

    return check


# ---------------------------------------------------------------------- the pass


@attrs.define
class Plan:
    """How one layer is factored: the matrix, its SVD, the chosen rank."""

    mode: str  # "fc", "channel" or "spatial"
    matrix: np.ndarray  # rows x cols, float64
    left: np.ndarray  # U, rows x k
    singular: np.ndarray  # sigma, descending
    right: np.ndarray  # V^T, k x cols
    rank: int = 0

    @property
    def params_before(self) -> int:
        return self.matrix.size

    @property
    def params_after(self) -> int:
        return self.rank * sum(self.matrix.shape)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """``P`` (rows x rank) and ``Q`` (rank x cols) with ``P @ Q`` the truncated SVD."""
        root = np.sqrt(self.singular[: self.rank])
        return self.left[:, : self.rank] * root, root[:, None] * self.right[: self.rank]


@register_pass
class LowRankSVD(Pass):
    """Split Gemm, MatMul and Conv layers into two through a rank-``r`` truncated SVD.

    The rank comes from one of ``rank`` (clipped to the full rank), ``ratio`` (the largest
    rank keeping at most that fraction of the layer's weight parameters, at least 1) or
    ``energy`` (the smallest rank whose singular values keep that fraction of ``sum sigma^2``);
    with none of them, ``ratio=0.5``. A layer whose split would not have fewer weight
    parameters than the original is declined (``force=true`` splits it anyway, which is how
    exactness at full rank is checked).

    Rules (each is the best rank-``r`` approximation of the layer's weight matrix, so the
    error is ``sqrt(sum of the dropped sigma^2) / ||W||``; exact, to float rounding, at full
    rank):

    1. ``Gemm(A, B, C)`` with ``B' = B`` (or ``B^T`` for ``transB=1``) of shape ``K x N``:
       ``Gemm(A, P)`` (``transA`` and ``alpha`` kept) then ``Gemm(., Q, C)`` (``beta`` kept);
       both store their factor in the original ``transB`` layout. Before opset 11 the first
       Gemm gets a zero ``C`` of shape ``(1,)`` (required there); Gemm before opset 7 is declined.
    2. ``MatMul(x, W)`` with a 2-D constant ``W``: ``MatMul(MatMul(x, P), Q)``.
    3. ``mode=channel`` (default): ``Conv`` with group 1, weight ``M x C x k...`` read as the
       ``M x (C k...)`` matrix: a Conv with ``r`` filters of the same kernel, strides, pads,
       dilations and auto_pad, then a 1x1 Conv ``M x r`` carrying the bias. Any spatial rank.
    4. ``mode=spatial`` (Jaderberg et al., 2014, scheme 2, closed form by SVD): a 2-D ``Conv``
       with group 1 read as the ``(C kh) x (M kw)`` matrix ``A[(c,y),(m,x)] = W[m,c,y,x]``:
       a ``kh x 1`` Conv with ``r`` filters (the vertical strides, dilations and pads) then a
       ``1 x kw`` Conv with ``M`` filters (the horizontal ones) carrying the bias. Exact
       because the vertical conv has no bias, so the horizontal zero padding it no longer
       sees would have contributed zeros. ``auto_pad=SAME_*`` needs the input's size.

    Declined: grouped Conv, ConvTranspose, MatMul weights of rank other than 2, weights
    shared by several nodes, weights smaller than ``min_size`` elements, and compressed or
    pruned weights (unless ``decode=true``; see :func:`factor_weight`).

    ``details["layers"]`` gives per layer the mode, matrix shape, rank, full rank, relative
    Frobenius error and the weight parameters before and after.
    """

    name = "svd"
    exact = False

    rank: Optional[int] = attrs.field(default=None, metadata={"help": "rank of every split layer"})
    ratio: Optional[float] = attrs.field(
        default=None, validator=_fraction("ratio"),
        metadata={"help": f"keep at most this fraction of each layer's weight parameters "
                          f"(default {DEFAULT_RATIO} when neither rank nor energy is given)"})
    energy: Optional[float] = attrs.field(
        default=None, validator=_fraction("energy"),
        metadata={"help": "keep this fraction of the sum of squared singular values"})
    mode: Literal["channel", "spatial"] = attrs.field(
        default="channel", metadata={"help": "Conv split: channel (kxk then 1x1) or spatial (kx1 then 1xk)"})
    scope: str = attrs.field(default="all", metadata={"help": "layers to split: all, conv, fc or a name pattern"})
    min_size: int = attrs.field(default=0, metadata={"help": "leave weights with fewer elements alone"})
    force: bool = attrs.field(default=False, metadata={"help": "split even when parameters would not shrink"})
    decode: bool = attrs.field(
        default=False, metadata={"help": "factor compressed or pruned weights (decoded) instead of declining"})

    def __attrs_post_init__(self):
        given = [name for name in ("rank", "ratio", "energy") if getattr(self, name) is not None]
        if len(given) > 1:
            raise PipelineError(f"pass 'svd': give one of rank, ratio and energy, not {' and '.join(given)}")
        if self.rank is not None and self.rank < 1:
            raise PipelineError(f"option 'rank' of pass 'svd' must be >= 1, got {self.rank}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        refs = select_layers(graph, self.scope, [], ctx)
        if not refs:
            return PassResult(False)
        rewriter = Rewriter(graph)
        layers = {}
        for ref in refs:
            plan = self._plan(ref, graph)
            if isinstance(plan, Declined):
                ctx.decline(ref.node, plan.reason)
                continue
            name = ref.name
            _REWRITE[plan.mode](rewriter, ref.node, plan)
            layers[name] = {
                "mode": plan.mode, "shape": list(plan.matrix.shape), "rank": plan.rank,
                "full_rank": len(plan.singular), "error": relative_error(plan.singular, plan.rank),
                "params_before": plan.params_before, "params_after": plan.params_after,
            }
        details = {
            "layers": layers,
            "params_before": sum(layer["params_before"] for layer in layers.values()),
            "params_after": sum(layer["params_after"] for layer in layers.values()),
        }
        return PassResult(bool(layers), details=details)

    # ------------------------------------------------------------------ planning
    def _plan(self, ref: WeightRef, graph: Graph) -> Union[Plan, Declined]:
        node = ref.node
        problem = self._layer_problem(node, ref)
        if problem:
            return Declined(problem)
        weight = factor_weight(ref, graph, decode=self.decode, min_size=self.min_size)
        if isinstance(weight, Declined):
            return weight
        if node.op == "Conv" and self.mode == "spatial":
            mode = "spatial"
            out_channels, in_channels, height, width = weight.shape
            matrix = weight.transpose(1, 2, 0, 3).reshape(in_channels * height, out_channels * width)
        elif node.op == "Conv":
            mode, matrix = "channel", weight.reshape(weight.shape[0], -1)
        else:
            mode = "fc"
            matrix = weight.T if node.op == "Gemm" and node.attrs.get("transB", 0) else weight
        left, singular, right = np.linalg.svd(matrix, full_matrices=False)
        plan = Plan(mode, matrix, left, singular, right)
        plan.rank = self._rank(singular, matrix.shape)
        if plan.params_after >= plan.params_before and not self.force:
            return Declined(f"rank {plan.rank} of the {matrix.shape[0]}x{matrix.shape[1]} weight matrix "
                            f"keeps {plan.params_after} parameters, not fewer than {plan.params_before}")
        return plan

    def _layer_problem(self, node: Node, ref: WeightRef) -> str:
        if node.op == "ConvTranspose":
            return "ConvTranspose is not split"
        if node.op == "MatMul" and ref.value.rank != 2:
            return f"the MatMul weight has rank {ref.value.rank}, not 2"
        if node.op == "Gemm" and node.opset < 7:
            return f"Gemm at opset {node.opset} (before 7) is not split"
        if node.op == "Conv":
            if int(node.attrs.get("group", 1)) != 1:
                return f"grouped Conv (group={node.attrs['group']}) is not split"
            if self.mode == "spatial":
                if ref.value.rank != 4:
                    return f"mode=spatial splits 2-D convolutions only (weight rank {ref.value.rank})"
                if _spatial_pads(node) is None:
                    return "auto_pad needs the input's spatial size, which is not known"
        return ""

    def _rank(self, singular: np.ndarray, shape: tuple) -> int:
        full = len(singular)
        if self.rank is not None:
            return min(self.rank, full)
        if self.energy is not None:
            energy = np.cumsum(np.square(singular))
            if energy[-1] == 0:
                return 1
            # The relative slack keeps energy=1.0 from missing the full rank by rounding.
            return min(full, int(np.searchsorted(energy, self.energy * energy[-1] * (1 - 1e-12))) + 1)
        ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
        rows, cols = shape
        return max(1, min(full, int(np.floor(ratio * rows * cols / (rows + cols)))))


# ---------------------------------------------------------------------- rewriting


def _cast(array: np.ndarray, like: Node) -> np.ndarray:
    return array.astype(like.input(1).dtype)


def _split_gemm(rewriter: Rewriter, node: Node, plan: Plan) -> None:
    graph = rewriter.graph
    head, tail = (_cast(f, node) for f in plan.factors())  # K x r, r x N
    transposed = bool(node.attrs.get("transB", 0))
    if transposed:
        head, tail = head.T, tail.T
    name = node.name
    if node.op == "MatMul":
        first = ("MatMul", [node.input(0), graph.add_const(f"{name}_svd_p", head)], {}, f"{name}_svd1")
        second = ("MatMul", [None, graph.add_const(f"{name}_svd_q", tail)], {}, f"{name}_svd2")
        split_layer(rewriter, node, first, second)
        return
    head_attrs = {"transB": int(transposed)}
    for key in ("transA", "alpha"):
        if key in node.attrs:
            head_attrs[key] = node.attrs[key]
    head_inputs = [node.input(0), graph.add_const(f"{name}_svd_p", head)]
    if node.opset < 11:  # C is required before opset 11
        head_inputs.append(graph.add_const(f"{name}_svd_zero", np.zeros(1, head.dtype)))
    tail_attrs = {"transB": int(transposed)}
    if "beta" in node.attrs:
        tail_attrs["beta"] = node.attrs["beta"]
    tail_inputs = [None, graph.add_const(f"{name}_svd_q", tail)]
    if node.input(2) is not None:
        tail_inputs.append(node.input(2))
    split_layer(rewriter, node, ("Gemm", head_inputs, head_attrs, f"{name}_svd1"),
                ("Gemm", tail_inputs, tail_attrs, f"{name}_svd2"))


def _tail_inputs(rewriter: Rewriter, node: Node, weight: np.ndarray) -> list:
    inputs = [None, rewriter.graph.add_const(f"{node.name}_svd_q", _cast(weight, node))]
    if node.input(2) is not None:
        inputs.append(node.input(2))
    return inputs


def _split_channel(rewriter: Rewriter, node: Node, plan: Plan) -> None:
    graph = rewriter.graph
    head, tail = plan.factors()  # M x r, r x (C k...)
    kernel = _kernel_of(node)
    filters = tail.reshape((plan.rank,) + kernel)  # r filters of the original kernel
    mixing = head.reshape(head.shape + (1,) * (len(kernel) - 1))  # 1x1 conv M x r
    head_attrs = {key: value for key, value in node.attrs.items()}
    head_attrs["group"] = 1
    first = ("Conv", [node.input(0), graph.add_const(f"{node.name}_svd_p", _cast(filters, node))],
             head_attrs, f"{node.name}_svd1")
    second = ("Conv", _tail_inputs(rewriter, node, mixing), {"kernel_shape": [1] * (len(kernel) - 1)},
              f"{node.name}_svd2")
    split_layer(rewriter, node, first, second)


def _kernel_of(node: Node) -> tuple:
    """The weight's shape after the output-channel axis: ``(C/group, k...)``."""
    return tuple(node.input(1).shape[1:])


def _spatial_pads(node: Node) -> Optional[tuple]:
    """``(pads_begin, pads_end, strides, dilations)`` of a 2-D Conv, or None when auto_pad
    pads depend on an input size that is not known."""
    kernel = node.input(1).shape[2:]
    source = node.input(0).shape
    dims = tuple(source[2:]) if source is not None and len(source) == 4 else (None, None)
    try:
        geometry = window(node, dims, kernel)
    except ShapeError:
        return None
    if None in geometry.pads_begin or None in geometry.pads_end:
        return None
    return geometry.pads_begin, geometry.pads_end, geometry.strides, geometry.dilations


def _split_spatial(rewriter: Rewriter, node: Node, plan: Plan) -> None:
    graph = rewriter.graph
    out_channels, in_channels, height, width = node.input(1).shape
    head, tail = plan.factors()  # (C kh) x r, r x (M kw)
    vertical = head.T.reshape(plan.rank, in_channels, height, 1)
    horizontal = tail.reshape(plan.rank, out_channels, width).transpose(1, 0, 2)
    horizontal = horizontal.reshape(out_channels, plan.rank, 1, width)
    begin, end, strides, dilations = _spatial_pads(node)
    first_attrs = {"kernel_shape": [height, 1], "strides": [strides[0], 1], "dilations": [dilations[0], 1],
                   "pads": [begin[0], 0, end[0], 0]}
    second_attrs = {"kernel_shape": [1, width], "strides": [1, strides[1]], "dilations": [1, dilations[1]],
                    "pads": [0, begin[1], 0, end[1]]}
    first = ("Conv", [node.input(0), graph.add_const(f"{node.name}_svd_p", _cast(vertical, node))],
             first_attrs, f"{node.name}_svd1")
    second = ("Conv", _tail_inputs(rewriter, node, horizontal), second_attrs, f"{node.name}_svd2")
    split_layer(rewriter, node, first, second)


_REWRITE = {"fc": _split_gemm, "channel": _split_channel, "spatial": _split_spatial}
