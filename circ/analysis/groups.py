"""Dependency groups: sets of weighted nodes whose output channels must be pruned together.

Built on the channel-flow analysis (:mod:`circ.analysis.channels`): two layers are in one
group when some output channel of one is the same channel as an output channel of the other
(a residual ``Add``/``Sum`` joins its branches; a depthwise conv ties its outputs to its
inputs, so it joins the group of the layer feeding it). Every Conv, ConvTranspose, Gemm and
MatMul with a constant weight is in exactly one group; a layer the analysis cannot follow is
a group of its own.

:func:`channel_groups` gives the richer view a pruning pass needs: each group's removable
channel classes, how many are frozen and why.
"""

from __future__ import annotations

from circ.analysis.channels import ChannelGroup, channel_flow
from circ.graph import Graph
from circ.passbase import STRUCTURE, analysis

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@analysis(STRUCTURE)
def dependency_groups(graph: Graph) -> list[frozenset]:
    """Groups of nodes (frozensets of :class:`~circ.graph.Node`), ordered by each group's
    first node in graph order."""
    flow = channel_flow(graph)
    groups: list[set] = [set(group.producers) for group in flow.groups]
    covered = {id(node) for group in groups for node in group}
    owner = {}
    for index, group in enumerate(flow.groups):
        for node in group.producers:
            owner[id(node)] = index
    for mac in flow.mac_nodes:
        node = mac.node
        if id(node) in covered or mac.out_atoms is None:
            continue
        # A layer without atoms of its own (depthwise): the group producing its channels.
        index = _group_of_atoms(flow, mac.out_atoms, owner)
        if index is not None:
            groups[index].add(node)
            covered.add(id(node))
    order = {id(node): position for position, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        weight = node.input(1)
        if node.op in WEIGHTED_OPS and id(node) not in covered \
                and weight is not None and weight.const is not None:
            groups.append({node})
    result = [frozenset(group) for group in groups if group]
    result.sort(key=lambda group: min(order[id(node)] for node in group))
    return result


def _group_of_atoms(flow, atoms, owner) -> int | None:
    classes = set(flow.root[atoms].tolist())
    for producer in flow.producers:
        if classes & set(flow.root[producer.atoms].tolist()):
            return owner.get(id(producer.node))
    return None


def channel_groups(graph: Graph) -> list[ChannelGroup]:
    """The channel groups of ``graph`` with their removable classes and frozen reasons."""
    return channel_flow(graph).groups
