"""circ.train: the trainer's steps against PyTorch, compressed tensors' training rules,
distillation, determinism, and accuracy gained on sklearn's digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from circ.autodiff import loss_and_gradients, softmax_cross_entropy
from circ.errors import DataError, ModelError, PipelineError
from circ.graph import Graph
from circ.tensors import Clustered, Dense, Quantized
from circ.train import (ClusteredParameter, EpochRecord, QuantizedParameter, TrainConfig, accuracy,
                        distillation_loss, fit, predict, trainable_values)
from circ.verifier import verify


# --------------------------------------------------------------------------- models


def mlp(sizes=(6, 8, 3), seed=0, softmax=True, batch="N") -> Graph:
    """Gemm(transB) + Relu layers, then Softmax; weights (out, in) as torch.nn.Linear keeps them."""
    rng = np.random.default_rng(seed)
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, (batch, sizes[0]))
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        w = graph.add_const(f"w{i}", (rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32))
        b = graph.add_const(f"b{i}", (0.1 * rng.standard_normal(fan_out)).astype(np.float32))
        x = graph.add_node("Gemm", [x, w, b], {"transB": 1}, name=f"fc{i}").output
        if i < len(sizes) - 2:
            x = graph.add_node("Relu", [x], name=f"relu{i}").output
    if softmax:
        x = graph.add_node("Softmax", [x], {"axis": -1}, name="prob").output
    graph.outputs.append(x)
    verify(graph)
    return graph


def torch_mlp(graph: Graph, layers: int) -> torch.nn.Sequential:
    modules = []
    for i in range(layers):
        w = graph.value(f"w{i}").numpy()
        linear = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(w))
            linear.bias.copy_(torch.tensor(graph.value(f"b{i}").numpy()))
        modules.append(linear)
        if i < layers - 1:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules)


def data(count=40, features=6, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, features)).astype(np.float32)
    y = rng.integers(0, classes, count)
    return x, y


def cnn_bn(seed=0) -> Graph:
    """Conv 3x3 -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, ("N", 1, 6, 6))
    w = graph.add_const("conv_w", (0.4 * rng.standard_normal((4, 1, 3, 3))).astype(np.float32))
    b = graph.add_const("conv_b", (0.1 * rng.standard_normal(4)).astype(np.float32))
    x = graph.add_node("Conv", [x, w, b], {"kernel_shape": [3, 3]}, name="conv").output
    params = [graph.add_const(name, array.astype(np.float32)) for name, array in (
        ("bn_scale", 1 + 0.1 * rng.standard_normal(4)), ("bn_bias", 0.1 * rng.standard_normal(4)),
        ("bn_mean", 0.1 * rng.standard_normal(4)), ("bn_var", 1 + 0.1 * rng.random(4)))]
    x = graph.add_node("BatchNormalization", [x] + params, {"epsilon": 1e-5, "momentum": 0.9}, name="bn").output
    x = graph.add_node("Relu", [x], name="relu").output
    x = graph.add_node("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool").output
    x = graph.add_node("Flatten", [x], name="flatten").output
    fc_w = graph.add_const("fc_w", (0.3 * rng.standard_normal((16, 3))).astype(np.float32))
    fc_b = graph.add_const("fc_b", np.zeros(3, np.float32))
    graph.outputs.append(graph.add_node("Gemm", [x, fc_w, fc_b], name="fc").output)
    verify(graph)
    return graph


def torch_cnn_bn(graph: Graph) -> torch.nn.Sequential:
    conv, bn, fc = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4, eps=1e-5, momentum=0.1), torch.nn.Linear(16, 3)
    with torch.no_grad():
        for param, name in ((conv.weight, "conv_w"), (conv.bias, "conv_b"), (bn.weight, "bn_scale"),
                            (bn.bias, "bn_bias"), (bn.running_mean, "bn_mean"), (bn.running_var, "bn_var"),
                            (fc.bias, "fc_b")):
            param.copy_(torch.tensor(graph.value(name).numpy()))
        fc.weight.copy_(torch.tensor(graph.value("fc_w").numpy().T))
    return torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), fc)


def torch_train(model, x, y, config: TrainConfig):
    """``model`` trained on the batches circ.train.fit takes (same seeded permutation)."""
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    model.train()
    for _ in range(config.epochs):
        order = rng.permutation(len(y))
        for begin in range(0, len(y), config.batch):
            rows = order[begin:begin + config.batch]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.tensor(x[rows])), torch.tensor(y[rows]))
            loss.backward()
            optimizer.step()


# --------------------------------------------------------------------------- against torch


@pytest.mark.parametrize("config", [
    TrainConfig(epochs=2, lr=0.1, batch=16, momentum=0.9, weight_decay=1e-3),
    TrainConfig(epochs=2, lr=0.01, batch=16, optimizer="adam", weight_decay=1e-3),
    TrainConfig(epochs=1, lr=0.2, batch=7, momentum=0.0, seed=5),
], ids=["sgd", "adam", "plain-sgd-ragged"])
def test_fit_matches_torch(config):
    graph = mlp((6, 8, 3))
    model = torch_mlp(graph, 2)
    x, y = data()
    records = fit(graph, {"x": x}, y, config)
    torch_train(model, x, y, config)
    assert [r.epoch for r in records] == list(range(1, config.epochs + 1))
    for i, index in enumerate((0, 2)):
        np.testing.assert_allclose(graph.value(f"w{i}").numpy(), model[index].weight.detach().numpy(), atol=2e-5)
        np.testing.assert_allclose(graph.value(f"b{i}").numpy(), model[index].bias.detach().numpy(), atol=2e-5)
        assert isinstance(graph.value(f"w{i}").const, Dense)
        assert graph.value(f"w{i}").numpy().dtype == np.float32


def test_batch_norm_trains_like_torch():
    graph = cnn_bn()
    model = torch_cnn_bn(graph)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    config = TrainConfig(epochs=2, lr=0.05, batch=8)
    fit(graph, x, y, config)
    torch_train(model, x, y, config)
    conv, bn = model[0], model[1]
    for name, expected in (("conv_w", conv.weight), ("bn_scale", bn.weight), ("bn_bias", bn.bias),
                           ("bn_mean", bn.running_mean), ("bn_var", bn.running_var)):
        np.testing.assert_allclose(graph.value(name).numpy(), expected.detach().numpy(), atol=2e-5, err_msg=name)


def test_freeze_bn_keeps_batch_norm():
    graph = cnn_bn()
    before = {n: graph.value(n).numpy().copy() for n in ("bn_scale", "bn_bias", "bn_mean", "bn_var", "conv_w")}
    x = np.random.default_rng(3).standard_normal((16, 1, 6, 6)).astype(np.float32)
    fit(graph, x, np.arange(16) % 3, TrainConfig(lr=0.05, batch=8, freeze_bn=True))
    for name in ("bn_scale", "bn_bias", "bn_mean", "bn_var"):
        assert np.array_equal(graph.value(name).numpy(), before[name])
    assert not np.array_equal(graph.value("conv_w").numpy(), before["conv_w"])


def test_softmax_head_trains_through_logits():
    """A graph ending in Softmax takes the same steps as the same graph without it (the fused
    loss reads the Softmax's input), and stays finite with huge logits."""
    x, y = data()
    with_softmax, without = mlp(softmax=True), mlp(softmax=False)
    for graph in (with_softmax, without):
        graph.set_const(graph.value("w1"), graph.value("w1").numpy() * 300)
        records = fit(graph, x, y, TrainConfig(lr=1e-4, batch=8))
        assert np.isfinite(records[0].loss)
    for name in ("w0", "b0", "w1", "b1"):
        assert np.array_equal(with_softmax.value(name).numpy(), without.value(name).numpy())


# --------------------------------------------------------------------------- what trains


def lenet_like() -> Graph:
    """MatMul(x, Transpose(W)) + b as exporters write Linear, behind a Reshape with a shape constant."""
    rng = np.random.default_rng(0)
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, ("N", 2, 3))
    shape = graph.add_const("shape", np.array([-1, 6], np.int64))
    scale = graph.add_const("scale", np.array(0.5, np.float32))
    x = graph.add_node("Mul", [x, scale], name="scale_input").output
    x = graph.add_node("Reshape", [x, shape], name="flatten").output
    w = graph.add_const("w", rng.standard_normal((4, 6)).astype(np.float32))
    wt = graph.add_node("Transpose", [w], {"perm": [1, 0]}, name="wT").output
    x = graph.add_node("MatMul", [x, wt], name="matmul").output
    b = graph.add_const("b", np.zeros(4, np.float32))
    graph.outputs.append(graph.add_node("Add", [x, b], name="bias").output)
    verify(graph)
    return graph


def test_trainable_values_follow_transpose_and_bias_not_shapes():
    graph = lenet_like()
    assert [v.name for v in trainable_values(graph)] == ["w", "b"]
    before = graph.value("scale").numpy().copy()
    rng = np.random.default_rng(0)
    fit(graph, rng.standard_normal((10, 2, 3)).astype(np.float32), rng.integers(0, 4, 10), TrainConfig(batch=5))
    assert not np.array_equal(graph.value("b").numpy(), 0)
    assert graph.value("scale").numpy() == before
    assert list(graph.value("shape").numpy()) == [-1, 6]
    assert [v.name for v in trainable_values(cnn_bn())] == ["conv_w", "conv_b", "bn_scale", "bn_bias", "fc_w", "fc_b"]
    assert "bn_scale" not in [v.name for v in trainable_values(cnn_bn(), freeze_bn=True)]


# --------------------------------------------------------------------------- compressed tensors


def test_pruned_weights_stay_exactly_zero():
    graph = mlp((6, 8, 3))
    rng = np.random.default_rng(4)
    w0 = graph.value("w0").numpy()
    mask = rng.random(w0.shape) > 0.6
    graph.set_const(graph.value("w0"), Dense(w0, mask))
    w1 = graph.value("w1").numpy()
    quantized_mask = rng.random(w1.shape) > 0.5
    scale = np.float32(np.abs(w1).max() / 127)
    q = np.clip(np.rint(w1 / scale), -127, 127).astype(np.int8)
    graph.set_const(graph.value("w1"), Quantized(q, scale, np.int8(0), None, 8, np.float32, quantized_mask))
    x, y = data()
    for optimizer in ("sgd", "adam"):
        fit(graph, x, y, TrainConfig(epochs=2, lr=0.05, batch=8, weight_decay=0.01, optimizer=optimizer))
        trained = graph.value("w0").const
        assert isinstance(trained, Dense) and np.array_equal(trained.mask, mask)
        assert np.all(trained.to_numpy()[~mask] == 0) and np.all(trained.array[~mask] == 0)
        assert not np.allclose(trained.to_numpy()[mask], w0[mask])
        quant = graph.value("w1").const
        assert isinstance(quant, Quantized) and np.array_equal(quant.mask, quantized_mask)
        assert np.all(quant.to_numpy()[~quantized_mask] == 0)


def clustered_graph(seed=0):
    graph = mlp((6, 8, 3), seed=seed)
    w0 = graph.value("w0").numpy()
    codebook = np.array([-0.5, -0.1, 0.2, 0.6], np.float32)
    indices = np.abs(w0[..., None] - codebook).argmin(axis=-1).astype(np.int8)
    indices[np.random.default_rng(seed).random(indices.shape) < 0.3] = -1  # pruned
    graph.set_const(graph.value("w0"), Clustered(codebook, indices))
    return graph, codebook, indices


def test_clustered_centroid_gradient_is_the_grouped_sum():
    graph, codebook, indices = clustered_graph()
    x, y = data()
    # One full-batch plain SGD step: codebook -= lr * (sum of dL/dW over each cluster's members).
    _, grads = loss_and_gradients(graph, {"x": x}, y, ["w0"])
    grad = grads["w0"]
    expected_grad = np.array([grad[indices == k].sum() for k in range(len(codebook))])
    fit(graph, x, y, TrainConfig(lr=0.1, batch=len(y), momentum=0.0))
    trained = graph.value("w0").const
    assert isinstance(trained, Clustered)
    assert np.array_equal(trained.indices, indices)
    np.testing.assert_allclose(trained.codebook, codebook - 0.1 * expected_grad, rtol=1e-5, atol=1e-7)
    assert np.all(trained.to_numpy()[indices < 0] == 0)


def test_clustered_trains_many_steps_indices_fixed():
    graph, codebook, indices = clustered_graph(seed=2)
    x, y = data()
    fit(graph, x, y, TrainConfig(epochs=3, lr=0.05, batch=8, optimizer="adam"))
    trained = graph.value("w0").const
    assert np.array_equal(trained.indices, indices) and trained.codebook.dtype == np.float32
    assert not np.allclose(trained.codebook, codebook)


@pytest.mark.parametrize("kind", ["int8-per-channel", "uint8-affine", "ternary", "binary"])
def test_quantized_trains_on_its_grid(kind):
    graph = mlp((6, 8, 3))
    w = graph.value("w0").numpy()
    if kind == "int8-per-channel":
        scale = (np.abs(w).max(axis=1) / 7).astype(np.float32)  # 4 bits, axis 0
        tensor = Quantized(np.rint(w / scale[:, None]).astype(np.int8), scale, np.zeros(8, np.int8), 0, 4)
        low, high = -7, 7
    elif kind == "uint8-affine":
        scale = np.float32((w.max() - w.min()) / 255)
        zero = np.uint8(np.rint(-w.min() / scale))
        tensor = Quantized(np.clip(np.rint(w / scale) + zero, 0, 255).astype(np.uint8), scale, zero, None, 8)
        low, high = 0, 255
    elif kind == "ternary":
        alpha = np.float32(np.abs(w).mean())
        tensor = Quantized(np.where(np.abs(w) > 0.7 * alpha, np.sign(w), 0).astype(np.int8), alpha,
                           np.int8(0), None, 2)
        low, high = -1, 1
    else:
        alpha = np.float32(np.abs(w).mean())
        tensor = Quantized(np.where(w >= 0, 1, -1).astype(np.int8), alpha, np.int8(0), None, 1)
        low, high = -1, 1
    graph.set_const(graph.value("w0"), tensor)
    x, y = data()
    fit(graph, x, y, TrainConfig(epochs=3, lr=0.2, batch=8))
    trained = graph.value("w0").const
    assert isinstance(trained, Quantized)
    assert trained.q.dtype == tensor.q.dtype and trained.num_bits == tensor.num_bits
    assert np.array_equal(trained.scale, tensor.scale) and np.array_equal(trained.zero_point, tensor.zero_point)
    assert trained.q.min() >= low and trained.q.max() <= high
    if kind == "binary":
        assert set(np.unique(trained.q)) <= {-1, 1}
    assert not np.array_equal(trained.q, tensor.q)  # the straight-through gradient moved some weights
    # What the graph computes is the grid's value: integers times the scale.
    decoded = trained.to_numpy()
    step = trained.scale if trained.axis is None else trained.scale[:, None]
    on_grid = decoded / step
    if kind == "uint8-affine":
        on_grid = on_grid + float(trained.zero_point)
    np.testing.assert_allclose(on_grid, np.rint(on_grid), atol=1e-4)


def test_coded_tensor_is_left_alone():
    from circ.codecs.coded import Coded
    from circ.train import trainable_parameters

    graph, _, _ = clustered_graph()
    coded = Coded.encode(graph.value("w0").const)
    graph.set_const(graph.value("w0"), coded)
    params, frozen = trainable_parameters(graph)
    assert [v.name for v, _ in frozen] == ["w0"] and "entropy coding" in frozen[0][1]
    assert "w0" not in [p.value.name for p in params]


# --------------------------------------------------------------------------- determinism, distillation


def test_same_seed_gives_byte_identical_weights():
    x, y = data()
    results = []
    for seed in (3, 3, 4):
        graph = cnn_bn()
        images = np.resize(x, (40, 1, 6, 6))
        fit(graph, images, y, TrainConfig(epochs=2, lr=0.05, batch=8, seed=seed, optimizer="adam"))
        results.append(b"".join(graph.value(n).numpy().tobytes() for n in sorted(graph.consts)))
    assert results[0] == results[1]
    assert results[0] != results[2]


def test_distillation_loss_is_hintons_formula():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4)).astype(np.float32) * 3
    teacher = rng.standard_normal((5, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, 5)
    alpha, temperature = 0.7, 3.0
    loss, grad = distillation_loss(logits, labels, teacher, alpha=alpha, temperature=temperature)
    student = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    soft = torch.softmax(torch.tensor(teacher, dtype=torch.float64) / temperature, -1)
    hard_ce = torch.nn.functional.cross_entropy(student, torch.tensor(labels))
    soft_ce = -(soft * torch.log_softmax(student / temperature, -1)).sum(-1).mean()
    expected = (1 - alpha) * hard_ce + alpha * temperature**2 * soft_ce
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    np.testing.assert_allclose(grad, student.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert grad.dtype == np.float32
    # alpha 0 is plain cross-entropy; alpha 1 is the soft loss alone.
    assert distillation_loss(logits, labels, teacher, alpha=0.0)[0] == softmax_cross_entropy(logits, labels)[0]
    only_soft = distillation_loss(logits, labels, teacher, alpha=1.0, temperature=temperature)[0]
    assert only_soft == pytest.approx(temperature**2 * soft_ce.item(), rel=1e-5)


def test_fit_distills_from_a_teacher():
    """With distill=1 the student learns only the teacher's soft targets: it moves toward the
    teacher's predictions, whatever the labels say."""
    x, _ = data(count=80)
    teacher = mlp((6, 16, 3), seed=7)
    student = mlp((6, 8, 3), seed=1)
    teacher_says = predict(teacher, x).argmax(axis=1)
    wrong_labels = (teacher_says + 1) % 3
    before = accuracy(student, x, teacher_says)
    fit(student, x, wrong_labels, TrainConfig(epochs=30, lr=0.05, batch=16, distill=1.0, temperature=2.0),
        teacher=teacher)
    assert accuracy(student, x, teacher_says) > max(before, 0.8)


# --------------------------------------------------------------------------- learning


def digits_split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:1200], order[1200:]
    return x[train], digits.target[train], x[test], digits.target[test]


def digits_cnn(seed=0) -> Graph:
    rng = np.random.default_rng(seed)
    graph = Graph(opsets={"": 13})
    x = graph.add_input("image", np.float32, ("N", 1, 8, 8))
    w = graph.add_const("conv_w", (rng.standard_normal((8, 1, 3, 3)) * np.sqrt(2 / 9)).astype(np.float32))
    b = graph.add_const("conv_b", np.zeros(8, np.float32))
    x = graph.add_node("Conv", [x, w, b], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, name="conv").output
    x = graph.add_node("Relu", [x], name="relu").output
    x = graph.add_node("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool").output
    x = graph.add_node("Flatten", [x], name="flatten").output
    fc_w = graph.add_const("fc_w", (rng.standard_normal((10, 128)) * np.sqrt(1 / 128)).astype(np.float32))
    fc_b = graph.add_const("fc_b", np.zeros(10, np.float32))
    x = graph.add_node("Gemm", [x, fc_w, fc_b], {"transB": 1}, name="fc").output
    graph.outputs.append(graph.add_node("Softmax", [x], {"axis": 1}, name="prob").output)
    verify(graph)
    return graph


def test_training_a_cnn_on_digits_improves_accuracy():
    x_train, y_train, x_test, y_test = digits_split()
    graph = digits_cnn()
    before = accuracy(graph, x_test, y_test)
    records = fit(graph, {"image": x_train}, y_train, TrainConfig(epochs=3, lr=0.05, batch=32),
                  val=({"image": x_test}, y_test))
    assert len(records) == 3 and all(isinstance(r, EpochRecord) for r in records)
    assert records[-1].loss < records[0].loss
    assert before < 0.3 and records[-1].val_accuracy > 0.9
    assert records[-1].val_accuracy == accuracy(graph, x_test, y_test)
    assert 0 <= records[-1].train_accuracy <= 1 and records[-1].seconds > 0


# --------------------------------------------------------------------------- data and errors


def test_predict_pads_a_fixed_batch():
    free, fixed = mlp(), mlp(batch=4)
    x, _ = data(count=10)
    logits = predict(fixed, x)
    assert logits.shape == (10, 3)
    np.testing.assert_allclose(logits, predict(free, x, batch=3), rtol=1e-6, atol=1e-7)


def test_fixed_batch_graph_trains_whole_batches():
    graph = mlp(batch=4)
    x, y = data(count=10)
    records = fit(graph, x, y, TrainConfig(batch=64))
    assert records[0].train_accuracy * 8 == round(records[0].train_accuracy * 8)  # 8 of 10 samples seen


@pytest.mark.parametrize("change,error,message", [
    (dict(y=np.zeros(5, np.int64)), DataError, "40 samples but 5 labels"),
    (dict(y=np.zeros((40, 3), np.float32) + 0.5), DataError, "one class index per sample"),
    (dict(x={"image": np.zeros((40, 6), np.float32)}), DataError, "no array for input 'x'"),
    (dict(config=TrainConfig(lr=0)), PipelineError, "'lr' must be > 0"),
    (dict(config=TrainConfig(optimizer="sgdd")), PipelineError, "'optimizer' must be one of sgd, adam"),
    (dict(config=TrainConfig(distill=2.0)), PipelineError, "'distill' must be in"),
])
def test_bad_input_is_named(change, error, message):
    x, y = data()
    args = dict(x=x, y=y, config=TrainConfig())
    args.update(change)
    with pytest.raises(error, match=message):
        fit(mlp(), args["x"], args["y"], args["config"])


def test_nothing_to_train():
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, ("N", 3))
    graph.outputs.append(graph.add_node("Relu", [x]).output)
    with pytest.raises(ModelError, match="nothing to train"):
        fit(graph, np.zeros((4, 3), np.float32), np.zeros(4, np.int64), TrainConfig())


# --------------------------------------------------------------------------- properties of the rules


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.just(k), arrays(np.int8, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=st.integers(-1, k - 1)))),
    st.integers(0, 2**31 - 1))
def test_clustered_gradient_groups_by_index(case, seed):
    count, indices = case
    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal(count).astype(np.float32)
    tensor = Clustered(codebook, indices)
    param = ClusteredParameter(Graph().add_const("w", tensor), tensor)
    np.testing.assert_array_equal(param.forward(), tensor.to_numpy())
    grad = rng.standard_normal(indices.shape).astype(np.float32)
    expected = [grad[indices == k].astype(np.float64).sum() for k in range(count)]
    np.testing.assert_allclose(param.gradient(grad), expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.booleans(), st.integers(0, 2**31 - 1))
def test_quantized_step_lands_on_the_grid(bits, signed, seed):
    rng = np.random.default_rng(seed)
    top = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    low = -top if signed else 0
    q = rng.integers(low, top + 1, (4, 5)).astype(np.int8 if signed else np.uint8)
    scale = rng.uniform(0.01, 1, 4).astype(np.float32)
    zero = np.zeros(4, q.dtype) if signed else rng.integers(0, top + 1, 4).astype(np.uint8)
    mask = rng.random((4, 5)) > 0.3
    tensor = Quantized(q, scale, zero, 0, bits, np.float32, mask)
    param = QuantizedParameter(Graph().add_const("w", tensor), tensor)
    param.weights += rng.standard_normal(param.weights.shape).astype(np.float32) * 3  # any step
    param.after_step()
    trained = param.tensor()
    assert trained.q.min() >= low and trained.q.max() <= top
    assert np.array_equal(trained.q[~mask], q[~mask]) and np.all(trained.to_numpy()[~mask] == 0)
    np.testing.assert_array_equal(param.forward(), trained.to_numpy())
    # The shadow's nearest grid point (in range) is what the forward pass sees.
    expected = np.clip(np.rint(param.weights / scale[:, None]) + zero[:, None].astype(np.float64), low, top)
    assert np.array_equal(trained.q[mask], expected[mask])


def test_progress_lines_per_epoch(capsys):
    from circ import progress

    x, y = data()
    progress.enable(True)
    try:
        fit(mlp(), x, y, TrainConfig(epochs=2, batch=8), val=(x, y))
    finally:
        progress.enable(False)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if ": loss " in line]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("validation accuracy" in line for line in lines)
    assert "batch" in err  # the tqdm bar over batches
    fit(mlp(), x, y, TrainConfig(batch=8))
    assert capsys.readouterr().err == ""  # off unless a tool switches it on
