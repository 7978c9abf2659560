"""circ :class:`~circ.graph.Graph` -> ONNX.

:func:`to_model_proto` builds a ``ModelProto`` at the graph's opsets; :func:`save_onnx` writes
it atomically (see :mod:`circ.fileio`). The result passes
``onnx.checker.check_model(model, full_check=True)`` for graphs circ imported or built from
known ops.

- Inputs, value_info and outputs carry dtype and shape (symbolic dims as ``dim_param``,
  unknown dims left empty). Values whose type circ cannot hold get back the ``TypeProto`` the
  importer kept in ``graph.meta['value_types']``.
- Constants become initializers from ``Tensor.to_numpy()``: pruned and clustered tensors are
  written as the float arrays they stand for. A :class:`~circ.tensors.Quantized` constant
  with int8/uint8 integers and float32 scales is written as a QDQ pattern instead: the integer
  initializer ``<name>_quantized``, ``<name>_scale`` and ``<name>_zero_point`` (scalars, or
  1-D along ``axis`` per channel) and a ``DequantizeLinear`` node whose output keeps the
  constant's name, so the layers read it unchanged. Decoding is bit-identical to
  ``to_numpy()`` (an integer times a float32 scale is exact in float64, then rounded once).
- Opsets for QDQ: DequantizeLinear needs opset 10, per-axis scales opset 13. When the
  graph's default opset is lower (e.g. the opset-9 model zoo), the exported model is raised
  to opset 13 with ``onnx.version_converter``, which upgrades the nodes whose semantics
  changed (Dropout, Upsample -> Resize, Softmax, Unsqueeze, ...). The Q/DQ nodes of the graph
  (quant's activation pairs, which circ's IR runs at any opset with opset-13 semantics) and
  the quantized weights do not exist at the old opset, so they go through the converter as
  ``Identity`` placeholders and float initializers and are put in afterwards. The upgraded
  model drops ``value_info`` (types of the old opset) and lists no initializer as an input.
  The circ graph itself keeps its opset.
- Attributes are typed from the op's schema at the node's opset when onnx knows the op (so an
  int written where the schema wants a float, or an empty list, comes out right), else from
  the Python value. ``node.raw_attrs`` are written back unchanged.
- The IR version is the one the model came with, raised if the opsets need a newer one. IR
  version 3 requires every initializer to be listed as a graph input too, so it is.
- A model over protobuf's 2 GiB limit is written with external data (``external_data=True``
  forces it): tensors go to ``<file>.data`` next to the model.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from circ import dtypes
from circ.errors import ModelError
from circ.fileio import atomic_open, check_not_protected
from circ.graph import Graph, Node, Value
from circ.tensors import Quantized

# Protobuf refuses to serialize a message of 2 GiB or more; leave room for the graph itself.
PROTOBUF_LIMIT = 2**31 - 64 * 2**20
# Below this size a tensor stays inside the model even when external data is used.
EXTERNAL_MIN_BYTES = 1024
DEFAULT_PRODUCER = "circ"
QDQ_OPSET = 10  # QuantizeLinear / DequantizeLinear, per-tensor
QDQ_PER_AXIS_OPSET = 13  # per-axis scales (``axis`` attribute)
QDQ_BLOCKED_OPSET = 21  # blocked scales (``block_size`` attribute)
UPGRADE_OPSET = 13  # where a model too old for its QDQ nodes is raised to (at least)


def save_onnx(graph: Graph, path, *, external_data: Optional[bool] = None, protect=(),
              check: bool = False) -> None:
    """Write ``graph`` to ``path`` as ONNX, atomically.

    ``external_data``: None writes tensors externally only when the model would exceed
    protobuf's 2 GiB limit; True always (tensors of 1 KiB and more); False never (a model that
    is too large is refused). ``protect`` lists files that must not be overwritten (the
    input model). ``check`` runs ``onnx.checker`` (full check) before writing.
    """
    path = os.fspath(path)
    check_not_protected(path, protect)
    model = to_model_proto(graph)
    size = _tensor_bytes(model)
    if external_data is None:
        external_data = size > PROTOBUF_LIMIT
    if not external_data and size > PROTOBUF_LIMIT:
        raise ModelError(f"{path}: the model's tensors take {size} bytes, over protobuf's 2 GiB "
                         f"limit; save with external_data=True")
    if check:
        _check(model, path, external_data)
    if not external_data:
        payload = model.SerializeToString()
        with atomic_open(path, "wb", protect=protect) as handle:
            handle.write(payload)
        return
    # Two files cannot be replaced in one step: write the data first, then the model; if the
    # model cannot be written, a data file this call created is removed again.
    data_name = os.path.basename(path) + ".data"
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), data_name)
    check_not_protected(data_path, protect)
    data_existed = os.path.exists(data_path)
    with atomic_open(data_path, "wb") as handle:
        _move_to_external(model, handle, data_name)
    try:
        payload = model.SerializeToString()
        with atomic_open(path, "wb", protect=protect) as handle:
            handle.write(payload)
    except BaseException:
        if not data_existed:
            with contextlib.suppress(OSError):
                os.unlink(data_path)
        raise


def to_model_proto(graph: Graph) -> onnx.ModelProto:
    """The ONNX ModelProto of ``graph`` (all tensors inline)."""
    return _Exporter(graph).model()


class _Exporter:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.meta = graph.meta
        self.value_types = self.meta.get("value_types", {})
        # Quantized constants written as QDQ (name -> tensor), and the opset they need.
        self.quantized = {v.name: v.const for v in graph.consts.values() if _writes_qdq(v.const)}
        needed = _qdq_opset(graph, self.quantized)
        self.upgrade = max(needed, UPGRADE_OPSET) if needed > graph.opset else 0
        self.placeholders: dict[str, Node] = {}  # Q/DQ node name -> node, while upgrading

    def model(self) -> onnx.ModelProto:
        model = self.base_model()
        if self.upgrade:
            model = _raise_opset(model, self.upgrade)
            self.restore_placeholders(model)
        if self.quantized:
            self.write_quantized(model)
        return model

    def base_model(self) -> onnx.ModelProto:
        graph, meta = self.graph, self.meta
        opset_imports = [helper.make_opsetid(domain, version)
                         for domain, version in sorted(graph.opsets.items())]
        ir_version = max(int(meta.get("ir_version") or 0),
                         helper.find_min_ir_version_for(opset_imports, ignore_unknown=True))
        ir_version = min(ir_version, onnx.IR_VERSION)
        model = onnx.ModelProto(
            ir_version=ir_version,
            producer_name=meta.get("producer_name") or DEFAULT_PRODUCER,
            producer_version=meta.get("producer_version") or _circ_version(),
            domain=meta.get("domain", ""),
            model_version=int(meta.get("model_version", 0)),
            doc_string=meta.get("doc_string", ""),
        )
        model.opset_import.extend(opset_imports)
        for key, value in meta.get("metadata_props", []):
            model.metadata_props.add(key=key, value=value)
        for data in meta.get("functions", []):
            model.functions.add().ParseFromString(data)
        model.graph.CopyFrom(self.graph_proto(ir_version))
        return model

    def graph_proto(self, ir_version: int) -> onnx.GraphProto:
        graph = self.graph
        proto = onnx.GraphProto(name=graph.name, doc_string=self.meta.get("graph_doc_string", ""))
        for value in graph.inputs:
            proto.input.append(self.value_info(value))
        for value in graph.consts.values():
            proto.initializer.append(_tensor_proto(value.const.to_numpy(), value.name))
            if ir_version < 4:
                proto.input.append(self.value_info(value))
        outputs = {id(v) for v in graph.outputs}
        for node in graph.nodes:
            proto.node.append(self.node_proto(node))
            for value in node.outputs:
                if id(value) not in outputs and self.has_type(value):
                    proto.value_info.append(self.value_info(value))
        for value in graph.outputs:
            proto.output.append(self.value_info(value))
        return proto

    def has_type(self, value: Value) -> bool:
        return value.dtype is not None or value.name in self.value_types

    def value_info(self, value: Value) -> onnx.ValueInfoProto:
        info = onnx.ValueInfoProto(name=value.name)
        if value.dtype is None:
            if value.name in self.value_types:
                info.type.ParseFromString(self.value_types[value.name])
            return info
        tensor_type = info.type.tensor_type
        tensor_type.elem_type = dtypes.to_onnx(value.dtype)
        if value.shape is not None:
            tensor_type.shape.SetInParent()  # rank 0 still needs an (empty) shape
            for dim in value.shape:
                entry = tensor_type.shape.dim.add()
                if isinstance(dim, str):
                    entry.dim_param = dim
                elif dim is not None:
                    entry.dim_value = int(dim)
        return info

    def node_proto(self, node: Node) -> onnx.NodeProto:
        inputs = ["" if v is None else v.name for v in node.inputs]
        while inputs and not inputs[-1]:
            inputs.pop()
        if self.upgrade and _is_qdq_node(node):
            self.placeholders[node.name] = node
            return onnx.NodeProto(op_type="Identity", name=node.name, input=inputs[:1],
                                  output=[v.name for v in node.outputs])
        proto = onnx.NodeProto(op_type=node.op, name=node.name, domain=node.domain,
                               input=inputs, output=[v.name for v in node.outputs])
        schema = _schema(node)
        for name, value in node.attrs.items():
            kind = None
            if schema is not None and name in schema.attributes:
                kind = int(schema.attributes[name].type)
            proto.attribute.append(_attribute(name, value, kind, node))
        for name, raw in node.raw_attrs.items():
            proto.attribute.add().CopyFrom(raw)
        return proto


    # ------------------------------------------------------------------ QDQ
    def restore_placeholders(self, model: onnx.ModelProto) -> None:
        """Swap the Identity placeholders of Q/DQ nodes back for the real nodes."""
        upgrade, self.upgrade = self.upgrade, 0
        try:
            for proto in model.graph.node:
                node = self.placeholders.get(proto.name)
                if node is not None and proto.op_type == "Identity":
                    real = self.node_proto(node)
                    # The converter renames values it rebuilds (Upsample -> Resize outputs).
                    real.input[0] = proto.input[0]
                    real.output[0] = proto.output[0]
                    proto.CopyFrom(real)
        finally:
            self.upgrade = upgrade

    def write_quantized(self, model: onnx.ModelProto) -> None:
        """Replace the float initializers of quantized constants by integers, scale and zero
        point, decoded by a DequantizeLinear node placed first in the graph."""
        graph = model.graph
        taken = _names_in(graph)
        initializers, dequantizers = [], []
        for tensor_proto in graph.initializer:
            tensor = self.quantized.get(tensor_proto.name)
            if tensor is None:
                initializers.append(tensor_proto)
                continue
            name = tensor_proto.name
            q_name, scale_name, zp_name, node_name = (
                _fresh(f"{name}_{suffix}", taken)
                for suffix in ("quantized", "scale", "zero_point", "dequantize"))
            scale = np.asarray(tensor.scale, np.float32)
            zero_point = np.asarray(tensor.zero_point).astype(tensor.q.dtype)
            if tensor.axis is None:
                scale, zero_point = scale.reshape(()), zero_point.reshape(())
            else:
                scale, zero_point = scale.reshape(-1), zero_point.reshape(-1)
            initializers += [_tensor_proto(tensor.q, q_name), _tensor_proto(scale, scale_name),
                             _tensor_proto(zero_point, zp_name)]
            node = helper.make_node("DequantizeLinear", [q_name, scale_name, zp_name], [name],
                                    name=node_name)
            if tensor.axis is not None:
                node.attribute.append(helper.make_attribute("axis", int(tensor.axis)))
            dequantizers.append(node)
        nodes = dequantizers + list(graph.node)
        del graph.initializer[:]
        graph.initializer.extend(initializers)
        del graph.node[:]
        graph.node.extend(nodes)
        # An IR-3 model lists initializers as inputs too; a DequantizeLinear output must not be.
        inputs = [v for v in graph.input if v.name not in self.quantized]
        del graph.input[:]
        graph.input.extend(inputs)


def _writes_qdq(tensor) -> bool:
    """Whether a constant is exported as QDQ (int8/uint8 integers with float32 scales)."""
    return (isinstance(tensor, Quantized) and tensor.q.dtype in (np.int8, np.uint8)
            and tensor.float_dtype == np.float32)


def _is_qdq_node(node: Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op in ("QuantizeLinear", "DequantizeLinear")


def _qdq_opset(graph: Graph, quantized: dict) -> int:
    """The default-domain opset the QDQ parts of ``graph`` need (0 when it has none)."""
    needed = 0
    for tensor in quantized.values():
        needed = max(needed, QDQ_PER_AXIS_OPSET if tensor.axis is not None else QDQ_OPSET)
    for node in graph.nodes:
        if not _is_qdq_node(node):
            continue
        scale = node.input(1)
        if node.attrs.get("block_size"):
            needed = max(needed, QDQ_BLOCKED_OPSET)
        elif scale is not None and scale.shape and any(d != 1 for d in scale.shape):
            needed = max(needed, QDQ_PER_AXIS_OPSET)
        else:
            needed = max(needed, QDQ_OPSET)
    return needed


def _raise_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``model`` converted to default-domain opset ``target`` by onnx.version_converter."""
    from onnx import version_converter

    graph = model.graph
    old = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializer_names = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializer_names]
    del graph.input[:]
    graph.input.extend(inputs)
    # The converter copies the model a few times: large tensors wait outside as typed inputs.
    parked = [t for t in graph.initializer if len(t.raw_data) >= EXTERNAL_MIN_BYTES]
    parked_names = {t.name for t in parked}
    kept = [t for t in graph.initializer if t.name not in parked_names]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for tensor in parked:
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    # value_info holds types at the old opset (Dropout's mask was float before opset 10).
    del graph.value_info[:]
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as err:  # the converter raises bare RuntimeErrors and ValueErrors
        raise ModelError(f"QDQ export needs opset {target}: cannot raise the model from opset "
                         f"{old} ({err})") from None
    graph = converted.graph
    if old <= 10 < target:
        _fix_converted_resize(graph)
    del graph.value_info[:]  # what the converter inferred through the placeholders
    inputs = [v for v in graph.input if v.name not in parked_names]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(parked)
    ir_version = helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    converted.ir_version = min(max(converted.ir_version, ir_version), onnx.IR_VERSION)
    return converted


def _fix_converted_resize(graph: onnx.GraphProto) -> None:
    """Resize-10 (and Upsample, which the converter turns into it) maps output pixel ``x`` to
    input ``x / scale`` and picks the floor for nearest; from opset 11 the defaults are
    ``half_pixel`` and ``round_prefer_floor``, and the converter (onnx 1.2x) does not say
    otherwise. Spell the old behaviour out on every Resize that lacks it."""
    for node in graph.node:
        if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
            continue
        present = {a.name for a in node.attribute}
        if "coordinate_transformation_mode" not in present:
            node.attribute.append(helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
        if mode == b"nearest" and "nearest_mode" not in present:
            node.attribute.append(helper.make_attribute("nearest_mode", "floor"))


def _names_in(graph: onnx.GraphProto) -> set:
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    for node in graph.node:
        names.add(node.name)
        names.update(node.output)
    return names


def _fresh(base: str, taken: set) -> str:
    name, counter = base, 1
    while name in taken:
        name, counter = f"{base}_{counter}", counter + 1
    taken.add(name)
    return name


def _schema(node: Node):
    version = node.opset
    if not version:
        return None
    try:
        return onnx.defs.get_schema(node.op, version, node.domain)
    except onnx.defs.SchemaError:
        return None


def _attribute(name: str, value, kind: Optional[int], node: Node) -> onnx.AttributeProto:
    """An AttributeProto of ``kind`` (the schema's type), or of the type ``value`` suggests."""
    if kind in (None, AttributeProto.UNDEFINED):
        kind = _guess_kind(value)
        if kind is None:
            raise ModelError(f"{node.describe()}: cannot tell the ONNX type of attribute {name!r} "
                             f"(value {value!r})")
    attribute = AttributeProto(name=name, type=kind)
    try:
        if kind == AttributeProto.FLOAT:
            attribute.f = float(value)
        elif kind == AttributeProto.INT:
            attribute.i = int(value)
        elif kind == AttributeProto.STRING:
            attribute.s = _encode(value)
        elif kind == AttributeProto.TENSOR:
            attribute.t.CopyFrom(_tensor_proto(np.asarray(value)))
        elif kind == AttributeProto.FLOATS:
            attribute.floats.extend(float(v) for v in _as_list(value))
        elif kind == AttributeProto.INTS:
            attribute.ints.extend(int(v) for v in _as_list(value))
        elif kind == AttributeProto.STRINGS:
            attribute.strings.extend(_encode(v) for v in _as_list(value))
        elif kind == AttributeProto.TENSORS:
            attribute.tensors.extend(_tensor_proto(np.asarray(v)) for v in value)
        else:
            raise ModelError(f"{node.describe()}: attribute {name!r} of type "
                             f"{AttributeProto.AttributeType.Name(kind)} must be kept in raw_attrs")
    except (TypeError, ValueError) as err:
        raise ModelError(f"{node.describe()}: attribute {name!r} = {value!r} does not fit type "
                         f"{AttributeProto.AttributeType.Name(kind)} ({err})") from None
    return attribute


def _guess_kind(value) -> Optional[int]:
    if isinstance(value, (bool, int, np.integer)):
        return AttributeProto.INT
    if isinstance(value, (float, np.floating)):
        return AttributeProto.FLOAT
    if isinstance(value, (str, bytes)):
        return AttributeProto.STRING
    if isinstance(value, np.ndarray):
        return AttributeProto.TENSOR
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, (bool, int, np.integer)) for v in value):
            return AttributeProto.INTS
        if all(isinstance(v, (bool, int, float, np.integer, np.floating)) for v in value):
            return AttributeProto.FLOATS
        if all(isinstance(v, (str, bytes)) for v in value):
            return AttributeProto.STRINGS
        if all(isinstance(v, np.ndarray) for v in value):
            return AttributeProto.TENSORS
    return None


def _as_list(value) -> list:
    if isinstance(value, np.ndarray):
        return value.reshape(-1).tolist()
    return list(value)


def _encode(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _tensor_proto(array: np.ndarray, name: str = "") -> TensorProto:
    array = np.asarray(array)
    try:
        dtypes.to_onnx(array.dtype)
    except KeyError:
        raise ModelError(f"tensor {name!r}: dtype {array.dtype} cannot be written to ONNX") from None
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # not np.ascontiguousarray: it turns a 0-d array into 1-d
    return numpy_helper.from_array(array, name)


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _move_to_external(model: onnx.ModelProto, handle, location: str) -> None:
    """Write initializers of at least EXTERNAL_MIN_BYTES to ``handle``; point them there."""
    offset = 0
    for tensor in model.graph.initializer:
        data = tensor.raw_data
        if len(data) < EXTERNAL_MIN_BYTES:
            continue
        padding = -offset % 4096  # page-aligned, so readers may mmap each tensor
        handle.write(b"\0" * padding)
        offset += padding
        handle.write(data)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
            tensor.external_data.add(key=key, value=value)
        offset += len(data)


def _check(model: onnx.ModelProto, path: str, external_data: bool) -> None:
    if external_data:
        return  # the checker needs the data file on disk; the importer validates it on load
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ModelError(f"{path}: the exported model fails onnx.checker: {err}") from None


def _circ_version() -> str:
    from circ import __version__

    return __version__
