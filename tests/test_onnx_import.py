"""ONNX import: round trips through export, opsets, external data, and malformed files."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import circ
from circ.errors import ModelError
from circ.interpreter import Interpreter
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto, implicit_inputs, load_onnx
from circ.verifier import verify

NEWEST = onnx.defs.onnx_opset_version()
F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), *, opset=17, value_info=(), extra_opsets=(),
               ir_version=None, **model_fields) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers),
                              value_info=list(value_info))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=imports, **model_fields)
    model.ir_version = ir_version or helper.find_min_ir_version_for(imports, ignore_unknown=True)
    if model.ir_version < 4:  # IR 3 lists every initializer as a graph input too
        listed = {v.name for v in model.graph.input}
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                           for t in initializers if t.name not in listed)
    return model


def save(tmp_path, model, name="model.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def signature(graph):
    """What a round trip must keep: nodes with attributes, constants, types of every value."""

    def attr(value):
        if isinstance(value, np.ndarray):
            return ("array", value.dtype.str, value.shape, value.tobytes())
        if isinstance(value, list):
            return tuple(attr(v) for v in value)
        return (type(value).__name__, value)

    nodes = [(n.op, n.domain, n.name, tuple(None if v is None else v.name for v in n.inputs),
              tuple(v.name for v in n.outputs), tuple(sorted((k, attr(v)) for k, v in n.attrs.items())),
              tuple(sorted((k, a.SerializeToString()) for k, a in n.raw_attrs.items())))
             for n in graph.nodes]
    consts = sorted((v.name, attr(v.numpy())) for v in graph.consts.values())
    types = sorted((v.name, str(v.dtype), v.shape) for v in graph.values())
    return (nodes, consts, types, [v.name for v in graph.inputs], [v.name for v in graph.outputs],
            dict(graph.opsets))


def round_trip(graph):
    """Export, check with onnx's full checker, import again."""
    model = to_model_proto(graph)
    onnx.checker.check_model(model, full_check=True)
    return from_model_proto(model)


def run_onnxruntime(model, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# ----------------------------------------------------------------------------- round trips


def _custom_node():
    """A custom-domain node carrying every attribute type circ turns into Python values, plus
    the ones it keeps raw (a subgraph, an empty list whose element type only the proto knows)."""
    body = helper.make_graph([helper.make_node("Identity", ["inner_in"], ["inner_out"])], "body",
                             [helper.make_tensor_value_info("inner_in", F, [2])],
                             [helper.make_tensor_value_info("inner_out", F, [2])])
    empty_floats = helper.make_attribute("empty", [], attr_type=onnx.AttributeProto.FLOATS)
    node = helper.make_node(
        "Fancy", ["x"], ["y"], name="fancy", domain="com.example",
        count=3, ratio=0.25, mode="same", pads=[1, 2, 3, 4], scales=[0.5, 2.0], names=["a", "bé"],
        table=numpy_helper.from_array(np.arange(6, dtype=np.int64).reshape(2, 3)),
        pair=[numpy_helper.from_array(np.ones(2, np.float32)), numpy_helper.from_array(np.zeros((), np.int32))],
        body=body)
    node.attribute.append(empty_floats)
    return node


def test_attributes_become_python_values_and_round_trip():
    node = _custom_node()
    model = make_model([node], [helper.make_tensor_value_info("x", F, ["N", 2])],
                       [helper.make_tensor_value_info("y", F, ["N", 2])],
                       extra_opsets=[("com.example", 1)])
    graph = from_model_proto(model)
    fancy = graph.node("fancy")
    assert fancy.domain == "com.example" and fancy.opset == 1
    assert fancy.attrs["count"] == 3 and isinstance(fancy.attrs["count"], int)
    assert fancy.attrs["ratio"] == 0.25 and isinstance(fancy.attrs["ratio"], float)
    assert fancy.attrs["mode"] == "same"
    assert fancy.attrs["pads"] == [1, 2, 3, 4]
    assert fancy.attrs["scales"] == [0.5, 2.0]
    assert fancy.attrs["names"] == ["a", "bé"]
    np.testing.assert_array_equal(fancy.attrs["table"], np.arange(6).reshape(2, 3))
    assert fancy.attrs["table"].dtype == np.int64
    assert [a.dtype for a in fancy.attrs["pair"]] == [np.float32, np.int32]
    assert fancy.attrs["pair"][1].shape == ()
    assert set(fancy.raw_attrs) == {"body", "empty"}
    # Opaque op: the output type comes from the declared graph output.
    assert graph.outputs[0].shape == ("N", 2) and graph.outputs[0].dtype == np.float32

    again = round_trip(graph)
    assert signature(again) == signature(graph)
    exported = {a.name: a for a in to_model_proto(again).graph.node[0].attribute}
    assert exported["empty"].type == onnx.AttributeProto.FLOATS
    assert exported["ratio"].type == onnx.AttributeProto.FLOAT
    assert exported["count"].type == onnx.AttributeProto.INT


def test_if_node_with_outer_scope_reference_kept_opaque_and_runs():
    then_graph = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["then_out"])], "then", [],
                                   [helper.make_tensor_value_info("then_out", F, [2, 3])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["else_out"])], "else", [],
                                   [helper.make_tensor_value_info("else_out", F, [2, 3])])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=then_graph,
                         else_branch=else_graph),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, [2, 3])],
                       [helper.make_tensor_value_info("y", F, [2, 3])],
                       [numpy_helper.from_array(np.float32(0.0).reshape(()), "zero"),
                        numpy_helper.from_array(np.full((2, 3), 10, np.float32), "bias")], opset=13)
    graph = from_model_proto(model)
    branch = graph.node("branch")
    assert set(branch.raw_attrs) == {"then_branch", "else_branch"} and not branch.attrs
    assert implicit_inputs(branch) == {"x", "bias"}
    assert implicit_inputs(graph.node("branch")) >= {v.name for v in graph.consts.values() if not v.uses}
    assert graph.outputs[0].shape == (2, 3)
    again = round_trip(graph)
    assert signature(again) == signature(graph)
    for sign in (1, -1):
        x = sign * np.arange(1, 7, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(run_onnxruntime(to_model_proto(again), {"x": x})[0],
                                      run_onnxruntime(model, {"x": x})[0])


def _runnable_model(opset):
    """A small CNN whose argument conventions change across opsets (Squeeze axes, ReduceMean)."""
    rng = np.random.default_rng(opset)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.float32([0.1, -0.2, 0.3, 0.0]), "b"),
             numpy_helper.from_array(np.int64([0, 4, 1]), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("LeakyRelu", ["c"], ["r"], alpha=0.1),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1])]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.int64([3]), "axes"))
        nodes.append(helper.make_node("ReduceMean", ["t", "axes"], ["m"], keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceMean", ["t"], ["m"], axes=[3], keepdims=1))
    if opset >= 13:
        inits.append(numpy_helper.from_array(np.int64([3]), "sq_axes"))
        nodes.append(helper.make_node("Squeeze", ["m", "sq_axes"], ["s"]))
    else:
        nodes.append(helper.make_node("Squeeze", ["m"], ["s"], axes=[3]))
    nodes.append(helper.make_node("Flatten", ["s"], ["y"], axis=1))
    return make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                      [helper.make_tensor_value_info("y", F, ["N", 16])], inits, opset=opset)


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, NEWEST])
def test_round_trip_across_opsets_matches_onnxruntime(opset):
    model = _runnable_model(opset)
    graph = from_model_proto(model)
    verify(graph)
    assert graph.opset == opset
    assert graph.inputs[0].shape == ("N", 3, 8, 8)
    assert graph.value("c").shape == ("N", 4, 4, 4)
    again = round_trip(graph)
    assert signature(again) == signature(graph)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = run_onnxruntime(model, {"x": x})[0]
    np.testing.assert_allclose(run_onnxruntime(to_model_proto(again), {"x": x})[0], expected, rtol=1e-6)
    np.testing.assert_allclose(Interpreter(again).run({"x": x})["y"], expected, rtol=1e-4, atol=1e-6)


def test_dims_symbolic_unknown_and_unknown_rank():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Custom", ["x"], ["z"], domain="my.ops"),
             helper.make_node("Custom", ["z"], ["w"], domain="my.ops")]
    # onnx's checker wants a shape on graph inputs and outputs, so unknown rank is tested inside.
    z_type = helper.make_tensor_value_info("z", F, None)
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, ["batch", None, 4])],
                       [helper.make_tensor_value_info("y", F, ["batch", None, 4]),
                        helper.make_tensor_value_info("w", TensorProto.INT64, [])],
                       value_info=[z_type], extra_opsets=[("my.ops", 2)])
    graph = from_model_proto(model)
    assert graph.inputs[0].shape == ("batch", None, 4)
    assert graph.value("y").shape == ("batch", None, 4)
    assert graph.value("z").dtype == np.float32 and graph.value("z").shape is None
    assert graph.value("w").dtype == np.int64 and graph.value("w").shape == ()
    again = round_trip(graph)
    assert signature(again) == signature(graph)
    dims = to_model_proto(again).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and not dims[1].HasField("dim_value") and not dims[1].dim_param


def test_ir3_initializers_listed_as_inputs_become_constants():
    weight = numpy_helper.from_array(np.float32([[1, 2], [3, 4]]), "w")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", F, [1, 2]), helper.make_tensor_value_info("w", F, [2, 2])],
                       [helper.make_tensor_value_info("y", F, [1, 2])], [weight], opset=7, ir_version=3)
    graph = from_model_proto(model)
    assert [v.name for v in graph.inputs] == ["x"]
    assert "w" in graph.consts
    exported = to_model_proto(graph)
    assert exported.ir_version == 3
    assert {v.name for v in exported.graph.input} == {"x", "w"}  # IR 3 requires it
    assert signature(round_trip(graph)) == signature(graph)


def test_model_fields_functions_and_sequence_types_survive():
    function = helper.make_function(
        "local.fn", "AddTwice", ["a"], ["b"],
        [helper.make_node("Add", ["a", "a"], ["t"]), helper.make_node("Add", ["t", "a"], ["b"])],
        [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("AddTwice", ["x"], ["y"], domain="local.fn"),
             helper.make_node("SequenceConstruct", ["x", "y"], ["seq"])]
    seq_type = helper.make_tensor_sequence_value_info("seq", F, [2])
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, [2])],
                       [helper.make_tensor_value_info("y", F, [2]), seq_type],
                       extra_opsets=[("local.fn", 1)], producer_name="unit", producer_version="9.9",
                       doc_string="model doc", model_version=5, domain="org.test")
    model.functions.append(function)
    model.graph.doc_string = "graph doc"
    helper.set_model_props(model, {"author": "me", "license": "none"})
    graph = from_model_proto(model)
    assert graph.value("seq").dtype is None
    exported = to_model_proto(graph)
    onnx.checker.check_model(exported, full_check=True)
    for field in ("producer_name", "producer_version", "doc_string", "model_version", "domain", "ir_version"):
        assert getattr(exported, field) == getattr(model, field), field
    assert exported.graph.doc_string == "graph doc"
    assert {(p.key, p.value) for p in exported.metadata_props} == {("author", "me"), ("license", "none")}
    assert [f.SerializeToString() for f in exported.functions] == [function.SerializeToString()]
    assert exported.graph.output[1].type == seq_type.type
    x = np.float32([1, 2])
    np.testing.assert_array_equal(run_onnxruntime(exported, {"x": x})[0], 3 * x)


def test_nodes_out_of_order_are_sorted():
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="second"),
             helper.make_node("Neg", ["x"], ["a"], name="first")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, [3])],
                       [helper.make_tensor_value_info("y", F, [3])])
    graph = from_model_proto(model)
    assert [n.name for n in graph.nodes] == ["first", "second"]
    verify(graph)


def test_unnamed_and_colliding_node_names_are_made_unique():
    nodes = [helper.make_node("Neg", ["x"], ["neg"]), helper.make_node("Neg", ["neg"], ["y"], name="y")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, [3])],
                       [helper.make_tensor_value_info("y", F, [3])])
    graph = from_model_proto(model)
    assert [v.name for v in graph.outputs] == ["y"]  # value names are kept exactly
    names = [n.name for n in graph.nodes]
    assert len(set(names) | {"x", "neg", "y"}) == 5
    verify(graph)


def test_omitted_outputs_in_the_middle_get_placeholder_names():
    node = helper.make_node("Fancy", ["x"], ["", "b", ""], domain="com.example")
    model = make_model([node], [helper.make_tensor_value_info("x", F, [3])],
                       [helper.make_tensor_value_info("b", F, [3])], extra_opsets=[("com.example", 1)])
    graph = from_model_proto(model)
    outputs = graph.nodes[0].outputs
    assert len(outputs) == 2 and outputs[1].name == "b" and outputs[0].name
    assert signature(round_trip(graph)) == signature(graph)


# ----------------------------------------------------------------------------- files


def test_load_file_and_tensor_kinds(tmp_path):
    arrays = {"f16": np.float16([1.5, -2]), "b": np.array([True, False]), "u8": np.uint8([0, 255]),
              "i32": np.int32([-7, 7]), "f64": np.float64([[0.125]])}
    inits = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    # The same tensor in typed fields instead of raw_data.
    inits.append(helper.make_tensor("typed", F, [2, 2], [1.0, 2.0, 3.0, 4.0]))
    inits.append(helper.make_tensor("typed_f16", TensorProto.FLOAT16, [2], np.float16([0.5, 1])))
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in list(arrays) + ["typed", "typed_f16"]]
    outputs = [helper.make_tensor_value_info(n.output[0], t.data_type, t.dims) for n, t in zip(nodes, inits)]
    path = save(tmp_path, make_model(nodes, [], outputs, inits))
    graph = load_onnx(path)
    for name, array in arrays.items():
        got = graph.consts[name].numpy()
        assert got.dtype == array.dtype and got.flags.writeable
        np.testing.assert_array_equal(got, array)
    np.testing.assert_array_equal(graph.consts["typed"].numpy(), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(graph.consts["typed_f16"].numpy(), np.float16([0.5, 1]))
    assert signature(round_trip(graph)) == signature(graph)


def test_max_tensor_bytes_refuses_before_reading(tmp_path):
    inits = [numpy_helper.from_array(np.zeros(1000, np.float32), "big")]
    model = make_model([helper.make_node("Identity", ["big"], ["y"])], [],
                       [helper.make_tensor_value_info("y", F, [1000])], inits)
    path = save(tmp_path, model)
    assert "big" in load_onnx(path, max_tensor_bytes=4000).consts
    with pytest.raises(ModelError, match="limit of 3999 bytes"):
        load_onnx(path, max_tensor_bytes=3999)
    # A declared shape far beyond memory is refused from its declaration alone.
    model.graph.initializer.append(TensorProto(name="huge", data_type=F, dims=[1 << 20, 1 << 20]))
    with pytest.raises(ModelError, match="huge"):
        load_onnx(save(tmp_path, model, "huge.onnx"))


def _external_model(tmp_path):
    weight = np.arange(64, dtype=np.float32).reshape(8, 8)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", F, [1, 8])],
                       [helper.make_tensor_value_info("y", F, [1, 8])], [numpy_helper.from_array(weight, "w")])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(model, str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return folder / "m.onnx", weight


def _set_external(path, **fields):
    model = onnx.load(str(path), load_external_data=False)
    tensor = model.graph.initializer[0]
    entries = {e.key: e.value for e in tensor.external_data}
    entries.update({k: str(v) for k, v in fields.items()})
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())


def test_external_data_loads(tmp_path):
    path, weight = _external_model(tmp_path)
    graph = load_onnx(path)
    np.testing.assert_array_equal(graph.consts["w"].numpy(), weight)
    with pytest.raises(ModelError, match="no folder"):
        from_model_proto(onnx.load(str(path), load_external_data=False))
    assert from_model_proto(onnx.load(str(path), load_external_data=False), str(path.parent)).consts["w"]


@pytest.mark.parametrize("case", ["absolute", "climb", "symlink_out", "offset_past_end", "length_past_end",
                                  "missing", "short_length", "not_a_number"])
def test_external_data_refused(tmp_path, case):
    path, _ = _external_model(tmp_path)
    data = path.parent / "weights.bin"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(data.read_bytes())
    if case == "absolute":
        _set_external(path, location=str(data.resolve()))
    elif case == "climb":
        _set_external(path, location="../outside.bin")
    elif case == "symlink_out":
        os.symlink(outside, path.parent / "link.bin")
        _set_external(path, location="link.bin")
    elif case == "offset_past_end":
        _set_external(path, offset=8)
    elif case == "length_past_end":
        _set_external(path, length=257)
    elif case == "missing":
        _set_external(path, location="nothing.bin")
    elif case == "short_length":
        _set_external(path, length=16)
    elif case == "not_a_number":
        _set_external(path, offset="eight")
    with pytest.raises(ModelError) as info:
        load_onnx(path)
    assert str(path) in str(info.value) and "'w'" in str(info.value)


def test_symlink_inside_the_folder_is_allowed(tmp_path):
    path, weight = _external_model(tmp_path)
    os.rename(path.parent / "weights.bin", path.parent / "real.bin")
    os.symlink("real.bin", path.parent / "weights.bin")
    np.testing.assert_array_equal(load_onnx(path).consts["w"].numpy(), weight)


# ----------------------------------------------------------------------------- malformed input


def _valid_model():
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                      [helper.make_tensor_value_info("x", F, [2])], [helper.make_tensor_value_info("y", F, [2])],
                      [numpy_helper.from_array(np.float32([1, 2]), "c")])


def _with(mutate):
    model = _valid_model()
    mutate(model)
    return model


def _dup_output(m):
    m.graph.node.append(helper.make_node("Neg", ["x"], ["y"], name="again"))


def _dup_initializer(m):
    m.graph.initializer.append(numpy_helper.from_array(np.float32([3]), "c"))


def _dup_input(m):
    m.graph.input.append(helper.make_tensor_value_info("x", F, [2]))


def _undefined_input(m):
    m.graph.node.append(helper.make_node("Add", ["y", "ghost"], ["z"], name="adder"))


def _cycle(m):
    m.graph.node[0].input[0] = "z"
    m.graph.node.append(helper.make_node("Neg", ["y"], ["z"], name="loop"))


def _raw_length(m):
    m.graph.initializer[0].raw_data = b"\0" * 12


def _typed_count(m):
    m.graph.initializer.append(TensorProto(name="t", data_type=F, dims=[3], float_data=[1.0, 2.0]))


def _unknown_dtype(m):
    m.graph.initializer[0].data_type = 99


def _bfloat16(m):
    m.graph.initializer[0].data_type = TensorProto.BFLOAT16


def _opset(version):
    def mutate(m):
        m.opset_import[0].version = version
    return mutate


def _ir(version):
    def mutate(m):
        m.ir_version = version
    return mutate


def _dup_opset(m):
    m.opset_import.append(helper.make_opsetid("ai.onnx", 17))


def _no_default_opset(m):
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("com.x", 1))


def _undefined_output(m):
    m.graph.output.append(helper.make_tensor_value_info("nowhere", F, [2]))


def _no_outputs(m):
    del m.graph.output[:]


def _bad_shape(m):
    m.graph.node.append(helper.make_node("Add", ["y", "bad"], ["z"], name="misfit"))
    m.graph.initializer.append(numpy_helper.from_array(np.float32([1, 2, 3]), "bad"))


MALFORMED = {
    "duplicate output": (_dup_output, "'y' is defined twice"),
    "duplicate initializer": (_dup_initializer, "'c' is defined twice"),
    "duplicate input": (_dup_input, "'x' is defined twice"),
    "undefined input": (_undefined_input, "adder.*'ghost' is not defined"),
    "cycle": (_cycle, "cycle"),
    "raw data length": (_raw_length, "12 bytes of raw data"),
    "typed value count": (_typed_count, "has 2 values"),
    "unknown data type": (_unknown_dtype, "element type 99"),
    "bfloat16": (_bfloat16, "BFLOAT16 is not supported"),
    "opset 99": (_opset(99), "opset 99 is not supported"),
    "opset 6": (_opset(6), "opset 6 is not supported"),
    "opset 0": (_opset(0), "invalid"),
    "ir version 99": (_ir(99), "IR version 99"),
    "ir version 2": (_ir(2), "IR version 2"),
    "opset imported twice": (_dup_opset, "twice"),
    "no default opset": (_no_default_opset, "default ONNX opset"),
    "undefined output": (_undefined_output, "'nowhere' is not defined"),
    "shape rule fails": (_bad_shape, "misfit"),
    "no outputs": (_no_outputs, "the graph has no outputs"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_models_raise_model_error_naming_the_file(tmp_path, case):
    mutate, message = MALFORMED[case]
    path = save(tmp_path, _with(mutate))
    with pytest.raises(ModelError, match=message) as info:
        load_onnx(path)
    assert str(info.value).startswith(str(path))


def test_graph_without_outputs_is_refused_in_one_line(tmp_path):
    path = save(tmp_path, _with(_no_outputs))
    with pytest.raises(ModelError) as info:
        circ.load(path)
    assert str(info.value) == f"{path}: the graph has no outputs (nothing to compute)"


@pytest.mark.parametrize("content", [b"", b"\xff" * 64, b"not an onnx model at all\n",
                                     _valid_model().SerializeToString()[:-7]])
def test_garbage_files_raise_model_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_onnx(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match="no such file") as info:
        load_onnx(tmp_path / "absent.onnx")
    assert "absent.onnx" in str(info.value)
    with pytest.raises(ModelError, match="is a directory"):
        load_onnx(tmp_path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_never_raise_anything_but_model_error(tmp_path, data):
    """Random truncations and byte flips of a valid file either load or raise ModelError."""
    original = bytearray(_runnable_model(13).SerializeToString())
    cut = data.draw(st.integers(0, len(original)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=4))
    for position, byte in flips:
        original[position] = byte
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(bytes(original[:cut]))
    try:
        graph = load_onnx(path)
    except ModelError as err:
        assert str(path) in str(err)
    else:
        verify(graph, check_types=False)
