"""Drawing graphs with Graphviz: a :class:`Graph` becomes a :class:`graphviz.Digraph`.

:func:`graph_to_dot` draws one graph; :func:`pipeline_to_dot` draws what a pipeline did,
either before and after side by side (two clusters) or as one diff graph. Nothing here runs
the ``dot`` program; :func:`render` does, and ``circ-viz`` is the command-line front end.

What a drawing shows:

- one box per node: op, name, output type, parameters and MACs (from
  :func:`circ.analysis.stats.graph_stats`, so the figures match every other report), and for a
  node whose constants are compressed (anything but a plain :class:`~circ.tensors.Dense`
  without mask) its sparsity, the bits per element of its largest constant and the codebook
  size when it has one;
- graph inputs and outputs as ellipses, edges labelled with the tensor type they carry
  (constants are not drawn: they are the node's parameters); past
  :data:`INLINE_LABEL_LIMIT` boxes the labels are external (``xlabel``) to keep dot fast;
- the fill colour says how compressed a node's parameters are: the fraction of their float32
  bytes that remains (:func:`remaining_fraction`), in the buckets of :data:`BUCKETS`;
- a legend (a node named ``legend``) with the colour buckets and, for pipelines, the marks of
  removed, added and changed nodes.

``collapse=True`` keeps large graphs readable: the nodes are cut into blocks after every join
(a node with two or more data inputs: Add, Sum, Concat — a residual or dense block ends there),
and a run of consecutive blocks with the same op sequence becomes a cluster that shows the
first block and one summary box for the rest (see :func:`collapse_blocks`). Names are not
needed, so it works on unnamed graphs (the ONNX model zoo) and on torch exports alike.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Optional

import attrs
import graphviz
import numpy as np

from circ.analysis.stats import MAC_OPS, GraphStats, NodeStats, graph_stats
from circ.graph import Graph, Node, Value, format_type
from circ.printer import format_count
from circ.tensors import Dense, Tensor

# (upper bound of the remaining fraction, fill colour, legend text), checked in order.
BUCKETS = (
    (0.10, "#7fc97f", "< 10% of float32 bytes left"),
    (0.25, "#b8e0a8", "10-25% left"),
    (0.50, "#fff2a8", "25-50% left"),
    (0.90, "#fdd49e", "50-90% left"),
    (float("inf"), "#f4b6b0", "uncompressed (>= 90%)"),
)
NO_PARAMS_COLOUR = "#ffffff"
IO_COLOUR = "#dde8f7"

# Pipeline marks: outline colour, outline style, legend text.
MARKS = {
    "removed": ("#d62728", "dashed,filled", "removed by the pipeline"),
    "added": ("#2ca02c", "bold,filled", "added by the pipeline"),
    "changed": ("#ff7f0e", "bold,filled", "changed by the pipeline"),
}

MAX_NAME = 40  # longer node names keep their tail: the last path parts say the most
# Up to this many boxes edges carry real labels; beyond it external labels (``xlabel``), placed
# after layout: a real label is a virtual node that doubles the ranks, and dot's cluster
# handling on DenseNet-121 drawn twice side by side then takes 30+ s instead of 5.
INLINE_LABEL_LIMIT = 300

GRAPH_ATTRS = {
    "rankdir": "TB",
    # Straight-line edges and a bounded network-simplex keep dot fast on ~1000-node graphs
    # (DenseNet-121 renders in a few seconds); curved splines around edge labels cost minutes.
    "splines": "line",
    "nslimit": "4",
    "nslimit1": "4",
    "mclimit": "0.5",
    "nodesep": "0.25",
    "ranksep": "0.35",
    "fontname": "Helvetica",
    "fontsize": "11",
}
NODE_ATTRS = {"shape": "box", "style": "rounded,filled", "fontname": "Helvetica", "fontsize": "10",
              "margin": "0.08,0.04"}
EDGE_ATTRS = {"fontname": "Helvetica", "fontsize": "8", "color": "#555555", "arrowsize": "0.6"}


# ----------------------------------------------------------------------------- figures of a node


def remaining_fraction(row: NodeStats) -> Optional[float]:
    """The fraction of its parameters' float32 bytes a node still needs; None without params.

    The smaller of two estimates: the stored bytes (what a clustered, quantized or coded
    tensor occupies), and the non-zeros at their bit width (a pruned Dense tensor stores every
    element, but its non-zeros are what sparse storage keeps; index overhead is ignored).
    """
    if not row.params:
        return None
    float32_bytes = 4.0 * row.params
    stored = row.storage_bytes / float32_bytes
    kept_bits = row.nonzeros * row.bits / (32.0 * row.params)
    return min(stored, kept_bits)


def fill_colour(fraction: Optional[float]) -> str:
    if fraction is None:
        return NO_PARAMS_COLOUR
    for bound, colour, _ in BUCKETS:
        if fraction < bound:
            return colour
    return BUCKETS[-1][1]


def is_compressed(tensor: Tensor) -> bool:
    """Whether a constant went through a compressing pass (pruned, shared, quantized, coded)."""
    return not (isinstance(tensor, Dense) and tensor.mask is None)


def _constants(node: Node) -> list[Tensor]:
    return [v.const for v in node.inputs if v is not None and v.const is not None]


def compression_lines(node: Node, row: NodeStats) -> list[str]:
    """Sparsity, bits and codebook size of a node with compressed constants; [] otherwise."""
    tensors = _constants(node)
    if not any(is_compressed(t) for t in tensors):
        return []
    weight = max(tensors, key=lambda t: t.size)
    parts = [f"{_number(weight.bits)} bits"]
    if row.params:  # 0 when another node read the constants first (shared weights)
        parts.insert(0, f"sparsity {100.0 * (1.0 - row.nonzeros / row.params):.1f}%")
    codebook = getattr(weight, "codebook", None)
    if codebook is not None:
        parts.append(f"codebook {len(codebook)}")
    return [" · ".join(parts)]


def _number(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}"


def short_name(name: str, limit: int = MAX_NAME) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def node_label(node: Node, row: NodeStats, mark: Optional["Mark"] = None) -> str:
    """The text of a node's box, one item a line."""
    lines = [node.op if not node.domain else f"{node.domain}.{node.op}"]
    if node.name:
        lines.append(short_name(node.name))
    if node.outputs:
        out = node.outputs[0]
        more = f" (+{len(node.outputs) - 1})" if len(node.outputs) > 1 else ""
        lines.append(format_type(out.dtype, out.shape) + more)
    figures = []
    if row.params:
        figures.append(f"params {format_count(row.params)}")
    if row.macs:
        figures.append(f"MACs {format_count(row.macs)}")
    elif row.macs is None:
        figures.append("MACs ?")
    if figures:
        lines.append(" · ".join(figures))
    lines += compression_lines(node, row)
    if mark is not None:
        lines.insert(0, f"[{mark.status}]" + (f" {', '.join(mark.reasons)}" if mark.reasons else ""))
    return _text(lines)


def _text(lines: Iterable[str]) -> str:
    # The graphviz package keeps backslashes as escapes (\n, \l); text from the model must not
    # turn into one.
    return "\\n".join(line.replace("\\", "\\\\") for line in lines)


# ----------------------------------------------------------------------------- marks (diff)


@attrs.define
class Mark:
    """What a pipeline did to a node: ``removed``, ``added`` or ``changed`` (with reasons)."""

    status: str
    reasons: list = attrs.field(factory=list)


def node_keys(graph: Graph) -> dict[int, str]:
    """id(node) -> the key a node is matched by across a pipeline: its name, or its position."""
    return {id(node): node.name or f"#{i}" for i, node in enumerate(graph.nodes)}


def diff_marks(before: Graph, after: Graph, before_stats: Optional[GraphStats] = None,
               after_stats: Optional[GraphStats] = None) -> tuple[dict[int, Mark], dict[int, Mark]]:
    """Marks of ``before``'s nodes (removed, changed) and ``after``'s (added, changed), keyed by
    ``id(node)``; nodes are matched by name (unnamed ones by position). A node is changed when
    its op, attributes, output types, input wiring, parameter figures or constant values differ."""
    before_stats = before_stats or graph_stats(before)
    after_stats = after_stats or graph_stats(after)
    before_keys, after_keys = node_keys(before), node_keys(after)
    old_by_key = {before_keys[id(n)]: (n, row) for n, row in zip(before.nodes, before_stats.per_node)}
    new_keys = set(after_keys.values())
    old_marks: dict[int, Mark] = {}
    new_marks: dict[int, Mark] = {}
    for node, row in zip(after.nodes, after_stats.per_node):
        match = old_by_key.get(after_keys[id(node)])
        if match is None:
            new_marks[id(node)] = Mark("added")
            continue
        reasons = _changes(match[0], match[1], node, row, before_keys, after_keys)
        if reasons:
            new_marks[id(node)] = Mark("changed", reasons)
            old_marks[id(match[0])] = Mark("changed", reasons)
    for node in before.nodes:
        if before_keys[id(node)] not in new_keys:
            old_marks[id(node)] = Mark("removed")
    return old_marks, new_marks


def _changes(old: Node, old_row: NodeStats, new: Node, new_row: NodeStats,
             old_keys: dict, new_keys: dict) -> list[str]:
    reasons = []
    if (old.op, old.domain) != (new.op, new.domain):
        reasons.append("op")
    if not _same_attrs(old.attrs, new.attrs):
        reasons.append("attributes")
    if [format_type(v.dtype, v.shape) for v in old.outputs] != [format_type(v.dtype, v.shape) for v in new.outputs]:
        reasons.append("shape")
    if _sources(old, old_keys) != _sources(new, new_keys):
        reasons.append("inputs")
    figures = ("params", "nonzeros", "storage_bytes", "weight_bits")
    # The figures catch pruning, sharing and quantization cheaply; values catch a rescale.
    if (any(getattr(old_row, f) != getattr(new_row, f) for f in figures)
            or not _same_constants(old, new)):
        reasons.append("weights")
    return reasons


def _sources(node: Node, keys: dict) -> list:
    """What each input is wired to: a producer's key, a graph input's name, or 'const'."""
    out = []
    for value in node.inputs:
        if value is None:
            out.append(None)
        elif value.const is not None:
            out.append("const")
        elif value.producer is not None:
            out.append((keys[id(value.producer)], value.producer.outputs.index(value)))
        else:
            out.append(value.name)
    return out


def _same_attrs(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                return False
        elif x != y:
            return False
    return True


def _same_constants(old: Node, new: Node) -> bool:
    a, b = _constants(old), _constants(new)
    if len(a) != len(b):
        return False
    return all(x.shape == y.shape and type(x) is type(y) and np.array_equal(x.to_numpy(), y.to_numpy())
               for x, y in zip(a, b))


# ----------------------------------------------------------------------------- collapsing


@attrs.define(eq=False)
class Block:
    """A run of ``count`` consecutive blocks with the same op sequence ``signature``;
    ``instances`` holds each block's nodes (main nodes and the constant-only nodes they use)."""

    signature: tuple
    instances: list  # list[list[Node]]

    @property
    def count(self) -> int:
        return len(self.instances)


def constant_only(graph: Graph) -> set[int]:
    """ids of nodes computing only from constants (e.g. Unsqueeze of a weight): parameter
    plumbing rather than data flow."""
    ids: set[int] = set()
    for node in graph.nodes:
        if all(v is None or v.const is not None or (v.producer is not None and id(v.producer) in ids)
               for v in node.inputs):
            ids.add(id(node))
    return ids


def _data_inputs(node: Node, plumbing: set[int]) -> list[Value]:
    seen: dict[int, Value] = {}
    for value in node.inputs:
        if value is None or value.const is not None:
            continue
        if value.producer is not None and id(value.producer) in plumbing:
            continue
        seen.setdefault(id(value), value)
    return list(seen.values())


def collapse_blocks(graph: Graph) -> list[Block]:
    """The graph's nodes cut into blocks, consecutive equal blocks merged into one Block.

    Blocks end after every join (two or more data inputs). A graph without joins (a plain
    chain such as VGG or an MLP) is cut before each Conv/Gemm/MatMul instead. A constant-only
    node belongs to the block of its first user. Every node is in exactly one block.
    """
    plumbing = constant_only(graph)
    main = [n for n in graph.nodes if id(n) not in plumbing]
    segments: list[list[Node]] = []
    current: list[Node] = []
    for node in main:
        current.append(node)
        if len(_data_inputs(node, plumbing)) >= 2:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    if len(segments) == 1:
        segments = _cut_before_mac_ops(main)

    owner = {id(n): i for i, seg in enumerate(segments) for n in seg}
    members = [list(seg) for seg in segments]
    for node in reversed(graph.nodes):  # reversed: a plumbing chain's consumer is placed first
        if id(node) in plumbing:
            users = [u for v in node.outputs for u in v.users if id(u) in owner]
            index = min((owner[id(u)] for u in users), default=0)
            owner[id(node)] = index
            members[index].append(node)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    blocks: list[Block] = []
    for segment, nodes in zip(segments, members):
        nodes.sort(key=lambda n: order[id(n)])
        signature = tuple(n.op for n in segment)
        if blocks and blocks[-1].signature == signature:
            blocks[-1].instances.append(nodes)
        else:
            blocks.append(Block(signature, [nodes]))
    return blocks


def _cut_before_mac_ops(nodes: list[Node]) -> list[list[Node]]:
    segments: list[list[Node]] = [[]]
    for node in nodes:
        if node.op in MAC_OPS and any(n.op in MAC_OPS for n in segments[-1]):
            segments.append([])
        segments[-1].append(node)
    return [s for s in segments if s]


# ----------------------------------------------------------------------------- drawing


def graph_to_dot(graph: Graph, *, collapse: bool = False, title: Optional[str] = None,
                 stats: Optional[GraphStats] = None) -> graphviz.Digraph:
    """``graph`` as a Digraph (see the module docstring)."""
    dot = _digraph(title or graph.name)
    drawer = _Drawer(dot, graph, stats or graph_stats(graph), prefix="", collapse=collapse)
    drawer.draw(_edge_label_key(drawer.box_count))
    dot.node("legend", _legend(marks=False), shape="plaintext", style="")
    return dot


def pipeline_to_dot(before: Graph, after: Graph, *, diff: bool = False, collapse: bool = False,
                    pipeline: str = "", title: Optional[str] = None) -> graphviz.Digraph:
    """What a pipeline did: ``before`` and ``after`` side by side as two clusters with the
    removed nodes marked in the first and the added and changed ones in the second, or with
    ``diff`` one graph (``after`` plus the removed nodes and edges of ``before``) with marks."""
    before_stats, after_stats = graph_stats(before), graph_stats(after)
    old_marks, new_marks = diff_marks(before, after, before_stats, after_stats)
    label = title or (f"{before.name}: {pipeline}" if pipeline else before.name)
    dot = _digraph(label)
    if diff:
        drawer = _Drawer(dot, after, after_stats, prefix="", collapse=collapse, marks=new_marks)
        removed = sum(mark.status == "removed" for mark in old_marks.values())
        key = _edge_label_key(drawer.box_count + removed)
        shown = drawer.draw(key)
        keys = node_keys(after)
        boxes = {keys[id(node)]: shown[id(node)] for node in after.nodes}
        _draw_removed(dot, before, before_stats, after, boxes, old_marks, key)
    else:
        sides = []
        for graph, stats, marks, prefix, name in ((before, before_stats, old_marks, "b_", "before"),
                                                   (after, after_stats, new_marks, "a_", "after")):
            sub = graphviz.Digraph(name=f"cluster_{name}")
            sub.attr(label=f"{name} ({len(graph.nodes)} nodes)", style="rounded", color="#888888",
                     fontsize="14")
            sides.append((sub, _Drawer(sub, graph, stats, prefix=prefix, collapse=collapse, marks=marks)))
        key = _edge_label_key(sum(drawer.box_count for _, drawer in sides))
        for sub, drawer in sides:
            drawer.draw(key)
            dot.subgraph(sub)
    dot.node("legend", _legend(marks=True), shape="plaintext", style="")
    return dot


def _edge_label_key(boxes: int) -> str:
    return "label" if boxes <= INLINE_LABEL_LIMIT else "xlabel"


def _digraph(title: str) -> graphviz.Digraph:
    dot = graphviz.Digraph(name="circ", graph_attr=dict(GRAPH_ATTRS, label=title, labelloc="t"),
                           node_attr=NODE_ATTRS, edge_attr=EDGE_ATTRS)
    return dot


class _Drawer:
    """Adds one graph's nodes and edges to a (sub)graph; ids are ``prefix`` + position."""

    def __init__(self, target, graph: Graph, stats: GraphStats, *, prefix: str, collapse: bool,
                 marks: Optional[dict] = None):
        self.target = target
        self.graph = graph
        self.rows = {id(n): row for n, row in zip(graph.nodes, stats.per_node)}
        self.prefix = prefix
        self.collapse = collapse
        self.marks = marks or {}
        self.ids = {id(n): f"{prefix}n{i}" for i, n in enumerate(graph.nodes)}
        self.blocks = collapse_blocks(graph) if collapse else None
        self.edge_label = "label"

    @property
    def box_count(self) -> int:
        """Boxes the drawing will have (nodes or block summaries, inputs and outputs)."""
        io = len(self.graph.inputs) + len(self.graph.outputs)
        if self.blocks is None:
            return len(self.graph.nodes) + io
        return io + sum(len(b.instances[0]) + (b.count > 1) for b in self.blocks)

    def draw(self, edge_label: str = "label") -> dict[int, str]:
        """Draws the graph with edge types as ``edge_label`` (``label`` or ``xlabel``);
        returns id(node) -> the id of the box the node is drawn in."""
        self.edge_label = edge_label
        shown = dict(self.ids)  # id(node) -> id of the box it is drawn in
        if self.blocks is not None:
            for index, block in enumerate(self.blocks):
                if block.count == 1:
                    self._nodes(self.target, block.instances[0])
                else:
                    self._block(index, block, shown)
        else:
            self._nodes(self.target, self.graph.nodes)
        self._io()
        self._edges(shown)
        return shown

    def _nodes(self, target, nodes: Iterable[Node]) -> None:
        for node in nodes:
            row = self.rows[id(node)]
            target.node(self.ids[id(node)], node_label(node, row, self.marks.get(id(node))),
                        **self._style(remaining_fraction(row), self.marks.get(id(node))))

    def _style(self, fraction: Optional[float], mark: Optional[Mark]) -> dict:
        style = {"fillcolor": fill_colour(fraction)}
        if mark is not None:
            colour, line, _ = MARKS[mark.status]
            style.update(color=colour, style=f"rounded,{line}", penwidth="2.5")
        return style

    def _block(self, index: int, block: Block, shown: dict) -> None:
        first, rest = block.instances[0], block.instances[1:]
        summary = f"{self.prefix}block{index}"
        for nodes in rest:
            for node in nodes:
                shown[id(node)] = summary
        rows = [self.rows[id(n)] for nodes in rest for n in nodes]
        total = _sum_rows(rows)
        with self.target.subgraph(name=f"cluster_{self.prefix}block{index}") as sub:
            ops = " · ".join(block.signature)
            ops = ops if len(ops) <= 60 else ops[:59] + "…"
            sub.attr(label=_text([f"{block.count} × block: {ops}",
                                  _span(first[0], rest[-1][-1])]),
                     style="rounded,dashed", color="#6a6a6a", fontsize="10")
            self._nodes(sub, first)
            lines = [f"… {len(rest)} more block{'s' if len(rest) > 1 else ''} like the above",
                     f"{sum(len(n) for n in rest)} nodes: {_span(rest[0][0], rest[-1][-1])}"]
            figures = [f"params {format_count(total.params)}"] if total.params else []
            if total.macs:
                figures.append(f"MACs {format_count(total.macs)}")
            if figures:
                lines.append(" · ".join(figures))
            if any(is_compressed(t) for nodes in rest for n in nodes for t in _constants(n)):
                sparsity = 1.0 - total.nonzeros / total.params if total.params else 0.0
                lines.append(f"sparsity {100.0 * sparsity:.1f}% · {_number(round(total.bits, 2))} bits (mean)")
            marked = [self.marks[id(n)] for nodes in rest for n in nodes if id(n) in self.marks]
            mark = Mark(marked[0].status) if marked else None
            if mark is not None:
                lines.insert(0, f"[{mark.status}: {len(marked)} nodes]")
            sub.node(summary, _text(lines), shape="box3d", **self._style(remaining_fraction(total), mark))

    def _io(self) -> None:
        for i, value in enumerate(self.graph.inputs):
            self.target.node(f"{self.prefix}in{i}", _text(["input " + value.name, format_type(value.dtype, value.shape)]),
                             shape="ellipse", style="filled", fillcolor=IO_COLOUR)
        for i, value in enumerate(self.graph.outputs):
            self.target.node(f"{self.prefix}out{i}", _text(["output " + value.name, format_type(value.dtype, value.shape)]),
                             shape="ellipse", style="filled", fillcolor=IO_COLOUR)

    def _source(self, value: Value, shown: dict) -> Optional[str]:
        if value.producer is not None:
            return shown[id(value.producer)]
        for i, graph_input in enumerate(self.graph.inputs):
            if graph_input is value:
                return f"{self.prefix}in{i}"
        return None

    def _edges(self, shown: dict) -> None:
        drawn: set = set()
        for node in self.graph.nodes:
            for value in node.inputs:
                if value is None or value.const is not None:
                    continue
                self._edge(self._source(value, shown), shown[id(node)], value, drawn)
        for i, value in enumerate(self.graph.outputs):
            self._edge(self._source(value, shown), f"{self.prefix}out{i}", value, drawn)

    def _edge(self, source: Optional[str], target: str, value: Value, drawn: set) -> None:
        key = (source, target, id(value))
        if source is None or source == target or key in drawn:
            return
        drawn.add(key)
        self.target.edge(source, target, **{self.edge_label: format_type(value.dtype, value.shape)})


def _draw_removed(dot, before: Graph, stats: GraphStats, after: Graph, after_boxes: dict,
                  marks: dict, edge_label: str) -> None:
    """Adds ``before``'s removed nodes (ids ``r_n<i>``) and their edges to a diff drawing;
    ``after_boxes`` maps a node key to the box its ``after`` node is drawn in."""
    before_keys = node_keys(before)
    rows = {id(n): row for n, row in zip(before.nodes, stats.per_node)}
    position = {id(n): i for i, n in enumerate(before.nodes)}

    def box(node: Node) -> Optional[str]:
        if id(node) in marks and marks[id(node)].status == "removed":
            return f"r_n{position[id(node)]}"
        return after_boxes.get(before_keys[id(node)])

    removed = [n for n in before.nodes if id(n) in marks and marks[id(n)].status == "removed"]
    colour, line, _ = MARKS["removed"]
    for node in removed:
        row = rows[id(node)]
        dot.node(box(node), node_label(node, row, marks[id(node)]), fillcolor=fill_colour(remaining_fraction(row)),
                 color=colour, style=f"rounded,{line}", penwidth="2.5")
    input_ids = {value.name: f"in{i}" for i, value in enumerate(after.inputs)}
    output_ids = {value.name: f"out{i}" for i, value in enumerate(after.outputs)}
    for node in removed:
        for value in node.inputs:
            if value is None or value.const is not None:
                continue
            source = box(value.producer) if value.producer is not None else input_ids.get(value.name)
            if source is not None:
                dot.edge(source, box(node), **{edge_label: format_type(value.dtype, value.shape)}, color=colour,
                         style="dashed", fontcolor=colour)
        for value in node.outputs:
            targets = [box(user) for user in value.users]
            if before.is_output(value) and value.name in output_ids:
                targets.append(output_ids[value.name])
            for target in dict.fromkeys(t for t in targets if t is not None):
                dot.edge(box(node), target, **{edge_label: format_type(value.dtype, value.shape)}, color=colour,
                         style="dashed", fontcolor=colour)


def _sum_rows(rows: list[NodeStats]) -> NodeStats:
    total = NodeStats("", "")
    for row in rows:
        total.params += row.params
        total.nonzeros += row.nonzeros
        total.storage_bytes += row.storage_bytes
        total.weight_bits += row.weight_bits
        total.macs = None if total.macs is None or row.macs is None else total.macs + row.macs
    return total


def _span(first: Node, last: Node) -> str:
    return f"{short_name(first.name or first.op, 24)} … {short_name(last.name or last.op, 24)}"


def _legend(marks: bool) -> str:
    """An HTML-like table: the colour buckets, and the pipeline marks when ``marks``."""
    rows = ['<TR><TD COLSPAN="2"><B>legend</B></TD></TR>',
            f'<TR><TD BGCOLOR="{NO_PARAMS_COLOUR}">   </TD><TD ALIGN="LEFT">no parameters</TD></TR>']
    for _, colour, text in reversed(BUCKETS):
        rows.append(f'<TR><TD BGCOLOR="{colour}">   </TD><TD ALIGN="LEFT">{html.escape(text)}</TD></TR>')
    if marks:
        for colour, _, text in MARKS.values():
            rows.append(f'<TR><TD BORDER="3" COLOR="{colour}">   </TD>'
                        f'<TD ALIGN="LEFT">{html.escape(text)}</TD></TR>')
    rows.append('<TR><TD COLSPAN="2" ALIGN="LEFT">box: op · name · output · params · MACs<BR ALIGN="LEFT"/>'
                'edges: tensor type</TD></TR>')
    table = '<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">' + "".join(rows) + "</TABLE>"
    return f"<{table}>"


# ----------------------------------------------------------------------------- rendering

FORMATS = ("svg", "png", "pdf", "dot")


def render(dot: graphviz.Digraph, fmt: str) -> bytes:
    """The drawing in ``fmt`` (``dot`` gives the DOT source itself). Raises
    :class:`graphviz.ExecutableNotFound` when the ``dot`` program is missing."""
    if fmt == "dot":
        return dot.source.encode("utf-8")
    return dot.pipe(format=fmt, engine="dot", quiet=True)
