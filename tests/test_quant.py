"""The quant pass: weight quantization, activation calibration, QDQ export, circ-opt."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import circ
import passes  # noqa: F401  (registers the passes)
import zoo
from circ.cli import opt
from circ.errors import PipelineError
from circ.graph import Graph
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto
from circ.passmanager import PassManager
from circ.tensors import Dense, Quantized
from circ.verifier import verify

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model_zoo(tmp_path_factory) -> zoo.Zoo:
    return zoo.Zoo(tmp_path_factory.mktemp("zoo"))


def layer_graph(opset: int = 17, batch="N", seed: int = 0) -> Graph:
    """Conv -> Relu -> Flatten -> Gemm(transB) -> Tanh -> MatMul: every layer kind (seeded)."""
    draw = np.random.default_rng(seed).standard_normal
    g = Graph(opsets={"": opset})
    x = g.add_input("x", np.float32, (batch, 3, 6, 6))
    conv = g.add_node("Conv", [x, g.add_const("conv.w", draw((4, 3, 3, 3)).astype(np.float32)),
                               g.add_const("conv.b", draw(4).astype(np.float32))],
                      {"pads": [1, 1, 1, 1]}, name="conv")
    relu = g.add_node("Relu", [conv.output], name="relu")
    flat = g.add_node("Flatten", [relu.output], name="flat")
    fc = g.add_node("Gemm", [flat.output, g.add_const("fc.w", draw((8, 144)).astype(np.float32) / 8)],
                    {"transB": 1}, name="fc")
    act = g.add_node("Tanh", [fc.output], name="tanh")
    head = g.add_node("MatMul", [act.output, g.add_const("head.w", draw((8, 5)).astype(np.float32))],
                      name="head")
    g.outputs.append(head.output)
    return g


def quantize(graph: Graph, pipeline: str = "quant", data=None):
    """Run ``pipeline`` on ``graph`` in place; the pipeline result."""
    return PassManager.from_pipeline(pipeline, data=data).run(graph)


def weights(graph: Graph) -> dict:
    return {name: v.const for name, v in graph.consts.items() if name.endswith(".w")}


def along(param, ndim, axis):
    if axis is None:
        return param
    shape = [1] * ndim
    shape[axis] = -1
    return np.reshape(param, shape)


def assert_within_half_a_step(before: np.ndarray, tensor: Quantized):
    scale = along(tensor.scale.astype(np.float64), before.ndim, tensor.axis)
    error = np.abs(before.astype(np.float64) - tensor.to_numpy())
    assert np.all(error <= scale / 2 * (1 + 1e-5) + 1e-7)


def ort_session(model: onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:
        # The reference semantics of Q/DQ: optimized sessions fuse them into integer kernels
        # that round differently (and on x86 without VNNI saturate 16-bit sums, see report).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def assert_onnxruntime_matches(graph: Graph, feeds: dict, *, atol: float = 1e-5) -> onnx.ModelProto:
    model = to_model_proto(graph)
    onnx.checker.check_model(model, full_check=True)
    got = ort_session(model).run(None, feeds)
    want = circ.run(graph, feeds)
    for (name, expected), actual in zip(want.items(), got):
        np.testing.assert_allclose(actual, expected, atol=atol, rtol=1e-5, err_msg=name)
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_weights_become_bounded_integers_within_half_a_step(bits, symmetric, per_channel):
    g = layer_graph()
    before = {name: t.to_numpy().copy() for name, t in weights(g).items()}
    result = quantize(g, f"quant(bits={bits},symmetric={str(symmetric).lower()},"
                         f"per_channel={str(per_channel).lower()},activations=none)")
    axes = {"conv.w": 0, "fc.w": 0, "head.w": 1}
    for name, tensor in weights(g).items():
        assert isinstance(tensor, Quantized) and tensor.num_bits == bits
        assert tensor.axis == (axes[name] if per_channel else None)
        if per_channel:
            assert tensor.scale.shape == (before[name].shape[axes[name]],)
        if symmetric:
            assert tensor.q.dtype == np.int8 and np.all(tensor.zero_point == 0)
            assert np.abs(tensor.q).max() <= 2 ** (bits - 1) - 1
        else:
            assert tensor.q.dtype == np.uint8 and tensor.q.max() <= 2**bits - 1
        assert_within_half_a_step(before[name], tensor)
        # The grid is used fully: the extremes land on (or, for a half-way zero point, next
        # to) the ends of the integer range.
        if symmetric:
            assert np.abs(tensor.q).max() == 2 ** (bits - 1) - 1
        else:
            assert tensor.q.min() == 0 and tensor.q.max() >= 2**bits - 2
    assert set(result.report["passes"][0]["details"]["layers"]) == {"conv", "fc", "head"}
    assert not result.declines  # activations=none: nothing to say


def test_pow2_scales_are_powers_of_two():
    g = layer_graph()
    quantize(g, "quant(pow2=true,per_channel=false,activations=none)")
    for tensor in weights(g).values():
        mantissa, _ = np.frexp(tensor.scale)
        assert np.all(mantissa == 0.5)


@pytest.mark.parametrize("symmetric", ["true", "false"])
def test_pruned_zeros_stay_exactly_zero_and_keep_their_mask(symmetric):
    g = layer_graph()
    array = g.consts["fc.w"].numpy() + 0.5  # all positive: the asymmetric grid starts at 0
    mask = rng.random(array.shape) > 0.6
    g.set_const(g.consts["fc.w"], Dense(np.where(mask, array, 0).astype(np.float32), mask))
    quantize(g, f"quant(bits=3,symmetric={symmetric},activations=none)")
    tensor = g.consts["fc.w"].const
    np.testing.assert_array_equal(tensor.kept, mask)
    assert np.all(tensor.to_numpy()[~mask] == 0)
    zero_point = np.broadcast_to(along(tensor.zero_point, 2, tensor.axis), tensor.q.shape)
    np.testing.assert_array_equal(tensor.q[~mask], zero_point[~mask])


def test_prune_then_quant_keeps_the_exact_sparsity():
    g = layer_graph()
    result = quantize(g, "prune(sparsity=0.75),quant(bits=4,symmetric=false)")
    for tensor in weights(g).values():
        assert isinstance(tensor, Quantized)
        assert np.count_nonzero(~tensor.kept) == round(0.75 * tensor.size)
        assert np.all(tensor.to_numpy()[~tensor.kept] == 0)
    assert [d.reason for d in result.declines if d.pass_name == "quant"] == [
        "activations left in float: no calibration data (give --data FILE.npz, or activations=none)"]


@settings(max_examples=60, deadline=None)
@given(array=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12),
                        elements=st.floats(-50, 50, width=32)),
       bits=st.integers(2, 8), symmetric=st.booleans(), per_channel=st.booleans(), pow2=st.booleans(),
       seed=st.integers(0, 2**16))
def test_property_any_weights(array, bits, symmetric, per_channel, pow2, seed):
    mask = np.random.default_rng(seed).random(array.shape) > 0.3
    g = Graph(opsets={"": 17})
    x = g.add_input("x", np.float32, ("N", array.shape[0]))
    weight = g.add_const("w", Dense(np.where(mask, array, 0).astype(np.float32), mask))
    g.outputs.append(g.add_node("MatMul", [x, weight], name="mm").output)
    options = ",".join(f"{k}={str(v).lower()}" for k, v in
                       dict(bits=bits, symmetric=symmetric, per_channel=per_channel, pow2=pow2).items())
    quantize(g, f"quant({options},activations=none)")
    tensor = weight.const
    assert isinstance(tensor, Quantized)
    assert_within_half_a_step(np.where(mask, array, 0), tensor)
    assert np.all(tensor.to_numpy()[~mask] == 0)
    verify(g)


def test_layer_overrides_and_scope():
    g = layer_graph()
    quantize(g, "quant(bits=8,layers=head:2;fc:4,activations=none)")  # fc: Gemm and MatMul
    assert {n: t.num_bits for n, t in weights(g).items()} == {"conv.w": 8, "fc.w": 4, "head.w": 2}
    g = layer_graph()
    quantize(g, "quant(bits=6,layers=fc:4;head:2,activations=none)")  # the first match wins
    assert {n: t.num_bits for n, t in weights(g).items()} == {"conv.w": 6, "fc.w": 4, "head.w": 4}
    g = layer_graph()
    result = quantize(g, "quant(scope=conv,layers=fc1:4,activations=none)")
    assert [type(t).__name__ for t in weights(g).values()] == ["Quantized", "Dense", "Dense"]
    assert [d.reason for d in result.declines] == ["layers pattern 'fc1' matches no selected layer"]


def test_declines_already_quantized_and_non_float32_weights():
    g = layer_graph()
    g.set_const(g.consts["head.w"], g.consts["head.w"].numpy().astype(np.float64))
    quantize(g, "quant(activations=none)")
    result = quantize(g, "quant(activations=none)")
    reasons = {d.node: d.reason for d in result.declines}
    assert reasons["Conv node 'conv'"] == "the weights are already quantized"
    assert reasons["MatMul node 'head'"] == "only float32 weights are quantized (these are float64)"


@pytest.mark.parametrize("pipeline, fragment", [
    ("quant(bits=9)", "'bits' must be 2..8"),
    ("quant(bits=1)", "'bits' must be 2..8"),
    ("quant(layers=fc:12)", "bad value '12'"),
    ("quant(layers=fc)", "expected pattern:value"),
    ("quant(percentile=20)", "'percentile' must be in (50, 100]"),
    ("quant(calibration=magic)", "expects one of minmax|percentile|mse|entropy"),
])
def test_bad_options_are_pipeline_errors(pipeline, fragment):
    with pytest.raises(PipelineError) as err:
        PassManager.from_pipeline(pipeline)
    assert fragment in str(err.value)


def test_pipeline_text_round_trips():
    text = 'quant(bits=4,symmetric=false,per_channel=false,pow2=true,layers="fc:6;conv:8",calibration=mse)'
    manager = PassManager.from_pipeline(text)
    assert PassManager.from_pipeline(manager.text).text == manager.text


# ----------------------------------------------------------------------------- activations


def test_activations_get_calibrated_qdq_pairs_before_each_layer():
    g = layer_graph()
    data = {"x": rng.standard_normal((40, 3, 6, 6)).astype(np.float32)}
    float_out = circ.run(g, data)
    result = quantize(g, "quant", data=data)
    verify(g)
    assert not result.declines
    for layer in ("conv", "fc", "head"):
        source = g.node(layer).input(0).producer
        assert source.op == "DequantizeLinear" and source.input(0).producer.op == "QuantizeLinear"
    ranges = result.report["passes"][0]["details"]["activations"]
    assert list(ranges) == ["x", "flat_out", "tanh_out"]
    assert ranges["x"]["min"] == pytest.approx(float(data["x"].min()))
    assert ranges["x"]["dtype"] == "int8"
    assert ranges["flat_out"]["dtype"] == "uint8" and ranges["flat_out"]["min"] == 0  # after ReLU
    assert ranges["flat_out"]["scale"] == pytest.approx(ranges["flat_out"]["max"] / 255)
    out = circ.run(g, data)
    (name, expected), = float_out.items()
    noise = np.sqrt(np.mean((out[name] - expected) ** 2))
    assert 0 < noise < 0.03 * np.sqrt(np.mean(expected**2))


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_every_calibration_method_runs_and_stays_within_the_observed_range(method):
    g = layer_graph()
    data = {"x": rng.standard_normal((16, 3, 6, 6)).astype(np.float32)}
    result = quantize(g, f"quant(calibration={method},symmetric=false)", data=data)
    for entry in result.report["passes"][0]["details"]["activations"].values():
        assert entry["dtype"] == "uint8"
    observed = quantize(layer_graph(), "quant(symmetric=false)", data=data)
    observed = observed.report["passes"][0]["details"]["activations"]
    for name, entry in result.report["passes"][0]["details"]["activations"].items():
        assert observed[name]["min"] - 1e-6 <= entry["min"] <= entry["max"] <= observed[name]["max"] + 1e-6


def test_calibration_data_errors_name_the_input():
    g = layer_graph()
    g.add_input("y", np.float32, ("N", 1))
    with pytest.raises(circ.DataError, match="missing input 'y'"):
        quantize(g, "quant", data={"x": np.zeros((2, 3, 6, 6), np.float32)})


# ----------------------------------------------------------------------------- export


def test_export_is_qdq_and_runs_in_onnxruntime_like_the_interpreter():
    g = layer_graph(opset=17)
    data = {"x": rng.standard_normal((8, 3, 6, 6)).astype(np.float32)}
    quantize(g, "quant(bits=6)", data=data)
    model = assert_onnxruntime_matches(g, data)
    assert opset_of(model) == 17
    initializers = {t.name: t for t in model.graph.initializer}
    assert initializers["conv.w_quantized"].data_type == onnx.TensorProto.INT8
    assert list(initializers["conv.w_scale"].dims) == [4]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") == 6 and ops.count("QuantizeLinear") == 3
    # Loading the QDQ model back keeps the DequantizeLinear nodes and computes the same.
    reloaded = from_model_proto(model)
    for name, value in circ.run(reloaded, data).items():
        np.testing.assert_array_equal(value, circ.run(g, data)[name])


@pytest.mark.parametrize("per_channel, opset", [("false", 11), ("true", 13)])
def test_per_tensor_keeps_an_opset_11_model_per_channel_raises_it(per_channel, opset):
    g = layer_graph(opset=11)
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)}
    quantize(g, f"quant(per_channel={per_channel},activations=none)")
    assert opset_of(assert_onnxruntime_matches(g, feeds)) == opset
    assert g.opset == 11  # the IR keeps its opset


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v2", "autoencoder_opset9", "light_squeezenet"])
def test_weight_quantized_zoo_models_export_exactly(model_zoo, name):
    """Opset 9 (raised to 13, Upsample -> Resize), 11 (raised for per-axis) and the light zoo."""
    path = model_zoo.path(name)
    proto = onnx.load(str(path))
    feeds = zoo.random_feeds(proto, batch=2 if zoo.has_dynamic_batch(proto) else 1)
    g = circ.load(path)
    quantize(g, "quant(activations=none)")
    model = assert_onnxruntime_matches(g, feeds, atol=1e-5)
    assert opset_of(model) == 13
    assert all(t.data_type != onnx.TensorProto.FLOAT or t.name.endswith("_scale") or len(t.dims) <= 1
               for t in model.graph.initializer)  # every weight matrix is stored as integers


def test_activation_quantized_opset9_model_matches_the_interpreter(model_zoo):
    path = model_zoo.path("lenet5")
    feeds = {"input": rng.standard_normal((2, 1, 28, 28)).astype(np.float32)}
    data = {"input": rng.standard_normal((16, 1, 28, 28)).astype(np.float32)}
    g = circ.load(path)
    quantize(g, "quant(calibration=percentile)", data=data)
    model = assert_onnxruntime_matches(g, feeds, atol=1e-5)
    assert opset_of(model) == 13
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 4


def test_sklearn_mlp_accuracy_at_8_and_4_bits(model_zoo):
    X, y = zoo.digits()
    path = model_zoo.path("sk_mlp_classifier")
    accuracy = {}
    for pipeline in ("", "quant", "quant(bits=4)"):
        g = circ.load(path)
        if pipeline:
            quantize(g, pipeline, data={"input": X[::4]})
        model = assert_onnxruntime_matches(g, {"input": X}, atol=1e-5)
        labels = ort_session(model, optimize=True).run(None, {"input": X})[0]
        accuracy[pipeline] = float(np.mean(labels == y))
    assert accuracy["quant"] >= accuracy[""] - 0.005
    assert accuracy["quant(bits=4)"] >= accuracy[""] - 0.03


# ----------------------------------------------------------------------------- circ-opt


def test_circ_opt_prune_quant_as_typed(tmp_path, model_zoo, capsys, monkeypatch):
    model = tmp_path / "lenet5.onnx"
    model.write_bytes(model_zoo.path("lenet5").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert opt.main(["--passes=prune,quant", "lenet5.onnx"]) == 0
    out = capsys.readouterr().out
    assert "quant: graph: activations left in float" in out
    exported = onnx.load("lenet5.opt.onnx")
    onnx.checker.check_model(exported, full_check=True)
    assert {t.data_type for t in exported.graph.initializer if len(t.dims) >= 2} == {onnx.TensorProto.INT8}
    x = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
    (expected,) = circ.run(circ.load("lenet5.opt.onnx"), {"input": x}).values()
    np.testing.assert_allclose(ort_session(exported).run(None, {"input": x})[0], expected, atol=1e-5)


def test_circ_opt_data_quantizes_activations_end_to_end(tmp_path, model_zoo, capsys, monkeypatch):
    X, y = zoo.digits()
    (tmp_path / "mlp.onnx").write_bytes(model_zoo.path("sk_mlp_classifier").read_bytes())
    np.savez(tmp_path / "calib.npz", whatever=X[:300])  # one input: any array name will do
    monkeypatch.chdir(tmp_path)
    assert opt.main(["--passes=quant(calibration=mse)", "--data", "calib.npz", "mlp.onnx", "-o", "q.onnx",
                     "--report", "r.json"]) == 0
    assert "declined" not in capsys.readouterr().out
    exported = onnx.load("q.onnx")
    assert [n.op_type for n in exported.graph.node].count("QuantizeLinear") == 2
    labels = ort_session(exported).run(None, {"input": X})[0]
    assert np.mean(labels == y) > 0.95


def test_circ_opt_bad_data_file(tmp_path, model_zoo, capsys, monkeypatch):
    (tmp_path / "mlp.onnx").write_bytes(model_zoo.path("sk_mlp_classifier").read_bytes())
    (tmp_path / "bad.npz").write_text("not a zip")
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    monkeypatch.chdir(tmp_path)
    assert opt.main(["--passes=quant", "--data", "bad.npz", "mlp.onnx"]) == 2
    assert "bad.npz: not a readable .npz file" in capsys.readouterr().err
    assert opt.main(["--passes=quant", "--data", "two.npz", "mlp.onnx"]) == 2
    assert "two.npz: has no array for input 'input'" in capsys.readouterr().err
    assert opt.main(["--passes=quant", "--data", "missing.npz", "mlp.onnx"]) == 2
