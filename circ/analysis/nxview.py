"""The networkx view of a graph: derived from the IR on demand, never edited.

Nodes of the DiGraph are :class:`~circ.graph.Node` objects; an edge ``a -> b`` carries the
list of values ``a`` produces that ``b`` reads (``values`` attribute). Graph inputs and
constants are not nodes of the view. ``Graph.nx()`` caches the view until the next edit.
"""

from __future__ import annotations

import networkx as nx

from circ.graph import Graph, Node


def build_nx(graph: Graph) -> nx.DiGraph:
    view = nx.DiGraph()
    for node in graph.nodes:
        view.add_node(node)
    for node in graph.nodes:
        for value in node.inputs:
            if value is None or value.producer is None:
                continue
            if view.has_edge(value.producer, node):
                view.edges[value.producer, node]["values"].append(value)
            else:
                view.add_edge(value.producer, node, values=[value])
    return view


def topological_order(graph: Graph) -> list[Node]:
    """Nodes in a topological order computed by networkx (independent of ``graph.nodes``)."""
    return list(nx.topological_sort(graph.nx()))


def descendants(graph: Graph, node: Node) -> set[Node]:
    """Every node reachable from ``node``."""
    return nx.descendants(graph.nx(), node)


def ancestors(graph: Graph, node: Node) -> set[Node]:
    """Every node ``node`` depends on."""
    return nx.ancestors(graph.nx(), node)
