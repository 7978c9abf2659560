"""A readable text form of the IR, in the spirit of MLIR's generic printer::

    graph main(%x: f32[N,3,8,8]) {
      %w: f32[4,3,3,3] = const dense{min=-1.9, max=2.1, nnz=108/108}
      %shape: i64[2] = const [-1, 64]
      %y: f32[N,4,8,8] = Conv(%x, %w) {pads=[1,1,1,1]}  # conv1
      return %y
    }

One line per constant and per node. Small constants (up to :data:`INLINE_ELEMENTS`) are
printed in full; larger ones are summarized by representation, range and non-zero count.
An omitted optional input prints as ``_``; the node's name follows as a ``#`` comment.
The text is for people (``--print-ir-after``); it is not parsed back.
"""

from __future__ import annotations

import numpy as np

from circ.graph import Graph, Node, Value, format_type
from circ.tensors import Clustered, Dense, Quantized, Tensor

INLINE_ELEMENTS = 8


def print_graph(graph: Graph) -> str:
    """The whole graph as text."""
    inputs = ", ".join(_typed(v) for v in graph.inputs)
    lines = [f"graph {graph.name}({inputs}) {{"]
    for value in graph.consts.values():
        lines.append(f"  {_typed(value)} = const {summarize_tensor(value.const)}")
    for node in graph.nodes:
        lines.append("  " + print_node(node))
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)


def print_node(node: Node) -> str:
    """One node: ``%y: f32[N,64] = Gemm(%x, %w, %b) {transB=1}  # fc1``."""
    results = ", ".join(_typed(v) for v in node.outputs)
    op = f"{node.domain}.{node.op}" if node.domain not in ("", "ai.onnx") else node.op
    args = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
    text = f"{results} = {op}({args})"
    attributes = {key: _attr(val) for key, val in sorted(node.attrs.items())}
    attributes.update({key: "<" + _raw_kind(val) + ">" for key, val in sorted(node.raw_attrs.items())})
    if attributes:
        text += " {" + ", ".join(f"{key}={val}" for key, val in attributes.items()) + "}"
    if node.name:
        text += f"  # {node.name}"
    return text


def summarize_tensor(tensor: Tensor) -> str:
    """A constant in a few words: its values when small, otherwise a summary."""
    if isinstance(tensor, Dense) and tensor.mask is None and tensor.size <= INLINE_ELEMENTS:
        return _array(tensor.array)
    array = tensor.to_numpy()
    parts = []
    if isinstance(tensor, Clustered):
        kind = "clustered"
        parts.append(f"k={len(tensor.codebook)}")
    elif isinstance(tensor, Quantized):
        kind = "quantized"
        axis = "tensor" if tensor.axis is None else f"axis {tensor.axis}"
        parts.append(f"bits={tensor.num_bits}, per {axis}")
    else:
        kind = "dense" if getattr(tensor, "mask", None) is None else "masked"
    if array.size and array.dtype.kind in "fiub":
        parts.append(f"min={_number(array.min())}, max={_number(array.max())}")
    parts.append(f"nnz={tensor.nnz}/{tensor.size}")
    return f"{kind}{{{', '.join(parts)}}}"


def _typed(value: Value) -> str:
    return f"%{value.name}: {format_type(value.dtype, value.shape)}"


def _number(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.4g}"
    return str(int(x)) if isinstance(x, (int, np.integer)) else repr(x)


def _array(array: np.ndarray) -> str:
    flat = ", ".join(_number(x) for x in np.asarray(array).reshape(-1))
    return f"[{flat}]" if np.ndim(array) else flat


def _attr(value) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= INLINE_ELEMENTS:
            return _array(value)
        return f"<{format_type(value.dtype, value.shape)}>"
    if isinstance(value, Tensor):
        return summarize_tensor(value)
    if isinstance(value, (list, tuple)):
        items = [_attr(v) for v in value[:INLINE_ELEMENTS]]
        more = ", ..." if len(value) > INLINE_ELEMENTS else ""
        return "[" + ",".join(items) + more + "]"
    if isinstance(value, (bytes, str)):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _raw_kind(raw) -> str:
    """What an opaque ONNX attribute holds (``graph``, ``sparse_tensor``...)."""
    kind = getattr(raw, "type", None)
    try:
        import onnx

        return onnx.AttributeProto.AttributeType.Name(kind).lower()
    except (ImportError, ValueError, TypeError):
        return "raw"


def format_table(headers: list, rows: list, *, align: str = "") -> str:
    """Rows of cells as aligned columns. ``align`` has one letter per column, ``l`` or ``r``
    (default: first column left, the rest right, which suits a name and numbers)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for row in cells:
        parts = [cell.ljust(w) if a == "l" else cell.rjust(w) for cell, w, a in zip(row, widths, align)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_count(n) -> str:
    """``1234567`` -> ``1,234,567``; None -> ``?``."""
    if n is None:
        return "?"
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.2f}"
    return f"{int(n):,}"


def format_change(before, after) -> str:
    """``before`` -> ``after`` as a signed percentage ("-89.7%"; "?" when either is unknown)."""
    if before is None or after is None:
        return "?"
    if before == after:
        return "0%"
    if before == 0:
        return "new"
    return f"{100.0 * (after - before) / before:+.1f}%"
