"""ONNX export: the model-zoo graphs, attribute typing, compressed constants, atomic saving.

The onnx wheel's light model zoo ships one expected output per model and no input. onnx's
backend test runner (``onnx/backend/test/runner/__init__.py``, ``generate_dummy_data`` with
``random=False``) feeds ``arange(n).reshape(shape) / n`` as float32, and onnxruntime reproduces
the shipped ``*_output_0.pb`` exactly from that input, so the tests use it. Those models' weights
are ``ConstantOfShape`` fills, so the shipped softmax outputs are nearly uniform and would hide
wrong attributes; :func:`test_randomized_zoo_matches_onnxruntime` therefore also compares logits
against onnxruntime with seeded random weights (``zoo.randomize_weights``).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from circ.autodiff import Tape
from circ.errors import CircError, ModelError
from circ.fileio import FileWriteError
from circ.graph import Graph
from circ.interpreter import Interpreter
from circ.onnx_export import save_onnx, to_model_proto
from circ.onnx_import import from_model_proto, load_onnx
from circ.tensors import Clustered, Dense, Quantized
from circ.verifier import verify
from test_onnx_import import run_onnxruntime, signature
from zoo import light_model_path, light_model_names, randomize_weights

# Models whose NumPy run takes more than ~1.5 s on one core (224x224 convolutions).
SLOW_ZOO = {"bvlc_alexnet", "vgg19", "zfnet512", "densenet121", "inception_v2"}


def shipped_input(graph) -> dict:
    """The input onnx's backend runner feeds the light models (see the module docstring)."""
    feeds = {}
    for value in graph.inputs:
        count = int(np.prod(value.shape))
        feeds[value.name] = (np.arange(count).reshape(value.shape) / count).astype(np.float32)
    return feeds


def _zoo_params():
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_ZOO else name
            for name in light_model_names()]


@pytest.mark.parametrize("name", light_model_names())
def test_zoo_imports_exports_and_passes_the_checker(name):
    path = light_model_path(name)
    graph = load_onnx(path)
    verify(graph)
    assert all(v.shape is not None and None not in v.shape for v in graph.values()), "shapes inferred"
    model = to_model_proto(graph)
    onnx.checker.check_model(model, full_check=True)
    again = from_model_proto(model)
    assert signature(again) == signature(graph)


@pytest.mark.parametrize("name", _zoo_params())
def test_zoo_runs_to_the_shipped_output(name):
    path = light_model_path(name)
    graph = load_onnx(path)
    expected = numpy_helper.to_array(onnx.load_tensor(str(path).replace(".onnx", "_output_0.pb")))
    feeds = shipped_input(graph)
    final = graph.outputs[0].producer
    if final.op == "Softmax":
        # SqueezeNet's logits on this input are about 9.5e9 and lie within 2 float32 steps of
        # each other (a step is 1024 there): which of them comes out largest, and so the
        # shipped softmax, is decided by summation order. Compare what is well-conditioned:
        # the logits, against onnxruntime's.
        tape = Tape(graph)
        tape.run(feeds)
        logits = tape.array(final.inputs[0])
        if np.ptp(logits) <= 16 * np.spacing(np.abs(logits).max()):
            model = onnx.load(str(path))
            model.graph.output[0].name = final.inputs[0].name
            del model.graph.node[-1]
            (reference,) = run_onnxruntime(model, feeds)
            np.testing.assert_allclose(logits, reference.reshape(logits.shape), rtol=1e-4)
            return
    got = Interpreter(graph).run(feeds)[graph.outputs[0].name]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1"])
def test_randomized_zoo_matches_onnxruntime(name):
    model = randomize_weights(onnx.load(str(light_model_path(name))), seed=1)
    graph = from_model_proto(model)
    exported = to_model_proto(graph)
    onnx.checker.check_model(exported, full_check=True)
    feeds = {v.name: np.random.default_rng(2).standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    expected = run_onnxruntime(model, feeds)
    for value, want in zip(graph.outputs, run_onnxruntime(exported, feeds)):
        assert np.array_equal(want, expected[[v.name for v in graph.outputs].index(value.name)])
    got = Interpreter(graph).run(feeds)
    for value, want in zip(graph.outputs, expected):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got[value.name], want, rtol=1e-4, atol=1e-5 * scale, err_msg=value.name)


# ----------------------------------------------------------------------------- graphs built in circ


def _small_graph(opset=17):
    graph = Graph(opsets={"": opset})
    x = graph.add_input("x", np.float32, ("N", 4))
    w = graph.add_const("w", np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    matmul = graph.add_node("MatMul", [x, w], name="mm")
    act = graph.add_node("LeakyRelu", [matmul.output], {"alpha": 1}, name="act")  # int where float is due
    graph.outputs.append(act.output)
    return graph


def test_attributes_are_typed_from_the_schema():
    graph = _small_graph()
    model = to_model_proto(graph)
    onnx.checker.check_model(model, full_check=True)
    alpha = model.graph.node[1].attribute[0]
    assert alpha.type == onnx.AttributeProto.FLOAT and alpha.f == 1.0
    assert [v.name for v in model.graph.value_info] == ["mm_out"]
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_numpy_values_and_empty_lists():
    graph = Graph(opsets={"": 17, "com.example": 1})
    x = graph.add_input("x", np.float32, (1, 2, 5, 5))
    conv = graph.add_node("Conv", [x, graph.add_const("w", np.ones((2, 2, 1, 1), np.float32))],
                          {"strides": np.array([1, 1]), "group": np.int64(1)}, name="conv")
    custom = graph.add_node("Thing", [conv.output], {"k": np.int32(2), "scale": np.float32(0.5),
                                                     "mode": b"raw", "sizes": (1, 2), "mix": [1, 2.5]},
                            domain="com.example", name="thing")
    custom.output.dtype, custom.output.shape = np.dtype(np.float32), (1, 2, 5, 5)
    scalar = graph.add_input("s", np.float32, ())
    transpose = graph.add_node("Transpose", [scalar], {"perm": []}, name="transpose")  # the schema types []
    graph.outputs.extend([custom.output, transpose.output])
    model = to_model_proto(graph)
    onnx.checker.check_model(model, full_check=True)
    conv_attrs = {a.name: a for a in model.graph.node[0].attribute}
    assert conv_attrs["strides"].type == onnx.AttributeProto.INTS and list(conv_attrs["strides"].ints) == [1, 1]
    assert conv_attrs["group"].type == onnx.AttributeProto.INT
    perm = model.graph.node[2].attribute[0]
    assert perm.type == onnx.AttributeProto.INTS and not perm.ints
    thing = {a.name: helper.get_attribute_value(a) for a in model.graph.node[1].attribute}
    assert thing == {"k": 2, "scale": 0.5, "mode": b"raw", "sizes": [1, 2], "mix": [1.0, 2.5]}
    assert from_model_proto(model).node("transpose").attrs == {"perm": []}


def test_attribute_without_a_type_is_a_model_error():
    graph = Graph(opsets={"": 17, "com.example": 1})
    x = graph.add_input("x", np.float32, (2,))
    node = graph.add_node("Thing", [x], {"options": {"a": 1}}, domain="com.example", name="thing")
    graph.outputs.append(node.output)
    with pytest.raises(ModelError, match="thing.*'options'"):
        to_model_proto(graph)


def test_compressed_constants_are_written_decoded():
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, (1, 4))
    pruned = Dense(np.arange(8, dtype=np.float32).reshape(4, 2) + 1, mask=np.eye(4, 2, dtype=bool))
    clustered = Clustered(np.float32([0.5, -1.0]), np.array([[0, 1], [1, -1]]))
    quantized = Quantized(np.int8([[10, -20]]), np.float32(0.1), np.int8(0))
    h = graph.add_node("MatMul", [x, graph.add_const("pruned", pruned)]).output
    h = graph.add_node("MatMul", [h, graph.add_const("clustered", clustered)]).output
    h = graph.add_node("Mul", [h, graph.add_const("quantized", quantized)]).output
    graph.outputs.append(h)
    model = to_model_proto(graph)
    onnx.checker.check_model(model, full_check=True)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in ("pruned", "clustered"):
        np.testing.assert_array_equal(arrays[name], graph.consts[name].numpy())
        assert arrays[name].dtype == np.float32
    # Quantized constants are written as QDQ: integers decoded by DequantizeLinear (test_quant.py).
    np.testing.assert_array_equal(arrays["quantized_quantized"], quantized.q)
    assert [n.op_type for n in model.graph.node if "quantized" in n.output] == ["DequantizeLinear"]
    feeds = {"x": np.float32([[1, 2, 3, 4]])}
    np.testing.assert_allclose(run_onnxruntime(model, feeds)[0], Interpreter(graph).run(feeds)[h.name], rtol=1e-6)


# ----------------------------------------------------------------------------- saving


def test_save_and_load_back(tmp_path):
    graph = _small_graph()
    path = tmp_path / "out.onnx"
    save_onnx(graph, path, check=True)
    assert signature(load_onnx(path)) == signature(from_model_proto(to_model_proto(graph)))
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_save_with_external_data(tmp_path):
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, (1, 64))
    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    node = graph.add_node("MatMul", [x, graph.add_const("w", weight)])
    small = graph.add_node("Add", [node.output, graph.add_const("b", np.float32([1.0]))])
    graph.outputs.append(small.output)
    path = tmp_path / "ext.onnx"
    save_onnx(graph, path, external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["ext.onnx", "ext.onnx.data"]
    assert os.path.getsize(path) < weight.nbytes
    loaded = load_onnx(path)
    np.testing.assert_array_equal(loaded.consts["w"].numpy(), weight)
    onnx.checker.check_model(str(path), full_check=True)
    feeds = {"x": np.ones((1, 64), np.float32)}
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds)[0], Interpreter(graph).run(feeds)[small.output.name],
                               rtol=1e-5)


def test_failed_save_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.onnx"
    path.write_bytes(b"old contents")
    graph = Graph(opsets={"": 17, "com.example": 1})
    x = graph.add_input("x", np.float32, (2,))
    node = graph.add_node("Thing", [x], {"options": object()}, domain="com.example")
    graph.outputs.append(node.output)
    with pytest.raises(ModelError):
        save_onnx(graph, path)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_save_refuses_to_overwrite_the_input(tmp_path):
    source = tmp_path / "in.onnx"
    save_onnx(_small_graph(), source)
    before = source.read_bytes()
    graph = load_onnx(source)
    with pytest.raises(FileWriteError, match="input"):
        save_onnx(graph, source, protect=[source])
    with pytest.raises(CircError):
        save_onnx(graph, tmp_path / "." / "in.onnx", protect=[str(source)])
    assert source.read_bytes() == before
    assert os.listdir(tmp_path) == ["in.onnx"]


def test_save_into_missing_folder_is_a_circ_error(tmp_path):
    with pytest.raises(FileWriteError, match="does not exist"):
        save_onnx(_small_graph(), tmp_path / "missing" / "out.onnx")


def test_typeless_output_of_an_opaque_node_is_written_untyped():
    graph = Graph(opsets={"": 17, "com.example": 1})
    x = graph.add_input("x", np.float32, (2,))
    node = graph.add_node("Thing", [x], domain="com.example")
    graph.outputs.append(node.output)
    output = to_model_proto(graph).graph.output[0]
    assert output.name == node.output.name and not output.HasField("type")


def test_element_types_round_trip():
    graph = Graph(opsets={"": 17})
    for dtype in (np.float16, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                  np.int64, np.uint64, np.bool_):
        x = graph.add_input(f"in_{np.dtype(dtype).name}", dtype, (2,))
        graph.outputs.append(graph.add_node("Identity", [x]).output)
    model = to_model_proto(graph)
    onnx.checker.check_model(model, full_check=True)
    assert signature(from_model_proto(model)) == signature(graph)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
