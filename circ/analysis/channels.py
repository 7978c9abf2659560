"""Channel flow: which channels of which values are the same channel, and what reads them.

Filter pruning removes output channels of a layer; every value those channels flow into,
and every layer that reads them, must shrink with it. This analysis follows channels through
the graph on axis 1 (``N, C, ...`` feature maps and ``N, F`` matrices):

- every Conv/ConvTranspose/Gemm/MatMul output gets fresh channel *atoms* (integers), one per
  output channel; each value that carries channels holds the array of its atoms (``atoms``);
- channel-transparent ops (activations, pooling, BatchNorm, ...) pass the array on;
- ``Add``/``Sum``/``Mul``... of two channel-carrying values *unite* their atoms position by
  position (union-find): a residual connection makes all its branches one set of channels;
- ``Concat`` on axis 1 concatenates the arrays (offsets map through), ``Split``/``Slice`` on
  axis 1 take pieces; ``Flatten``/``Reshape`` to ``(N, C*H*W)`` repeats each atom ``H*W``
  times (the block of columns a Gemm then reads); a depthwise conv with multiplier ``m``
  repeats each input atom ``m`` times (its output channels are tied to its inputs);
- whatever the analysis cannot follow *freezes* the atoms it touches, with a reason: graph
  outputs, ops that mix channels (LRN, Softmax over channels, channel-shuffling reshapes,
  grouped convs), ops that read the shape, opaque ops.

Atoms united into one *class* are removed together or not at all; a class with a frozen atom
is never removed. Classes are bundled into *groups*: classes whose atoms one layer produces
belong to one group (the unit a per-layer ratio applies to).

Alongside, the analysis records what a rewrite must touch (:class:`Site`: a constant input
and the axis to slice by an atom array; :class:`Fix`: an attribute or shape argument to
recompute) and what a criterion and a MAC count need (:class:`Producer`, :class:`MacNode`).
"""

from __future__ import annotations

import attrs
import numpy as np

from circ.graph import Graph, Node, Value
from circ.ops.registry import attr_or_input, dim_product, known_ints
from circ.passbase import STRUCTURE, analysis

# Ops whose output 0 has the channels of input 0 and whose other inputs are not per channel
# (scalars, or shape arguments checked in _extra_inputs_problem).
TRANSPARENT = {
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "ThresholdedRelu", "Gelu", "Mish", "Exp", "Log", "Neg", "Abs",
    "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Identity", "Dropout", "Cast",
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "Resize", "Upsample", "Pad", "Shrink",
}
# Broadcasting elementwise ops: channel-carrying operands are the same channels.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "PRelu", "Pow"}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
          "ReduceLogSumExp", "ReduceProd", "ReduceSumSquare"}


@attrs.define(eq=False)
class Site:
    """Constant input ``index`` of ``node`` is sliced along ``axis`` by the atoms' kept mask."""

    node: Node
    index: int
    axis: int
    atoms: np.ndarray


@attrs.define(eq=False)
class Fix:
    """An attribute or shape argument of ``node`` to recompute from kept atoms.

    ``kind``: ``group`` (depthwise conv: group = kept input channels), ``reshape`` (entry 1
    of the shape constant = kept channels of the output), ``slice`` (starts/ends on axis 1),
    ``split`` (split sizes on axis 1).
    """

    node: Node
    kind: str
    atoms: np.ndarray  # input (group, slice, split) or output (reshape) atoms
    data: tuple = ()  # slice: (axis position, start, end); split: (axis, sizes)


@attrs.define(eq=False)
class Producer:
    """A layer creating atoms: output channel ``i`` of ``node`` is ``atoms[i]``; its filter
    ``i`` is index ``i`` of the weight constant along ``weight_axis``."""

    node: Node
    atoms: np.ndarray
    weight_axis: int


@attrs.define(eq=False)
class MacNode:
    """A MAC-counted layer whose work scales with kept output and/or input channels:
    ``macs * kept(out)/len(out) * kept(in)/len(in)`` (None: does not scale)."""

    node: Node
    out_atoms: np.ndarray | None
    in_atoms: np.ndarray | None


@attrs.define(eq=False)
class ChannelGroup:
    """Layers whose output channels must be pruned together.

    ``classes`` are the removable channel classes (roots); ``frozen`` counts the classes that
    must stay, and ``reason`` says why (the first reason met).
    """

    producers: list  # list[Node], graph order
    classes: list  # list[int], prunable class roots
    frozen: int = 0
    reason: str = ""

    @property
    def name(self) -> str:
        return self.producers[0].name if self.producers else ""


@attrs.define(eq=False)
class ChannelFlow:
    """The analysis result; see the module docstring."""

    atoms: dict  # id(value) -> np.ndarray of atoms
    values: dict  # id(value) -> Value (the values in ``atoms``)
    root: np.ndarray  # atom -> class root
    frozen_reason: dict  # class root -> reason (frozen classes only)
    sites: list
    fixes: list
    producers: list
    bn_sites: list  # (BatchNormalization node, atoms of its input)
    mac_nodes: list
    segments: list  # (atoms, kind): "layer" (a producer's output) or "part" (split/slice piece)
    groups: list  # list[ChannelGroup], graph order
    weighted_alone: list  # weighted nodes that produce no atoms (own dependency group)

    def classes_of(self, atoms: np.ndarray) -> np.ndarray:
        return self.root[atoms]


class _Builder:
    """Walks the graph once, in order, building atoms, unions, sites and freezes."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}  # atom -> reason
        self.atoms: dict[int, np.ndarray] = {}
        self.values: dict[int, Value] = {}
        self.sites: list[Site] = []
        self.fixes: list[Fix] = []
        self.producers: list[Producer] = []
        self.bn_sites: list = []
        self.mac_nodes: list[MacNode] = []
        self.segments: list = []
        self.weighted_alone: list[Node] = []

    # ---- union-find -----------------------------------------------------------------------
    def fresh(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, atom: int) -> int:
        parent = self.parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:  # path compression
            parent[atom], atom = root, parent[atom]
        return root

    def unite(self, first: np.ndarray, second: np.ndarray) -> None:
        for a, b in zip(first.tolist(), second.tolist()):
            ra, rb = self.find(a), self.find(b)
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, value: Value | None, reason: str) -> None:
        atoms = self.get(value)
        if atoms is not None:
            for atom in atoms.tolist():
                self.frozen.setdefault(atom, reason)

    # ---- values ---------------------------------------------------------------------------
    def get(self, value: Value | None) -> np.ndarray | None:
        return None if value is None else self.atoms.get(id(value))

    def set(self, value: Value, atoms: np.ndarray) -> None:
        self.atoms[id(value)] = atoms
        self.values[id(value)] = value

    def freeze_inputs(self, node: Node, reason: str) -> None:
        for value in node.inputs:
            self.freeze(value, f"{reason} ({node.describe()})")

    # ---- the walk -------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.graph.nodes:
            if node.domain not in ("", "ai.onnx"):
                self.freeze_inputs(node, "opaque op")
                continue
            handler = getattr(self, f"_op_{node.op}", None)
            if handler is None:
                if node.op in TRANSPARENT:
                    handler = self._transparent
                elif node.op in ELEMENTWISE:
                    handler = self._elementwise
                elif node.op in REDUCE:
                    handler = self._reduce
                else:
                    handler = self._opaque
            handler(node)
        for value in self.graph.outputs:
            self.freeze(value, f"graph output {value.name!r}")

    def _opaque(self, node: Node) -> None:
        if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            self.weighted_alone.append(node)
        self.freeze_inputs(node, f"{node.op} mixes or reads channels")

    # ---- layers ---------------------------------------------------------------------------
    def _op_Conv(self, node: Node) -> None:
        x, weight, bias = node.input(0), node.input(1), node.input(2)
        out = node.output
        groups = int(node.attrs.get("group", 1))
        if weight is None or weight.const is None or not _static_channels(x) \
                or not _static_channels(out) or (bias is not None and bias.const is None):
            return self._opaque(node)
        filters, per_group = weight.shape[0], weight.shape[1]
        inputs = self.get(x)
        if groups == 1:
            if inputs is not None:
                self.sites.append(Site(node, 1, 1, inputs))
            atoms = self.fresh(filters)
            self._produce(node, atoms, 0, bias)
            self.mac_nodes.append(MacNode(node, atoms, inputs))
        elif per_group == 1 and groups == x.shape[1]:
            # depthwise (multiplier filters // groups): output channel j reads input j // m
            if inputs is None:
                self.weighted_alone.append(node)
                return
            atoms = np.repeat(inputs, filters // groups)
            self.set(out, atoms)
            self.sites.append(Site(node, 1, 0, atoms))
            if bias is not None:
                self.sites.append(Site(node, 2, 0, atoms))
            self.fixes.append(Fix(node, "group", inputs))
            self.mac_nodes.append(MacNode(node, atoms, None))
        else:
            # A grouped conv stays valid only with the same channel count in every group: the
            # channel at local position j is united across the groups (inputs and outputs), so
            # a removal takes position j out of every group at once.
            if filters % groups or x.shape[1] != groups * per_group:
                return self._opaque(node)
            atoms = self.fresh(filters)
            for k in range(1, groups):
                self.unite(atoms[:filters // groups], atoms[k * filters // groups:(k + 1) * filters // groups])
            if inputs is not None:
                for k in range(1, groups):
                    self.unite(inputs[:per_group], inputs[k * per_group:(k + 1) * per_group])
                self.sites.append(Site(node, 1, 1, inputs[:per_group]))
                self.segments.append((inputs[:per_group], "part"))
            self._produce(node, atoms, 0, bias)
            self.segments.append((atoms[:filters // groups], "part"))
            self.mac_nodes.append(MacNode(node, atoms, inputs))

    def _op_ConvTranspose(self, node: Node) -> None:
        x, weight, bias = node.input(0), node.input(1), node.input(2)
        if int(node.attrs.get("group", 1)) != 1 or weight is None or weight.const is None \
                or not _static_channels(x) or not _static_channels(node.output) \
                or (bias is not None and bias.const is None) or "output_shape" in node.attrs:
            return self._opaque(node)
        inputs = self.get(x)
        if inputs is not None:
            self.sites.append(Site(node, 1, 0, inputs))
        atoms = self.fresh(weight.shape[1])
        self._produce(node, atoms, 1, bias)
        self.mac_nodes.append(MacNode(node, atoms, inputs))

    def _op_Gemm(self, node: Node) -> None:
        a, b, c = node.input(0), node.input(1), node.input(2)
        if node.attrs.get("transA", 0) or b is None or b.const is None or b.rank != 2 \
                or not _static_channels(a, rank=2) or (c is not None and c.const is None):
            return self._opaque(node)
        out_axis = 0 if node.attrs.get("transB", 0) else 1
        inputs = self.get(a)
        if inputs is not None:
            self.sites.append(Site(node, 1, 1 - out_axis, inputs))
        atoms = self.fresh(b.shape[out_axis])
        self._produce(node, atoms, out_axis, None)
        if c is not None and c.rank and c.shape[-1] == len(atoms) and len(atoms) > 1:
            if c.rank == 2 and c.shape[0] != 1:
                self.freeze(node.output, f"bias of {node.describe()} varies along the batch")
            self.sites.append(Site(node, 2, c.rank - 1, atoms))
        self.mac_nodes.append(MacNode(node, atoms, inputs))

    def _op_MatMul(self, node: Node) -> None:
        a, b = node.input(0), node.input(1)
        if b is None or b.const is None or b.rank != 2 or not _static_channels(a, rank=2):
            return self._opaque(node)
        inputs = self.get(a)
        if inputs is not None:
            self.sites.append(Site(node, 1, 0, inputs))
        atoms = self.fresh(b.shape[1])
        self._produce(node, atoms, 1, None)
        self.mac_nodes.append(MacNode(node, atoms, inputs))

    def _produce(self, node: Node, atoms: np.ndarray, axis: int, bias: Value | None) -> None:
        self.set(node.output, atoms)
        self.producers.append(Producer(node, atoms, axis))
        self.segments.append((atoms, "layer"))
        self.sites.append(Site(node, 1, axis, atoms))
        if bias is not None:
            self.sites.append(Site(node, 2, 0, atoms))

    # ---- normalization ----------------------------------------------------------------------
    def _op_BatchNormalization(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        params = node.inputs[1:5]
        if any(p is None or p.const is None or p.rank != 1 for p in params) \
                or any(out.uses or self.graph.is_output(out) for out in node.outputs[1:]) \
                or node.attrs.get("training_mode", 0) or node.attrs.get("spatial", 1) == 0:
            return self.freeze_inputs(node, "BatchNormalization with non-constant or training parameters")
        for index in range(1, 5):
            self.sites.append(Site(node, index, 0, atoms))
        self.bn_sites.append((node, atoms))
        self.set(node.output, atoms)

    def _op_InstanceNormalization(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        if any(p is None or p.const is None or p.rank != 1 for p in node.inputs[1:3]):
            return self.freeze_inputs(node, "InstanceNormalization with non-constant parameters")
        for index in (1, 2):
            self.sites.append(Site(node, index, 0, atoms))
        self.set(node.output, atoms)

    # ---- channel-transparent and elementwise ---------------------------------------------------
    def _transparent(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        out = node.output
        problem = _extra_problem(node, self.graph)
        if problem or out.rank is None or out.rank != node.inputs[0].rank \
                or out.shape[1] != len(atoms):
            return self.freeze_inputs(node, problem or "output channels differ from the input's")
        self.set(out, atoms)

    def _elementwise(self, node: Node) -> None:
        out = node.output
        operands = [(i, v) for i, v in enumerate(node.inputs) if v is not None]
        if not any(self.get(v) is not None for _, v in operands):
            return
        if not _static_channels(out) or any(v.shape is None for _, v in operands):
            return self.freeze_inputs(node, "operand shapes unknown")
        rank, channels = out.rank, out.shape[1]
        result = None
        conflict = ""
        constants = []  # (input index, axis) of per-channel constant operands
        for index, value in operands:
            axis = 1 - (rank - value.rank)
            if axis < 0:
                continue  # the operand does not reach the channel axis
            width = value.shape[axis]
            atoms = self.get(value)
            if width == 1 and channels != 1:
                if atoms is not None:  # a 1-channel map broadcast over all channels
                    self.freeze(value, f"broadcast over channels by {node.describe()}")
                continue
            if atoms is not None and axis == 1 and len(atoms) == channels:
                if result is None:
                    result = atoms
                else:
                    self.unite(result, atoms)
            elif value.const is not None and width == channels:
                constants.append((index, axis))
            else:
                conflict = f"operand {value.name!r} has {width} untracked channels"
        if result is None or conflict:
            return self.freeze_inputs(node, conflict or "no operand carries the output channels")
        for index, axis in constants:
            self.sites.append(Site(node, index, axis, result))
        self.set(out, result)

    def _reduce(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        rank = node.inputs[0].rank
        axes = attr_or_input(node, "axes", 1)
        if axes is None or rank is None or not axes:
            return self.freeze_inputs(node, "reduces over all or unknown axes")
        if any(a % rank < 2 for a in axes):
            return self.freeze_inputs(node, "reduces over the channel axis")
        self.set(node.output, atoms)

    # ---- reshaping ---------------------------------------------------------------------------
    def _op_Flatten(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        x = node.inputs[0]
        spatial = dim_product(x.shape[2:])
        if node.attrs.get("axis", 1) != 1 or spatial is None:
            return self.freeze_inputs(node, "Flatten that does not keep the batch axis alone")
        self.set(node.output, np.repeat(atoms, spatial))

    def _op_Reshape(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        x, target, out = node.input(0), node.input(1), node.output
        spatial = dim_product(x.shape[2:]) if x.shape else None
        wanted = known_ints(target) if target is not None and target.const is not None else None
        if spatial is None or wanted is None or out.shape is None or len(out.shape) < 2 \
                or wanted.count(-1) > 1 or len(wanted) != len(out.shape) \
                or (node.attrs.get("allowzero", 0) and 0 in wanted):
            return self.freeze_inputs(node, "Reshape with an unknown target")
        channels = len(atoms)
        same_batch = out.shape[0] == x.shape[0] or wanted[0] == 0
        if same_batch and out.shape[1] == channels and dim_product(out.shape[2:]) == spatial:
            result = atoms  # only the spatial axes are regrouped
        elif same_batch and len(out.shape) == 2 and out.shape[1] == channels * spatial:
            result = np.repeat(atoms, spatial)  # flatten: C blocks of H*W columns
        else:
            return self.freeze_inputs(node, "Reshape that mixes channels")
        self.set(out, result)
        if wanted[1] > 0:
            self.fixes.append(Fix(node, "reshape", result))

    def _op_Squeeze(self, node: Node) -> None:
        self._unsqueeze_like(node, node.inputs[0].rank if node.inputs[0] is not None else None)

    def _op_Unsqueeze(self, node: Node) -> None:
        self._unsqueeze_like(node, node.output.rank)

    def _unsqueeze_like(self, node: Node, rank: int | None) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        axes = attr_or_input(node, "axes", 1)
        if axes is None or rank is None or not axes or any(a % rank < 2 for a in axes):
            return self.freeze_inputs(node, "moves the channel axis")
        self.set(node.output, atoms)

    def _op_Transpose(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        perm = node.attrs.get("perm")
        if perm is None or list(perm[:2]) != [0, 1]:
            return self.freeze_inputs(node, "Transpose that moves the channel axis")
        self.set(node.output, atoms)

    def _op_Shape(self, node: Node) -> None:
        x = node.input(0)
        if self.get(x) is None:
            return
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        if start == 0 and end == 1:
            return
        for user in node.output.users:
            index = user.input(1)
            if user.op != "Gather" or int(user.attrs.get("axis", 0)) != 0 or index is None \
                    or index.const is None or index.const.to_numpy().tolist() not in (0, [0]):
                return self.freeze(x, f"its shape is read by {node.describe()}")
        if self.graph.is_output(node.output):
            self.freeze(x, f"its shape is a graph output ({node.describe()})")

    # ---- concat / split / slice ----------------------------------------------------------------
    def _op_Concat(self, node: Node) -> None:
        inputs = [v for v in node.inputs if v is not None]
        if not any(self.get(v) is not None for v in inputs):
            return
        rank = node.output.rank
        axis = node.attrs.get("axis")
        if rank is None or axis is None or axis % rank != 1 or not all(_static_channels(v) for v in inputs):
            return self.freeze_inputs(node, "Concat on another axis than the channels")
        parts = []
        for value in inputs:
            atoms = self.get(value)
            if atoms is None:
                atoms = self.fresh(value.shape[1])
                for atom in atoms.tolist():
                    self.frozen[atom] = f"untracked input {value.name!r} of {node.describe()}"
            parts.append(atoms)
        self.set(node.output, np.concatenate(parts))

    def _op_Split(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        rank = node.inputs[0].rank
        axis = node.attrs.get("axis", 0)
        sizes = [out.shape[1] if _static_channels(out) else None for out in node.outputs]
        if rank is None or axis % rank != 1 or None in sizes or sum(sizes) != len(atoms):
            return self.freeze_inputs(node, "Split on another axis or with unknown sizes")
        start = 0
        for out, size in zip(node.outputs, sizes):
            piece = atoms[start:start + size]
            self.set(out, piece)
            self.segments.append((piece, "part"))
            start += size
        self.fixes.append(Fix(node, "split", atoms, (sizes,)))

    def _op_Slice(self, node: Node) -> None:
        atoms = self.get(node.input(0))
        if atoms is None:
            return
        rank = node.inputs[0].rank
        if node.opset < 10:
            starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
            axes, steps = node.attrs.get("axes"), None
        else:
            starts, ends = _const_ints(node.input(1)), _const_ints(node.input(2))
            axes, steps = _const_ints(node.input(3)), _const_ints(node.input(4))
            if (node.input(3) is not None and axes is None) or (node.input(4) is not None and steps is None):
                starts = None
        if starts is None or ends is None or rank is None:
            return self.freeze_inputs(node, "Slice with unknown bounds")
        axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
        if 1 not in axes:
            self.set(node.output, atoms)
            return
        where = axes.index(1)
        if steps is not None and steps[where] != 1:
            return self.freeze_inputs(node, "Slice with a step on the channel axis")
        begin, stop, _ = slice(starts[where], ends[where]).indices(len(atoms))
        piece = atoms[begin:max(begin, stop)]
        self.set(node.output, piece)
        self.segments.append((piece, "part"))
        self.fixes.append(Fix(node, "slice", atoms, (where, begin, max(begin, stop))))

    # ---- result ------------------------------------------------------------------------------
    def result(self) -> ChannelFlow:
        count = len(self.parent)
        root = np.fromiter((self.find(a) for a in range(count)), dtype=np.int64, count=count)
        frozen_reason: dict[int, str] = {}
        for atom, reason in self.frozen.items():
            frozen_reason.setdefault(int(root[atom]), reason)
        groups = self._groups(root, frozen_reason)
        return ChannelFlow(self.atoms, self.values, root, frozen_reason, self.sites, self.fixes,
                           self.producers, self.bn_sites, self.mac_nodes, self.segments, groups,
                           self.weighted_alone)

    def _groups(self, root: np.ndarray, frozen_reason: dict) -> list:
        """Bundle classes by producer: classes one layer produces share a group."""
        bundle = {}  # class root -> bundle root (a small union-find over classes)

        def find(r):
            while bundle.setdefault(r, r) != r:
                r = bundle[r]
            return r

        for producer in self.producers:
            classes = np.unique(root[producer.atoms]).tolist()
            first = find(classes[0])
            for other in classes[1:]:
                other = find(other)
                if other != first:
                    bundle[max(first, other)] = min(first, other)
                    first = min(first, other)
        by_bundle: dict[int, ChannelGroup] = {}
        seen: set[int] = set()
        seen_frozen: set[int] = set()
        for producer in self.producers:
            classes = np.unique(root[producer.atoms]).tolist()
            key = find(classes[0])
            group = by_bundle.setdefault(key, ChannelGroup([], []))
            group.producers.append(producer.node)
            for cls in classes:
                if cls in frozen_reason:
                    if cls not in seen_frozen:
                        seen_frozen.add(cls)
                        group.frozen += 1
                    group.reason = group.reason or frozen_reason[cls]
                elif cls not in seen:
                    seen.add(cls)
                    group.classes.append(cls)
        return list(by_bundle.values())


def _static_channels(value: Value | None, rank: int | None = None) -> bool:
    """Whether ``value`` has a known rank >= 2 (exactly ``rank`` if given) and an int axis 1."""
    if value is None or value.shape is None or len(value.shape) < 2:
        return False
    if rank is not None and len(value.shape) != rank:
        return False
    return isinstance(value.shape[1], (int, np.integer))




def _const_ints(value: Value | None) -> list | None:
    if value is None or value.const is None:
        return None
    return [int(v) for v in value.const.to_numpy().reshape(-1)]


def _extra_problem(node: Node, graph: Graph) -> str:
    """Why a transparent op's extra inputs or outputs stop channels flowing ("" if none)."""
    for out in node.outputs[1:]:
        if out.uses or graph.is_output(out):
            return f"output {out.name!r} of {node.describe()} is used (indices or mask)"
    if node.op in ("Resize", "Upsample"):
        if node.op == "Resize" and node.input(3) is not None:
            return f"{node.describe()} gives target sizes"
        scales = _float_list(node.input(2) if node.op == "Resize" else node.input(1))
        scales = scales if scales is not None else node.attrs.get("scales")
        if scales is None or len(scales) < 2 or scales[1] != 1:
            return f"{node.describe()} may scale the channel axis"
    if node.op == "Pad":
        pads = attr_or_input(node, "pads", 1)
        rank = node.inputs[0].rank
        if pads is None or rank is None or node.input(3) is not None \
                or pads[1] != 0 or pads[1 + rank] != 0:
            return f"{node.describe()} may pad the channel axis"
    return ""


def _float_list(value: Value | None) -> list | None:
    if value is None or value.const is None:
        return None
    return [float(v) for v in value.const.to_numpy().reshape(-1)]


@analysis(STRUCTURE)
def channel_flow(graph: Graph) -> ChannelFlow:
    """The channel-flow analysis of ``graph`` (see the module docstring)."""
    builder = _Builder(graph)
    builder.run()
    return builder.result()
