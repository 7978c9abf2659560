"""Lowering: a pruned, clustered MLP graph -> an EIE :class:`~backends.eie.isa.Program`.

Accepted graphs: one rank-2 float input (batch, features) feeding a chain of Gemm or MatMul
layers with constant :class:`~circ.tensors.Clustered` weights, each optionally followed by an
Add of a constant bias and then a Relu, each the only user of what it follows (both fused into
the layer; exporters write a Linear as MatMul + Add). Everything else —
convolutions, other ops, branches, unclustered weights, more clusters than ``2**v_bits`` —
is refused with a :class:`~circ.errors.BackendError` naming the node and why.
"""

from __future__ import annotations

import warnings

import numpy as np

from backends.eie.isa import Load, Program, SpMV, Store
from circ.errors import BackendError
from circ.graph import Graph, Node
from circ.tensors import Clustered

DEFAULT_PES = 64
DEFAULT_V_BITS = 4
DEFAULT_Z_BITS = 4


def lower(graph: Graph, *, pes: int = DEFAULT_PES, v_bits: int = DEFAULT_V_BITS,
          z_bits: int = DEFAULT_Z_BITS, widen: bool = False) -> Program:
    """Lower ``graph`` to an EIE program. A layer with more than ``2**v_bits`` clusters is
    refused, or (``widen=True``) gets just enough index bits, with a warning."""
    if pes < 1:
        raise BackendError(f"eie: option 'pes' must be at least 1, got {pes}")
    if not 1 <= v_bits <= 16:
        raise BackendError(f"eie: option 'v_bits' must be 1..16, got {v_bits}")
    if not 2 <= z_bits <= 8:
        raise BackendError(f"eie: option 'z_bits' must be 2..8, got {z_bits}")
    for node in graph.nodes:
        if node.op not in ("Gemm", "MatMul", "Add", "Relu") or node.domain not in ("", "ai.onnx"):
            raise BackendError(f"eie: cannot run {node.describe()}: " + (
                "convolutions are refused for now (no im2col lowering yet)" if "Conv" in node.op
                else "only Gemm/MatMul layers (each optionally followed by Relu) are supported"))
    if len(graph.inputs) != 1 or graph.inputs[0].rank != 2:
        raise BackendError("eie: the graph must have exactly one rank-2 input (batch, features), "
                           f"got {[repr(v) for v in graph.inputs]}")
    if len(graph.outputs) != 1:
        raise BackendError(f"eie: the graph must have exactly one output, got {len(graph.outputs)}")
    source = graph.inputs[0]
    program = Program([Load(source.name, "a0", _static_dim(source.shape[1], source.name))])
    buffers = {id(source): "a0"}
    fused = set()
    for node in graph.nodes:
        if id(node) in fused:
            continue
        if node.op in ("Add", "Relu"):
            raise BackendError(f"eie: cannot run {node.describe()}: an Add of a constant bias "
                               "or a Relu must directly follow a Gemm/MatMul layer whose output "
                               "has no other use")
        src = node.inputs[0]
        if id(src) not in buffers:
            raise BackendError(f"eie: cannot run {node.describe()}: its input {src.name!r} "
                               "is not the graph input or a previous layer's output")
        out = node.output
        add = _sole_user(graph, out, "Add")
        if add is not None and _constant_operand(add, out) is None:
            add = None
        if add is not None:
            fused.add(id(add))
            out = add.output
        relu = _sole_user(graph, out, "Relu")
        if relu is not None:
            fused.add(id(relu))
            out = relu.output
        dst = f"a{len(buffers)}"
        program.instructions.append(_lower_layer(node, add, buffers[id(src)], dst, relu is not None,
                                                 pes, v_bits, z_bits, widen))
        buffers[id(out)] = dst
    result = graph.outputs[0]
    if id(result) not in buffers or result is source:
        raise BackendError(f"eie: the graph output {result.name!r} is not produced by a layer")
    program.instructions.append(Store(buffers[id(result)], result.name))
    return program


def _static_dim(dim, name: str) -> int:
    if not isinstance(dim, int):
        raise BackendError(f"eie: the feature size of {name!r} must be a known integer, got {dim!r}")
    return dim


def _sole_user(graph: Graph, value, op: str):
    """The node using ``value`` if it is the only user, of type ``op``, and ``value`` is not
    a graph output; else None."""
    users = value.users
    if len(users) == 1 and users[0].op == op and not graph.is_output(value):
        return users[0]
    return None


def _constant_operand(add: Node, value):
    """The constant other operand of ``add`` (the one that is not ``value``), or None."""
    others = [v for v in add.inputs if v is not value]
    if len(others) == 1 and others[0] is not None and others[0].const is not None:
        return others[0]
    return None


def _as_row_bias(array: np.ndarray, rows: int, node: Node, what: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim > 1:
        raise BackendError(f"eie: cannot run {node.describe()}: {what} of shape {array.shape} "
                           f"does not broadcast to ({rows},)")
    try:
        return np.broadcast_to(array, (rows,))
    except ValueError:
        raise BackendError(f"eie: cannot run {node.describe()}: {what} of shape {array.shape} "
                           f"does not broadcast to ({rows},)") from None


def _layer_operands(node: Node):
    """(weight codes as rows x cols, codebook, bias) of a Gemm/MatMul, W the out x in matrix."""
    weight = node.inputs[1]
    if weight is None or weight.const is None:
        raise BackendError(f"eie: cannot run {node.describe()}: its weight is not a constant")
    if not isinstance(weight.const, Clustered):
        raise BackendError(f"eie: cannot run {node.describe()}: weight {weight.name!r} is not "
                           "clustered (run the cluster pass first)")
    if len(weight.shape) != 2 or node.inputs[0].rank != 2:
        raise BackendError(f"eie: cannot run {node.describe()}: only rank-2 activations and "
                           "weights are supported")
    codes = np.asarray(weight.const.indices)
    codebook = np.asarray(weight.const.codebook, dtype=np.float64)
    bias = None
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            raise BackendError(f"eie: cannot run {node.describe()}: transA=1 is not supported")
        if not node.attrs.get("transB", 0):
            codes = codes.T
        # alpha scales every weight, so it scales the shared weights exactly once each.
        codebook = codebook * float(node.attrs.get("alpha", 1.0))
        bias_value = node.input(2)
        if bias_value is not None:
            if bias_value.const is None:
                raise BackendError(f"eie: cannot run {node.describe()}: its bias is not a constant")
            bias = np.asarray(bias_value.const.to_numpy(), dtype=np.float64)
            bias = bias * float(node.attrs.get("beta", 1.0))
    else:
        codes = codes.T
    rows = codes.shape[0]
    bias = np.zeros(rows) if bias is None else _as_row_bias(bias, rows, node, "bias")
    return codes, codebook, bias


def _lower_layer(node: Node, add, src: str, dst: str, relu: bool, pes: int, v_bits: int,
                 z_bits: int, widen: bool) -> SpMV:
    codes, codebook, bias = _layer_operands(node)
    if add is not None:
        extra = _constant_operand(add, node.output).const.to_numpy()
        bias = bias + _as_row_bias(extra, len(bias), add, "the added constant")
    clusters = len(codebook)
    if clusters > (1 << v_bits):
        needed = int(np.ceil(np.log2(clusters)))
        if not widen:
            raise BackendError(f"eie: cannot run {node.describe()}: {clusters} clusters do not fit "
                               f"{v_bits}-bit weight indices (cluster with bits<={v_bits}, or "
                               "lower with widen=True)")
        warnings.warn(f"eie: {node.describe()} has {clusters} clusters; weight indices widened "
                      f"from {v_bits} to {needed} bits", stacklevel=3)
        v_bits = needed
    rows, cols = codes.shape
    table = np.zeros(1 << v_bits, dtype=np.float32)
    table[:clusters] = codebook
    pe_ptr, col_ptr, code, rel = encode_csc(codes, pes, z_bits)
    return SpMV(node.name, src, dst, rows, cols, pes, v_bits, z_bits, relu, table,
                np.asarray(bias, dtype=np.float32), pe_ptr, col_ptr, code, rel)


def encode_csc(codes: np.ndarray, pes: int, z_bits: int):
    """Interleaved CSC streams of a (rows, cols) code matrix (-1 = pruned): returns
    ``pe_ptr`` (pes+1), ``col_ptr`` (pes, cols+1), ``code`` and ``rel`` per entry."""
    rows, cols = codes.shape
    filler = (1 << z_bits) - 1
    row, col = np.nonzero(codes >= 0)
    pe = row % pes
    local = row // pes
    order = np.lexsort((local, col, pe))
    row, col, pe, local = row[order], col[order], pe[order], local[order]
    # The previous stored row in the same (PE, column) group, -1 at a group's start.
    previous = np.empty_like(local)
    previous[:1] = -1
    previous[1:] = local[:-1]
    group_start = np.ones(local.size, dtype=bool)
    group_start[1:] = (pe[1:] != pe[:-1]) | (col[1:] != col[:-1])
    previous[group_start] = -1
    gap = local - previous - 1
    fillers = gap // filler
    per_weight = fillers + 1
    last = np.cumsum(per_weight) - 1  # each weight's own entry comes after its fillers
    total = int(per_weight.sum())
    rel = np.full(total, filler, dtype=np.uint8)
    code = np.zeros(total, dtype=np.uint16)
    rel[last] = gap % filler
    code[last] = codes[row, col]
    counts = np.bincount(pe * cols + col, weights=per_weight, minlength=pes * cols)
    counts = counts.astype(np.int64).reshape(pes, cols)
    col_ptr = np.zeros((pes, cols + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=col_ptr[:, 1:])
    pe_ptr = np.zeros(pes + 1, dtype=np.int64)
    np.cumsum(col_ptr[:, -1], out=pe_ptr[1:])
    return pe_ptr, col_ptr, code, rel
