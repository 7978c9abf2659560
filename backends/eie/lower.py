"""Lowering: a pruned, clustered MLP or small CNN graph -> an EIE :class:`~backends.eie.isa.Program`.

Accepted graphs: one float input with known per-sample dims, one output, and in between:

- Gemm or MatMul layers with constant :class:`~circ.tensors.Clustered` weights on a
  (batch, features) activation, each optionally followed by an Add of a constant bias and
  then a Relu, each the only user of what it follows (both fused into the layer; exporters
  write a Linear as MatMul + Add) -> one :class:`SpMV`;
- Conv (2-D, group 1, any pads/strides/dilations/auto_pad) with a Clustered weight, likewise
  with its bias, a constant Add and a Relu fused -> :class:`Im2Col` (host gather of each
  output pixel's receptive field), :class:`SpMV` with the ``(C_out, C_in*kh*kw)`` weight matrix
  on every pixel, :class:`Unpatch` (back to image order);
- MaxPool, AveragePool (ceil_mode only when it changes nothing) and GlobalAveragePool ->
  a host :class:`Pool`;
- Flatten and Reshape to (batch, features) -> nothing (buffers are flat per sample already).

Everything else — other ops, grouped convolutions, branches, unclustered weights, more
clusters than ``2**v_bits`` — is refused with a :class:`~circ.errors.BackendError` naming the
node and why.
"""

from __future__ import annotations

import warnings

import numpy as np

from backends.eie.isa import Im2Col, Load, Pool, Program, SpMV, Store, Unpatch, Window
from circ.errors import BackendError, CircError
from circ.graph import Graph, Node
from circ.progress import track
from circ.tensors import Clustered

DEFAULT_PES = 64
DEFAULT_V_BITS = 4
DEFAULT_Z_BITS = 4
LAYER_OPS = ("Gemm", "MatMul", "Conv")
HOST_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape")
FUSED_OPS = ("Add", "Relu")


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
        if node.op not in LAYER_OPS + HOST_OPS + FUSED_OPS or node.domain not in ("", "ai.onnx"):
            raise BackendError(f"eie: cannot run {node.describe()}: only Gemm/MatMul/Conv layers "
                               "(each optionally followed by a bias Add and a Relu), pooling, "
                               "Flatten and Reshape are supported")
    if len(graph.inputs) != 1 or graph.inputs[0].shape is None or len(graph.inputs[0].shape) < 2:
        raise BackendError("eie: the graph must have exactly one input of shape (batch, ...), "
                           f"got {[repr(v) for v in graph.inputs]}")
    if len(graph.outputs) != 1:
        raise BackendError(f"eie: the graph must have exactly one output, got {len(graph.outputs)}")
    source = graph.inputs[0]
    dims = tuple(_static_dim(d, source.name) for d in source.shape[1:])
    program = Program([Load(source.name, "a0", dims)])
    lowering = _Lowering(graph, program, pes, v_bits, z_bits, widen)
    lowering.buffers[id(source)] = ("a0", dims)
    for node in track(graph.nodes, total=len(graph.nodes), desc="eie: lowering", unit="node"):
        if id(node) not in lowering.fused:
            lowering.node(node)
    result = graph.outputs[0]
    if id(result) not in lowering.buffers or result is source:
        raise BackendError(f"eie: the graph output {result.name!r} is not produced by a layer")
    buffer, dims = lowering.buffers[id(result)]
    program.instructions.append(Store(buffer, result.name, dims))
    return program


class _Lowering:
    """The state of one lowering: value -> (buffer, per-sample dims), fused nodes."""

    def __init__(self, graph, program, pes, v_bits, z_bits, widen):
        self.graph, self.program = graph, program
        self.pes, self.v_bits, self.z_bits, self.widen = pes, v_bits, z_bits, widen
        self.buffers: dict = {}
        self.fused: set = set()
        self.count = 0

    def new_buffer(self, prefix: str = "a") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def emit(self, instruction) -> None:
        self.program.instructions.append(instruction)

    def source(self, node: Node):
        src = node.inputs[0]
        if id(src) not in self.buffers:
            raise BackendError(f"eie: cannot run {node.describe()}: its input {src.name!r} "
                               "is not the graph input or a previous layer's output")
        return self.buffers[id(src)]

    def node(self, node: Node) -> None:
        if node.op in FUSED_OPS:
            raise BackendError(f"eie: cannot run {node.describe()}: an Add of a constant bias "
                               "or a Relu must directly follow a Gemm/MatMul/Conv layer whose "
                               "output has no other use")
        buffer, dims = self.source(node)
        if node.op in ("Gemm", "MatMul"):
            if len(dims) != 1:
                raise BackendError(f"eie: cannot run {node.describe()}: only rank-2 activations "
                                   "and weights are supported (Flatten images first)")
            add, relu, out = self.fusions(node)
            dst = self.new_buffer()
            self.emit(_lower_layer(node, add, buffer, dst, relu, self.pes, self.v_bits,
                                   self.z_bits, self.widen))
            self.buffers[id(out)] = (dst, (self.program.instructions[-1].rows,))
        elif node.op == "Conv":
            self.conv(node, buffer, dims)
        elif node.op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
            self.pool(node, buffer, dims)
        else:
            self.flatten(node, buffer, dims)

    def fusions(self, node: Node):
        """(bias Add or None, whether a Relu follows, the last fused value)."""
        out = node.output
        add = _sole_user(self.graph, out, "Add")
        if add is not None and _constant_operand(add, out) is None:
            add = None
        if add is not None:
            self.fused.add(id(add))
            out = add.output
        relu = _sole_user(self.graph, out, "Relu")
        if relu is not None:
            self.fused.add(id(relu))
            out = relu.output
        return add, relu is not None, out

    def conv(self, node: Node, buffer: str, dims: tuple) -> None:
        weight = node.inputs[1]
        if len(dims) != 3 or weight is None or weight.shape is None or len(weight.shape) != 4:
            raise BackendError(f"eie: cannot run {node.describe()}: only 2-D convolutions of "
                               "(batch, channels, height, width) images are supported")
        if node.attrs.get("group", 1) != 1:
            raise BackendError(f"eie: cannot run {node.describe()}: grouped convolutions "
                               "(group != 1) are not supported")
        window = self.window(node, dims, tuple(weight.shape[2:]))
        add, relu, out = self.fusions(node)
        patches, rows, dst = self.new_buffer("p"), self.new_buffer("q"), self.new_buffer()
        self.emit(Im2Col(buffer, patches, window))
        layer = _lower_layer(node, add, patches, rows, relu, self.pes, self.v_bits, self.z_bits,
                             self.widen)
        self.emit(layer)
        self.emit(Unpatch(rows, dst, window.positions))
        self.buffers[id(out)] = (dst, (layer.rows, window.out_height, window.out_width))

    def pool(self, node: Node, buffer: str, dims: tuple) -> None:
        if len(dims) != 3:
            raise BackendError(f"eie: cannot run {node.describe()}: only 2-D pooling of "
                               "(batch, channels, height, width) images is supported")
        if len(node.outputs) > 1 and node.outputs[1] is not None:
            raise BackendError(f"eie: cannot run {node.describe()}: MaxPool indices are not supported")
        if node.op == "GlobalAveragePool":
            window = Window(dims[0], dims[1], dims[2], dims[1:], (1, 1), (0, 0, 0, 0))
            kind, include_pad = "avg", True
        else:
            kernel = node.attrs.get("kernel_shape") or ()
            if len(kernel) != 2:
                raise BackendError(f"eie: cannot run {node.describe()}: only 2-D pooling windows "
                                   "are supported")
            window = self.window(node, dims, tuple(int(k) for k in kernel),
                                 ceil_mode=bool(node.attrs.get("ceil_mode", 0)))
            if node.op == "MaxPool" and node.attrs.get("storage_order", 0):
                raise BackendError(f"eie: cannot run {node.describe()}: storage_order=1 "
                                   "is not supported")
            kind = "max" if node.op == "MaxPool" else "avg"
            include_pad = bool(node.attrs.get("count_include_pad", 0))
        dst = self.new_buffer()
        self.emit(Pool(buffer, dst, kind, window, include_pad))
        self.buffers[id(node.outputs[0])] = (dst, (dims[0], window.out_height, window.out_width))

    def window(self, node: Node, dims: tuple, kernel: tuple, ceil_mode: bool = False) -> Window:
        from circ.ops.conv import window as onnx_window

        try:
            geometry = onnx_window(node, dims[1:], kernel, ceil_mode=ceil_mode)
            floor = onnx_window(node, dims[1:], kernel)
        except CircError as err:
            raise BackendError(f"eie: cannot run {node.describe()}: {err}") from None
        if geometry.out_dims != floor.out_dims:
            raise BackendError(f"eie: cannot run {node.describe()}: ceil_mode=1 adds a partial "
                               "window here, which is not supported")
        window = Window(dims[0], dims[1], dims[2], kernel, geometry.strides,
                        geometry.pads_begin + geometry.pads_end, geometry.dilations)
        problem = window.problem()
        if problem is not None:
            raise BackendError(f"eie: cannot run {node.describe()}: {problem}")
        return window

    def flatten(self, node: Node, buffer: str, dims: tuple) -> None:
        out = node.outputs[0]
        size = int(np.prod(dims, dtype=np.int64))
        source = node.inputs[0]
        if node.op == "Flatten" and node.attrs.get("axis", 1) != 1 or out.shape is None \
                or len(out.shape) != 2 or out.shape[1] != size or out.shape[0] != source.shape[0]:
            raise BackendError(f"eie: cannot run {node.describe()}: only a Flatten or Reshape "
                               f"of each sample to one row (batch, {size}) is supported")
        self.buffers[id(out)] = (buffer, (size,))


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


def _as_row_bias(array: np.ndarray, rows: int, node: Node, what: str,
                 image: bool = False) -> np.ndarray:
    """``array`` as one value per output row; for an ``image`` layer (Conv) a per-channel
    constant of shape (C, 1, 1) or (1, C, 1, 1)."""
    array = np.asarray(array, dtype=np.float64)
    if image:
        full = (1,) * (4 - array.ndim) + array.shape if array.ndim <= 4 else None
        if full is None or full[0] != 1 or full[2:] != (1, 1):
            raise BackendError(f"eie: cannot run {node.describe()}: {what} of shape {array.shape} "
                               "is not one value per channel")
        array = array.reshape(-1)
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
    codes = np.asarray(weight.const.indices)
    codebook = np.asarray(weight.const.codebook, dtype=np.float64)
    bias = None
    if node.op == "Conv":
        codes = codes.reshape(codes.shape[0], -1)  # (C_out, C_in*kh*kw): im2col's row order
        bias_value = node.input(2)
        if bias_value is not None:
            if bias_value.const is None:
                raise BackendError(f"eie: cannot run {node.describe()}: its bias is not a constant")
            bias = np.asarray(bias_value.const.to_numpy(), dtype=np.float64)
    elif len(weight.shape) != 2 or node.inputs[0].rank != 2:
        raise BackendError(f"eie: cannot run {node.describe()}: only rank-2 activations and "
                           "weights are supported")
    elif node.op == "Gemm":
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
        bias = bias + _as_row_bias(extra, len(bias), add, "the added constant",
                                   image=node.op == "Conv")
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
    name = node.name if node.name and node.name.isprintable() and not any(
        c.isspace() or c == "#" for c in node.name) else f"{node.op}_{dst}"
    return SpMV(name, src, dst, rows, cols, pes, v_bits, z_bits, relu, table,
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
