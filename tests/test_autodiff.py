"""circ.autodiff: the graph-level backward pass and the fused softmax-cross-entropy loss.

End to end, a small MLP and a small CNN (Conv, BatchNormalization, Relu, MaxPool, depthwise
Conv, Tanh, GlobalAveragePool, Flatten, Gemm, Softmax) get the gradient of their loss with
respect to every weight checked against central finite differences in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from circ.autodiff import Tape, backward, logits_of, loss_and_gradients, softmax_cross_entropy
from circ.errors import DataError, ModelError
from circ.graph import Graph
from circ.interpreter import Interpreter
from circ.ops.registry import kernel, same_as_input, shape_rule
from circ.verifier import verify

STEP = 1e-6


def numeric_loss_gradient(graph, feeds, labels, const):
    """d loss / d const by central differences, editing the constant in place."""
    original = const.const.to_numpy().copy()
    grad = np.zeros_like(original)
    logits = logits_of(graph)
    for index in np.ndindex(original.shape):
        losses = []
        for sign in (1, -1):
            moved = original.copy()
            moved[index] += sign * STEP
            graph.set_const(const, moved)
            interpreter = Interpreter(graph, keep_all=True)
            interpreter.run(feeds)
            losses.append(softmax_cross_entropy(interpreter.values[id(logits)], labels)[0])
        grad[index] = (losses[0] - losses[1]) / (2 * STEP)
    graph.set_const(const, original)
    return grad


def check_all_weights(graph, feeds, labels):
    loss, grads = loss_and_gradients(graph, feeds, labels)
    assert np.isfinite(loss) and loss > 0
    assert set(grads) == set(graph.consts)
    for name, value in graph.consts.items():
        expected = numeric_loss_gradient(graph, feeds, labels, value)
        np.testing.assert_allclose(grads[name], expected, rtol=1e-5, atol=1e-7, err_msg=name)
        assert np.abs(expected).max() > 0, f"{name}: the check needs a nonzero gradient"


def mlp(rng):
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float64, ["N", 6])
    w1 = graph.add_const("w1", rng.standard_normal((5, 6)))
    b1 = graph.add_const("b1", rng.standard_normal(5) * 0.1)
    w2 = graph.add_const("w2", rng.standard_normal((5, 3)))
    b2 = graph.add_const("b2", rng.standard_normal((1, 3)) * 0.1)
    hidden = graph.add_node("Gemm", [x, w1, b1], {"transB": 1}).outputs[0]
    hidden = graph.add_node("Relu", [hidden]).outputs[0]
    hidden = graph.add_node("Sigmoid", [hidden]).outputs[0]
    logits = graph.add_node("MatMul", [hidden, w2]).outputs[0]
    logits = graph.add_node("Add", [logits, b2]).outputs[0]
    probs = graph.add_node("Softmax", [logits], {"axis": -1}).outputs[0]
    graph.outputs.append(probs)
    verify(graph)
    return graph


def cnn(rng):
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float64, ["N", 2, 7, 7])
    conv_w = graph.add_const("conv_w", rng.standard_normal((4, 2, 3, 3)) * 0.5)
    conv_b = graph.add_const("conv_b", rng.standard_normal(4) * 0.1)
    scale = graph.add_const("bn_scale", 1 + 0.2 * rng.standard_normal(4))
    shift = graph.add_const("bn_bias", 0.1 * rng.standard_normal(4))
    mean = graph.add_const("bn_mean", 0.1 * rng.standard_normal(4))
    var = graph.add_const("bn_var", 1 + 0.3 * rng.random(4))
    dw_w = graph.add_const("dw_w", rng.standard_normal((4, 1, 2, 2)))
    fc_w = graph.add_const("fc_w", rng.standard_normal((4, 3)))
    fc_b = graph.add_const("fc_b", 0.1 * rng.standard_normal(3))
    h = graph.add_node("Conv", [x, conv_w, conv_b], {"pads": [1, 1, 1, 1]}).outputs[0]
    h = graph.add_node("BatchNormalization", [h, scale, shift, mean, var]).outputs[0]
    h = graph.add_node("Relu", [h]).outputs[0]
    h = graph.add_node("MaxPool", [h], {"kernel_shape": [2, 2], "strides": [2, 2]}).outputs[0]
    h = graph.add_node("Conv", [h, dw_w], {"group": 4, "strides": [1, 1]}).outputs[0]
    h = graph.add_node("Tanh", [h]).outputs[0]
    h = graph.add_node("GlobalAveragePool", [h]).outputs[0]
    h = graph.add_node("Flatten", [h]).outputs[0]
    logits = graph.add_node("Gemm", [h, fc_w, fc_b]).outputs[0]
    graph.outputs.append(graph.add_node("Softmax", [logits], {"axis": 1}).outputs[0])
    verify(graph)
    return graph


def test_mlp_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    graph = mlp(rng)
    feeds = {"x": rng.standard_normal((4, 6))}
    check_all_weights(graph, feeds, np.array([0, 2, 1, 2]))


def test_cnn_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    graph = cnn(rng)
    feeds = {"x": rng.standard_normal((3, 2, 7, 7))}
    check_all_weights(graph, feeds, np.array([1, 0, 2]))


def test_loss_reads_logits_before_a_final_softmax():
    graph = mlp(np.random.default_rng(2))
    logits = logits_of(graph)
    assert logits.producer.op == "Add"
    # a Softmax over another axis is not a loss head
    other = Graph(opsets={"": 17})
    x = other.add_input("x", np.float64, [2, 3, 4])
    out = other.add_node("Softmax", [x], {"axis": 1}).outputs[0]
    other.outputs.append(out)
    assert logits_of(other) is out


def test_value_used_twice_accumulates():
    # y = x * x + x: dy/dx = 2x + 1, the sum of three uses
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float64, [5])
    square = graph.add_node("Mul", [x, x]).outputs[0]
    y = graph.add_node("Add", [square, x]).outputs[0]
    graph.outputs.append(y)
    tape = Tape(graph)
    data = np.linspace(-2, 2, 5)
    tape.run({"x": data})
    grads = backward(tape, {y: np.ones(5)}, ["x", square])
    np.testing.assert_allclose(grads["x"], 2 * data + 1)
    np.testing.assert_allclose(grads[square.name], np.ones(5))
    np.testing.assert_allclose(tape.array(square), data * data)


def test_shape_arithmetic_needs_no_gradient():
    # Shape -> Gather -> Unsqueeze -> Concat -> Reshape: integer chains have no gradient
    # registered and are never visited, because no chosen value flows into them.
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float64, ["N", 2, 3])
    w = graph.add_const("w", np.arange(6.0).reshape(6, 1))
    shape = graph.add_node("Shape", [x]).outputs[0]
    batch = graph.add_node("Gather", [shape, graph.add_const("zero", np.array(0))]).outputs[0]
    batch = graph.add_node("Unsqueeze", [batch, graph.add_const("axes", np.array([0]))]).outputs[0]
    target = graph.add_node("Concat", [batch, graph.add_const("rest", np.array([-1]))],
                            {"axis": 0}).outputs[0]
    flat = graph.add_node("Reshape", [x, target]).outputs[0]
    y = graph.add_node("MatMul", [flat, w]).outputs[0]
    graph.outputs.append(y)
    tape = Tape(graph)
    data = np.random.default_rng(3).standard_normal((4, 2, 3))
    tape.run({"x": data})
    grads = backward(tape, {y: np.ones((4, 1))}, ["x", "w"])
    np.testing.assert_allclose(grads["x"], np.broadcast_to(np.arange(6.0).reshape(2, 3), (4, 2, 3)))
    np.testing.assert_allclose(grads["w"][:, 0], data.reshape(4, 6).sum(axis=0))


# an op with a kernel and no gradient, in a domain of its own so no real op is affected
shape_rule("NoGradient", domain="test.autodiff")(same_as_input(0))
kernel("NoGradient", domain="test.autodiff")(lambda node, x: x * 2)


def test_unreached_value_gets_zeros_and_unknown_gradient_is_named():
    graph = Graph(opsets={"": 17, "test.autodiff": 1})
    x = graph.add_input("x", np.float64, [3])
    unused = graph.add_const("unused", np.ones(2))
    y = graph.add_node("NoGradient", [x], name="plain_node", domain="test.autodiff").outputs[0]
    graph.outputs.append(y)
    tape = Tape(graph)
    tape.run({"x": np.zeros(3)})
    assert backward(tape, {y: np.ones(3)}, [unused])["unused"].tolist() == [0.0, 0.0]
    with pytest.raises(ModelError, match="plain_node.*no gradient"):
        backward(tape, {y: np.ones(3)}, ["x"])
    with pytest.raises(DataError, match="seed"):
        backward(tape, {y: np.ones(4)}, ["x"])


def test_softmax_cross_entropy_is_stable_and_matches_the_definition():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    loss, grad = softmax_cross_entropy(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.log(probs[np.arange(5), labels]).mean(), rel=1e-12)
    np.testing.assert_allclose(grad, (probs - np.eye(4)[labels]) / 5, atol=1e-15)
    # huge logits: the naive form overflows, the fused one does not
    big_loss, big_grad = softmax_cross_entropy(logits * 1e4, labels)
    assert np.isfinite(big_loss) and np.all(np.isfinite(big_grad))
    # soft targets: one-hot probabilities give the same loss as indices
    soft_loss, soft_grad = softmax_cross_entropy(logits, np.eye(4)[labels])
    assert soft_loss == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(soft_grad, grad, atol=1e-15)


def test_softmax_cross_entropy_gradient_with_soft_targets():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((3, 4))
    targets = rng.dirichlet(np.ones(4), size=3)
    _, grad = softmax_cross_entropy(logits, targets)
    expected = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        moved = [logits.copy(), logits.copy()]
        moved[0][index] += STEP
        moved[1][index] -= STEP
        expected[index] = (softmax_cross_entropy(moved[0], targets)[0]
                           - softmax_cross_entropy(moved[1], targets)[0]) / (2 * STEP)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9)


def test_softmax_cross_entropy_rejects_bad_labels():
    with pytest.raises(DataError, match="class indices"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(DataError, match="do not fit"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))


def batch_norm_graph(shape):
    graph = Graph(opsets={"": 17})
    names = ["x", "scale", "bias", "mean", "var"]
    shapes = [list(shape)] + [[shape[1]]] * 4
    values = [graph.add_input(n, np.float64, s) for n, s in zip(names, shapes)]
    graph.outputs.append(graph.add_node("BatchNormalization", values, {"epsilon": 1e-3}).outputs[0])
    verify(graph)
    return graph


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 3, 2)])
def test_batch_norm_training_mode_matches_torch(shape):
    import torch

    rng = np.random.default_rng(6)
    channels = shape[1]
    feeds = {"x": rng.standard_normal(shape) * 2 + 1, "scale": rng.standard_normal(channels),
             "bias": rng.standard_normal(channels), "mean": rng.standard_normal(channels),
             "var": rng.random(channels) + 0.5}
    graph = batch_norm_graph(shape)
    tape = Tape(graph, training=True)
    y = tape.run(feeds)[graph.outputs[0].name]
    cotangent = rng.standard_normal(shape)
    grads = backward(tape, {graph.outputs[0]: cotangent}, ["x", "scale", "bias", "mean", "var"])

    x, scale, bias = (torch.tensor(feeds[n], requires_grad=True) for n in ("x", "scale", "bias"))
    want = torch.nn.functional.batch_norm(x, None, None, scale, bias, training=True, eps=1e-3)
    want.backward(torch.tensor(cotangent))
    np.testing.assert_allclose(y, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, tensor in (("x", x), ("scale", scale), ("bias", bias)):
        np.testing.assert_allclose(grads[name], tensor.grad.numpy(), rtol=1e-9, atol=1e-12)
    # the running statistics are not used in training, so they get no gradient
    assert not grads["mean"].any() and not grads["var"].any()
    axes = (0,) + tuple(range(2, len(shape)))
    mean, var = tape.batch_stats[graph.nodes[0].name]
    np.testing.assert_allclose(mean, feeds["x"].mean(axis=axes))
    np.testing.assert_allclose(var, feeds["x"].var(axis=axes))


def test_batch_norm_frozen_by_default():
    rng = np.random.default_rng(7)
    graph = batch_norm_graph((4, 2))
    feeds = {"x": rng.standard_normal((4, 2)), "scale": np.ones(2), "bias": np.zeros(2),
             "mean": np.array([1.0, -1.0]), "var": np.array([4.0, 1.0]) - 1e-3}
    tape = Tape(graph)
    y = tape.run(feeds)[graph.outputs[0].name]
    np.testing.assert_allclose(y, (feeds["x"] - feeds["mean"]) / np.array([2.0, 1.0]))
    grads = backward(tape, {graph.outputs[0]: np.ones((4, 2))}, ["x", "mean"])
    np.testing.assert_allclose(grads["x"], np.broadcast_to([0.5, 1.0], (4, 2)))
    np.testing.assert_allclose(grads["mean"], [-2.0, -4.0])
    assert tape.batch_stats == {}
