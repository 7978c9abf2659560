import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from circ.errors import ModelError
from circ.graph import Graph
from circ.interpreter import Interpreter
from opcheck import check_op, run_onnxruntime

ML = "ai.onnx.ml"
rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("attrs", [{"offset": [0.5], "scale": [2.0]},
                                   {"offset": [0.0, 1.0, -1.0], "scale": [1.0, 0.5, 3.0]}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_scaler(attrs, dtype):
    x = (f32(4, 3) * 5).astype(dtype)
    check_op("Scaler", {"x": x}, attrs, domain=ML)


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_normalizer(norm):
    x = f32(5, 4)
    x[0] = 0.0  # a zero row stays zero
    x[1] = -np.abs(x[1])  # MAX divides by the maximum, not the largest magnitude
    check_op("Normalizer", {"x": x}, {"norm": norm}, domain=ML)
    check_op("Normalizer", {"x": f32(4)}, {"norm": norm}, domain=ML)


def test_binarizer():
    x = f32(3, 4)
    x[0, 0] = 0.3
    check_op("Binarizer", {"x": x}, {"threshold": 0.3}, domain=ML)


def test_imputer():
    x = f32(4, 3)
    x[0, 1] = x[2, 2] = np.nan
    check_op("Imputer", {"x": x}, {"imputed_value_floats": [1.0, 2.0, 3.0], "replaced_value_float": np.nan},
             domain=ML)
    check_op("Imputer", {"x": np.where(x > 0, 0, x).astype(np.float32)}, {"imputed_value_floats": [7.0]},
             domain=ML)


@pytest.mark.parametrize("shape", [(6,), (2, 6), (2, 3, 6)])
@pytest.mark.parametrize("indices", [[[1], [4]], [0, 5, 2], 3])
def test_array_feature_extractor(shape, indices):
    x = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    check_op("ArrayFeatureExtractor", {"x": x, "i": np.array(indices, np.int64)}, consts={"i"}, domain=ML)
    check_op("ArrayFeatureExtractor", {"x": x.astype(np.float32), "i": np.array(indices, np.int64)}, domain=ML)


def _label_encoder(x, attrs, ml_opset):
    """Run a LabelEncoder node in onnxruntime and in circ (LabelEncoder needs ai.onnx.ml >= 2)."""
    onnx_attrs = {k: onnx.numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
                  for k, v in attrs.items()}
    node = helper.make_node("LabelEncoder", ["x"], ["y"], domain=ML, **onnx_attrs)
    graph = helper.make_graph([node], "le", [helper.make_tensor_value_info(
        "x", helper.np_dtype_to_tensor_dtype(x.dtype), list(x.shape))], [onnx.ValueInfoProto(name="y")])
    default_opset = 21 if ml_opset >= 4 else 17
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", default_opset),
                                                    helper.make_opsetid(ML, ml_opset)])
    model.ir_version = 9
    want = run_onnxruntime(model, {"x": x})[0]
    circ_graph = Graph(opsets={"": default_opset, ML: ml_opset})
    circ_node = circ_graph.add_node("LabelEncoder", [circ_graph.add_input("x", x.dtype, x.shape)], attrs, domain=ML)
    circ_graph.outputs.append(circ_node.output)
    got = Interpreter(circ_graph).run({"x": x})[circ_node.output.name]
    assert got.dtype == want.dtype == circ_node.output.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("attrs", [
    {"keys_int64s": [3, 1, 7], "values_int64s": [30, 10, 70]},
    {"keys_int64s": [3, 1, 7], "values_int64s": [30, 10, 70], "default_int64": 5},
    {"keys_int64s": [3, 1], "values_floats": [0.5, 1.5]},
    {"keys_floats": [3.0, 1.0], "values_int64s": [9, 8], "default_int64": 0},
])
def test_label_encoder_opset2(attrs):
    x = np.array([[1, 3, 4], [7, 7, 0]], dtype=np.float32 if "keys_floats" in attrs else np.int64)
    _label_encoder(x, attrs, 2)


def test_label_encoder_tensor_attributes_opset4():
    attrs = {"keys_tensor": np.array([2, 4], np.int64), "values_tensor": np.array([0.5, 2.5]),
             "default_tensor": np.array([-9.0])}
    _label_encoder(np.array([4, 1, 2], np.int64), attrs, 4)


# ------------------------------------------------------------------ scikit-learn exports, end to end


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:400].astype(np.float32), y[:400]


def _convert(model, x, options=None):
    from skl2onnx import to_onnx

    from circ.onnx_import import from_model_proto

    proto = to_onnx(model, x[:1], options=options, target_opset={"": 17, ML: 1})
    return proto, from_model_proto(proto)


def _fit(model, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few iterations are enough here
        return model.fit(x, y)


def _compare(proto, graph, x):
    want = run_onnxruntime(proto, {"X": x})
    got = Interpreter(graph).run({"X": x})
    for value, expected in zip(graph.outputs, want):
        np.testing.assert_allclose(got[value.name], expected, rtol=1e-4, atol=1e-5)


def test_mlp_classifier_pipeline_without_zipmap(digits):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = digits
    pipeline = _fit(Pipeline([("scale", StandardScaler()),
                              ("mlp", MLPClassifier(hidden_layer_sizes=(16,), max_iter=20, random_state=0))]), x, y)
    proto, graph = _convert(pipeline, x, options={"zipmap": False})
    assert {n.op for n in graph.nodes} >= {"Scaler", "ArrayFeatureExtractor", "Softmax", "ArgMax"}
    _compare(proto, graph, x[:50])


def test_mlp_regressor_and_binary_classifier(digits):
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    x, y = digits
    regressor = _fit(Pipeline([("norm", Normalizer()), ("mlp", MLPRegressor(hidden_layer_sizes=(8,), max_iter=20,
                                                                            random_state=0))]), x, y)
    _compare(*_convert(regressor, x), x[:50])
    binary = _fit(MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0), x, y % 2)
    proto, graph = _convert(binary, x, options={id(binary): {"zipmap": False}})
    _compare(proto, graph, x[:50])


def test_zipmap_stays_opaque_and_is_named(digits):
    from sklearn.neural_network import MLPClassifier

    x, y = digits
    classifier = _fit(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0), x, y)
    _, graph = _convert(classifier, x)
    with pytest.raises(ModelError, match="ZipMap"):
        Interpreter(graph)
