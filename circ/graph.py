"""The graph IR: :class:`Value`, :class:`Node` and :class:`Graph`.

A :class:`Value` is an edge: a tensor with a dtype and a shape, produced by one node (or a
graph input, or a constant) and used by any number of nodes. It knows its producer and its
uses as ``(node, input_index)`` pairs. Only the graph's editing methods change those links
(:meth:`Graph.add_node`, :meth:`Graph.set_input`, :meth:`Graph.replace_all_uses_with`,
:meth:`Graph.erase_node`, :meth:`Graph.erase_const`); a pass never edits input lists by hand.

Shapes are tuples whose entries are ints, strings (symbolic dims such as the batch ``"N"``)
or ``None`` (unknown). A shape of ``None`` means even the rank is unknown.

Nodes keep ONNX semantics at the graph's opset (``Graph.opset``): an op whose arguments moved
from attributes to inputs across opsets (Squeeze, Clip, Split, ...) is read with
:func:`circ.ops.registry.attr_or_input`. ``graph.nodes`` is always in topological order.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from attrs import converters, define, field
import numpy as np

from circ.errors import ModelError
from circ.tensors import Dense, Tensor

Dim = Union[int, str, None]
Shape = Optional[tuple]


def _shape(value) -> Shape:
    return None if value is None else tuple(value)


@define(eq=False, repr=False)
class Value:
    """A tensor edge of the graph."""

    name: str
    dtype: Optional[np.dtype] = field(default=None, converter=converters.optional(np.dtype))
    shape: Shape = field(default=None, converter=_shape)
    producer: Optional["Node"] = None  # None for graph inputs and constants
    const: Optional[Tensor] = None  # set for constants (ONNX initializers)
    # Known contents of a small 1-D integer tensor computed from shapes (Shape -> Gather -> ...),
    # entries int or symbolic str; lets Reshape and friends infer shapes through dynamic-batch
    # shape arithmetic. Derived by shape inference, never needed for correctness of the kernels.
    sym: Optional[tuple] = None
    uses: list = field(factory=list)  # (node, input_index) pairs

    def __repr__(self) -> str:
        return f"%{self.name}: {format_type(self.dtype, self.shape)}"

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)

    @property
    def users(self) -> list["Node"]:
        """Distinct nodes using this value, in first-use order."""
        seen: dict[int, Node] = {}
        for node, _ in self.uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def numpy(self) -> np.ndarray:
        """The constant's array (decoded); error if the value is not a constant."""
        if self.const is None:
            raise ValueError(f"value {self.name!r} is not a constant")
        return self.const.to_numpy()


@define(eq=False, repr=False)
class Node:
    """One operation. ``inputs`` may hold ``None`` for an omitted optional input."""

    op: str
    inputs: list = field(factory=list)  # list[Value | None]
    outputs: list = field(factory=list)  # list[Value]
    attrs: dict = field(factory=dict)  # attribute name -> Python value
    name: str = ""
    domain: str = ""
    # Attributes circ cannot represent as plain Python values (subgraphs, sparse tensors) are
    # kept as the original onnx AttributeProto so export writes them back unchanged.
    raw_attrs: dict = field(factory=dict)
    graph: Optional["Graph"] = None

    def __repr__(self) -> str:
        return f"<Node {self.op} {self.name!r}>"

    @property
    def opset(self) -> int:
        return self.graph.opset_of(self.domain) if self.graph is not None else 0

    def input(self, i: int) -> Optional[Value]:
        """Input ``i``, or None when it is omitted or beyond the end."""
        return self.inputs[i] if i < len(self.inputs) else None

    @property
    def output(self) -> Value:
        return self.outputs[0]

    def describe(self) -> str:
        """How error messages name this node: ``Conv 'conv1'``."""
        return f"{self.op} node {self.name!r}" if self.name else f"{self.op} node (unnamed)"


@define(eq=False, repr=False)
class Graph:
    """A model: inputs, constants, nodes in topological order, outputs, and opsets."""

    name: str = "main"
    nodes: list = field(factory=list)
    inputs: list = field(factory=list)
    outputs: list = field(factory=list)
    consts: dict = field(factory=dict)  # name -> Value (initializers)
    opsets: dict = field(factory=lambda: {"": 17})  # domain -> version
    # What export needs to write the model back as it came (ir_version, producer, metadata,
    # docstrings, value_info of opaque parts); never read by passes.
    meta: dict = field(factory=dict)
    # Bumped by every structural edit; cached analyses (networkx view) compare against it.
    version: int = 0
    _names: set = field(factory=set)
    _counter: Iterator[int] = field(factory=itertools.count)
    _nx_cache: Any = None

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self.nodes)} nodes>"

    # ----------------------------------------------------------------- lookups
    @property
    def opset(self) -> int:
        """Version of the default ONNX domain."""
        return self.opsets.get("", 0)

    def opset_of(self, domain: str) -> int:
        domain = "" if domain == "ai.onnx" else domain
        return self.opsets.get(domain, 0)

    def values(self) -> Iterator[Value]:
        """Every value: graph inputs, constants, then node outputs in order."""
        yield from self.inputs
        yield from self.consts.values()
        for node in self.nodes:
            yield from node.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def is_output(self, value: Value) -> bool:
        return any(v is value for v in self.outputs)

    def unique_name(self, base: str) -> str:
        """A value/node name not used yet in this graph, derived from ``base``."""
        if base and base not in self._names:
            return base
        while True:
            candidate = f"{base or 'v'}_{next(self._counter)}"
            if candidate not in self._names:
                return candidate

    def _claim(self, name: str) -> str:
        name = self.unique_name(name)
        self._names.add(name)
        return name

    # ----------------------------------------------------------------- building
    def add_input(self, name: str, dtype, shape) -> Value:
        """Append a graph input."""
        value = Value(self._claim(name), dtype, shape)
        self.inputs.append(value)
        self._touch()
        return value

    def add_const(self, name: str, tensor: Union[Tensor, np.ndarray]) -> Value:
        """Add a constant (initializer) value; ``name`` is made unique."""
        if not isinstance(tensor, Tensor):
            tensor = Dense(np.asarray(tensor))
        value = Value(self._claim(name), tensor.dtype, tensor.shape, const=tensor)
        self.consts[value.name] = value
        self._touch()
        return value

    def set_const(self, value: Value, tensor: Union[Tensor, np.ndarray]) -> None:
        """Replace the contents of constant ``value``; its shape and dtype follow the tensor."""
        if value.const is None:
            raise ValueError(f"{value.name!r} is not a constant")
        if not isinstance(tensor, Tensor):
            tensor = Dense(np.asarray(tensor))
        value.const = tensor
        value.dtype = tensor.dtype
        value.shape = tensor.shape

    def add_node(
        self,
        op: str,
        inputs: Sequence[Optional[Value]],
        attributes: Optional[dict] = None,
        *,
        outputs: Union[int, Sequence[str]] = 1,
        name: str = "",
        domain: str = "",
        before: Optional[Node] = None,
        after: Optional[Node] = None,
        infer: bool = True,
    ) -> Node:
        """Create a node and insert it (at the end, or ``before``/``after`` another node).

        ``outputs`` is a count or a list of names. Output types are inferred from the op's
        shape rule when the op is known and ``infer`` is set.
        """
        node = Node(op, [], [], dict(attributes or {}), name="", domain=domain, graph=self)
        node.name = self._claim(name or op.lower())
        for i, value in enumerate(inputs):
            node.inputs.append(value)
            if value is not None:
                value.uses.append((node, i))
        names = [f"{node.name}_out{i}" if i else node.name + "_out" for i in range(outputs)] \
            if isinstance(outputs, int) else list(outputs)
        for out_name in names:
            node.outputs.append(Value(self._claim(out_name), producer=node))
        if before is not None:
            self.nodes.insert(self._index(before), node)
        elif after is not None:
            self.nodes.insert(self._index(after) + 1, node)
        else:
            self.nodes.append(node)
        self._touch()
        if infer:
            from circ.shape_inference import infer_node

            infer_node(node)
        return node

    def _index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise ValueError(f"{node!r} is not in this graph")

    # ----------------------------------------------------------------- editing
    def set_input(self, node: Node, index: int, value: Optional[Value]) -> None:
        """Point input ``index`` of ``node`` at ``value`` (None omits it), keeping uses right."""
        while len(node.inputs) <= index:
            node.inputs.append(None)
        old = node.inputs[index]
        if old is not None:
            _remove_use(old, node, index)
        node.inputs[index] = value
        if value is not None:
            value.uses.append((node, index))
        self._touch()

    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        """Make every user of ``old`` (and the graph outputs) use ``new`` instead."""
        if old is new:
            return
        for node, index in list(old.uses):
            node.inputs[index] = new
            new.uses.append((node, index))
        old.uses.clear()
        for i, v in enumerate(self.outputs):
            if v is old:
                self.outputs[i] = new
        self._touch()

    def erase_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused; its inputs lose these uses."""
        for out in node.outputs:
            if out.uses or self.is_output(out):
                raise ValueError(f"cannot erase {node.describe()}: output {out.name!r} is still used")
        for index, value in enumerate(node.inputs):
            if value is not None:
                _remove_use(value, node, index)
        del self.nodes[self._index(node)]
        for out in node.outputs:
            self._names.discard(out.name)
        self._names.discard(node.name)
        node.graph = None
        self._touch()

    def erase_const(self, value: Value) -> None:
        """Remove an unused constant."""
        if value.uses or self.is_output(value):
            raise ValueError(f"cannot erase constant {value.name!r}: still used")
        del self.consts[value.name]
        self._names.discard(value.name)
        self._touch()

    def rename(self, value: Value, new_name: str) -> str:
        """Rename a value (made unique); returns the name it got."""
        if value.name == new_name:
            return new_name
        self._names.discard(value.name)
        if value.const is not None:
            del self.consts[value.name]
        value.name = self._claim(new_name)
        if value.const is not None:
            self.consts[value.name] = value
        return value.name

    def topological_sort(self) -> None:
        """Reorder ``nodes`` topologically (stable: keeps the current order where it can).

        Iterative Kahn's algorithm, so a deep graph never hits the recursion limit.
        Raises :class:`ModelError` naming a node on a cycle.
        """
        position = {id(n): i for i, n in enumerate(self.nodes)}
        pending = {}
        for n in self.nodes:
            producers = {id(v.producer) for v in n.inputs
                         if v is not None and v.producer is not None and id(v.producer) in position}
            pending[id(n)] = len(producers)
        import heapq

        ready = [position[id(n)] for n in self.nodes if pending[id(n)] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            node = self.nodes[heapq.heappop(ready)]
            order.append(node)
            for user in {id(u): u for out in node.outputs for u in out.users}.values():
                if id(user) not in pending:
                    continue
                pending[id(user)] -= 1
                if pending[id(user)] == 0:
                    heapq.heappush(ready, position[id(user)])
        if len(order) != len(self.nodes):
            stuck = next(n for n in self.nodes if pending[id(n)] > 0)
            raise ModelError(f"graph {self.name!r} has a cycle through {stuck.describe()}")
        self.nodes = order
        self._touch()

    def _touch(self) -> None:
        self.version += 1
        self._nx_cache = None

    # ----------------------------------------------------------------- analyses
    def nx(self):
        """A networkx DiGraph view (nodes are :class:`Node` objects), cached until an edit."""
        if self._nx_cache is None:
            from circ.analysis.nxview import build_nx

            self._nx_cache = build_nx(self)
        return self._nx_cache

    def copy(self) -> "Graph":
        """A deep copy: new nodes and values, constant tensors copied."""
        new = Graph(name=self.name, opsets=dict(self.opsets), meta=_copy_meta(self.meta))
        mapping: dict[int, Value] = {}
        for v in self.inputs:
            nv = Value(v.name, v.dtype, v.shape, sym=v.sym)
            new.inputs.append(nv)
            mapping[id(v)] = nv
        for v in self.consts.values():
            nv = Value(v.name, v.dtype, v.shape, const=v.const.copy(), sym=v.sym)
            new.consts[nv.name] = nv
            mapping[id(v)] = nv
        for n in self.nodes:
            nn = Node(n.op, [], [], _copy_attrs(n.attrs), n.name, n.domain, dict(n.raw_attrs), new)
            for i, v in enumerate(n.inputs):
                if v is None:
                    nn.inputs.append(None)
                else:
                    nv = mapping[id(v)]
                    nn.inputs.append(nv)
                    nv.uses.append((nn, i))
            for v in n.outputs:
                nv = Value(v.name, v.dtype, v.shape, producer=nn, sym=v.sym)
                nn.outputs.append(nv)
                mapping[id(v)] = nv
            new.nodes.append(nn)
        new.outputs = [mapping[id(v)] for v in self.outputs]
        new._names = set(self._names)
        return new


def _remove_use(value: Value, node: Node, index: int) -> None:
    for k, (user, i) in enumerate(value.uses):
        if user is node and i == index:
            del value.uses[k]
            return
    raise AssertionError(f"use ({node!r}, {index}) missing from {value.name!r}")


def _copy_attrs(attributes: dict) -> dict:
    out = {}
    for key, val in attributes.items():
        if isinstance(val, np.ndarray):
            out[key] = val.copy()
        elif isinstance(val, list):
            out[key] = list(val)
        else:
            out[key] = val
    return out


def _copy_meta(meta: dict) -> dict:
    return dict(meta)


def format_dim(d: Dim) -> str:
    return "?" if d is None else str(d)


def format_type(dtype, shape: Shape) -> str:
    """``f32[N,3,224,224]`` style text for a tensor type."""
    name = "?" if dtype is None else _SHORT.get(np.dtype(dtype).name, np.dtype(dtype).name)
    if shape is None:
        return f"{name}[*]"
    return f"{name}[{','.join(format_dim(d) for d in shape)}]"


_SHORT = {"float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64", "int32": "i32",
          "int8": "i8", "uint8": "u8", "int16": "i16", "uint16": "u16", "bool": "bool",
          "uint32": "u32", "uint64": "u64"}


def iter_nodes_safe(graph: Graph) -> Iterable[Node]:
    """Iterate over a snapshot of the nodes, skipping ones erased meanwhile."""
    for node in list(graph.nodes):
        if node.graph is graph:
            yield node
