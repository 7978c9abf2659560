"""channel_prune: filter (channel) pruning with downstream rewiring. Approximate.

Removes whole output channels of Conv/ConvTranspose/Gemm/MatMul layers and shrinks every
tensor and layer those channels flow through, so the result is a smaller dense network that
runs faster anywhere ("neuron pruning is easy to speed up"; Li et al. 2017 for the L1 filter
criterion, Liu et al. 2017 "network slimming" for the BatchNorm gamma criterion).
"""

from __future__ import annotations

import fnmatch
import itertools

import attrs
import numpy as np

from circ.analysis.channels import ChannelFlow, ChannelGroup, channel_flow
from circ.analysis.stats import graph_stats, node_macs
from circ.errors import PipelineError
from circ.graph import Graph, Node, Value
from circ.passbase import Pass, PassContext, PassResult, register_pass
from circ.shape_inference import infer_shapes
from circ.tensors import Clustered, Dense, Quantized, Tensor
from circ.weights import parse_layer_values

DEFAULT_RATIO = 0.5
AUTO = 0  # round_to by group size (rule 3), the default with target_macs
CRITERIA = ("l1", "l2", "bn")


def _fraction(name: str):
    def check(instance, attribute, value):
        if value is not None and not 0.0 <= value <= 1.0:
            raise PipelineError(f"option {name!r} of pass 'channel_prune' must be in [0, 1], got {value}")

    return check


def _ratio_value(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


@register_pass
class ChannelPrune(Pass):
    """Remove whole channels and rewire everything downstream.

    The channel-flow analysis (:mod:`circ.analysis.channels`) finds which channels are the
    same channel (residual ``Add``/``Sum`` branches, depthwise convs tied to their inputs,
    grouped convs coupled across groups, ``Concat`` offsets, ``Split``/``Slice`` pieces,
    ``Flatten``/``Reshape`` column blocks) and which must stay (graph outputs, channel-mixing
    or opaque ops). A removable *class* of channels goes from every layer producing it (filter
    rows and biases), every per-channel constant on the way (BatchNorm, affine constants,
    PRelu slopes) and every layer reading it (input channels of Conv, columns of Gemm/MatMul).

    Rules:

    1. Ranking (``criterion``): ``l1`` or ``l2`` norm of the filters producing a class, summed
       over its producers; ``bn``: the sum of ``|gamma|`` of the BatchNormalizations it passes
       (classes without one fall back to ``l1``, reported).
    2. Selection: ``ratio`` of each group's removable classes (the lowest ranked), or with
       ``global=true`` the lowest ``ratio`` of all classes ranked together (each group's scores
       divided by their mean, so layers of different scale compare). ``target_macs=f`` removes
       classes in the global order until the graph's MACs fall to ``f`` of the original (or
       nothing removable is left). ``layers=pattern:ratio;...`` sets the ratio of the groups
       whose layer names match (first match wins; 0 leaves a group alone); overridden groups
       stay out of the global order. Every layer keeps at least ``min_channels`` outputs and
       every group/split piece at least one channel.
    3. Rounding (``round_to=q``; with ``target_macs`` the default is by group size: 32 for
       groups of 128 channels or more, 16 from 64, else 8; without it 1): each group keeps a
       multiple of ``q`` channel classes (frozen ones included), so its layers keep a multiple
       of ``q`` channels (``q`` per group of a grouped conv). onnxruntime's blocked (NCHWc)
       convolutions work on blocks of 8 channels (AVX2; 16 with AVX-512) and run a layer with
       any other count on a slower path; their kernels take up to 4 blocks at a time and its
       threads split the work by such filter sets, so whole sets of 32 run faster still (light
       ResNet-50 at half the MACs, 2 threads: about 1.3x speed-up with q=8 everywhere, 1.6 to
       1.8x with this default; benchmarks/bench_structural.py). A group's removal count goes to the nearest count
       allowed by the keep-at-least constraints; a group that cannot keep a multiple (too few
       channels) is left whole and reported. With ``target_macs`` the rounding sits inside
       the search, so the target is still met.
    4. Rewrite: constants sliced (pruning masks, cluster indices and per-channel quantization
       parameters sliced with them), depthwise ``group``, ``Reshape`` targets, ``Split``
       sizes and ``Slice`` bounds recomputed, shapes inferred again.

    Exact when the removed channels carry exact zeros all the way (zero filters and bias, zero
    shift after BatchNorm, activations with f(0) = 0); otherwise approximate (fine-tune after).
    ``details`` gives the MACs and parameters before and after and each layer's channels.
    """

    name = "channel_prune"
    exact = False

    criterion: str = attrs.field(default="l1", metadata={"help": "ranking: l1 | l2 | bn (BatchNorm gamma)"})
    ratio: float | None = attrs.field(
        default=None, validator=_fraction("ratio"),
        metadata={"help": f"fraction of each group's channels removed (default {DEFAULT_RATIO} "
                          "unless target_macs is given)"})
    global_: bool = attrs.field(default=False, metadata={"help": "rank channels of all groups together"})
    min_channels: int = attrs.field(default=1, metadata={"help": "channels every layer keeps at least"})
    layers: str = attrs.field(
        default="", metadata={"help": "per-group ratio overrides: pattern:ratio;... (layer names)"})
    target_macs: float | None = attrs.field(
        default=None, validator=_fraction("target_macs"),
        metadata={"help": "prune until MACs fall to this fraction of the original (global order)"})
    round_to: int | None = attrs.field(
        default=None, metadata={"help": "keep a multiple of this many channels per group (default with "
                                        "target_macs: 8, 16 or 32 by group size; else 1)"})

    def __attrs_post_init__(self):
        if self.criterion not in CRITERIA:
            raise PipelineError(f"option 'criterion' of pass 'channel_prune' must be one of "
                                f"{', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.min_channels < 1:
            raise PipelineError(f"option 'min_channels' of pass 'channel_prune' must be >= 1, "
                                f"got {self.min_channels}")
        if self.round_to is not None and self.round_to < 1:
            raise PipelineError(f"option 'round_to' of pass 'channel_prune' must be >= 1, got {self.round_to}")
        if self.ratio is not None and self.target_macs is not None:
            raise PipelineError("pass 'channel_prune': give ratio or target_macs, not both")
        self._overrides = parse_layer_values(self.layers, "layers", self.name, _ratio_value)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        flow = ctx.analysis(channel_flow, graph)
        before = graph_stats(graph)
        self._report_frozen(flow, ctx)
        if not any(group.classes for group in flow.groups):
            ctx.decline(None, "no removable channels")
            return PassResult(False)
        plan, removed = self.choose(graph, ctx)
        details = {"criterion": self.criterion, "round_to": self.quantum or "auto",
                   "macs_before": before.macs, "params_before": before.params}
        if not removed.any():
            details.update(macs_after=before.macs, params_after=before.params, channels_removed=0)
            return PassResult(False, details=details)
        layer_channels = _rewrite(graph, flow, removed)
        after = graph_stats(graph)
        removed_atoms = removed[flow.root]
        details.update(
            macs_after=after.macs, params_after=after.params,
            macs_ratio=after.macs / before.macs if before.macs else 1.0,
            params_ratio=after.params / before.params if before.params else 1.0,
            macs_predicted=plan.macs(removed),
            channels_removed=int(sum(np.count_nonzero(removed_atoms[p.atoms]) for p in flow.producers)),
            channels_total=int(sum(len(p.atoms) for p in flow.producers)),
            groups=len(flow.groups), groups_pruned=sum(
                1 for g in flow.groups if any(removed[c] for c in g.classes)),
            layers=layer_channels)
        return PassResult(True, details=details)

    @property
    def quantum(self) -> int:
        """The effective ``round_to`` (``AUTO``: chosen per group)."""
        if self.round_to is not None:
            return self.round_to
        return AUTO if self.target_macs is not None else 1

    # ---- selection --------------------------------------------------------------------------
    def choose(self, graph: Graph, ctx: PassContext) -> tuple[Plan, np.ndarray]:
        """The classes this pass would remove (boolean by class root), without editing."""
        flow = ctx.analysis(channel_flow, graph)
        plan = Plan(flow, graph, self.min_channels)
        scores = _scores(flow, graph, self.criterion, ctx)
        return plan, self._select(plan, scores, ctx)

    def _group_ratio(self, group: ChannelGroup) -> float | None:
        for pattern, value in self._overrides:
            if any(fnmatch.fnmatchcase(node.name, pattern) for node in group.producers):
                return value
        return None

    def _select(self, plan: Plan, scores: np.ndarray, ctx: PassContext) -> np.ndarray:
        flow = plan.flow
        quantum = self.quantum
        free_groups = []
        for group in flow.groups:
            override = self._group_ratio(group)
            if override is None:
                free_groups.append(group)
            else:
                _accept_rounded(plan, group, _ranked(group.classes, scores),
                                _count(override, len(group.classes)), quantum)
        for pattern, _ in self._overrides:
            if not any(fnmatch.fnmatchcase(node.name, pattern) for g in flow.groups for node in g.producers):
                ctx.decline(None, f"layers pattern {pattern!r} matches no layer")
        if quantum != 1:
            self._report_unroundable(flow, quantum, ctx)

        if self.target_macs is None and not self.global_:
            ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
            for group in free_groups:
                _accept_rounded(plan, group, _ranked(group.classes, scores),
                                _count(ratio, len(group.classes)), quantum)
            return plan.removed

        fixed = plan.removed.copy()
        prefixes = _RoundedPrefixes(free_groups, plan.accept(_global_order(free_groups, scores), len(scores)),
                                    quantum)
        if self.target_macs is None:
            # the shortest prefix whose rounded removal takes the requested count (rounding
            # moves counts both ways, so the prefix length alone would not say it)
            ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
            wanted = int(np.count_nonzero(fixed)) + _count(ratio, sum(len(g.classes) for g in free_groups))

            def enough_removed(length: int) -> bool:
                return np.count_nonzero(prefixes.removal(fixed, length)) >= wanted

            return prefixes.removal(fixed, _shortest_prefix(prefixes.length, enough_removed))
        # target_macs: the shortest prefix whose rounded removal reaches the target
        goal = self.target_macs * plan.total_macs

        def target_reached(length: int) -> bool:
            return plan.macs(prefixes.removal(fixed, length)) <= goal

        result = prefixes.removal(fixed, _shortest_prefix(prefixes.length, target_reached))
        if plan.macs(result) > goal and prefixes.length:
            ctx.decline(None, f"target_macs={self.target_macs} not reached: at most "
                              f"{plan.macs(result) / plan.total_macs:.3f} of the MACs with every "
                              f"removable channel gone" + (f" (kept counts rounded to {quantum or 'auto'})"
                                                           if quantum != 1 else ""))
        return result

    @staticmethod
    def _report_unroundable(flow: ChannelFlow, quantum: int, ctx: PassContext) -> None:
        for group in flow.groups:
            if not group.classes:
                continue
            rounding = _Rounding(group, quantum)
            smallest = rounding.up(1)
            if smallest is None or smallest > len(group.classes):
                ctx.decline(group.producers[0], f"channels left alone: {rounding.total} channels cannot "
                                                f"shrink to a multiple of round_to={rounding.quantum}")

    def _report_frozen(self, flow: ChannelFlow, ctx: PassContext) -> None:
        for group in flow.groups:
            if not group.frozen:
                continue
            node = group.producers[0]
            if group.classes:
                ctx.decline(node, f"{group.frozen} of {group.frozen + len(group.classes)} channels "
                                  f"kept: {group.reason}")
            else:
                ctx.decline(node, f"channels left alone: {group.reason}")


def _count(ratio: float, total: int) -> int:
    return int(np.floor(ratio * total + 0.5))


class _Rounding:
    """The removal counts of one group that leave a positive multiple of ``quantum`` classes
    kept (frozen classes count as kept); removing nothing is always allowed."""

    def __init__(self, group: ChannelGroup, quantum: int):
        self.total = len(group.classes) + group.frozen
        self.quantum = quantum or _auto_quantum(self.total)

    def down(self, count: int) -> int:
        """The largest allowed count <= ``count``."""
        kept = -(-(self.total - count) // self.quantum) * self.quantum
        kept = max(kept, self.quantum)
        return self.total - kept if kept <= self.total else 0

    def up(self, count: int) -> int | None:
        """The smallest allowed count >= ``count`` (None: there is none)."""
        kept = (self.total - count) // self.quantum * self.quantum
        return self.total - kept if kept >= self.quantum else None

    def nearest(self, count: int, limit: int) -> int:
        """The allowed count nearest ``count`` among 0..``limit``. Ties go up, so the result
        never falls as ``count`` grows."""
        count = min(count, limit)
        below, above = self.down(count), self.up(count)
        if above is not None and above <= limit and above - count <= count - below:
            return above
        return below


def _auto_quantum(total: int) -> int:
    """``round_to`` for a group of ``total`` channel classes when none is given (rule 3): a
    whole MLAS filter set (32) for large groups, one NCHWc block (8) for small ones, so the
    grain stays at most a quarter of the group."""
    for quantum in (32, 16):
        if total >= 4 * quantum:
            return quantum
    return 8


def _accept_rounded(plan: Plan, group: ChannelGroup, ranked: list, count: int, quantum: int) -> None:
    """Remove about ``count`` of ``group``'s classes in ``ranked`` order, rounded (rule 3):
    to the nearest allowed count, then down to an allowed one if the constraints stop earlier."""
    rounding = _Rounding(group, quantum)
    taken = plan.accept(ranked, rounding.nearest(count, len(ranked)))
    plan.release(taken[rounding.down(len(taken)):])


def _shortest_prefix(length: int, reached) -> int:
    """The smallest ``n`` in 0..``length`` with ``reached(n)`` (``length`` if none). Bisection:
    ``reached`` holds from some ``n`` on, as removals only grow with the prefix (MACs fall)."""
    low, high = 0, length
    while low < high:
        middle = (low + high) // 2
        if reached(middle):
            high = middle
        else:
            low = middle + 1
    return low


class _RoundedPrefixes:
    """Removals made from a prefix of ``sequence`` (the feasible removals in global order) with
    each group's count rounded (rule 3): a group whose classes are ``k`` of the prefix removes
    its first ``nearest(k)`` classes in ``sequence``. Any part of a feasible sequence is
    feasible, and a longer prefix never removes less."""

    def __init__(self, groups: list, sequence: list, quantum: int):
        owner = {cls: index for index, group in enumerate(groups) for cls in group.classes}
        self.length = len(sequence)
        self.owner = np.array([owner[cls] for cls in sequence], dtype=np.int64)
        self.members: list[list] = [[] for _ in groups]
        for cls in sequence:
            self.members[owner[cls]].append(cls)
        self.roundings = [_Rounding(group, quantum) for group in groups]

    def removal(self, fixed: np.ndarray, prefix: int) -> np.ndarray:
        counts = np.bincount(self.owner[:prefix], minlength=len(self.members)).tolist()
        result = fixed.copy()
        for members, rounding, count in zip(self.members, self.roundings, counts):
            if members:
                result[members[:rounding.nearest(count, len(members))]] = True
        return result


def _ranked(classes: list, scores: np.ndarray) -> list:
    """Classes by ascending score; ties by class id (deterministic)."""
    classes = np.asarray(classes, dtype=np.int64)
    order = np.lexsort((classes, scores[classes]))
    return classes[order].tolist()


def _global_order(groups: list, scores: np.ndarray) -> list:
    pooled, normalized = [], []
    for group in groups:
        if not group.classes:
            continue
        classes = np.asarray(group.classes, dtype=np.int64)
        values = scores[classes]
        mean = float(values.mean())
        pooled.append(classes)
        normalized.append(values / mean if mean > 0 else values)
    if not pooled:
        return []
    classes = np.concatenate(pooled)
    values = np.concatenate(normalized)
    return classes[np.lexsort((classes, values))].tolist()


# ---------------------------------------------------------------------- scores


def _filter_norms(node: Node, axis: int, kind: str) -> np.ndarray:
    weight = node.input(1).const.to_numpy().astype(np.float64)
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    return np.abs(rows).sum(axis=1) if kind == "l1" else np.square(rows).sum(axis=1)


def _scores(flow: ChannelFlow, graph: Graph, criterion: str, ctx: PassContext) -> np.ndarray:
    """Importance of every class (indexed by class root; other entries unused)."""
    count = len(flow.root)
    norm_kind = "l2" if criterion == "l2" else "l1"
    scores = np.zeros(count)
    for producer in flow.producers:
        np.add.at(scores, flow.root[producer.atoms], _filter_norms(producer.node, producer.weight_axis, norm_kind))
    if criterion == "l2":
        scores = np.sqrt(scores)
    if criterion != "bn":
        return scores
    gammas = np.zeros(count)
    has_bn = np.zeros(count, dtype=bool)
    for bn, atoms in flow.bn_sites:
        np.add.at(gammas, flow.root[atoms], np.abs(bn.input(1).const.to_numpy().astype(np.float64)))
        has_bn[flow.root[atoms]] = True
    for group in flow.groups:
        if group.classes and not has_bn[group.classes].all():
            ctx.decline(group.producers[0], "criterion bn: no BatchNormalization on some channels; "
                                            "they are ranked by l1")
    return np.where(has_bn, gammas, scores)


# ---------------------------------------------------------------------- feasibility and MACs


class Plan:
    """The removal being built: which classes go, under the keep-at-least constraints, and
    the MACs a removal leaves (computed from the flow, without rewriting)."""

    def __init__(self, flow: ChannelFlow, graph: Graph, min_channels: int):
        self.flow = flow
        self.removed = np.zeros(len(flow.root), dtype=bool)
        self.remaining = []
        self.minimum = []
        self.members: dict[int, list] = {}  # class -> [(segment, atoms of the class in it)]
        for index, (atoms, kind) in enumerate(flow.segments):
            classes, counts = np.unique(flow.root[atoms], return_counts=True)
            for cls, n in zip(classes.tolist(), counts.tolist()):
                self.members.setdefault(cls, []).append((index, n))
            self.remaining.append(len(atoms))
            self.minimum.append(min_channels if kind == "layer" else 1)
        self._macs = []
        counted = 0
        for mac in flow.mac_nodes:
            base = node_macs(mac.node)
            if base is None:
                continue
            counted += base
            out_roots = None if mac.out_atoms is None else flow.root[mac.out_atoms]
            in_roots = None if mac.in_atoms is None else flow.root[mac.in_atoms]
            self._macs.append((base, out_roots, in_roots))
        self.total_macs = graph_stats(graph).macs
        self._fixed_macs = self.total_macs - counted

    def accept(self, order: list, count: int) -> list:
        """Remove up to ``count`` classes of ``order`` that keep every constraint; returns them."""
        taken = []
        for cls in order:
            if len(taken) >= count:
                break
            if self.removed[cls]:
                continue
            entries = self.members.get(cls, ())
            if any(self.remaining[s] - n < self.minimum[s] for s, n in entries):
                continue
            for s, n in entries:
                self.remaining[s] -= n
            self.removed[cls] = True
            taken.append(cls)
        return taken

    def release(self, classes: list) -> None:
        """Undo the removal of ``classes`` (taken by :meth:`accept`)."""
        for cls in classes:
            for s, n in self.members.get(cls, ()):
                self.remaining[s] += n
            self.removed[cls] = False

    def macs(self, removed: np.ndarray) -> int:
        total = float(self._fixed_macs)
        for base, out_roots, in_roots in self._macs:
            value = float(base)
            if out_roots is not None:
                value *= np.count_nonzero(~removed[out_roots]) / len(out_roots)
            if in_roots is not None:
                value *= np.count_nonzero(~removed[in_roots]) / len(in_roots)
            total += value
        return round(total)


# ---------------------------------------------------------------------- rewriting


def _rewrite(graph: Graph, flow: ChannelFlow, removed: np.ndarray) -> dict:
    """Apply the removal; returns ``{layer name: [channels before, after]}``."""
    removed_atoms = removed[flow.root]

    def keep(atoms):
        return ~removed_atoms[atoms]

    slices: dict[tuple, list] = {}
    for site in flow.sites:
        mask = keep(site.atoms)
        if not mask.all():
            slices.setdefault((id(site.node), site.index), [site.node, site.index, []])[2].append((site.axis, mask))
    for node, index, cuts in slices.values():
        tensor = node.input(index).const
        for axis, mask in cuts:
            tensor = take(tensor, mask, axis)
        _replace_const(graph, node, index, tensor)

    for fix in flow.fixes:
        mask = keep(fix.atoms)
        if mask.all():
            continue
        if fix.kind == "group":
            fix.node.attrs["group"] = int(np.count_nonzero(mask))
        elif fix.kind == "reshape":
            target = fix.node.input(1).const.to_numpy().copy()
            target[1] = np.count_nonzero(mask)
            _replace_const(graph, fix.node, 1, Dense(target))
        elif fix.kind == "slice":
            _fix_slice(graph, fix, mask)
        elif fix.kind == "split":
            _fix_split(graph, fix, mask)

    layers = {}
    for producer in flow.producers:
        kept = int(np.count_nonzero(keep(producer.atoms)))
        if kept != len(producer.atoms):
            layers[producer.node.name] = [len(producer.atoms), kept]
    infer_shapes(graph)
    return layers


def take(tensor: Tensor, mask: np.ndarray, axis: int) -> Tensor:
    """``tensor`` with only the indices ``mask`` keeps along ``axis``, in its own representation."""
    index = np.flatnonzero(mask)
    if isinstance(tensor, Dense):
        kept = None if tensor.mask is None else np.take(tensor.mask, index, axis)
        return Dense(np.take(tensor.array, index, axis), kept)
    if isinstance(tensor, Clustered):
        return Clustered(tensor.codebook, np.take(tensor.indices, index, axis))
    if isinstance(tensor, Quantized):
        scale, zero_point = tensor.scale, tensor.zero_point
        if tensor.axis is not None and tensor.axis % tensor.q.ndim == axis:
            scale = np.take(scale, index) if scale.ndim else scale
            zero_point = np.take(zero_point, index) if zero_point.ndim else zero_point
        kept = None if tensor.mask is None else np.take(tensor.mask, index, axis)
        return Quantized(np.take(tensor.q, index, axis), scale, zero_point, tensor.axis,
                         tensor.num_bits, tensor.float_dtype, kept)
    return Dense(np.take(tensor.to_numpy(), index, axis))


def _replace_const(graph: Graph, node: Node, index: int, tensor: Tensor) -> Value:
    """Give ``node`` input ``index`` the contents ``tensor``: in place when ``node`` is the only
    reader, else as a new constant (the old one is erased once nothing reads it)."""
    old = node.input(index)
    if len(old.uses) == 1 and not graph.is_output(old):
        graph.set_const(old, tensor)
        return old
    new = graph.add_const(old.name, tensor)
    graph.set_input(node, index, new)
    if not old.uses and not graph.is_output(old):
        graph.erase_const(old)
    return new


def _fix_slice(graph: Graph, fix, mask: np.ndarray) -> None:
    where, begin, end = fix.data
    new_begin = int(np.count_nonzero(mask[:begin]))
    new_end = new_begin + int(np.count_nonzero(mask[begin:end]))
    node = fix.node
    if node.opset < 10:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        starts[where], ends[where] = new_begin, new_end
        node.attrs["starts"], node.attrs["ends"] = starts, ends
        return
    for index, value in ((1, new_begin), (2, new_end)):
        array = node.input(index).const.to_numpy().copy()
        array.reshape(-1)[where] = value
        _replace_const(graph, node, index, Dense(array))


def _fix_split(graph: Graph, fix, mask: np.ndarray) -> None:
    (sizes,) = fix.data
    node = fix.node
    bounds = np.cumsum([0] + list(sizes))
    new = [int(np.count_nonzero(mask[a:b])) for a, b in itertools.pairwise(bounds)]
    if node.opset < 13:
        node.attrs["split"] = new
        return
    node.attrs.pop("num_outputs", None)
    array = np.asarray(new, dtype=np.int64)
    if node.input(1) is not None and node.input(1).const is not None:
        _replace_const(graph, node, 1, Dense(array))
    else:
        graph.set_input(node, 1, graph.add_const(f"{node.name}_split", array))
