import numpy as np
import pytest

from circ.errors import ModelError
from circ.graph import Graph
from opcheck import check_op

rng = np.random.default_rng(0)
TOL = dict(rtol=1e-5, atol=1e-5)


def _bn_inputs(shape, stats_shape=None):
    stats_shape = stats_shape or (shape[1],)
    return {"x": rng.standard_normal(shape).astype(np.float32),
            "scale": rng.standard_normal(stats_shape).astype(np.float32),
            "bias": rng.standard_normal(stats_shape).astype(np.float32),
            "mean": rng.standard_normal(stats_shape).astype(np.float32),
            "var": rng.uniform(0.1, 2.0, stats_shape).astype(np.float32)}


BN_CONSTS = {"scale", "bias", "mean", "var"}


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 3, 4)])
def test_batch_norm(opset, shape):
    check_op("BatchNormalization", _bn_inputs(shape), {"epsilon": 1e-3}, consts=BN_CONSTS,
             opset=opset, **TOL)


def test_batch_norm_old_attributes_and_training_mode_zero():
    inputs = _bn_inputs((2, 4, 3, 3))
    check_op("BatchNormalization", inputs, {"spatial": 1, "momentum": 0.9}, consts=BN_CONSTS, opset=7)
    check_op("BatchNormalization", inputs, {"training_mode": 0}, consts=BN_CONSTS, opset=15, **TOL)
    check_op("BatchNormalization", inputs, consts=BN_CONSTS, batch_symbolic=True, **TOL)


def test_batch_norm_per_activation_statistics():
    # spatial=0 (opsets 7-8): statistics shaped like x.shape[1:]; onnxruntime has no kernel
    # for it, so compare with the formula.
    inputs = _bn_inputs((2, 3, 4), stats_shape=(3, 4))
    graph = Graph(opsets={"": 7})
    x = graph.add_input("x", np.float32, [2, 3, 4])
    params = [graph.add_const(name, inputs[name]) for name in ("scale", "bias", "mean", "var")]
    node = graph.add_node("BatchNormalization", [x] + params, {"spatial": 0, "epsilon": 1e-5})
    graph.outputs.append(node.output)
    from circ.interpreter import run

    got = run(graph, {"x": inputs["x"]})[node.output.name]
    want = ((inputs["x"] - inputs["mean"]) / np.sqrt(inputs["var"] + 1e-5) * inputs["scale"]
            + inputs["bias"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32


def test_batch_norm_training_mode_is_refused():
    graph = Graph(opsets={"": 15})
    x = graph.add_input("x", np.float32, [2, 3])
    params = [graph.add_const(n, np.ones(3, np.float32)) for n in ("s", "b", "m", "v")]
    with pytest.raises(ModelError, match="BatchNormalization node 'bn'.*training"):
        graph.add_node("BatchNormalization", [x] + params, {"training_mode": 1}, name="bn")


def test_batch_norm_legacy_statistics_outputs_pass_running_values_through():
    inputs = _bn_inputs((2, 3, 4, 4))
    graph = Graph(opsets={"": 9})
    x = graph.add_input("x", np.float32, ["N", 3, 4, 4])
    params = [graph.add_const(name, inputs[name]) for name in ("scale", "bias", "mean", "var")]
    node = graph.add_node("BatchNormalization", [x] + params, outputs=3)
    assert node.outputs[1].shape == (3,) and node.outputs[2].shape == (3,)
    graph.outputs.extend(node.outputs)
    from circ.interpreter import run

    got = run(graph, {"x": inputs["x"]})
    np.testing.assert_array_equal(got[node.outputs[1].name], inputs["mean"])
    np.testing.assert_array_equal(got[node.outputs[2].name], inputs["var"])


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    x = rng.standard_normal((2, 7, 4, 5)).astype(np.float32)
    check_op("LRN", {"x": x}, {"size": size, "alpha": 1e-2, "beta": 0.75, "bias": 2.0}, **TOL)


def test_lrn_even_size_follows_the_onnx_window():
    # onnxruntime refuses even sizes; the ONNX formula sums channels c-floor((size-1)/2) to
    # c+ceil((size-1)/2), here c-1 .. c+2 for size 4.
    x = rng.standard_normal((1, 6, 2, 2)).astype(np.float32)
    graph = Graph(opsets={"": 13})
    node = graph.add_node("LRN", [graph.add_input("x", np.float32, [1, 6, 2, 2])],
                          {"size": 4, "alpha": 0.4, "beta": 0.5, "bias": 1.0})
    graph.outputs.append(node.output)
    from circ.interpreter import run

    got = run(graph, {"x": x})[node.output.name]
    squares = np.square(x)
    window = np.stack([squares[:, max(c - 1, 0): c + 3].sum(axis=1) for c in range(6)], axis=1)
    np.testing.assert_allclose(got, x / np.sqrt(1.0 + 0.1 * window), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [9, 13])
def test_lrn_defaults(opset):
    check_op("LRN", {"x": rng.standard_normal((1, 6, 3, 3)).astype(np.float32)}, {"size": 3},
             opset=opset, **TOL)


@pytest.mark.parametrize("shape", [(2, 3, 8), (2, 3, 5, 6), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("opset", [9, 17, 22])
def test_instance_norm(shape, opset):
    x = rng.standard_normal(shape).astype(np.float32) * 3 + 1
    check_op("InstanceNormalization",
             {"x": x, "scale": rng.standard_normal(shape[1]).astype(np.float32),
              "bias": rng.standard_normal(shape[1]).astype(np.float32)},
             {"epsilon": 1e-4}, consts={"scale", "bias"}, opset=opset, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm(axis, with_bias):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    norm_shape = x.shape[axis:]
    inputs = {"x": x, "scale": rng.standard_normal(norm_shape).astype(np.float32)}
    if with_bias:  # left out, not passed as "": onnxruntime crashes on a trailing empty input
        inputs["bias"] = rng.standard_normal(norm_shape).astype(np.float32)
    check_op("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-5},
             consts={"scale", "bias"}, **TOL)


def test_layer_norm_statistics_outputs_and_symbolic_batch():
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    inputs = {"x": x, "scale": np.ones(6, np.float32), "bias": np.zeros(6, np.float32)}
    check_op("LayerNormalization", inputs, {}, consts={"scale", "bias"}, n_outputs=3,
             batch_symbolic=True, **TOL)
    check_op("LayerNormalization", inputs, {"axis": 1}, consts={"bias"}, n_outputs=3, opset=18,
             **TOL)
