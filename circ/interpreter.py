"""The reference interpreter: runs a graph with NumPy, one kernel per op.

It is the numerical ground truth for every pass: exact passes are checked against it to float
tolerance, approximate ones by the error it reports. Constants are decoded with
``to_numpy()``, so a graph runs at any stage of compression.

Subclass :class:`Interpreter` and override :meth:`Interpreter.run_node` to observe or change
what each node computes (the calibration and training code do).
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from circ.errors import CircError, DataError, ModelError
from circ.graph import Graph, Node, Value
from circ.ops import get_op


class KernelError(ModelError):
    """A kernel failed on its inputs; the message names the node."""


class Interpreter:
    """Runs ``graph`` on feeds; reusable across calls."""

    def __init__(self, graph: Graph, *, keep_all: bool = False):
        self.graph = graph
        self.keep_all = keep_all  # keep every intermediate (for debugging and calibration)
        self._plan()

    def _plan(self) -> None:
        graph = self.graph
        missing = []
        for node in graph.nodes:
            opdef = get_op(node.op, node.domain)
            if opdef is None or opdef.kernel is None:
                missing.append(node)
        if missing:
            node = missing[0]
            domain = f" (domain {node.domain})" if node.domain else ""
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise ModelError(
                f"cannot run {node.describe()}: the interpreter has no kernel for op "
                f"{node.op!r}{domain}{more}")
        # Index of the last node that reads each value, so arrays are freed as soon as possible.
        self._last_use: dict[int, int] = {}
        for i, node in enumerate(graph.nodes):
            for value in node.inputs:
                if value is not None:
                    self._last_use[id(value)] = i
        self._keep = {id(v) for v in graph.outputs}

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
        """Match feeds to graph inputs by name, checking dtype and static dims."""
        env: dict[int, np.ndarray] = {}
        names = [v.name for v in self.graph.inputs]
        unknown = sorted(set(feeds) - set(names))
        if unknown:
            raise DataError(f"unknown input {unknown[0]!r}; the graph's inputs are {', '.join(names)}")
        for value in self.graph.inputs:
            if value.name not in feeds:
                raise DataError(f"missing input {value.name!r} ({_type(value)})")
            env[id(value)] = _check_feed(value, feeds[value.name])
        return env

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns a dict of output name -> array."""
        env = self.check_feeds(feeds)
        self.values = env
        for value in self.graph.consts.values():
            env[id(value)] = value.const.to_numpy()
        for index, node in enumerate(self.graph.nodes):
            args = [None if v is None else env[id(v)] for v in node.inputs]
            results = self.run_node(node, args)
            for value, array in zip(node.outputs, results):
                env[id(value)] = array
            if not self.keep_all:
                for value in node.inputs:
                    if (value is not None and value.producer is not None
                            and self._last_use.get(id(value)) == index and id(value) not in self._keep):
                        env.pop(id(value), None)
        return {v.name: env[id(v)] for v in self.graph.outputs}

    def run_node(self, node: Node, args: list[Optional[np.ndarray]]) -> list[np.ndarray]:
        """Compute one node's outputs from its input arrays."""
        opdef = get_op(node.op, node.domain)
        try:
            result = opdef.kernel(node, *args)
        except CircError:
            raise
        except (ValueError, TypeError, IndexError, ZeroDivisionError, MemoryError) as err:
            raise KernelError(f"{node.describe()} failed: {err}") from err
        if not isinstance(result, (tuple, list)):
            result = (result,)
        return list(result)


def _type(value: Value) -> str:
    from circ.graph import format_type

    return format_type(value.dtype, value.shape)


def _check_feed(value: Value, array) -> np.ndarray:
    array = np.asarray(array)
    if value.dtype is not None and array.dtype != value.dtype:
        if array.dtype.kind == value.dtype.kind or (array.dtype.kind in "iu" and value.dtype.kind in "iu"):
            array = array.astype(value.dtype)
        elif array.dtype.kind in "iuf" and value.dtype.kind == "f":
            array = array.astype(value.dtype)
        else:
            raise DataError(f"input {value.name!r} expects {value.dtype}, got {array.dtype}")
    if value.shape is not None:
        if array.ndim != len(value.shape):
            raise DataError(f"input {value.name!r} expects shape {_type(value)}, got {list(array.shape)}")
        for want, got in zip(value.shape, array.shape):
            if isinstance(want, int) and want >= 0 and want != got:
                raise DataError(f"input {value.name!r} expects shape {_type(value)}, got {list(array.shape)}")
    return array


def run(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``graph`` through the reference interpreter."""
    return Interpreter(graph).run(feeds)
