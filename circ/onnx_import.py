"""ONNX -> circ :class:`~circ.graph.Graph`.

:func:`load_onnx` reads a file, :func:`from_model_proto` converts an in-memory ``ModelProto``.
Everything wrong with the input — a file that is not ONNX, an unsupported opset, duplicate or
undefined names, a cycle, tensor data that does not match its shape, an external-data location
outside the model's folder — raises :class:`~circ.errors.ModelError` whose message starts with
the file name; no other exception escapes for bad input.

What the conversion does, in order:

1. Check the header: IR version 3..``onnx.IR_VERSION``, default-domain opset 7..newest,
   one import per domain.
2. Initializers become constants (:class:`~circ.tensors.Dense`). Graph inputs that are also
   initializers (IR version 3 models, such as the model zoo's) are constants, not inputs.
   External data is read here, never by onnx: a location must be relative, must stay inside
   the model's folder after resolving symlinks, and its offset/length must lie within the file.
3. Nodes keep their op, domain and attributes as plain Python values (ints, floats, decoded
   strings, lists, numpy arrays for tensors). Subgraph, sparse-tensor and type-proto
   attributes stay raw ``AttributeProto`` objects in ``node.raw_attrs``, written back unchanged
   on export. Unknown ops are opaque nodes whose output types come from ``value_info``.
4. Nodes out of order are sorted (an error names a node on a cycle); shape inference runs,
   and types the file declares fill in what the rules leave unknown.

Value names are kept exactly. Node names share one namespace with values in circ, so an unnamed
node is named after its op (``conv``, ``conv_1``, ...) and a node named like a value gets a
suffix. An omitted optional output between present ones gets a placeholder name; trailing
omitted outputs are dropped. Values that subgraph attributes (If/Loop bodies) read from the
outer scope are not uses in circ's IR; :func:`implicit_inputs` lists them for passes that
remove or rename values.

``graph.meta`` keeps what export needs to write the model back: ``ir_version``,
``producer_name``, ``producer_version``, ``domain``, ``model_version``, ``doc_string``,
``metadata_props`` (list of key/value pairs), ``graph_doc_string``, ``functions`` (serialized
``FunctionProto`` bytes) and ``value_types`` (name -> serialized ``TypeProto`` for values whose
type circ cannot hold: sequences, maps, element types NumPy lacks).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from circ import dtypes, limits
from circ.errors import CircError, ModelError
from circ.fileio import UnsafePathError, resolve_inside
from circ.graph import Graph
from circ.tensors import Dense

DEFAULT_MAX_TENSOR_BYTES = limits.DEFAULT_MAX_TENSOR_BYTES
MIN_OPSET = 7
MIN_IR_VERSION = 3

# Which repeated field of a TensorProto holds the values when raw_data is not used.
_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.INT32: "int32_data",
    TensorProto.INT16: "int32_data",
    TensorProto.INT8: "int32_data",
    TensorProto.UINT16: "int32_data",
    TensorProto.UINT8: "int32_data",
    TensorProto.BOOL: "int32_data",
    TensorProto.FLOAT16: "int32_data",
}

_RAW_ATTR_TYPES = {
    AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.SPARSE_TENSOR,
    AttributeProto.SPARSE_TENSORS, AttributeProto.TYPE_PROTO, AttributeProto.TYPE_PROTOS,
}
_LIST_FIELDS = {
    AttributeProto.FLOATS: "floats", AttributeProto.INTS: "ints", AttributeProto.STRINGS: "strings",
    AttributeProto.TENSORS: "tensors", AttributeProto.GRAPHS: "graphs",
    AttributeProto.SPARSE_TENSORS: "sparse_tensors", AttributeProto.TYPE_PROTOS: "type_protos",
}


def load_onnx(path, *, infer_shapes: bool = True,
              max_tensor_bytes: Optional[int] = None) -> Graph:
    """Read the ONNX file ``path`` into a Graph.

    ``infer_shapes`` runs circ's shape inference after import (off: only the types the file
    declares). ``max_tensor_bytes`` refuses any tensor whose declared size exceeds it, checked
    before anything is allocated or read (default: :func:`circ.limits.max_tensor_bytes`).
    """
    path = os.fspath(path)
    model = _read_model(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    return from_model_proto(model, base_dir, infer_shapes=infer_shapes,
                            max_tensor_bytes=max_tensor_bytes, source=path)


def from_model_proto(model: onnx.ModelProto, base_dir: Optional[str] = None, *,
                     infer_shapes: bool = True, max_tensor_bytes: Optional[int] = None,
                     source: Optional[str] = None, constants: Optional[dict] = None) -> Graph:
    """Convert an in-memory ``ModelProto``. ``base_dir`` is the folder external data is
    resolved against (a model with external data and no ``base_dir`` is refused);
    ``source`` names the model in error messages. ``constants`` (name -> Tensor) are
    initializers kept outside the proto (the ``.circ`` container): they become the graph's
    first constants, in that order, ahead of the proto's own initializers."""
    source = source or "<in-memory ONNX model>"
    if max_tensor_bytes is None:
        max_tensor_bytes = limits.max_tensor_bytes()
    importer = _Importer(model, base_dir, source, max_tensor_bytes)
    importer.constants = constants or {}
    try:
        return importer.build(infer_shapes)
    except CircError as err:
        message = str(err)
        if not message.startswith(source):
            message = f"{source}: {message}"
        raise ModelError(message) from None


def _read_model(path: str) -> onnx.ModelProto:
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, not an ONNX file")
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    try:
        return onnx.load(path, load_external_data=False)
    except OSError as err:
        raise ModelError(f"{path}: cannot read ({err.strerror or err})") from None
    except Exception as err:  # noqa: BLE001  protobuf raises DecodeError, RuntimeError, ... for bad bytes
        raise ModelError(f"{path}: not a valid ONNX file ({type(err).__name__}: {err})") from None


class _Importer:
    """One conversion; holds the model, where it came from, and the limits."""

    def __init__(self, model, base_dir, source, max_tensor_bytes):
        if not isinstance(model, onnx.ModelProto):
            raise TypeError(f"expected onnx.ModelProto, got {type(model).__name__}")
        self.model = model
        self.base_dir = base_dir
        self.source = source
        self.max_tensor_bytes = max_tensor_bytes
        self.constants: dict = {}

    # ------------------------------------------------------------------ the steps
    def build(self, infer_shapes: bool) -> Graph:
        model = self.model
        opsets = self._check_header()
        onnx_graph = model.graph
        if not onnx_graph.output:
            raise ModelError("the graph has no outputs (nothing to compute)")
        graph = Graph(name=onnx_graph.name or "main", opsets=opsets, meta=self._meta())
        declared = self._declared_types(graph)
        values = {}  # name -> Value

        def define(name, what):
            if not name:
                raise ModelError(f"{what} has an empty name")
            if name in values:
                raise ModelError(f"value name {name!r} is defined twice ({what})")

        if len(onnx_graph.sparse_initializer):
            raise ModelError(f"sparse initializer {onnx_graph.sparse_initializer[0].values.name!r} "
                             f"is not supported")
        initializer_names = set()
        for name, tensor in self.constants.items():
            define(name, f"constant {name!r}")
            values[name] = graph.add_const(name, tensor)
            initializer_names.add(name)
        for tensor in onnx_graph.initializer:
            define(tensor.name, f"initializer {tensor.name!r}")
            array = self.tensor_array(tensor, f"initializer {tensor.name!r}")
            values[tensor.name] = graph.add_const(tensor.name, Dense(array))
            initializer_names.add(tensor.name)
        for info in onnx_graph.input:
            if info.name in initializer_names:
                continue  # IR 3 lists initializers as inputs too: they are constants
            define(info.name, f"graph input {info.name!r}")
            dtype, shape = declared.get(info.name, (None, None))
            values[info.name] = graph.add_input(info.name, dtype, shape)

        all_names = set(values)
        for node_proto in onnx_graph.node:
            all_names.update(n for n in node_proto.output if n)
        nodes = []
        names = _Names(all_names)  # node names avoid every value name: they share one namespace
        for index, node_proto in enumerate(onnx_graph.node):
            what = _describe_proto(node_proto, index)
            out_names = list(node_proto.output)
            while out_names and not out_names[-1]:
                out_names.pop()  # trailing omitted optional outputs
            for k, name in enumerate(out_names):
                if not name:  # an omitted output between present ones needs a placeholder
                    name = names.fresh(f"{node_proto.op_type.lower()}_unused{k}")
                    out_names[k] = name
                define(name, f"output of {what}")
                values[name] = None  # reserved; the Value is created by add_node
            attrs, raw_attrs = self._attributes(node_proto, opsets, what)
            node_name = names.fresh(node_proto.name or node_proto.op_type.lower())
            node = graph.add_node(node_proto.op_type, [], attrs, outputs=out_names, name=node_name,
                                  domain=_domain(node_proto.domain), infer=False)
            node.raw_attrs = raw_attrs
            for value in node.outputs:
                values[value.name] = value
                value.dtype, value.shape = declared.get(value.name, (None, None))
            nodes.append((node, node_proto, what))

        for node, node_proto, what in nodes:
            for i, name in enumerate(node_proto.input):
                if not name:
                    graph.set_input(node, i, None)
                    continue
                if name not in values:
                    raise ModelError(f"{what}: input {i} {name!r} is not defined in the graph")
                graph.set_input(node, i, values[name])
        for info in onnx_graph.output:
            if info.name not in values:
                raise ModelError(f"graph output {info.name!r} is not defined in the graph")
            graph.outputs.append(values[info.name])

        if not _in_order(graph):
            graph.topological_sort()
        if infer_shapes:
            from circ.shape_inference import infer_shapes as run_inference

            run_inference(graph)
            _fill_declared(graph, declared)
        return graph

    def _check_header(self) -> dict:
        model = self.model
        _check_text(model)
        ir = model.ir_version
        if not model.HasField("graph") and ir == 0:
            raise ModelError("not an ONNX model (no IR version and no graph)")
        if not MIN_IR_VERSION <= ir <= onnx.IR_VERSION:
            raise ModelError(f"IR version {ir} is not supported (circ reads {MIN_IR_VERSION} to "
                             f"{onnx.IR_VERSION})")
        if not model.HasField("graph"):
            raise ModelError("the model has no graph")
        newest = onnx.defs.onnx_opset_version()
        opsets = {}
        for entry in model.opset_import:
            domain = _domain(entry.domain)
            if domain in opsets:
                raise ModelError(f"opset of domain {entry.domain or 'ai.onnx'!r} is imported twice")
            if entry.version < 1:
                raise ModelError(f"opset version {entry.version} of domain {entry.domain or 'ai.onnx'!r} is invalid")
            opsets[domain] = int(entry.version)
        if "" not in opsets:
            raise ModelError("the model imports no version of the default ONNX opset")
        if not MIN_OPSET <= opsets[""] <= newest:
            raise ModelError(f"ONNX opset {opsets['']} is not supported (circ reads opsets "
                             f"{MIN_OPSET} to {newest})")
        return opsets

    def _meta(self) -> dict:
        model = self.model
        return {
            "ir_version": int(model.ir_version),
            "producer_name": model.producer_name,
            "producer_version": model.producer_version,
            "domain": model.domain,
            "model_version": int(model.model_version),
            "doc_string": model.doc_string,
            "metadata_props": [(p.key, p.value) for p in model.metadata_props],
            "graph_doc_string": model.graph.doc_string,
            "functions": [f.SerializeToString() for f in model.functions],
            "value_types": {},
        }

    def _declared_types(self, graph: Graph) -> dict:
        """name -> (dtype, shape) from graph inputs, value_info and outputs; types circ
        cannot represent are kept whole in ``graph.meta['value_types']``."""
        declared = {}
        onnx_graph = self.model.graph
        for info in list(onnx_graph.input) + list(onnx_graph.value_info) + list(onnx_graph.output):
            if not info.HasField("type"):
                continue
            dtype, shape, representable = self._type(info.type, f"value {info.name!r}")
            if not representable:
                graph.meta["value_types"][info.name] = info.type.SerializeToString()
            old = declared.get(info.name)
            declared[info.name] = (dtype, shape) if old is None else _merge_types(old, (dtype, shape))
        return declared

    def _type(self, type_proto, what):
        """(dtype, shape, representable) of a TypeProto."""
        if type_proto.WhichOneof("value") != "tensor_type":
            return None, None, False
        tensor_type = type_proto.tensor_type
        code = tensor_type.elem_type
        if code not in TensorProto.DataType.values():
            raise ModelError(f"{what} has unknown element type {code}")
        dtype = dtypes.from_onnx(code) if dtypes.is_supported_onnx(code) else None
        representable = dtype is not None or code == TensorProto.UNDEFINED
        if not tensor_type.HasField("shape"):
            return dtype, None, representable
        shape = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param:
                shape.append(dim.dim_param)
            else:
                shape.append(None)
        return dtype, tuple(shape), representable

    # ------------------------------------------------------------------ tensors
    def tensor_array(self, tensor: TensorProto, what: str) -> np.ndarray:
        """The array of a TensorProto, validated against its shape and the size limit."""
        dtype = dtypes.from_onnx(tensor.data_type, what)
        dims = [int(d) for d in tensor.dims]
        if any(d < 0 for d in dims):
            raise ModelError(f"{what} has a negative dimension in shape {dims}")
        count = math.prod(dims)
        nbytes = count * dtype.itemsize
        if nbytes > self.max_tensor_bytes:
            raise ModelError(f"{what} declares {nbytes} bytes (shape {dims}), more than the limit "
                             f"of {self.max_tensor_bytes} bytes {limits.hint()}")
        if tensor.HasField("segment"):
            raise ModelError(f"{what} is a segment of a larger tensor, which is not supported")
        if tensor.data_location == TensorProto.EXTERNAL:
            raw = self._external_bytes(tensor, what, nbytes)
        elif tensor.HasField("raw_data"):
            raw = tensor.raw_data
        else:
            stored = len(getattr(tensor, _TYPED_FIELD[tensor.data_type]))
            if stored != count:
                raise ModelError(f"{what} has {stored} values but its shape {dims} needs {count}")
            try:
                return np.asarray(numpy_helper.to_array(tensor), dtype=dtype).reshape(dims)
            except (ValueError, TypeError) as err:
                raise ModelError(f"{what}: cannot decode ({err})") from None
        if len(raw) != nbytes:
            raise ModelError(f"{what} has {len(raw)} bytes of raw data but its shape {dims} and "
                             f"type {dtype} need {nbytes}")
        # ONNX stores raw data little-endian; astype also gives a writable native-order copy.
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(dims).astype(dtype)

    def _external_bytes(self, tensor: TensorProto, what: str, nbytes: int) -> bytes:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if self.base_dir is None:
            raise ModelError(f"{what} has external data ({location!r}) but no folder was given to "
                             f"resolve it against")
        try:
            path = resolve_inside(self.base_dir, location)
        except UnsafePathError as err:
            raise ModelError(f"{what}: external data refused: {err}") from None
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelError(f"{what}: external data offset/length are not integers") from None
        if not os.path.isfile(path):
            raise ModelError(f"{what}: external data file {location!r} does not exist in {self.base_dir}")
        size = os.path.getsize(path)
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(f"{what}: external data offset {offset} + length {length} lies outside "
                             f"{location!r} ({size} bytes)")
        if length != nbytes:
            raise ModelError(f"{what}: external data length {length} does not match the {nbytes} "
                             f"bytes its shape needs")
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read(length)
        except OSError as err:
            raise ModelError(f"{what}: cannot read external data {location!r} ({err.strerror or err})") from None
        if len(data) != length:
            raise ModelError(f"{what}: external data {location!r} ended early")
        return data

    # ------------------------------------------------------------------ attributes
    def _attributes(self, node_proto, opsets, what):
        attrs, raw = {}, {}
        schema = _schema(node_proto.op_type, _domain(node_proto.domain), opsets)
        for attribute in node_proto.attribute:
            name = attribute.name
            if not name:
                raise ModelError(f"{what} has an attribute without a name")
            if name in attrs or name in raw:
                raise ModelError(f"{what}: attribute {name!r} appears twice")
            kind = _attribute_type(attribute)
            if kind is None:
                raise ModelError(f"{what}: attribute {name!r} has no value")
            if kind in _RAW_ATTR_TYPES or attribute.ref_attr_name:
                raw[name] = attribute
                continue
            if kind in _LIST_FIELDS and not len(getattr(attribute, _LIST_FIELDS[kind])) \
                    and (schema is None or name not in schema.attributes):
                # An empty list does not say whether it held ints, floats or strings; without a
                # schema to tell export, keep the proto itself.
                raw[name] = attribute
                continue
            attrs[name] = self._attribute_value(attribute, kind, f"{what} attribute {name!r}")
        return attrs, raw

    def _attribute_value(self, attribute, kind, what):
        if kind == AttributeProto.FLOAT:
            return float(attribute.f)
        if kind == AttributeProto.INT:
            return int(attribute.i)
        if kind == AttributeProto.STRING:
            return _decode(attribute.s)
        if kind == AttributeProto.TENSOR:
            return self.tensor_array(attribute.t, what)
        if kind == AttributeProto.FLOATS:
            return [float(v) for v in attribute.floats]
        if kind == AttributeProto.INTS:
            return [int(v) for v in attribute.ints]
        if kind == AttributeProto.STRINGS:
            return [_decode(v) for v in attribute.strings]
        if kind == AttributeProto.TENSORS:
            return [self.tensor_array(t, f"{what}[{i}]") for i, t in enumerate(attribute.tensors)]
        raise ModelError(f"{what} has unknown attribute type {kind}")


def implicit_inputs(node) -> set:
    """Names of outer-scope values that ``node``'s subgraph attributes (If branches, Loop and
    Scan bodies, at any depth) read without declaring them: uses circ's IR does not link."""
    names: set = set()
    for attribute in node.raw_attrs.values():
        for subgraph in _subgraphs(attribute):
            names |= _free_names(subgraph)
    return names


def _subgraphs(attribute) -> list:
    if attribute.type == AttributeProto.GRAPH:
        return [attribute.g]
    if attribute.type == AttributeProto.GRAPHS:
        return list(attribute.graphs)
    return []


def _free_names(graph_proto) -> set:
    defined = {v.name for v in graph_proto.input} | {t.name for t in graph_proto.initializer}
    defined |= {t.values.name for t in graph_proto.sparse_initializer}
    free = set()
    for node_proto in graph_proto.node:
        free |= {name for name in node_proto.input if name and name not in defined}
        for attribute in node_proto.attribute:
            for subgraph in _subgraphs(attribute):
                free |= _free_names(subgraph) - defined
        defined |= set(node_proto.output)
    free |= {v.name for v in graph_proto.output if v.name not in defined}
    return free


def _check_text(message, path: str = "model") -> None:
    """Refuse string fields that are not UTF-8: protobuf hands them over as bytes, which
    would break every later step. Walks messages only; tensor payloads are never inspected."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            items = value if _is_repeated(field) else [value]
            if any(not isinstance(item, str) for item in items):
                raise ModelError(f"{path}.{field.name} is not valid UTF-8 text")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in (value if _is_repeated(field) else [value]):
                _check_text(item, f"{path}.{field.name}")


def _is_repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)  # newer protobuf; `label` is deprecated there
    return repeated if repeated is not None else field.label == field.LABEL_REPEATED


def _attribute_type(attribute) -> Optional[int]:
    """The attribute's type; very old files leave ``type`` unset, so fall back to the field
    that holds a value."""
    if attribute.type != AttributeProto.UNDEFINED:
        return attribute.type
    for field, kind in (("f", AttributeProto.FLOAT), ("i", AttributeProto.INT),
                        ("s", AttributeProto.STRING), ("t", AttributeProto.TENSOR),
                        ("g", AttributeProto.GRAPH)):
        if attribute.HasField(field):
            return kind
    for kind, field in _LIST_FIELDS.items():
        if len(getattr(attribute, field)):
            return kind
    return None


def _decode(data: bytes):
    """Attribute strings are UTF-8 text in practice; anything else stays bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _schema(op: str, domain: str, opsets: dict):
    version = opsets.get(domain)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(op, version, domain)
    except onnx.defs.SchemaError:
        return None


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _describe_proto(node_proto, index: int) -> str:
    name = f"{node_proto.name!r}" if node_proto.name else f"#{index} (unnamed)"
    return f"{node_proto.op_type} node {name}"


class _Names:
    """Fresh names: ``base``, else ``base_1``, ``base_2``, ... avoiding everything taken.
    Remembers the last suffix per base so thousands of unnamed Conv nodes stay linear."""

    def __init__(self, taken):
        self.taken = set(taken)
        self.next_suffix: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        name = base
        k = self.next_suffix.get(base, 1)
        while name in self.taken:
            name = f"{base}_{k}"
            k += 1
        self.next_suffix[base] = k
        self.taken.add(name)
        return name


def _in_order(graph: Graph) -> bool:
    seen = set()
    for node in graph.nodes:
        for value in node.inputs:
            if value is not None and value.producer is not None and id(value.producer) not in seen:
                return False
        seen.add(id(node))
    return True


def _merge_types(known, declared):
    """Combine two (dtype, shape) pairs: ``known`` wins, ``declared`` fills its unknowns."""
    dtype = known[0] if known[0] is not None else declared[0]
    shape_a, shape_b = known[1], declared[1]
    if shape_a is None:
        return dtype, shape_b
    if shape_b is None or len(shape_a) != len(shape_b):
        return dtype, shape_a
    return dtype, tuple(b if a is None else a for a, b in zip(shape_a, shape_b))


def _fill_declared(graph: Graph, declared: dict) -> None:
    """After inference, let the file's declared types fill what the rules left unknown."""
    for node in graph.nodes:
        for value in node.outputs:
            if value.name in declared:
                value.dtype, value.shape = _merge_types((value.dtype, value.shape), declared[value.name])
