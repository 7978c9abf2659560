"""circ :class:`~circ.graph.Graph` -> ONNX.

:func:`to_model_proto` builds a ``ModelProto`` at the graph's opsets; :func:`save_onnx` writes
it atomically (see :mod:`circ.fileio`). The result passes
``onnx.checker.check_model(model, full_check=True)`` for graphs circ imported or built from
known ops.

- Inputs, value_info and outputs carry dtype and shape (symbolic dims as ``dim_param``,
  unknown dims left empty). Values whose type circ cannot hold get back the ``TypeProto`` the
  importer kept in ``graph.meta['value_types']``.
- Constants become initializers from ``Tensor.to_numpy()``: pruned, clustered and quantized
  tensors are written as the float arrays they stand for (QDQ export is a later step).
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

# Protobuf refuses to serialize a message of 2 GiB or more; leave room for the graph itself.
PROTOBUF_LIMIT = 2**31 - 64 * 2**20
# Below this size a tensor stays inside the model even when external data is used.
EXTERNAL_MIN_BYTES = 1024
DEFAULT_PRODUCER = "circ"


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

    def model(self) -> onnx.ModelProto:
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
